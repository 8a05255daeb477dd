"""Fixtures for federation tests on the real heart-disease records."""

from __future__ import annotations

import os
import signal
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


MARKER_VARIABLE = "HEALTHFED_TEST_PROCESS_MARKER"


def kill_marked_processes(marker: str) -> None:
    """SIGKILL every process whose environment carries ``marker``.

    Ray starts its workers outside the killed process group, so killing the
    group alone can leave them running.
    """
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environment.split(b"\0"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
