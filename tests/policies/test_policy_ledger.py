"""Ledger: idempotent spends, history, and detection of each kind of tampering."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_helpers import dp

from policies.ledger import (
    GENESIS_HASH,
    Ledger,
    LedgerError,
    LedgerIntegrityError,
    SpendConflictError,
    canonical_json,
)

NONCE = "0123456789abcdef0123456789abcdef"


def _filled(path: Path, key: Ed25519PrivateKey, rounds: int = 5) -> Ledger:
    ledger = Ledger.open(path, "cleveland", key)
    ledger.append("study_start", {"study_id": "s1"})
    for round_number in range(1, rounds + 1):
        ledger.record_spend(
            "s1",
            round_number,
            f"{NONCE}{round_number}",
            dp(),
            "rdp",
            1e-5,
            0.1 * round_number,
        )
    return ledger


def _execute(path: Path, sql: str, *args: object) -> None:
    connection = sqlite3.connect(path)
    with connection:
        connection.execute(sql, args)
    connection.close()


def test_empty_ledger_verifies(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    Ledger.open(tmp_path / "l.db", "cleveland", signing_key).close()
    report = Ledger.verify(tmp_path / "l.db", signing_key.public_key())
    assert report.head_hash == GENESIS_HASH


def test_filled_ledger_verifies(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    _filled(tmp_path / "l.db", signing_key).close()
    report = Ledger.verify(
        tmp_path / "l.db", signing_key.public_key(), party_id="cleveland"
    )
    assert report.entries == 6
    assert report.spends == 5


def test_history_in_order(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    ledger = _filled(tmp_path / "l.db", signing_key, rounds=2)
    ledger.record_spend("s2", 1, NONCE, dp(3.0), "rdp", 1e-5, 0.2)
    assert ledger.history("s1") == [dp(), dp()]
    assert ledger.history() == [dp(), dp(), dp(3.0)]


def test_hub_history_per_hospital(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    ledger = Ledger.open(tmp_path / "hub.db", "hub", signing_key)
    ledger.record_spend("s1", 1, NONCE, dp(), "rdp", 1e-5, 0.1, hospital_id="va")
    ledger.record_spend(
        "s1", 1, NONCE, dp(2.0), "rdp", 1e-5, 0.1, hospital_id="cleveland"
    )
    assert ledger.history("s1", hospital_id="va") == [dp()]


def test_spend_retry_is_idempotent(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    ledger = Ledger.open(tmp_path / "l.db", "cleveland", signing_key)
    first = ledger.record_spend("s1", 1, NONCE, dp(), "rdp", 1e-5, 0.5)
    again = ledger.record_spend("s1", 1, NONCE, dp(), "rdp", 1e-5, 0.5)
    assert again == first
    assert len(ledger.history()) == 1


def test_spend_retry_keeps_first_epsilon(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    ledger = Ledger.open(tmp_path / "l.db", "cleveland", signing_key)
    first = ledger.record_spend("s1", 1, NONCE, dp(), "rdp", 1e-5, 0.5)
    again = ledger.record_spend("s1", 1, NONCE, dp(), "rdp", 1e-5, 0.9)
    assert again.payload["epsilon_after"] == first.payload["epsilon_after"]


def test_find_spend_after_commit(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    ledger = Ledger.open(tmp_path / "l.db", "cleveland", signing_key)
    assert ledger.find_spend("s1", 1, NONCE) is None
    entry = ledger.record_spend("s1", 1, NONCE, dp(), "rdp", 1e-5, 0.5)
    assert ledger.find_spend("s1", 1, NONCE) == entry


def test_spend_conflict_raises(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    ledger = Ledger.open(tmp_path / "l.db", "cleveland", signing_key)
    ledger.record_spend("s1", 1, NONCE, dp(), "rdp", 1e-5, 0.5)
    with pytest.raises(SpendConflictError):
        ledger.record_spend("s1", 1, NONCE, dp(0.9), "rdp", 1e-5, 0.7)
    assert len(ledger.history()) == 1


@pytest.mark.parametrize(
    ("delta", "epsilon"),
    [(float("nan"), 0.1), (1e-5, float("inf")), (1e-5, -1.0), (0.0, 0.1)],
)
def test_spend_bad_value_raises(
    tmp_path: Path, signing_key: Ed25519PrivateKey, delta: float, epsilon: float
) -> None:
    ledger = Ledger.open(tmp_path / "l.db", "cleveland", signing_key)
    with pytest.raises(ValueError):
        ledger.record_spend("s1", 1, NONCE, dp(), "rdp", delta, epsilon)
    assert ledger.entries() == []


def test_append_spend_kind_raises(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    ledger = Ledger.open(tmp_path / "l.db", "cleveland", signing_key)
    with pytest.raises(ValueError):
        ledger.append("spend", {"study_id": "s1"})


def test_head_hash_chains(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    ledger = _filled(tmp_path / "l.db", signing_key, rounds=1)
    entries = ledger.entries()
    assert entries[1].prev_hash == entries[0].entry_hash
    assert ledger.head_hash == entries[1].entry_hash


def test_reopen_keeps_entries(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    _filled(tmp_path / "l.db", signing_key, rounds=3).close()
    with Ledger.open(tmp_path / "l.db", "cleveland", signing_key) as ledger:
        assert len(ledger.history("s1")) == 3


def test_other_party_open_raises(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    _filled(tmp_path / "l.db", signing_key, rounds=1).close()
    with pytest.raises(LedgerIntegrityError) as raised:
        Ledger.open(tmp_path / "l.db", "va", signing_key)
    assert raised.value.kind == "wrong_party"


def _verify_error(path: Path, key: Ed25519PrivateKey) -> LedgerIntegrityError:
    with pytest.raises(LedgerIntegrityError) as raised:
        Ledger.verify(path, key.public_key())
    return raised.value


def test_edited_entry_named(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "l.db"
    _filled(path, signing_key).close()
    connection = sqlite3.connect(path)
    body = json.loads(
        connection.execute("SELECT body FROM entries WHERE seq=3").fetchone()[0]
    )
    connection.close()
    body["payload"]["noise_multiplier"] = 50.0
    _execute(path, "UPDATE entries SET body=? WHERE seq=3", json.dumps(body))
    error = _verify_error(path, signing_key)
    assert error.kind == "edited"
    assert error.seq == 3


def test_deleted_entry_named(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "l.db"
    _filled(path, signing_key).close()
    _execute(path, "DELETE FROM entries WHERE seq=4")
    error = _verify_error(path, signing_key)
    assert error.kind == "deleted"
    assert error.seq == 4


def test_deleted_and_renumbered_named(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "l.db"
    _filled(path, signing_key).close()
    _execute(path, "DELETE FROM entries WHERE seq=2")
    _execute(path, "UPDATE entries SET seq = seq - 1 WHERE seq > 2")
    error = _verify_error(path, signing_key)
    assert error.kind == "deleted"
    assert error.seq == 2


def test_reordered_entries_named(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "l.db"
    _filled(path, signing_key).close()
    _execute(path, "UPDATE entries SET seq = 100 WHERE seq = 2")
    _execute(path, "UPDATE entries SET seq = 2 WHERE seq = 5")
    _execute(path, "UPDATE entries SET seq = 5 WHERE seq = 100")
    error = _verify_error(path, signing_key)
    assert error.kind == "reordered"
    assert error.seq == 5


def test_forged_signature_named(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "l.db"
    _filled(path, signing_key).close()
    forger = Ed25519PrivateKey.generate()
    connection = sqlite3.connect(path)
    entry_hash = connection.execute(
        "SELECT entry_hash FROM entries WHERE seq=2"
    ).fetchone()[0]
    connection.close()
    forged = forger.sign(bytes.fromhex(entry_hash))
    _execute(path, "UPDATE entries SET signature=? WHERE seq=2", forged)
    error = _verify_error(path, signing_key)
    assert error.kind == "forged_signature"
    assert error.seq == 2


def test_rewritten_entry_named_forged(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    # An attacker who edits a body and recomputes its hash cannot re-sign it.
    path = tmp_path / "l.db"
    _filled(path, signing_key).close()
    connection = sqlite3.connect(path)
    body = json.loads(
        connection.execute("SELECT body FROM entries WHERE seq=3").fetchone()[0]
    )
    connection.close()
    body["payload"]["epsilon_after"] = 0.0
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    new_hash = hashlib.sha256(text.encode()).hexdigest()
    _execute(
        path, "UPDATE entries SET body=?, entry_hash=? WHERE seq=3", text, new_hash
    )
    error = _verify_error(path, signing_key)
    assert error.kind == "forged_signature"
    assert error.seq == 3


def test_whole_ledger_resigned_by_other_key(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "l.db"
    _filled(path, Ed25519PrivateKey.generate()).close()
    error = _verify_error(path, signing_key)
    assert error.kind == "forged_signature"
    assert error.seq == 1


def test_truncation_needs_head_hash(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "l.db"
    ledger = _filled(path, signing_key)
    head = ledger.head_hash
    ledger.close()
    _execute(path, "DELETE FROM entries WHERE seq=6")
    with pytest.raises(LedgerIntegrityError) as raised:
        Ledger.verify(path, signing_key.public_key(), expected_head_hash=head)
    assert raised.value.kind == "truncated"


def test_spend_index_edit_named(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "l.db"
    _filled(path, signing_key).close()
    _execute(path, "UPDATE entries SET spend_key='x' WHERE seq=2")
    error = _verify_error(path, signing_key)
    assert error.kind == "edited"
    assert error.seq == 2


def test_tampered_ledger_open_raises(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "l.db"
    _filled(path, signing_key).close()
    _execute(path, "DELETE FROM entries WHERE seq=3")
    with pytest.raises(LedgerIntegrityError):
        Ledger.open(path, "cleveland", signing_key)


def test_missing_file_raises(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    with pytest.raises(LedgerError, match="not found"):
        Ledger.verify(tmp_path / "absent.db", signing_key.public_key())


def test_canonical_json_known_answer() -> None:
    encoded = canonical_json({"b": 1.5, "a": [1, "é"], "c": None})
    assert encoded == '{"a":[1,"é"],"b":1.5,"c":null}'.encode()
    assert hashlib.sha256(encoded).hexdigest() == (
        "7941f1d4ef1ab5a25d9c8555180bc78dafef14fd1e67e904c28977bbfb736681"
    )


def test_canonical_json_nan_raises() -> None:
    with pytest.raises(ValueError):
        canonical_json({"epsilon": float("nan")})


def test_entry_hash_is_body_sha256(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    ledger = _filled(tmp_path / "l.db", signing_key, rounds=1)
    connection = sqlite3.connect(tmp_path / "l.db")
    body, stored_hash = connection.execute(
        "SELECT body, entry_hash FROM entries WHERE seq = 2"
    ).fetchone()
    connection.close()
    assert hashlib.sha256(body.encode()).hexdigest() == stored_hash
    assert ledger.entries()[1].entry_hash == stored_hash


TAMPERINGS = ["edit", "delete", "swap", "resign"]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    tampering=st.sampled_from(TAMPERINGS),
    target=st.integers(min_value=1, max_value=5),
)
def test_any_single_tampering_detected(
    tmp_path_factory: pytest.TempPathFactory, tampering: str, target: int
) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path_factory.mktemp("ledger") / "l.db"
    _filled(path, key).close()
    if tampering == "edit":
        _execute(
            path,
            "UPDATE entries SET body = replace(body, '\"steps\":3', '\"steps\":1') "
            "WHERE seq = ?",
            target + 1,
        )
    elif tampering == "delete":
        _execute(path, "DELETE FROM entries WHERE seq = ?", target)
    elif tampering == "swap":
        _execute(path, "UPDATE entries SET seq = 100 WHERE seq = ?", target)
        _execute(path, "UPDATE entries SET seq = ? WHERE seq = 6", target)
        _execute(path, "UPDATE entries SET seq = 6 WHERE seq = 100")
    else:
        forged = Ed25519PrivateKey.generate().sign(b"\x00" * 32)
        _execute(path, "UPDATE entries SET signature = ? WHERE seq = ?", forged, target)
    with pytest.raises(LedgerIntegrityError):
        Ledger.verify(path, key.public_key())
