"""The agent's configuration file: where a hospital's records, keys and ledger live.

A hospital's IT team writes one YAML file per agent. Relative paths are resolved
against the folder of that file, so a configuration folder can be moved whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class AgentConfigError(ValueError):
    """The agent configuration file is missing, unreadable or invalid."""


class AgentConfig(BaseModel):
    """Configuration of one hospital's agent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hospital_id: Annotated[
        str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    ]
    """The hospital's enrolled identifier; must match its roster entry."""
    data: Path
    """The hospital's record file (CSV or Parquet), read only."""
    schema_file: Path = Field(alias="schema")
    """The shared schema the records must meet; its hash pins the study."""
    policy: Path
    """The hospital's own privacy policy (YAML)."""
    identity_key: Path
    """The hospital's Ed25519 identity key (PEM, private)."""
    roster: Path
    """The enrolled identities of the federation (hub and hospitals), pinned."""
    state_dir: Path
    """Folder for the ledger, the quarantine file and protocol state."""
    test_fraction: float = Field(default=1 / 3, gt=0, lt=1)
    """Share of accepted rows held out as the fixed test split. Default 1/3."""
    split_seed: int = Field(default=0, ge=0)
    """Seed of the stratified train/test split, so the split never changes."""

    @field_validator("data", "schema_file", "policy", "identity_key", "roster")
    @classmethod
    def _not_empty(cls, value: Path) -> Path:
        if str(value) in ("", "."):
            raise ValueError("must name a file")
        return value

    @property
    def ledger_path(self) -> Path:
        """The hospital's append-only privacy ledger (SQLite)."""
        return self.state_dir / "ledger.sqlite"

    @property
    def quarantine_path(self) -> Path:
        """Rows that failed validation, unchanged, with their reasons."""
        return self.state_dir / "quarantine.csv"


def load_agent_config(path: str | Path) -> AgentConfig:
    """Load an agent configuration file and resolve its paths against its folder."""
    path = Path(path)
    try:
        document: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgentConfigError(
            f"agent configuration {path} not found; pass the path of the YAML file "
            "written for this hospital"
        ) from None
    except (OSError, yaml.YAMLError) as error:
        raise AgentConfigError(
            f"cannot read agent configuration {path}: {error}"
        ) from None
    if not isinstance(document, dict):
        raise AgentConfigError(
            f"agent configuration {path} must be a YAML mapping, got "
            f"{type(document).__name__}"
        )

    base = path.resolve().parent
    resolved = dict(document)
    for key in ("data", "schema", "policy", "identity_key", "roster", "state_dir"):
        value = resolved.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            resolved[key] = str(base / value)
    try:
        return AgentConfig.model_validate(resolved)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        raise AgentConfigError(
            f"invalid agent configuration {path}: {problems}"
        ) from None
