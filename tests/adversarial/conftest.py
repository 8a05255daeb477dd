"""Fixtures of the attack tests: a demo federation and Flower's task identity."""

from __future__ import annotations

from pathlib import Path

import pytest
from attack_harness import SecureFederation
from flwr.supercore.task_identity import TaskIdentity

from federation_hub.demo import create_demo_federation


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give this process the task identity Flower sets inside a ServerApp.

    ``flwr.app.Message`` reads it to fill the sender's metadata.
    """
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


@pytest.fixture
def federation(tmp_path: Path) -> Path:
    """A fresh four-hospital demo federation folder."""
    return create_demo_federation(tmp_path / "federation")


@pytest.fixture
def secure_federation(federation: Path) -> SecureFederation:
    """Four agents of the demo federation after the secure-aggregation key setup."""
    return SecureFederation(federation)
