"""Offline audit of a study's privacy spending, from copies of the ledgers.

An auditor has the hub's ledger, the roster of enrolled public keys and,
optionally, each hospital's own ledger and the study policy. :func:`run_audit`
trusts none of the parties that wrote those ledgers. It verifies every
signature with the roster's public keys and replays every epsilon with
:func:`policies.accounting.compute_epsilon`. It never stops at the first
fault: each check is recorded with its outcome and the ledger entry it
concerns, so one report lists every problem.

A ledger whose chain fails verification is still read row by row, and the
content checks run on its bodies as stored. Those checks then describe
unauthenticated entries. The chain check fails in that case, so the verdict
fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from policies.accounting import compute_epsilon, merge_history
from policies.ledger import SPEND, Ledger, LedgerError, LedgerIntegrityError
from policies.models import (
    DPParameters,
    EpsilonBudget,
    PolicyError,
    StudyPolicy,
    load_study_policy,
)
from policies.receipts import (
    DEFAULT_EPSILON_RELATIVE_TOLERANCE,
    Receipt,
    ReceiptSignatureError,
    verify_receipt,
)
from policies.roster import Roster, RosterError, load_roster

logger = logging.getLogger(__name__)

HUB = "hub"
"""Party id of the hub's ledger entries."""

EPSILON_RELATIVE_TOLERANCE = DEFAULT_EPSILON_RELATIVE_TOLERANCE
"""Largest relative gap between a stored and a replayed epsilon (1e-9). Every
party replays the same history with the same code, so only rounding differs."""

DP_FIELDS = tuple(DPParameters.model_fields)


class AuditInputError(ValueError):
    """An input file is missing, unreadable or does not describe one study."""


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check on one ledger entry (or one ledger or hospital)."""

    check: str
    """Name of the check, for example ``"spend_epsilon_replay"``."""
    passed: bool
    ledger: str
    """``"hub"``, or the hospital id whose own ledger the check concerns."""
    seq: int | None
    """Sequence number of the entry in ``ledger``, or None for a whole ledger."""
    detail: str
    hospital_id: str | None = None
    round: int | None = None

    def to_document(self) -> dict[str, Any]:
        """Return a JSON-ready mapping of this result."""
        return {
            "check": self.check,
            "passed": self.passed,
            "ledger": self.ledger,
            "seq": self.seq,
            "hospital_id": self.hospital_id,
            "round": self.round,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class HospitalAudit:
    """One hospital's audited epsilon after every round and its budget."""

    hospital_id: str
    budget: float
    """Epsilon budget of the hospital in this study, at the study's delta."""
    epsilon_by_round: list[float]
    """Epsilon after rounds 1..n, replayed from the hub's ledger. A round the
    hub instructed without a recorded spend or rejection counts as spent."""
    receipt_epsilon_by_round: list[float | None]
    """``epsilon_after`` of the hospital's signed receipt; None without one."""
    hospital_epsilon_by_round: list[float | None] | None
    """Epsilon replayed from the hospital's own ledger after each round; None
    when that ledger was not given, None in a round it recorded no spend in."""
    rounds_joined: int

    @property
    def epsilon_spent(self) -> float:
        """Epsilon after the last round, 0.0 before any round."""
        return self.epsilon_by_round[-1] if self.epsilon_by_round else 0.0


def _json_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return str(value)


@dataclass(frozen=True)
class AuditReport:
    """Every check and the audited budget of each hospital in one study."""

    study_id: str
    accountant: str
    delta: float
    rounds: int
    """Highest round number the hub instructed."""
    budget_source: str
    inputs: dict[str, dict[str, str]]
    """Each input's path and SHA-256, so the report names what was audited."""
    hospitals: list[HospitalAudit]
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        """The checks that failed, in the order they ran."""
        return [check for check in self.checks if not check.passed]

    def to_document(self) -> dict[str, Any]:
        """Return the machine-readable report (the content of ``audit.json``).

        An infinite epsilon, which a tampered spend can produce, is written as
        the string ``"inf"`` because JSON has no number for it.
        """
        return {
            "verdict": "pass" if self.passed else "fail",
            "study_id": self.study_id,
            "accountant": self.accountant,
            "delta": self.delta,
            "rounds": self.rounds,
            "budget_source": self.budget_source,
            "inputs": self.inputs,
            "hospitals": [
                {
                    "hospital_id": h.hospital_id,
                    "budget": h.budget,
                    "epsilon_spent": _json_number(h.epsilon_spent),
                    "within_budget": h.epsilon_spent <= h.budget,
                    "rounds_joined": h.rounds_joined,
                    "epsilon_by_round": [_json_number(e) for e in h.epsilon_by_round],
                    "receipt_epsilon_by_round": [
                        _json_number(e) for e in h.receipt_epsilon_by_round
                    ],
                    "hospital_epsilon_by_round": None
                    if h.hospital_epsilon_by_round is None
                    else [_json_number(e) for e in h.hospital_epsilon_by_round],
                }
                for h in self.hospitals
            ],
            "checks_passed": sum(1 for c in self.checks if c.passed),
            "checks_failed": len(self.failures),
            "failures": [c.to_document() for c in self.failures],
            "checks": [c.to_document() for c in self.checks],
        }


@dataclass(frozen=True)
class StoredEntry:
    """One ledger row parsed as stored, authenticated or not."""

    seq: int
    kind: str
    payload: Mapping[str, Any]
    entry_hash: str


@dataclass(frozen=True)
class Where:
    """The ledger entry, hospital and round that a check concerns."""

    ledger: str = HUB
    seq: int | None = None
    hospital_id: str | None = None
    round: int | None = None


@dataclass
class _Audit:
    """Mutable state of one audit run, created by :func:`run_audit`."""

    study_id: str
    accountant: str
    delta: float
    dp: DPParameters | None
    roster: Roster
    checks: list[CheckResult] = field(default_factory=list)
    _epsilon_cache: dict[tuple[Any, ...], float] = field(default_factory=dict)

    def epsilon(
        self,
        history: Sequence[DPParameters],
        delta: float | None = None,
        accountant: str | None = None,
    ) -> float:
        """Compute epsilon of a history, by default at the study's delta.

        Hospitals with the same history share one accountant run, because each
        run takes tens of milliseconds.

        Raises:
            PolicyError: ``delta`` or ``accountant`` is invalid, or the
                accountant failed.

        """
        delta = self.delta if delta is None else delta
        accountant = self.accountant if accountant is None else accountant
        key = (tuple(merge_history(history)), delta, accountant)
        if key not in self._epsilon_cache:
            self._epsilon_cache[key] = compute_epsilon(history, delta, accountant)
        return self._epsilon_cache[key]

    def record(self, check: str, passed: bool, detail: str, where: Where) -> None:
        """Append the outcome of one check and log it when it failed."""
        result = CheckResult(
            check,
            passed,
            where.ledger,
            where.seq,
            detail,
            where.hospital_id,
            where.round,
        )
        self.checks.append(result)
        if not passed:
            # The report lists every failure; the log keeps a trace at INFO
            # level, so the command does not print each failure twice.
            logger.info(
                "audit check %s failed on %s entry %s: %s",
                check,
                where.ledger,
                where.seq,
                detail,
            )


# Inputs --------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe_input(path: Path) -> dict[str, str]:
    """Return the path and SHA-256 of an input and of its SQLite -wal file.

    Raises:
        AuditInputError: the file cannot be read.

    """
    try:
        description = {"path": str(path), "sha256": _sha256_file(path)}
        wal = path.with_name(path.name + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            description["wal_sha256"] = _sha256_file(wal)
    except OSError as error:
        raise AuditInputError(
            f"cannot read {path} to record its SHA-256: {error.strerror}; check "
            "that the file is readable"
        ) from None
    return description


def read_stored_entries(path: Path) -> list[StoredEntry]:
    """Read every row of a ledger file as stored, without verifying it.

    Rows whose body is not a JSON entry are left out; the chain check of
    :meth:`Ledger.verify` reports them.

    Raises:
        AuditInputError: the file is missing or is not a ledger database.

    """
    if not path.is_file():
        raise AuditInputError(
            f"ledger file {path} not found; copy the party's state/ledger.sqlite "
            "(with its -wal file, if one exists) and pass that path"
        )
    uri = f"file:{path.resolve()}?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True)
        try:
            rows = connection.execute(
                "SELECT seq, body, entry_hash FROM entries ORDER BY seq"
            ).fetchall()
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise AuditInputError(
            f"{path} is not a readable ledger ({error}); pass the SQLite file "
            "named ledger.sqlite from the party's state folder"
        ) from None
    entries = []
    for seq, body, entry_hash in rows:
        try:
            fields = json.loads(body)
        except (TypeError, json.JSONDecodeError):
            continue
        if not isinstance(fields, dict) or not isinstance(fields.get("payload"), dict):
            continue
        entries.append(
            StoredEntry(
                int(seq), str(fields.get("kind")), fields["payload"], str(entry_hash)
            )
        )
    return entries


def parse_hospital_ledger_option(values: Sequence[str]) -> dict[str, Path]:
    """Parse ``ID=PATH`` strings into a mapping of hospital id to ledger path.

    Raises:
        AuditInputError: a value has no ``=``, an empty side, or repeats an id.

    """
    ledgers: dict[str, Path] = {}
    for value in values:
        hospital_id, separator, path = value.partition("=")
        if not separator or not hospital_id or not path:
            raise AuditInputError(
                f"--hospital-ledger expects ID=PATH, received {value!r}; for "
                "example --hospital-ledger cleveland=cleveland-ledger.sqlite"
            )
        if hospital_id in ledgers:
            raise AuditInputError(
                f"--hospital-ledger names hospital {hospital_id!r} twice; give "
                "each hospital's ledger once"
            )
        ledgers[hospital_id] = Path(path)
    return ledgers


def _study_ids(entries: Sequence[StoredEntry]) -> list[str]:
    return sorted(
        {str(e.payload.get("study_id")) for e in entries if e.kind == "study_started"}
    )


@dataclass(frozen=True)
class _Study:
    """The audited study's parameters and the entry that recorded them."""

    study_id: str
    accountant: str
    delta: float
    dp: DPParameters | None
    started: StoredEntry | None
    """The study_started entry; None when the ledger has none for the study."""


def _valid_start(entry: StoredEntry) -> bool:
    accountant = entry.payload.get("accountant")
    delta = entry.payload.get("delta")
    return (
        accountant in ("rdp", "prv")
        and isinstance(delta, float)
        and 0 < delta < 1
        and _dp_of(entry.payload.get("dp")) is not None
    )


def _select_study(
    entries: Sequence[StoredEntry],
    study_id: str | None,
    policy: StudyPolicy | None,
    path: Path,
) -> _Study:
    """Return the audited study's id, accountant, delta and DP parameters.

    They come from the hub ledger's study_started entry. When that entry is
    missing or invalid, they come from the policy file, and the check
    ``study_started_valid`` fails. Without a policy file that is an input error.
    """
    studies = _study_ids(entries)
    if policy is not None:
        if study_id is not None and study_id != policy.study_id:
            raise AuditInputError(
                f"--study {study_id!r} differs from the study_id "
                f"{policy.study_id!r} of the policy file; pass the policy of the "
                "audited study or leave out --study"
            )
        study_id = policy.study_id
    if study_id is None:
        if len(studies) != 1:
            raise AuditInputError(
                f"hub ledger {path} records {len(studies)} studies "
                f"({', '.join(studies)}); pass --study with one of them"
                if studies
                else f"hub ledger {path} records no study_started entry; pass the "
                "hub's state/ledger.sqlite of a study that has started, or --policy"
            )
        study_id = studies[0]
    started = next(
        (
            e
            for e in entries
            if e.kind == "study_started" and e.payload.get("study_id") == study_id
        ),
        None,
    )
    if started is not None and _valid_start(started):
        return _Study(
            study_id=study_id,
            accountant=str(started.payload["accountant"]),
            delta=float(started.payload["delta"]),
            dp=_dp_of(started.payload.get("dp")),
            started=started,
        )
    if policy is None:
        raise AuditInputError(
            f"hub ledger {path} records no study {study_id!r}; its studies are "
            f"{studies}"
            if started is None
            else f"the study_started entry {started.seq} of {path} has no valid "
            "accountant, delta and DP parameters; pass --policy with the study "
            "policy file to audit the ledger against it"
        )
    return _Study(
        study_id=study_id,
        accountant=policy.accountant,
        delta=policy.delta,
        dp=policy.dp_parameters(),
        started=started,
    )


def _budget_from_inputs(
    started: StoredEntry | None, policy: StudyPolicy | None
) -> tuple[EpsilonBudget, str]:
    if policy is not None:
        return policy.epsilon_budget, "study policy file"
    # Without a policy, _select_study returns only a valid study_started entry.
    assert started is not None
    stored = started.payload.get("epsilon_budget")
    if stored is not None:
        try:
            return EpsilonBudget.model_validate(stored), "hub ledger study_started"
        except ValidationError as error:
            raise AuditInputError(
                f"the study_started entry {started.seq} contains an invalid "
                f"epsilon_budget ({error.error_count()} errors); pass --policy "
                "with the study policy file"
            ) from None
    raise AuditInputError(
        f"the hub ledger's study_started entry {started.seq} records no epsilon "
        "budget; pass --policy with the study policy file (study.yaml)"
    )


# A ledger that fails verification is still read, so every field of a stored
# payload may have any JSON type. These helpers return a neutral value for a
# field of the wrong type, so the checks fail on it instead of raising.


def _int_field(payload: Mapping[str, Any], key: str) -> int:
    value = payload.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _names_field(payload: Mapping[str, Any], key: str) -> list[str]:
    value = payload.get(key)
    return [str(item) for item in value] if isinstance(value, list | dict) else []


def _mapping_field(payload: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = payload.get(key)
    return value if isinstance(value, dict) else {}


def _dp_of(payload: Any) -> DPParameters | None:
    if not isinstance(payload, Mapping):
        return None
    try:
        return DPParameters.model_validate({k: payload.get(k) for k in DP_FIELDS})
    except ValidationError:
        return None


def _epsilon_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=EPSILON_RELATIVE_TOLERANCE, abs_tol=1e-12)


# Hub ledger checks --------------------


def _verify_chain(
    audit: _Audit,
    path: Path,
    key: Ed25519PublicKey,
    party_id: str,
    check: str,
    expected_head_hash: str | None = None,
) -> bool:
    ledger = HUB if party_id == HUB else party_id
    try:
        report = Ledger.verify(
            path, key, party_id=party_id, expected_head_hash=expected_head_hash
        )
    except LedgerIntegrityError as error:
        audit.record(check, False, str(error), Where(ledger, error.seq))
        return False
    except LedgerError as error:
        audit.record(check, False, str(error), Where(ledger))
        return False
    detail = (
        f"{report.entries} entries, {report.spends} spends, chain and signatures "
        f"verified with the enrolled key of {party_id}; head {report.head_hash}"
    )
    if report.entries == 0:
        detail += (
            ". The ledger is empty: a copy of ledger.sqlite made without its "
            "ledger.sqlite-wal file can look like this"
        )
    audit.record(
        check,
        True,
        detail,
        Where(ledger),
    )
    return True


def _check_study_start(
    audit: _Audit, started: StoredEntry | None, policy: StudyPolicy | None
) -> None:
    if started is None:
        audit.record(
            "study_started_valid",
            False,
            f"the hub ledger has no study_started entry for study {audit.study_id}, "
            "so the study's parameters come from the policy file",
            Where(),
        )
        return
    valid = _valid_start(started)
    audit.record(
        "study_started_valid",
        valid,
        "the entry records the study's accountant, delta and DP parameters"
        if valid
        else "the entry has no valid accountant, delta and DP parameters, so the "
        "study's parameters come from the policy file",
        Where(seq=started.seq),
    )
    recorded = started.payload.get("roster_fingerprint")
    audit.record(
        "roster_matches_study",
        recorded == audit.roster.fingerprint,
        f"the study ran with roster {recorded}, the given roster is "
        f"{audit.roster.fingerprint}",
        Where(seq=started.seq),
    )
    if policy is None:
        return
    dp = _dp_of(started.payload.get("dp"))
    expected = {
        "study_id": policy.study_id,
        "accountant": policy.accountant,
        "delta": policy.delta,
        "dp": policy.dp_parameters(),
    }
    recorded_values = {
        "study_id": started.payload.get("study_id"),
        "accountant": started.payload.get("accountant"),
        "delta": started.payload.get("delta"),
        "dp": dp,
    }
    differing = [name for name in expected if expected[name] != recorded_values[name]]
    audit.record(
        "policy_matches_study",
        not differing,
        "the study policy file and the study_started entry agree on study_id, "
        "accountant, delta and DP parameters"
        if not differing
        else "the study policy file differs from the study_started entry in "
        + ", ".join(
            f"{name} (policy {expected[name]!r}, ledger {recorded_values[name]!r})"
            for name in differing
        ),
        Where(seq=started.seq),
    )


def _hub_histories(
    entries: Sequence[StoredEntry], study_id: str
) -> dict[str, list[DPParameters]]:
    """Replay each hospital's history as the hub computes it before a round.

    Mirrors the hub's rule: every spend counts, and so does every instructed
    round that has neither completed nor a spend or rejection of the hospital.
    """
    histories: dict[str, list[DPParameters]] = {}
    instructed: dict[int, Mapping[str, Any]] = {}
    completed: set[int] = set()
    settled: set[tuple[int, str]] = set()
    for entry in entries:
        payload = entry.payload
        if payload.get("study_id") != study_id:
            continue
        if entry.kind == SPEND:
            dp = _dp_of(payload)
            if dp is not None:
                histories.setdefault(str(payload.get("hospital_id")), []).append(dp)
            settled.add((_int_field(payload, "round"), str(payload.get("hospital_id"))))
        elif entry.kind == "rejection":
            settled.add((_int_field(payload, "round"), str(payload.get("hospital_id"))))
        elif entry.kind == "round_instructed":
            instructed[_int_field(payload, "round")] = payload
        elif entry.kind == "round_completed":
            completed.add(_int_field(payload, "round"))
    for round_number, payload in instructed.items():
        if round_number in completed:
            continue
        dp = _dp_of(payload.get("dp"))
        if dp is None:
            continue
        for hospital_id in _names_field(payload, "hospitals"):
            if (round_number, hospital_id) not in settled:
                histories.setdefault(str(hospital_id), []).append(dp)
    return histories


def _check_spends(audit: _Audit, entries: Sequence[StoredEntry]) -> None:
    """Check each hub spend against its instruction and replay its epsilon."""
    instruction_index: int | None = None
    instruction: Mapping[str, Any] | None = None
    histories: dict[str, list[DPParameters]] = {}
    for index, entry in enumerate(entries):
        payload = entry.payload
        if payload.get("study_id") != audit.study_id:
            continue
        if entry.kind == "round_instructed":
            instruction_index, instruction = index, payload
            histories = _hub_histories(entries[:index], audit.study_id)
            continue
        if entry.kind != SPEND:
            continue
        hospital_id = str(payload.get("hospital_id"))
        round_number = payload.get("round")
        where = Where(
            HUB,
            entry.seq,
            hospital_id,
            round_number if isinstance(round_number, int) else None,
        )
        dp = _dp_of(payload)
        problems = []
        if dp is None:
            problems.append("its DP parameters are missing or invalid")
        elif audit.dp is not None and dp != audit.dp:
            problems.append(
                f"its DP parameters {dp} differ from the study's {audit.dp}"
            )
        if payload.get("accountant") != audit.accountant:
            problems.append(
                f"accountant {payload.get('accountant')!r} is not the study's "
                f"{audit.accountant!r}"
            )
        if payload.get("delta") != audit.delta:
            problems.append(
                f"delta {payload.get('delta')!r} is not the study's {audit.delta!r}"
            )
        if instruction is None or instruction.get("round") != round_number:
            problems.append(
                f"no round_instructed entry for round {round_number} precedes it"
            )
        elif _mapping_field(instruction, "nonces").get(hospital_id) != payload.get(
            "nonce"
        ):
            problems.append(
                f"its nonce is not the nonce the hub instructed {hospital_id} with "
                f"in entry {entries[instruction_index or 0].seq}"
            )
        audit.record(
            "spend_matches_instruction",
            not problems,
            "; ".join(problems)
            or "study, round, nonce, DP parameters, accountant and delta match the "
            "study and the round's instruction",
            where,
        )
        if dp is None:
            continue
        try:
            expected = audit.epsilon([*histories.get(hospital_id, []), dp])
        except PolicyError as error:
            audit.record("spend_epsilon_replay", False, str(error), where)
            continue
        stored = payload.get("epsilon_after")
        matches = isinstance(stored, int | float) and _epsilon_equal(
            float(stored), expected
        )
        audit.record(
            "spend_epsilon_replay",
            matches,
            f"stored epsilon_after {stored!r}, replayed {expected!r}",
            where,
        )


def _hub_spends(
    entries: Sequence[StoredEntry], study_id: str
) -> dict[tuple[int, str, str], StoredEntry]:
    """Return the study's spends keyed by (round, nonce, hospital)."""
    return {
        (
            _int_field(e.payload, "round"),
            str(e.payload.get("nonce")),
            str(e.payload.get("hospital_id")),
        ): e
        for e in entries
        if e.kind == SPEND and e.payload.get("study_id") == study_id
    }


def _parse_receipt(entry: StoredEntry) -> Receipt | None:
    try:
        return Receipt.model_validate(entry.payload.get("receipt"))
    except ValidationError:
        return None


def _check_receipts(
    audit: _Audit, entries: Sequence[StoredEntry]
) -> dict[tuple[int, str], tuple[StoredEntry, Receipt]]:
    """Verify each stored receipt and compare it with the hub's spend.

    Returns the valid receipts keyed by (round, hospital).
    """
    spends = _hub_spends(entries, audit.study_id)
    receipted: dict[str, list[tuple[int, DPParameters]]] = {}
    valid: dict[tuple[int, str], tuple[StoredEntry, Receipt]] = {}
    for entry in entries:
        if entry.kind != "receipt" or entry.payload.get("study_id") != audit.study_id:
            continue
        hospital_id = str(entry.payload.get("hospital_id"))
        round_value = entry.payload.get("round")
        where = Where(
            HUB,
            entry.seq,
            hospital_id,
            round_value if isinstance(round_value, int) else None,
        )
        receipt = _parse_receipt(entry)
        if receipt is None:
            audit.record(
                "receipt_signature",
                False,
                "the stored receipt is missing or malformed",
                where,
            )
            continue
        problem = _receipt_signature_problem(audit, entry, receipt, hospital_id)
        audit.record(
            "receipt_signature",
            not problem,
            problem or f"signed by the enrolled key of {hospital_id}",
            where,
        )
        if problem:
            continue
        valid[(receipt.round, hospital_id)] = (entry, receipt)
        lower_history = [
            dp
            for round_number, dp in receipted.get(hospital_id, [])
            if round_number < receipt.round
        ]
        receipted.setdefault(hospital_id, []).append((receipt.round, receipt.dp))
        spend = spends.get((receipt.round, receipt.nonce, hospital_id))
        problems = _receipt_spend_problems(audit, receipt, spend, lower_history)
        audit.record(
            "receipt_matches_spend",
            not problems,
            "; ".join(problems)
            or f"matches the hub's spend entry {spend.seq if spend else '?'}",
            where,
        )
    return valid


def _receipt_signature_problem(
    audit: _Audit, entry: StoredEntry, receipt: Receipt, hospital_id: str
) -> str:
    if receipt.hospital_id != hospital_id:
        return (
            f"the entry is filed under {hospital_id} but the receipt names "
            f"{receipt.hospital_id}"
        )
    if receipt.study_id != audit.study_id or receipt.round != entry.payload.get(
        "round"
    ):
        return "the receipt's study or round differs from the entry that stores it"
    try:
        verify_receipt(receipt, audit.roster.hospital_key(hospital_id))
    except RosterError as error:
        return str(error)
    except ReceiptSignatureError as error:
        return str(error)
    return ""


def _receipt_spend_problems(
    audit: _Audit,
    receipt: Receipt,
    spend: StoredEntry | None,
    lower_history: list[DPParameters],
) -> list[str]:
    if spend is None:
        return [
            f"the hub ledger records no spend of {receipt.hospital_id} for round "
            f"{receipt.round} with the receipt's nonce"
        ]

    problems = []
    if _dp_of(spend.payload) != receipt.dp:
        problems.append(f"DP parameters differ from spend entry {spend.seq}")
    if receipt.accountant != audit.accountant or receipt.delta != audit.delta:
        problems.append(
            f"accountant {receipt.accountant!r} and delta {receipt.delta!r} are not "
            f"the study's {audit.accountant!r} and {audit.delta!r}"
        )

    stored = spend.payload.get("epsilon_after")
    if not isinstance(stored, int | float):
        problems.append(f"spend entry {spend.seq} has no numeric epsilon_after")
        return problems

    # The hub's epsilon is an upper bound because it counts unanswered rounds
    # as spent. The rounds the hospital signed receipts for give a lower bound.
    try:
        lowest = audit.epsilon([*lower_history, receipt.dp])
    except PolicyError as error:
        problems.append(str(error))
        return problems

    epsilon = receipt.epsilon_after
    upper_ok = epsilon <= float(stored) or _epsilon_equal(epsilon, float(stored))
    lower_ok = epsilon >= lowest or _epsilon_equal(epsilon, lowest)
    if not (upper_ok and lower_ok):
        problems.append(
            f"receipt epsilon_after {epsilon!r} is outside [{lowest!r}, {stored!r}], "
            "the epsilon of the receipted rounds and the hub's spend entry "
            f"{spend.seq}"
        )
    return problems


def _check_completed_rounds(
    audit: _Audit,
    entries: Sequence[StoredEntry],
    receipts: Mapping[tuple[int, str], tuple[StoredEntry, Receipt]],
) -> None:
    """Check that every hospital a round aggregated has a valid receipt."""
    for entry in entries:
        if (
            entry.kind != "round_completed"
            or entry.payload.get("study_id") != audit.study_id
        ):
            continue
        round_number = _int_field(entry.payload, "round")
        trained = _names_field(entry.payload, "trained")
        missing = [h for h in trained if (round_number, h) not in receipts]
        audit.record(
            "round_trained_have_receipts",
            not missing,
            f"hospitals aggregated without a valid receipt: {missing}"
            if missing
            else f"all {len(trained)} aggregated hospitals have a valid receipt",
            Where(seq=entry.seq, round=round_number),
        )


# Epsilon per round and budgets --------------------


def _audited_epsilon_by_round(
    entries: Sequence[StoredEntry], audit: _Audit, hospital_id: str, rounds: int
) -> tuple[list[float], list[tuple[int, int]]]:
    """Replay the hospital's epsilon after each round, counting unsettled rounds.

    Returns the epsilon after rounds 1..``rounds`` and, per round joined, the
    (round, seq) of the entry that spent it.
    """
    spent: list[tuple[int, DPParameters, int]] = []
    settled: set[tuple[int, str]] = set()
    for entry in entries:
        payload = entry.payload
        if payload.get("study_id") != audit.study_id:
            continue
        round_number = _int_field(payload, "round")
        if entry.kind == SPEND and payload.get("hospital_id") == hospital_id:
            dp = _dp_of(payload)
            if dp is not None:
                spent.append((round_number, dp, entry.seq))
            settled.add((round_number, str(payload.get("nonce"))))
        elif entry.kind == "rejection" and payload.get("hospital_id") == hospital_id:
            settled.add((round_number, "*"))
    for entry in entries:
        payload = entry.payload
        if (
            entry.kind != "round_instructed"
            or payload.get("study_id") != audit.study_id
            or hospital_id not in _names_field(payload, "hospitals")
        ):
            continue
        round_number = _int_field(payload, "round")
        nonce = str(_mapping_field(payload, "nonces").get(hospital_id))
        if (round_number, nonce) in settled or (round_number, "*") in settled:
            continue
        dp = _dp_of(payload.get("dp"))
        if dp is not None:
            spent.append((round_number, dp, entry.seq))
    by_round = []
    for round_number in range(1, rounds + 1):
        history = [dp for r, dp, _ in spent if r <= round_number]
        try:
            epsilon = audit.epsilon(history)
        except PolicyError as error:
            # Counted as over any budget, so within_budget fails on this round.
            logger.warning(
                "epsilon of %s after round %d: %s", hospital_id, round_number, error
            )
            epsilon = math.inf
        by_round.append(epsilon)
    joined = sorted({(r, seq) for r, _, seq in spent})
    return by_round, joined


def _check_budget(
    audit: _Audit,
    hospital_id: str,
    budget: float,
    epsilon_by_round: Sequence[float | None],
    ledger: str,
    spend_seq_by_round: Mapping[int, int],
) -> None:
    for index, epsilon in enumerate(epsilon_by_round):
        if epsilon is not None and not epsilon <= budget:
            round_number = index + 1
            audit.record(
                "within_budget",
                False,
                f"epsilon {epsilon!r} after round {round_number} exceeds the budget "
                f"{budget!r}",
                Where(
                    ledger,
                    spend_seq_by_round.get(round_number),
                    hospital_id,
                    round_number,
                ),
            )
            return
    spent = max((e for e in epsilon_by_round if e is not None), default=0.0)
    audit.record(
        "within_budget",
        True,
        f"epsilon {spent!r} at most the budget {budget!r}",
        Where(ledger, hospital_id=hospital_id),
    )


# Hospital ledgers --------------------


def _check_hospital_ledger(
    audit: _Audit,
    hospital_id: str,
    path: Path,
    hub_entries: Sequence[StoredEntry],
    receipts: Mapping[tuple[int, str], tuple[StoredEntry, Receipt]],
    rounds: int,
) -> list[float | None]:
    """Verify one hospital's ledger and cross-check it with the hub's record.

    Returns the hospital's own epsilon after each round, replayed from its ledger.
    """
    key = audit.roster.hospital_key(hospital_id)
    _verify_chain(audit, path, key, hospital_id, "hospital_ledger_signatures")
    entries = read_stored_entries(path)
    hashes = {e.entry_hash: e.seq for e in entries}
    own_spends = {
        (_int_field(e.payload, "round"), str(e.payload.get("nonce"))): e
        for e in entries
        if e.kind == SPEND and e.payload.get("study_id") == audit.study_id
    }

    for (round_number, receipt_hospital), (entry, receipt) in sorted(
        receipts.items(), key=lambda item: item[1][0].seq
    ):
        if receipt_hospital != hospital_id:
            continue
        where = Where(HUB, entry.seq, hospital_id, round_number)
        own = own_spends.get((round_number, receipt.nonce))
        problems = _own_spend_problems(receipt, own)
        audit.record(
            "hospital_ledger_has_spend",
            not problems,
            "; ".join(problems)
            or f"the hospital's ledger entry {own.seq if own else '?'} records this "
            "spend with the same round, nonce and DP parameters",
            where,
        )
        head_seq = hashes.get(receipt.ledger_head_hash)
        audit.record(
            "receipt_head_in_hospital_ledger",
            head_seq is not None,
            f"the receipt's ledger_head_hash is the hash of the hospital's entry "
            f"{head_seq}"
            if head_seq is not None
            else "the receipt's ledger_head_hash is not the hash of any entry in the "
            "hospital's ledger, so entries were removed or the ledger replaced",
            where,
        )

    hub_keys = {
        (round_number, nonce)
        for (round_number, nonce, spender) in _hub_spends(hub_entries, audit.study_id)
        if spender == hospital_id
    }
    own_by_round: dict[int, float] = {}
    history: list[DPParameters] = []
    for (round_number, nonce), entry in sorted(
        own_spends.items(), key=lambda item: item[1].seq
    ):
        where = Where(hospital_id, entry.seq, hospital_id, round_number)
        audit.record(
            "hub_ledger_has_hospital_spend",
            (round_number, nonce) in hub_keys,
            "the hub ledger records this spend"
            if (round_number, nonce) in hub_keys
            else "the hub ledger has no spend for this round and nonce, so the "
            "hub's epsilon of this hospital is too low",
            where,
        )
        dp = _dp_of(entry.payload)
        if dp is None:
            audit.record(
                "hospital_spend_epsilon_replay",
                False,
                "its DP parameters are missing or invalid",
                where,
            )
            continue
        history.append(dp)
        replayed = _replay_own_spend(audit, entry, history, where)
        if replayed is not None:
            own_by_round[round_number] = replayed
    return [own_by_round.get(r) for r in range(1, rounds + 1)]


def _own_spend_problems(receipt: Receipt, own: StoredEntry | None) -> list[str]:
    if own is None:
        return [
            f"the hospital's ledger records no spend for round {receipt.round} with "
            "the receipt's nonce, though the hub recorded this receipt"
        ]
    problems = []
    if _dp_of(own.payload) != receipt.dp:
        problems.append(f"DP parameters differ from the hospital's entry {own.seq}")
    if (
        own.payload.get("accountant") != receipt.accountant
        or own.payload.get("delta") != receipt.delta
    ):
        problems.append(
            f"accountant or delta differ from the hospital's entry {own.seq}"
        )
    stored = own.payload.get("epsilon_after")
    if not isinstance(stored, int | float) or not _epsilon_equal(
        float(stored), receipt.epsilon_after
    ):
        problems.append(
            f"the hospital's entry {own.seq} stores epsilon_after {stored!r}, the "
            f"receipt {receipt.epsilon_after!r}"
        )
    return problems


def _replay_own_spend(
    audit: _Audit,
    entry: StoredEntry,
    history: list[DPParameters],
    where: Where,
) -> float | None:
    """Replay one spend of the hospital's own ledger; None when it cannot."""
    accountant = str(entry.payload.get("accountant"))
    delta = entry.payload.get("delta")
    if not isinstance(delta, int | float):
        audit.record(
            "hospital_spend_epsilon_replay", False, f"delta {delta!r} is invalid", where
        )
        return None
    try:
        expected = audit.epsilon(history, float(delta), accountant)
    except PolicyError as error:
        audit.record("hospital_spend_epsilon_replay", False, str(error), where)
        return None
    stored = entry.payload.get("epsilon_after")
    audit.record(
        "hospital_spend_epsilon_replay",
        isinstance(stored, int | float) and _epsilon_equal(float(stored), expected),
        f"stored epsilon_after {stored!r}, replayed {expected!r}",
        where,
    )
    return expected


# Entry point --------------------


def _load_inputs(
    hub_ledger: Path,
    roster_path: Path,
    hospital_ledgers: Mapping[str, Path],
    study_policy: Path | None,
) -> tuple[Roster, StudyPolicy | None, list[StoredEntry]]:
    try:
        roster = load_roster(roster_path)
    except RosterError as error:
        raise AuditInputError(f"roster {roster_path} is invalid: {error}") from None
    policy = None
    if study_policy is not None:
        try:
            policy = load_study_policy(study_policy)
        except PolicyError as error:
            raise AuditInputError(
                f"study policy {study_policy} is invalid: {error}"
            ) from None
    for hospital_id, path in hospital_ledgers.items():
        if hospital_id not in roster.hospitals:
            raise AuditInputError(
                f"--hospital-ledger names {hospital_id!r}, which roster "
                f"{roster_path} does not enroll; its hospitals are "
                f"{sorted(roster.hospitals)}"
            )
        read_stored_entries(path)
    return roster, policy, read_stored_entries(hub_ledger)


def run_audit(
    hub_ledger: Path,
    roster: Path,
    *,
    hospital_ledgers: Mapping[str, Path] | None = None,
    study_policy: Path | None = None,
    study_id: str | None = None,
) -> AuditReport:
    """Audit one study's privacy spending from copies of its ledgers.

    Args:
        hub_ledger: copy of the hub's ``state/ledger.sqlite``; opened read-only.
        roster: the federation's roster (``roster.yaml``) with the public keys
            of the hub and every hospital.
        hospital_ledgers: hospital id to a copy of that hospital's
            ``state/ledger.sqlite``; default none.
        study_policy: the study policy (``study.yaml``). It gives each
            hospital's epsilon budget, which the hub ledger does not record.
            Required unless the study_started entry contains ``epsilon_budget``.
        study_id: the study to audit; default the only study in the ledger.

    Returns:
        Every check with its outcome; :attr:`AuditReport.passed` is the verdict.

    Raises:
        AuditInputError: an input is missing, unreadable or ambiguous.

    """
    hospital_ledgers = dict(hospital_ledgers or {})
    roster_document, policy, entries = _load_inputs(
        hub_ledger, roster, hospital_ledgers, study_policy
    )
    study = _select_study(entries, study_id, policy, hub_ledger)
    budget, budget_source = _budget_from_inputs(study.started, policy)
    audit = _Audit(
        study_id=study.study_id,
        accountant=study.accountant,
        delta=study.delta,
        dp=study.dp,
        roster=roster_document,
    )
    logger.info("auditing study %s from %s", audit.study_id, hub_ledger)

    _verify_chain(audit, hub_ledger, roster_document.hub, HUB, "hub_ledger_signatures")
    _check_study_start(audit, study.started, policy)
    _check_spends(audit, entries)
    receipts = _check_receipts(audit, entries)
    _check_completed_rounds(audit, entries, receipts)

    rounds = max(
        (
            _int_field(e.payload, "round")
            for e in entries
            if e.kind == "round_instructed"
            and e.payload.get("study_id") == audit.study_id
        ),
        default=0,
    )
    hospitals = _study_hospitals(entries, audit.study_id, policy, hospital_ledgers)
    summaries = []
    for hospital_id in hospitals:
        summaries.append(
            _audit_hospital(
                audit,
                hospital_id,
                budget,
                entries,
                receipts,
                rounds,
                hospital_ledgers.get(hospital_id),
            )
        )
    inputs = {"hub_ledger": hub_ledger, "roster": roster}
    if study_policy is not None:
        inputs["study_policy"] = study_policy
    inputs.update({f"hospital_ledger:{h}": p for h, p in hospital_ledgers.items()})
    report = AuditReport(
        study_id=audit.study_id,
        accountant=audit.accountant,
        delta=audit.delta,
        rounds=rounds,
        budget_source=budget_source,
        inputs={name: _describe_input(path) for name, path in inputs.items()},
        hospitals=summaries,
        checks=audit.checks,
    )
    logger.log(
        logging.INFO if report.passed else logging.WARNING,
        "audit of study %s: %s, %d checks, %d failed",
        audit.study_id,
        "pass" if report.passed else "fail",
        len(report.checks),
        len(report.failures),
    )
    return report


def _study_hospitals(
    entries: Sequence[StoredEntry],
    study_id: str,
    policy: StudyPolicy | None,
    hospital_ledgers: Mapping[str, Path],
) -> list[str]:
    seen: list[str] = list(policy.hospitals) if policy is not None else []
    for entry in entries:
        if entry.payload.get("study_id") != study_id:
            continue
        names: list[str] = []
        if entry.kind == "round_instructed":
            names = _names_field(entry.payload, "hospitals")
            names += _names_field(entry.payload, "skipped")
        elif entry.kind in (SPEND, "receipt", "rejection"):
            names = [str(entry.payload.get("hospital_id"))]
        seen += [name for name in names if name not in seen]
    seen += [name for name in hospital_ledgers if name not in seen]
    return seen


def _audit_hospital(
    audit: _Audit,
    hospital_id: str,
    budget: EpsilonBudget,
    entries: Sequence[StoredEntry],
    receipts: Mapping[tuple[int, str], tuple[StoredEntry, Receipt]],
    rounds: int,
    ledger_path: Path | None,
) -> HospitalAudit:
    limit = budget.overrides.get(hospital_id, budget.default)
    epsilon_by_round, joined = _audited_epsilon_by_round(
        entries, audit, hospital_id, rounds
    )
    spend_seq = {round_number: seq for round_number, seq in joined}
    _check_budget(audit, hospital_id, limit, epsilon_by_round, HUB, spend_seq)
    receipt_epsilon: list[float | None] = [
        receipts[(r, hospital_id)][1].epsilon_after
        if (r, hospital_id) in receipts
        else None
        for r in range(1, rounds + 1)
    ]
    own: list[float | None] | None = None
    if ledger_path is not None:
        own = _check_hospital_ledger(
            audit, hospital_id, ledger_path, entries, receipts, rounds
        )
        _check_budget(audit, hospital_id, limit, own, hospital_id, {})
    return HospitalAudit(
        hospital_id=hospital_id,
        budget=limit,
        epsilon_by_round=epsilon_by_round,
        receipt_epsilon_by_round=receipt_epsilon,
        hospital_epsilon_by_round=own,
        rounds_joined=len({r for r, _ in joined}),
    )
