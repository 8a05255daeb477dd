"""SIGKILL the agent and the hub at the worst moments; no spend is lost or doubled."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from policies.accounting import compute_epsilon
from policies.enforcement import RoundInstruction
from policies.identity import load_private_key
from policies.ledger import Ledger
from policies.models import load_study_policy
from schemas import load_schema
from tests.federation.conftest import MARKER_VARIABLE, edit_yaml, kill_marked_processes

CHILD = Path(__file__).with_name("agent_process.py")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
HOSPITALS = ["cleveland", "hungarian", "switzerland", "va"]


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(PROJECT_ROOT)
    return environment


def _instruction_file(folder: Path, tmp_path: Path, hospital: str) -> Path:
    policy = load_study_policy(folder / "study.yaml")
    instruction = RoundInstruction(
        study_id=policy.study_id,
        round=1,
        nonce="0123456789abcdef0123456789abcdef",
        schema_hash=load_schema(folder / "schema.yaml").content_hash,
        accountant=policy.accountant,
        delta=policy.delta,
        dp=policy.dp_parameters(),
        secure_aggregation=policy.secure_aggregation,
    )
    path = tmp_path / f"instruction-{hospital}.json"
    path.write_text(
        json.dumps(
            {
                "instruction": instruction.to_config(),
                "training": policy.training.model_dump(),
            }
        ),
        encoding="utf-8",
    )
    return path


def _run_agent(folder: Path, tmp_path: Path, hospital: str, mode: str) -> Path:
    """Run one agent process; for a hang mode, SIGKILL it at the marked point."""
    output = tmp_path / f"{hospital}-{mode}-{time.monotonic_ns()}.json"
    marker = tmp_path / f"{hospital}-{mode}.marker"
    command = [
        sys.executable,
        str(CHILD),
        str(folder / "hospitals" / hospital / "agent.yaml"),
        str(_instruction_file(folder, tmp_path, hospital)),
        str(output),
        mode,
        str(marker),
    ]
    process = subprocess.Popen(command, env=_environment())
    if mode == "train":
        assert process.wait(timeout=120) == 0
        return output
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, "agent exited before reaching the marked point"
        assert time.monotonic() < deadline, "agent never reached the marked point"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    return output


def _agent_spends(folder: Path, hospital: str) -> list[dict[str, Any]]:
    key = load_private_key(folder / "hospitals" / hospital / "identity.key")
    path = folder / "hospitals" / hospital / "state" / "ledger.sqlite"
    with Ledger.open(path, hospital, key) as ledger:
        return [dict(entry.payload) for entry in ledger.spends()]


def _allow_plain_aggregation(folder: Path) -> None:
    for hospital in HOSPITALS:

        def relax(policy: dict[str, Any]) -> None:
            policy["require_secure_aggregation"] = False

        edit_yaml(folder / "hospitals" / hospital / "policy.yaml", relax)

    def plain(study: dict[str, Any]) -> None:
        study["secure_aggregation"] = False

    edit_yaml(folder / "study.yaml", plain)


def test_agent_killed_in_training_keeps_spend(
    demo_federation: Path, tmp_path: Path
) -> None:
    _allow_plain_aggregation(demo_federation)

    _run_agent(demo_federation, tmp_path, "cleveland", "hang-in-training")

    after_crash = _agent_spends(demo_federation, "cleveland")
    assert len(after_crash) == 1
    output = _run_agent(demo_federation, tmp_path, "cleveland", "train")
    after_retry = _agent_spends(demo_federation, "cleveland")
    assert after_retry == after_crash
    reply = json.loads(output.read_text())
    assert reply["epsilon"] == after_crash[0]["epsilon_after"]


def test_agent_killed_before_send_resends(
    demo_federation: Path, tmp_path: Path
) -> None:
    _allow_plain_aggregation(demo_federation)

    _run_agent(demo_federation, tmp_path, "va", "hang-after-outbox")
    first = _run_agent(demo_federation, tmp_path, "va", "train")
    second = _run_agent(demo_federation, tmp_path, "va", "train")

    spends = _agent_spends(demo_federation, "va")
    assert len(spends) == 1
    first_reply = json.loads(first.read_text())
    second_reply = json.loads(second.read_text())
    # The update trained before the crash is the one sent, every time.
    assert first_reply["delta_sha256"] == second_reply["delta_sha256"]


def _completed_rounds(ledger_path: Path) -> list[int]:
    if not ledger_path.exists():
        return []
    with sqlite3.connect(
        f"file:{ledger_path}?mode=ro", uri=True, timeout=5
    ) as connection:
        try:
            rows = connection.execute(
                "SELECT body FROM entries ORDER BY seq"
            ).fetchall()
        except sqlite3.OperationalError:
            return []
    bodies = [json.loads(row[0]) for row in rows]
    return [b["payload"]["round"] for b in bodies if b["kind"] == "round_completed"]


def _hub_command(folder: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from federation_hub.cli import main; main()",
        "run",
        str(folder),
    ]


@pytest.fixture
def new_ray_folders_removed() -> Any:
    """Remove the Ray folders that a hub killed with SIGKILL could not remove."""
    temporary = Path(tempfile.gettempdir())
    before = set(temporary.glob("healthfed-ray-*"))
    yield
    for folder in set(temporary.glob("healthfed-ray-*")) - before:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.usefixtures("new_ray_folders_removed")
def test_hub_killed_between_rounds_resumes(demo_federation: Path) -> None:
    _allow_plain_aggregation(demo_federation)

    def three_rounds(study: dict[str, Any]) -> None:
        study["rounds"] = 3
        study["dp"].pop("target_epsilon", None)
        study["dp"]["noise_multiplier"] = 4.0

    edit_yaml(demo_federation / "study.yaml", three_rounds)
    ledger_path = demo_federation / "hub" / "state" / "ledger.sqlite"

    marker = uuid.uuid4().hex
    environment = {**_environment(), MARKER_VARIABLE: marker}
    hub = subprocess.Popen(
        _hub_command(demo_federation), env=environment, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while 1 not in _completed_rounds(ledger_path):
            assert hub.poll() is None, "hub exited before completing round 1"
            assert time.monotonic() < deadline, "hub never completed round 1"
            time.sleep(0.1)
    finally:
        os.killpg(hub.pid, signal.SIGKILL)
        hub.wait(timeout=30)
        kill_marked_processes(marker)
    assert _completed_rounds(ledger_path)[-1] < 3

    resumed = subprocess.run(
        _hub_command(demo_federation), env=_environment(), timeout=300, check=False
    )

    assert resumed.returncode == 0
    completed = _completed_rounds(ledger_path)
    assert completed[:2] == [1, 2]
    assert len(completed) == len(set(completed))
    policy = load_study_policy(demo_federation / "study.yaml")
    report = json.loads(
        (
            demo_federation / "hub" / "state" / "reports" / "budget-report.json"
        ).read_text()
    )
    hub_budget = {row["hospital_id"]: row for row in report["budget"]}
    for hospital in HOSPITALS:
        agent_spends = _agent_spends(demo_federation, hospital)
        keys = [(s["round"], s["nonce"]) for s in agent_spends]
        assert len(keys) == len(set(keys)), f"{hospital} recorded a spend twice"
        assert len(keys) >= 2, f"{hospital} lost a spend"
        # On restart the hub asked every hospital which attempts of the
        # interrupted round it spent on, so both sides count the same spends.
        assert hub_budget[hospital]["rounds_joined"] == len(keys)
        agent_epsilon = compute_epsilon(
            [policy.dp_parameters()] * len(keys), policy.delta, policy.accountant
        )
        assert agent_spends[-1]["epsilon_after"] == pytest.approx(agent_epsilon)
        assert hub_budget[hospital]["epsilon"] == pytest.approx(agent_epsilon)
    if completed != [1, 2, 3]:
        # Hospitals that trained in the interrupted attempt used their third
        # planned round there, so the study ends early and says why.
        assert "planned rounds" in report["stop_reason"]
