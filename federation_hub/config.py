"""The hub's federation folder: study policy, schema, roster, keys and state.

A federation folder holds ``federation.yaml``::

    study_policy: study.yaml        # the study policy (YAML)
    schema: schema.yaml             # the shared schema every hospital pins
    roster: roster.yaml             # enrolled identities of the hub and hospitals
    identity_key: hub/identity.pem  # the hub's Ed25519 key (PEM, private)
    state_dir: hub                  # ledger, global models, reports

Relative paths are resolved against the folder. On Flower's simulation engine the
same folder also holds ``hospitals/<hospital_id>/agent.yaml`` for each hospital.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

FEDERATION_FILE = "federation.yaml"


class HubConfigError(ValueError):
    """The federation folder or its ``federation.yaml`` is missing or invalid."""


class HubConfig(BaseModel):
    """Configuration of the hub for one federation folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_policy: Path
    schema_file: Path = Field(alias="schema")
    roster: Path
    identity_key: Path
    state_dir: Path
    round_timeout_s: float = Field(default=600.0, gt=0)
    """Seconds the hub waits for replies in one exchange before it counts the
    missing hospitals as dropped. Default 600."""
    node_timeout_s: float = Field(default=120.0, gt=0)
    """Seconds the hub waits for every enrolled hospital's node to connect before
    it starts with those present. Default 120."""

    @property
    def ledger_path(self) -> Path:
        """The hub's append-only ledger (SQLite)."""
        return self.state_dir / "ledger.sqlite"

    @property
    def models_dir(self) -> Path:
        """Global models after each round, named by round."""
        return self.state_dir / "models"

    @property
    def reports_dir(self) -> Path:
        """Budget reports (JSON) and round metrics."""
        return self.state_dir / "reports"


def load_hub_config(federation_dir: str | Path) -> HubConfig:
    """Load ``federation.yaml`` from ``federation_dir`` and resolve its paths."""
    folder = Path(federation_dir).resolve()
    path = folder / FEDERATION_FILE
    try:
        document: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HubConfigError(
            f"{path} not found; write it next to the study policy, schema and "
            "roster (docs/operator.md shows its keys), or create a complete "
            "example folder with `federation-hub demo --setup-only --dir DIR`"
        ) from None
    except (OSError, yaml.YAMLError) as error:
        raise HubConfigError(f"cannot read {path}: {error}") from None
    if not isinstance(document, dict):
        raise HubConfigError(f"{path} must be a YAML mapping")
    resolved = dict(document)
    for key in ("study_policy", "schema", "roster", "identity_key", "state_dir"):
        value = resolved.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            resolved[key] = str(folder / value)
    try:
        return HubConfig.model_validate(resolved)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        raise HubConfigError(f"invalid {path}: {problems}") from None
