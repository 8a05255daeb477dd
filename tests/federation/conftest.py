"""Fixtures for federation tests on the real heart-disease records."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from federation_hub.demo import create_demo_federation


def edit_yaml(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Load a YAML mapping, apply ``change`` to it and write it back."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


@pytest.fixture
def demo_federation(tmp_path: Path) -> Path:
    """A fresh four-hospital federation folder with its own keys and ledgers."""
    return create_demo_federation(tmp_path / "federation")
