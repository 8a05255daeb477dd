"""SIGKILL of a real agent process between committing a spend and sending."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policies.identity import save_private_key
from policies.ledger import Ledger

AGENT = Path(__file__).with_name("crash_agent.py")
NONCE = "0123456789abcdef0123456789abcdef"


def _start(tmp_path: Path, round_number: int) -> subprocess.Popen[str]:
    environment = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    return subprocess.Popen(
        [
            sys.executable,
            str(AGENT),
            str(tmp_path / "agent.db"),
            str(tmp_path / "agent.pem"),
            str(tmp_path / "outbox.txt"),
            str(round_number),
            f"{NONCE}{round_number}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )


def _kill_after_commit(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return line


def _run_to_end(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(input="\n", timeout=60)
    return output


def test_sigkill_after_commit_keeps_one_spend(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    save_private_key(key, tmp_path / "agent.pem")

    killed = _start(tmp_path, 1)
    assert _kill_after_commit(killed) == "committed"
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "outbox.txt").exists()

    report = Ledger.verify(tmp_path / "agent.db", key.public_key())
    assert report.spends == 1

    # After the restart the hub retries the same instruction (same nonce).
    retried = _start(tmp_path, 1)
    assert "sent" in _run_to_end(retried)
    assert retried.returncode == 0

    report = Ledger.verify(tmp_path / "agent.db", key.public_key())
    assert report.spends == 1
    assert (tmp_path / "outbox.txt").read_text() == f"1 {NONCE}1\n"


def test_sigkill_then_next_round_counts_both(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    save_private_key(key, tmp_path / "agent.pem")

    assert _kill_after_commit(_start(tmp_path, 1)) == "committed"
    finished = _start(tmp_path, 2)
    assert "sent" in _run_to_end(finished)

    with Ledger.open(tmp_path / "agent.db", "cleveland", key) as ledger:
        spends = ledger.spends("crash-study")
    assert [entry.payload["round"] for entry in spends] == [1, 2]
    assert spends[1].payload["epsilon_after"] > spends[0].payload["epsilon_after"]
