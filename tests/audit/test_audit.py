"""The offline audit on a real two-round study of the four demo hospitals.

One study runs per module on Flower's simulation engine. Each test audits a
copy of its files, collected as a privacy officer would collect them, and
tampers with that copy only.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opacus.accountants import RDPAccountant
from typer.testing import CliRunner

from federation_hub.audit import (
    AuditInputError,
    AuditReport,
    CheckResult,
    parse_hospital_ledger_option,
    run_audit,
)
from federation_hub.audit_command import audit
from federation_hub.demo import create_demo_federation
from federation_hub.simulation import run_simulation_study
from policies.identity import load_private_key
from policies.ledger import Ledger
from policies.models import DPParameters, load_study_policy
from policies.roster import Roster, load_roster, save_roster
from tests.federation.conftest import edit_yaml

HOSPITALS = ["cleveland", "hungarian", "switzerland", "va"]


def _two_rounds(document: dict[str, Any]) -> None:
    document["rounds"] = 2
    document["dp"].pop("target_epsilon", None)
    document["dp"]["noise_multiplier"] = 3.0


def _backup(source: Path, destination: Path) -> None:
    """Copy a WAL-mode SQLite ledger into one self-contained file."""
    with sqlite3.connect(source) as connection, sqlite3.connect(destination) as copy:
        connection.backup(copy)
    connection.close()
    copy.close()


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run one two-round study and collect the files an auditor receives."""
    folder = create_demo_federation(tmp_path_factory.mktemp("study") / "federation")
    edit_yaml(folder / "study.yaml", _two_rounds)
    run_simulation_study(folder)

    collection = tmp_path_factory.mktemp("collected")
    _backup(folder / "hub" / "state" / "ledger.sqlite", collection / "hub.sqlite")
    for hospital in HOSPITALS:
        _backup(
            folder / "hospitals" / hospital / "state" / "ledger.sqlite",
            collection / f"{hospital}.sqlite",
        )
    shutil.copyfile(folder / "roster.yaml", collection / "roster.yaml")
    shutil.copyfile(folder / "study.yaml", collection / "study.yaml")
    # The hub's private key only lets tests act as a dishonest hub. The audit
    # itself reads public keys from the roster.
    shutil.copy2(folder / "hub" / "identity.key", collection / "hub.key")
    return collection


@pytest.fixture
def files(collected: Path, tmp_path: Path) -> Path:
    """A private copy of the collected files that a test may tamper with."""
    return Path(shutil.copytree(collected, tmp_path / "files"))


def _audit(files: Path, **changes: Any) -> AuditReport:
    arguments: dict[str, Any] = {
        "hospital_ledgers": {h: files / f"{h}.sqlite" for h in HOSPITALS},
        "study_policy": files / "study.yaml",
    }
    arguments.update(changes)
    return run_audit(files / "hub.sqlite", files / "roster.yaml", **arguments)


def _failed(report: AuditReport, check: str) -> list[CheckResult]:
    return [c for c in report.failures if c.check == check]


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT seq, body FROM entries ORDER BY seq")
        parsed = [(int(seq), json.loads(body)) for seq, body in rows]
    connection.close()
    return parsed


def _seq_of(path: Path, kind: str, hospital: str | None, round_number: int) -> int:
    for seq, body in _rows(path):
        payload = body["payload"]
        if (
            body["kind"] == kind
            and payload.get("hospital_id") == hospital
            and payload.get("round") == round_number
        ):
            return seq
    raise AssertionError(f"no {kind} entry of {hospital} round {round_number}")


def _write_body(path: Path, seq: int, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit the JSON body of one row in place, as someone with file access could."""
    body = dict(_rows(path))[seq]
    change(body)
    with sqlite3.connect(path) as connection:
        connection.execute(
            "UPDATE entries SET body = ? WHERE seq = ?",
            (json.dumps(body, sort_keys=True, separators=(",", ":")), seq),
        )
    connection.close()


def _delete_row(path: Path, seq: int) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM entries WHERE seq = ?", (seq,))
    connection.close()


def _resign_hub_ledger(
    files: Path, change: Callable[[str, dict[str, Any]], dict[str, Any] | None]
) -> None:
    """Rewrite the hub ledger with the hub's own key, so its chain stays valid.

    This is what a dishonest hub can do. ``change`` maps each (kind, payload)
    to the payload to write, or to None to leave the entry out.
    """
    original = _rows(files / "hub.sqlite")
    rewritten = files / "hub-rewritten.sqlite"
    key = load_private_key(files / "hub.key")
    with Ledger.open(rewritten, "hub", key) as ledger:
        for _, body in original:
            payload = change(body["kind"], dict(body["payload"]))
            if payload is None:
                continue
            if body["kind"] == "spend":
                ledger.record_spend(
                    payload["study_id"],
                    payload["round"],
                    payload["nonce"],
                    DPParameters(
                        **{name: payload[name] for name in DPParameters.model_fields}
                    ),
                    payload["accountant"],
                    payload["delta"],
                    payload["epsilon_after"],
                    hospital_id=payload["hospital_id"],
                )
            else:
                ledger.append(body["kind"], payload)
    (files / "hub.sqlite").unlink()
    _backup(rewritten, files / "hub.sqlite")


def _oracle_epsilon(policy_path: Path, rounds: int) -> float:
    """Epsilon of ``rounds`` rounds from Opacus's own accountant."""
    policy = load_study_policy(policy_path)
    dp = policy.dp_parameters()
    accountant = RDPAccountant()
    accountant.history = [(dp.noise_multiplier, dp.sample_rate, dp.steps)] * rounds
    return float(accountant.get_epsilon(delta=policy.delta))


def _cli(arguments: list[str]) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(audit)
    result = CliRunner().invoke(app, arguments)
    return result.exit_code, result.output


def _cli_arguments(files: Path, out: Path) -> list[str]:
    arguments = [
        "--ledger",
        str(files / "hub.sqlite"),
        "--roster",
        str(files / "roster.yaml"),
        "--policy",
        str(files / "study.yaml"),
        "--out",
        str(out),
    ]
    for hospital in HOSPITALS:
        arguments += ["--hospital-ledger", f"{hospital}={files / hospital}.sqlite"]
    return arguments


# Clean study --------------------


def test_audit_clean_study_passes(files: Path) -> None:
    report = _audit(files)

    assert report.failures == []
    assert report.passed
    assert report.study_id == "heart-disease-demo"
    assert report.rounds == 2
    checks = {c.check for c in report.checks}
    for expected in (
        "hub_ledger_signatures",
        "study_started_valid",
        "roster_matches_study",
        "policy_matches_study",
        "spend_matches_instruction",
        "spend_epsilon_replay",
        "receipt_signature",
        "receipt_matches_spend",
        "round_trained_have_receipts",
        "within_budget",
        "hospital_ledger_signatures",
        "hospital_ledger_has_spend",
        "receipt_head_in_hospital_ledger",
        "hub_ledger_has_hospital_spend",
        "hospital_spend_epsilon_replay",
    ):
        assert expected in checks
    receipt_checks = [c for c in report.checks if c.check == "receipt_signature"]
    assert len(receipt_checks) == 2 * len(HOSPITALS)


def test_audit_epsilon_matches_opacus(files: Path) -> None:
    report = _audit(files)
    expected = [_oracle_epsilon(files / "study.yaml", r) for r in (1, 2)]

    assert [h.hospital_id for h in report.hospitals] == HOSPITALS
    for hospital in report.hospitals:
        assert hospital.epsilon_by_round == pytest.approx(expected, rel=1e-12)
        assert hospital.receipt_epsilon_by_round == pytest.approx(expected, rel=1e-12)
        assert hospital.hospital_epsilon_by_round == pytest.approx(expected, rel=1e-12)
        assert hospital.budget == load_study_policy(
            files / "study.yaml"
        ).epsilon_budget_for(hospital.hospital_id)
        assert hospital.rounds_joined == 2


def test_audit_hub_ledger_only_passes(files: Path) -> None:
    report = _audit(files, hospital_ledgers={})

    assert report.passed
    assert all(h.hospital_epsilon_by_round is None for h in report.hospitals)
    assert not any(c.check == "hospital_ledger_signatures" for c in report.checks)


def test_cli_clean_study_writes_outputs(files: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    exit_code, output = _cli(_cli_arguments(files, out))

    assert exit_code == 0, output
    document = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    assert document["verdict"] == "pass"
    assert document["checks_failed"] == 0
    assert [h["hospital_id"] for h in document["hospitals"]] == HOSPITALS
    assert len(document["hospitals"][0]["epsilon_by_round"]) == 2
    assert document["inputs"]["hub_ledger"]["path"] == str(files / "hub.sqlite")
    markdown = (out / "audit.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Privacy audit of study heart-disease-demo: PASS")
    page = (out / "audit.html").read_text(encoding="utf-8")
    assert "PASS" in page.split("<h2>")[0]
    assert (out / "epsilon.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# Tampering --------------------


def test_audit_edited_spend_epsilon_fails(files: Path, tmp_path: Path) -> None:
    ledger = files / "hub.sqlite"
    seq = _seq_of(ledger, "spend", "va", 2)

    def lower_epsilon(body: dict[str, Any]) -> None:
        body["payload"]["epsilon_after"] = 0.1

    _write_body(ledger, seq, lower_epsilon)
    report = _audit(files)

    assert not report.passed
    chain = _failed(report, "hub_ledger_signatures")
    assert [c.seq for c in chain] == [seq]
    assert "edited" in chain[0].detail
    replay = _failed(report, "spend_epsilon_replay")
    assert [(c.seq, c.hospital_id, c.round) for c in replay] == [(seq, "va", 2)]
    assert _failed(report, "receipt_matches_spend") != []
    exit_code, output = _cli(_cli_arguments(files, tmp_path / "report"))
    assert exit_code == 1
    assert f"entry {seq}" in output


def test_audit_deleted_entry_fails(files: Path) -> None:
    ledger = files / "hub.sqlite"
    seq = _seq_of(ledger, "receipt", "switzerland", 1)

    _delete_row(ledger, seq)
    report = _audit(files)

    chain = _failed(report, "hub_ledger_signatures")
    assert [c.seq for c in chain] == [seq]
    assert "deleted" in chain[0].detail
    unreceipted = _failed(report, "round_trained_have_receipts")
    assert [c.round for c in unreceipted] == [1]
    assert "switzerland" in unreceipted[0].detail


def test_audit_forged_receipt_signature_fails(files: Path) -> None:
    forger = Ed25519PrivateKey.generate()
    forged_seq = _seq_of(files / "hub.sqlite", "receipt", "cleveland", 2)

    def forge(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        if (
            kind == "receipt"
            and payload["hospital_id"] == "cleveland"
            and payload["round"] == 2
        ):
            receipt = dict(payload["receipt"])
            receipt["epsilon_after"] = 0.5
            signature = forger.sign(b"forged")
            receipt["signature"] = base64.b64encode(signature).decode("ascii")
            payload["receipt"] = receipt
        return payload

    _resign_hub_ledger(files, forge)
    report = _audit(files)

    assert _failed(report, "hub_ledger_signatures") == []
    forged = _failed(report, "receipt_signature")
    assert [(c.seq, c.hospital_id, c.round) for c in forged] == [
        (forged_seq, "cleveland", 2)
    ]
    assert "invalid signature" in forged[0].detail
    unreceipted = _failed(report, "round_trained_have_receipts")
    assert [c.round for c in unreceipted] == [2]


def test_audit_hospital_ledger_missing_spend_fails(files: Path) -> None:
    # Removing the last spend leaves a shorter chain that still verifies. Only
    # the hub's copy of the signed receipt reveals it.
    # The agent also records evaluations, so cut the chain from the last spend on.
    hospital_ledger = files / "va.sqlite"
    rows = _rows(hospital_ledger)
    last_spend = max(seq for seq, body in rows if body["kind"] == "spend")
    for seq, _ in reversed(rows):
        if seq >= last_spend:
            _delete_row(hospital_ledger, seq)
    receipt_seq = _seq_of(files / "hub.sqlite", "receipt", "va", 2)

    report = _audit(files)

    assert _failed(report, "hospital_ledger_signatures") == []
    missing = _failed(report, "hospital_ledger_has_spend")
    assert [(c.seq, c.hospital_id, c.round) for c in missing] == [
        (receipt_seq, "va", 2)
    ]
    head = _failed(report, "receipt_head_in_hospital_ledger")
    assert [c.seq for c in head] == [receipt_seq]
    assert not report.passed


def test_audit_hub_omits_hospital_spend_fails(files: Path) -> None:
    # A dishonest hub rewrites its ledger without va's round-2 spend and
    # receipt, so it undercounts va. The hospital's own ledger has the spend.
    def drop_va_round_2(kind: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        if (
            kind in ("spend", "receipt")
            and payload["hospital_id"] == "va"
            and payload["round"] == 2
        ):
            return None
        if kind == "round_completed" and payload["round"] == 2:
            payload["trained"] = [h for h in payload["trained"] if h != "va"]
        return payload

    _resign_hub_ledger(files, drop_va_round_2)
    report = _audit(files)

    assert _failed(report, "hub_ledger_signatures") == []
    omitted = _failed(report, "hub_ledger_has_hospital_spend")
    assert [(c.ledger, c.hospital_id, c.round) for c in omitted] == [("va", "va", 2)]
    va_spends = [
        seq for seq, body in _rows(files / "va.sqlite") if body["kind"] == "spend"
    ]
    assert omitted[0].seq == va_spends[-1]
    assert not report.passed


def test_audit_budget_exceeded_names_spend(files: Path) -> None:
    one_round = _oracle_epsilon(files / "study.yaml", 1)
    two_rounds = _oracle_epsilon(files / "study.yaml", 2)

    def va_budget(document: dict[str, Any]) -> None:
        document["epsilon_budget"]["overrides"] = {"va": (one_round + two_rounds) / 2}

    edit_yaml(files / "study.yaml", va_budget)
    report = _audit(files)

    exceeded = _failed(report, "within_budget")
    assert [(c.ledger, c.hospital_id, c.round) for c in exceeded] == [
        ("hub", "va", 2),
        ("va", "va", 2),
    ]
    assert exceeded[0].seq == _seq_of(files / "hub.sqlite", "spend", "va", 2)
    assert _failed(report, "policy_matches_study") == []


def test_audit_other_roster_fails(files: Path) -> None:
    roster = load_roster(files / "roster.yaml")
    other = Roster(
        federation=roster.federation,
        hub=Ed25519PrivateKey.generate().public_key(),
        hospitals=dict(roster.hospitals),
    )
    save_roster(other, files / "roster.yaml")

    report = _audit(files)

    chain = _failed(report, "hub_ledger_signatures")
    assert [c.seq for c in chain] == [1]
    assert _failed(report, "roster_matches_study") != []


def test_audit_policy_of_other_study_fails(files: Path) -> None:
    def more_noise(document: dict[str, Any]) -> None:
        document["dp"]["noise_multiplier"] = 4.0

    edit_yaml(files / "study.yaml", more_noise)
    report = _audit(files)

    differing = _failed(report, "policy_matches_study")
    assert len(differing) == 1
    assert "noise_multiplier" in differing[0].detail


# Unusable inputs --------------------


def test_audit_budget_from_ledger(files: Path) -> None:
    # The hub records the budgets in its study_started entry, so the study
    # policy file is optional.
    report = _audit(files, study_policy=None)

    assert report.passed


def test_audit_missing_ledger_rejected(files: Path) -> None:
    (files / "hub.sqlite").unlink()

    with pytest.raises(AuditInputError, match="hub.sqlite not found"):
        _audit(files)


def test_audit_non_ledger_file_rejected(files: Path) -> None:
    (files / "va.sqlite").write_text("not a database", encoding="utf-8")

    with pytest.raises(AuditInputError, match="va.sqlite is not a readable ledger"):
        _audit(files)


def test_audit_unenrolled_hospital_rejected(files: Path) -> None:
    with pytest.raises(AuditInputError, match="'mercy'"):
        _audit(files, hospital_ledgers={"mercy": files / "va.sqlite"})


def test_audit_unknown_study_rejected(files: Path) -> None:
    with pytest.raises(AuditInputError, match="no study 'other-study'"):
        _audit(files, study_id="other-study", study_policy=None)


def test_audit_study_not_policy_rejected(files: Path) -> None:
    with pytest.raises(AuditInputError, match="--study 'other-study' differs"):
        _audit(files, study_id="other-study")


def test_audit_invalid_roster_rejected(files: Path) -> None:
    (files / "roster.yaml").write_text(
        yaml.safe_dump({"federation": "x", "hub": "not base64!", "hospitals": {}}),
        encoding="utf-8",
    )

    with pytest.raises(AuditInputError, match="roster"):
        _audit(files)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("va", "ID=PATH"),
        ("=va.sqlite", "ID=PATH"),
        ("va=", "ID=PATH"),
    ],
)
def test_hospital_ledger_option_malformed(value: str, message: str) -> None:
    with pytest.raises(AuditInputError, match=message):
        parse_hospital_ledger_option([value])


def test_hospital_ledger_option_repeated() -> None:
    with pytest.raises(AuditInputError, match="twice"):
        parse_hospital_ledger_option(["va=a.sqlite", "va=b.sqlite"])


def test_cli_unusable_input_exits_2(files: Path, tmp_path: Path) -> None:
    arguments = _cli_arguments(files, tmp_path / "report")
    (files / "study.yaml").unlink()

    exit_code, output = _cli(arguments)

    assert exit_code == 2
    assert "study.yaml" in output
    assert not (tmp_path / "report" / "audit.json").exists()
