"""The audit's replay of unanswered rounds, on ledgers written entry by entry.

A simulated study does not drop a hospital on demand, so these ledgers are
written with the real Ledger and receipt code, in the order the hub and the
agent write them, with keys generated here.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation_hub.audit import AuditReport, run_audit
from policies.accounting import compute_epsilon
from policies.ledger import Ledger
from policies.models import DPParameters
from policies.receipts import sign_receipt
from policies.roster import Roster, load_roster, save_roster

STUDY = "replay-study"
DELTA = 1e-5
DP = DPParameters(noise_multiplier=2.0, sample_rate=0.1, steps=5, max_grad_norm=1.0)


def _epsilon(rounds: int) -> float:
    return compute_epsilon([DP] * rounds, DELTA, "rdp")


class StudyWriter:
    """Writes a hub ledger and one hospital's ledger as the real parties do."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.hub_key = Ed25519PrivateKey.generate()
        self.va_key = Ed25519PrivateKey.generate()
        save_roster(
            Roster(
                federation="replay",
                hub=self.hub_key.public_key(),
                hospitals={"va": self.va_key.public_key()},
            ),
            folder / "roster.yaml",
        )
        (folder / "study.yaml").write_text(
            yaml.safe_dump(
                {
                    "study_id": STUDY,
                    "delta": DELTA,
                    "rounds": 3,
                    "hospitals": ["va"],
                    "min_hospitals_per_round": 1,
                    "epsilon_budget": {"default": 10.0},
                    "dp": {
                        "noise_multiplier": DP.noise_multiplier,
                        "sample_rate": DP.sample_rate,
                        "steps": DP.steps,
                        "max_grad_norm": DP.max_grad_norm,
                    },
                }
            ),
            encoding="utf-8",
        )
        self.hub = Ledger.open(folder / "hub.sqlite", "hub", self.hub_key)
        self.va = Ledger.open(folder / "va.sqlite", "va", self.va_key)
        self.instructions = 0
        self.hub.append(
            "study_started",
            {
                "study_id": STUDY,
                "roster_fingerprint": load_roster(folder / "roster.yaml").fingerprint,
                "dp": DP.model_dump(),
                "accountant": "rdp",
                "delta": DELTA,
            },
        )

    def instruct(self, round_number: int) -> str:
        self.instructions += 1
        nonce = f"{round_number:016x}{self.instructions:016x}"
        self.hub.append(
            "round_instructed",
            {
                "study_id": STUDY,
                "round": round_number,
                "hospitals": ["va"],
                "nonces": {"va": nonce},
                "dp": DP.model_dump(),
                "skipped": {},
            },
        )
        return nonce

    def hub_spend(self, round_number: int, nonce: str, epsilon: float) -> None:
        self.hub.record_spend(
            STUDY, round_number, nonce, DP, "rdp", DELTA, epsilon, hospital_id="va"
        )

    def agent_round(self, round_number: int, nonce: str, epsilon: float) -> None:
        """Record the hospital's spend and store its signed receipt at the hub."""
        self.va.record_spend(STUDY, round_number, nonce, DP, "rdp", DELTA, epsilon)
        receipt = sign_receipt(
            self.va_key,
            study_id=STUDY,
            round=round_number,
            nonce=nonce,
            hospital_id="va",
            dp=DP,
            accountant="rdp",
            delta=DELTA,
            epsilon_after=epsilon,
            ledger_head_hash=self.va.head_hash,
        )
        self.hub.append(
            "receipt",
            {
                "study_id": STUDY,
                "round": round_number,
                "hospital_id": "va",
                "receipt": receipt.to_config(),
            },
        )

    def complete(self, round_number: int, **outcome: Any) -> None:
        self.hub.append(
            "round_completed",
            {
                "study_id": STUDY,
                "round": round_number,
                "trained": outcome.get("trained", []),
                "dropped": outcome.get("dropped", []),
            },
        )

    def audit(self) -> AuditReport:
        self.hub.close()
        self.va.close()
        return run_audit(
            self.folder / "hub.sqlite",
            self.folder / "roster.yaml",
            hospital_ledgers={"va": self.folder / "va.sqlite"},
            study_policy=self.folder / "study.yaml",
        )


def _write_dropped_round_study(writer: StudyWriter) -> None:
    """Round 1 trained, round 2 unanswered (counted as spent), round 3 trained."""
    nonce = writer.instruct(1)
    writer.hub_spend(1, nonce, _epsilon(1))
    writer.agent_round(1, nonce, _epsilon(1))
    writer.complete(1, trained=["va"])

    nonce = writer.instruct(2)
    writer.hub_spend(2, nonce, _epsilon(2))
    writer.hub.append(
        "unconfirmed_spend",
        {"study_id": STUDY, "round": 2, "hospital_id": "va", "reason": "no answer"},
    )
    writer.complete(2, dropped=["va"])

    # The hospital never received round 2, so its own epsilon is two rounds.
    nonce = writer.instruct(3)
    writer.hub_spend(3, nonce, _epsilon(3))
    writer.agent_round(3, nonce, _epsilon(2))
    writer.complete(3, trained=["va"])


def test_replay_unanswered_round_counted(tmp_path: Path) -> None:
    writer = StudyWriter(tmp_path)
    _write_dropped_round_study(writer)

    report = writer.audit()

    assert report.failures == []
    (va,) = report.hospitals
    assert va.epsilon_by_round == pytest.approx([_epsilon(r) for r in (1, 2, 3)])
    assert va.receipt_epsilon_by_round == pytest.approx(
        [_epsilon(1), None, _epsilon(2)]
    )
    assert va.hospital_epsilon_by_round == pytest.approx(
        [_epsilon(1), None, _epsilon(2)]
    )


def test_replay_receipt_below_receipted_rounds_fails(tmp_path: Path) -> None:
    writer = StudyWriter(tmp_path)
    nonce = writer.instruct(1)
    writer.hub_spend(1, nonce, _epsilon(1))
    writer.agent_round(1, nonce, _epsilon(1))
    writer.complete(1, trained=["va"])
    nonce = writer.instruct(2)
    writer.hub_spend(2, nonce, _epsilon(2))
    # A receipt whose epsilon leaves out round 1, which va signed a receipt for.
    writer.agent_round(2, nonce, _epsilon(1))
    writer.complete(2, trained=["va"])

    report = writer.audit()

    mismatched = [c for c in report.failures if c.check == "receipt_matches_spend"]
    assert [c.round for c in mismatched] == [2]
    replayed = [
        c for c in report.failures if c.check == "hospital_spend_epsilon_replay"
    ]
    assert [(c.ledger, c.round) for c in replayed] == [("va", 2)]


def test_replay_crashed_round_counted(tmp_path: Path) -> None:
    # The hub instructed round 2 and stopped before it recorded anything. It
    # resumed with a new instruction of round 2 and counted the first as spent.
    writer = StudyWriter(tmp_path)
    nonce = writer.instruct(1)
    writer.hub_spend(1, nonce, _epsilon(1))
    writer.agent_round(1, nonce, _epsilon(1))
    writer.complete(1, trained=["va"])
    writer.instruct(2)
    nonce = writer.instruct(2)
    writer.hub_spend(2, nonce, _epsilon(3))
    writer.agent_round(2, nonce, _epsilon(2))
    writer.complete(2, trained=["va"])

    report = writer.audit()

    assert report.failures == []
    assert report.hospitals[0].epsilon_by_round == pytest.approx(
        [_epsilon(1), _epsilon(3)]
    )


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    factor=st.floats(min_value=0.5, max_value=2.0).filter(lambda f: abs(f - 1.0) > 1e-6)
)
def test_replay_any_wrong_spend_epsilon_fails(
    tmp_path_factory: Any, factor: float
) -> None:
    # A hub that signs its own ledger with a wrong epsilon_after is caught by
    # the replay alone, whatever the error.
    writer = StudyWriter(tmp_path_factory.mktemp("study"))
    nonce = writer.instruct(1)
    writer.hub_spend(1, nonce, _epsilon(1) * factor)
    writer.complete(1)

    report = writer.audit()

    replayed = [c for c in report.failures if c.check == "spend_epsilon_replay"]
    assert [c.round for c in replayed] == [1]


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def dropped_round_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files of the dropped-round study, written once for the module."""
    folder = tmp_path_factory.mktemp("template")
    writer = StudyWriter(folder)
    _write_dropped_round_study(writer)
    writer.hub.close()
    writer.va.close()
    return folder


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_replay_any_edited_field_fails(
    dropped_round_study: Path, tmp_path_factory: pytest.TempPathFactory, data: Any
) -> None:
    # Any value in any field of any stored entry of either ledger: the audit
    # fails, names the entry and never raises, although it reads the edited body.
    folder = Path(
        shutil.copytree(dropped_round_study, tmp_path_factory.mktemp("edit") / "s")
    )
    ledger, check = data.draw(
        st.sampled_from(
            [
                ("hub.sqlite", "hub_ledger_signatures"),
                ("va.sqlite", "hospital_ledger_signatures"),
            ]
        )
    )
    with sqlite3.connect(folder / ledger) as connection:
        rows = connection.execute("SELECT seq, body FROM entries").fetchall()
        seq, body = data.draw(st.sampled_from(rows))
        fields = json.loads(body)
        key = data.draw(st.sampled_from(sorted(fields["payload"])))
        value = data.draw(JSON_VALUES.filter(lambda v: v != fields["payload"][key]))
        fields["payload"][key] = value
        connection.execute(
            "UPDATE entries SET body = ? WHERE seq = ?", (json.dumps(fields), seq)
        )
    connection.close()

    report = run_audit(
        folder / "hub.sqlite",
        folder / "roster.yaml",
        hospital_ledgers={"va": folder / "va.sqlite"},
        study_policy=folder / "study.yaml",
    )

    chain = [c for c in report.failures if c.check == check]
    assert [c.seq for c in chain] == [seq]
    assert not report.passed
    json.dumps(report.to_document(), allow_nan=False)
