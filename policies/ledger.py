"""Append-only, hash-chained, Ed25519-signed SQLite ledger of one party.

Each entry is a canonical JSON body that contains its sequence number, the
party id, the kind, the payload, a UTC timestamp and the SHA-256 hash of the
previous entry's body. The party signs the hash with its Ed25519 key. The
columns next to the body only index it; every read parses the body itself.

:meth:`Ledger.verify` detects an edited, deleted, reordered or re-signed entry
and names its sequence number. Deleting entries at the end leaves a shorter
valid chain, which only a head hash kept elsewhere (for example in the hub's
copy of a signed receipt) reveals: pass it as ``expected_head_hash``.

Spends are written in their own SQLite transaction with ``synchronous=FULL``,
so :meth:`Ledger.record_spend` returns only after the spend is on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from policies.identity import public_key_fingerprint
from policies.models import Accountant, DPParameters

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first entry."""

SPEND = "spend"
"""Kind of the entries that spend epsilon; every other kind spends nothing."""

FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    entry_hash TEXT NOT NULL,
    signature BLOB NOT NULL,
    spend_key TEXT UNIQUE
);
"""


class LedgerError(Exception):
    """The ledger cannot be opened or written."""


class LedgerIntegrityError(LedgerError):
    """Verification failed: ``kind`` names the tampering, ``seq`` the entry.

    ``kind`` is one of ``"edited"``, ``"deleted"``, ``"reordered"``,
    ``"forged_signature"``, ``"truncated"``, ``"wrong_party"`` or
    ``"malformed"``.
    """

    def __init__(self, kind: str, seq: int | None, detail: str) -> None:
        where = f"entry {seq}" if seq is not None else "ledger"
        super().__init__(f"{where} {kind.replace('_', ' ')}: {detail}")
        self.kind = kind
        self.seq = seq


class SpendConflictError(LedgerError):
    """The spend's (study, round, nonce, hospital) is stored with other values."""


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` as canonical JSON bytes: sorted keys, no spaces, UTF-8.

    Raises:
        ValueError: a float is NaN or infinite.

    """
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    """One verified ledger entry."""

    seq: int
    party_id: str
    kind: str
    payload: Mapping[str, Any]
    created_at: str
    """UTC time of writing, ISO 8601; informative only (the clock is not trusted)."""
    prev_hash: str
    entry_hash: str
    """SHA-256 hex of the canonical body; the next entry's ``prev_hash``."""
    signature: bytes


@dataclass(frozen=True)
class VerificationReport:
    """Result of a successful :meth:`Ledger.verify`."""

    path: Path
    party_id: str
    entries: int
    spends: int
    head_hash: str


def _spend_key(
    study_id: str, round_number: int, nonce: str, hospital_id: str | None
) -> str:
    return canonical_json([study_id, round_number, nonce, hospital_id]).decode()


def _spend_identity(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if key != "epsilon_after"}


def _dp_from_payload(payload: Mapping[str, Any]) -> DPParameters:
    return DPParameters(
        noise_multiplier=payload["noise_multiplier"],
        sample_rate=payload["sample_rate"],
        steps=payload["steps"],
        max_grad_norm=payload["max_grad_norm"],
    )


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    return connection


def _read_rows(
    connection: sqlite3.Connection,
) -> list[tuple[int, str, str, bytes, Any]]:
    cursor = connection.execute(
        "SELECT seq, body, entry_hash, signature, spend_key FROM entries ORDER BY seq"
    )
    return list(cursor.fetchall())


def _parse_body(seq: int, body: str) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError as error:
        raise LedgerIntegrityError(
            "edited", seq, f"body is not JSON ({error.msg})"
        ) from None
    required = {"seq", "party_id", "kind", "payload", "created_at", "prev_hash", "v"}
    if not isinstance(parsed, dict) or set(parsed) != required:
        raise LedgerIntegrityError("edited", seq, "body does not have the entry fields")
    return parsed


def _raise_order_fault(signed: Sequence[int]) -> None:
    """Raise for signed sequence numbers that are not 1..n in storage order."""
    increasing = all(a < b for a, b in zip(signed, signed[1:], strict=False))
    if increasing:
        present = set(signed)
        missing = [n for n in range(1, signed[-1] + 1) if n not in present]
        raise LedgerIntegrityError(
            "deleted", missing[0], f"signed entries {missing[:10]} are missing"
        )
    ordered = sorted(signed)
    position = next(
        i for i, (a, b) in enumerate(zip(signed, ordered, strict=True)) if a != b
    )
    raise LedgerIntegrityError(
        "reordered",
        signed[position],
        f"entry signed as number {signed[position]} is stored at position "
        f"{position + 1}",
    )


def _verify_rows(
    rows: Sequence[tuple[int, str, str, bytes, Any]],
    public_key: Ed25519PublicKey,
    party_id: str | None,
) -> list[LedgerEntry]:
    """Verify rows in storage order; return the entries or raise on the first fault."""
    parsed: list[tuple[int, dict[str, Any], str, bytes, Any]] = []
    for seq, body, entry_hash, signature, spend_key in rows:
        if _sha256_hex(body.encode("utf-8")) != entry_hash:
            raise LedgerIntegrityError(
                "edited", seq, "its body does not match its stored hash"
            )
        try:
            public_key.verify(bytes(signature), bytes.fromhex(entry_hash))
        except (InvalidSignature, ValueError):
            raise LedgerIntegrityError(
                "forged_signature",
                seq,
                "its signature is not the party's signature of its hash",
            ) from None
        parsed.append(
            (seq, _parse_body(seq, body), entry_hash, bytes(signature), spend_key)
        )

    # Every body is now authentic; compare the signed sequence numbers with
    # their storage positions to tell deletion from reordering.
    signed = [body["seq"] for _, body, _, _, _ in parsed]
    if signed != list(range(1, len(signed) + 1)):
        _raise_order_fault(signed)

    entries: list[LedgerEntry] = []
    prev_hash = GENESIS_HASH
    for seq, fields, entry_hash, signature, spend_key in parsed:
        if fields["seq"] != seq:
            raise LedgerIntegrityError(
                "edited", fields["seq"], f"its index was changed to {seq}"
            )
        if fields["prev_hash"] != prev_hash:
            raise LedgerIntegrityError(
                "deleted",
                seq,
                "its previous-entry hash does not match the entry "
                "before it, so an entry was removed or replaced",
            )
        if party_id is not None and fields["party_id"] != party_id:
            raise LedgerIntegrityError(
                "wrong_party",
                seq,
                f"written by {fields['party_id']!r}, not {party_id!r}",
            )
        payload = fields["payload"]
        if fields["kind"] == SPEND:
            key = _spend_key(
                payload["study_id"],
                payload["round"],
                payload["nonce"],
                payload.get("hospital_id"),
            )
            if spend_key != key:
                raise LedgerIntegrityError("edited", seq, "its spend index was changed")
        elif spend_key is not None:
            raise LedgerIntegrityError("edited", seq, "its spend index was changed")
        entries.append(
            LedgerEntry(
                seq=seq,
                party_id=fields["party_id"],
                kind=fields["kind"],
                payload=payload,
                created_at=fields["created_at"],
                prev_hash=fields["prev_hash"],
                entry_hash=entry_hash,
                signature=signature,
            )
        )
        prev_hash = entry_hash
    return entries


class Ledger:
    """Write side of one party's ledger. Open it with :meth:`Ledger.open`."""

    def __init__(
        self,
        path: Path,
        connection: sqlite3.Connection,
        party_id: str,
        signing_key: Ed25519PrivateKey,
    ) -> None:
        self.path = path
        self.party_id = party_id
        self._connection = connection
        self._signing_key = signing_key
        self._public_key = signing_key.public_key()

    @classmethod
    def open(
        cls, path: str | Path, party_id: str, signing_key: Ed25519PrivateKey
    ) -> Ledger:
        """Open or create the ledger at ``path``; verify it with the key's public half.

        Raises:
            LedgerIntegrityError: the existing ledger fails verification or
                belongs to another party or key; nothing is written.

        """
        path = Path(path)
        connection = _connect(path)
        try:
            connection.executescript(_SCHEMA)
            fingerprint = public_key_fingerprint(signing_key.public_key())
            with _transaction(connection):
                meta = dict(connection.execute("SELECT key, value FROM ledger_meta"))
                if not meta:
                    connection.executemany(
                        "INSERT INTO ledger_meta (key, value) VALUES (?, ?)",
                        [
                            ("party_id", party_id),
                            ("public_key", fingerprint),
                            ("format", str(FORMAT_VERSION)),
                        ],
                    )
                elif meta.get("party_id") != party_id:
                    raise LedgerIntegrityError(
                        "wrong_party",
                        None,
                        f"{path} belongs to {meta.get('party_id')!r}, not {party_id!r}",
                    )
            _verify_rows(_read_rows(connection), signing_key.public_key(), party_id)
        except BaseException:
            connection.close()
            raise
        logger.info("opened ledger %s of %s", path, party_id)
        return cls(path, connection, party_id, signing_key)

    def close(self) -> None:
        """Close the database connection."""
        self._connection.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _append_locked(
        self, kind: str, payload: Mapping[str, Any], spend_key: str | None
    ) -> LedgerEntry:
        row = self._connection.execute(
            "SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        seq, prev_hash = (row[0] + 1, row[1]) if row else (1, GENESIS_HASH)
        body: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "seq": seq,
            "party_id": self.party_id,
            "kind": kind,
            "payload": dict(payload),
            "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "prev_hash": prev_hash,
        }
        body_bytes = canonical_json(body)
        entry_hash = _sha256_hex(body_bytes)
        signature = self._signing_key.sign(bytes.fromhex(entry_hash))
        self._connection.execute(
            "INSERT INTO entries (seq, body, entry_hash, signature, spend_key) "
            "VALUES (?, ?, ?, ?, ?)",
            (seq, body_bytes.decode("utf-8"), entry_hash, signature, spend_key),
        )
        return LedgerEntry(
            seq=seq,
            party_id=self.party_id,
            kind=kind,
            payload=body["payload"],
            created_at=body["created_at"],
            prev_hash=prev_hash,
            entry_hash=entry_hash,
            signature=signature,
        )

    def append(self, kind: str, payload: Mapping[str, Any]) -> LedgerEntry:
        """Append a non-spending event (round result, rejection, receipt, start, stop).

        The entry is committed before this returns.

        Raises:
            ValueError: ``kind`` is ``"spend"`` (use :meth:`record_spend`), or the
                payload is not JSON with finite numbers.

        """
        if kind == SPEND:
            raise ValueError("kind 'spend' is written only by record_spend()")
        if not kind:
            raise ValueError("kind must be a non-empty string")
        canonical_json(payload)
        with _transaction(self._connection, immediate=True):
            entry = self._append_locked(kind, payload, None)
        logger.debug("ledger %s appended %s entry %d", self.path, kind, entry.seq)
        return entry

    def record_spend(
        self,
        study_id: str,
        round: int,
        nonce: str,
        dp: DPParameters,
        accountant: Accountant,
        delta: float,
        epsilon_after: float,
        *,
        hospital_id: str | None = None,
    ) -> LedgerEntry:
        """Record a spend and commit it to disk before returning.

        Idempotent for the same (study_id, round, nonce, hospital_id): a retry
        with the same DP parameters, accountant and delta returns the stored
        entry, with its original ``epsilon_after``, and spends nothing more.
        A retry recomputes ``epsilon_after`` over a history that already
        contains the first attempt, so that value is not compared. An agent should call
        :meth:`find_spend` before checking an instruction, so that a retried
        round is neither checked nor counted twice.

        Args:
            study_id: the study that spends.
            round: round number, from 1.
            nonce: the round instruction's nonce.
            dp: DP-SGD parameters of the round.
            accountant: accountant of ``epsilon_after``.
            delta: delta of ``epsilon_after``.
            epsilon_after: epsilon of the study after this round, >= 0.
            hospital_id: the hospital that spends, on the hub's ledger; None on
                a hospital's own ledger.

        Raises:
            SpendConflictError: the same key was stored with different values.
            ValueError: a value is non-finite or out of range.

        """
        dp = DPParameters.model_validate(dp.model_dump())
        if not (math.isfinite(delta) and 0 < delta < 1):
            raise ValueError(f"delta must be in (0, 1), received {delta!r}")
        if not (math.isfinite(epsilon_after) and epsilon_after >= 0):
            raise ValueError(
                f"epsilon_after must be finite and >= 0, received {epsilon_after!r}"
            )
        payload: dict[str, Any] = {
            "study_id": study_id,
            "round": round,
            "nonce": nonce,
            "hospital_id": hospital_id,
            **dp.model_dump(),
            "accountant": accountant,
            "delta": delta,
            "epsilon_after": epsilon_after,
        }
        key = _spend_key(study_id, round, nonce, hospital_id)
        with _transaction(self._connection, immediate=True):
            existing = self._connection.execute(
                "SELECT body FROM entries WHERE spend_key = ?", (key,)
            ).fetchone()
            if existing is not None:
                stored = json.loads(existing[0])
                if _spend_identity(stored["payload"]) != _spend_identity(
                    json.loads(canonical_json(payload))
                ):
                    raise SpendConflictError(
                        f"spend for study {study_id} round {round} nonce {nonce} "
                        f"hospital {hospital_id} is already stored with other values"
                    )
                logger.info(
                    "spend for study %s round %d already recorded as entry %d",
                    study_id,
                    round,
                    stored["seq"],
                )
                return self._entry_by_seq(stored["seq"])
            entry = self._append_locked(SPEND, payload, key)
        logger.info(
            "recorded spend study %s round %d hospital %s: epsilon after %.4f",
            study_id,
            round,
            hospital_id or self.party_id,
            epsilon_after,
        )
        return entry

    def find_spend(
        self, study_id: str, round: int, nonce: str, hospital_id: str | None = None
    ) -> LedgerEntry | None:
        """Return the committed spend for this round and nonce, or None.

        A hit means the round was committed before a crash or a retry, so the
        caller resends the same update instead of spending again.
        """
        key = _spend_key(study_id, round, nonce, hospital_id)
        row = self._connection.execute(
            "SELECT seq FROM entries WHERE spend_key = ?", (key,)
        ).fetchone()
        return None if row is None else self._entry_by_seq(int(row[0]))

    def _entry_by_seq(self, seq: int) -> LedgerEntry:
        for entry in self.entries():
            if entry.seq == seq:
                return entry
        raise LedgerError(f"entry {seq} not found in {self.path}")

    def entries(self) -> list[LedgerEntry]:
        """Return every entry, verified, in order.

        Raises:
            LedgerIntegrityError: the ledger was changed outside this object.

        """
        return _verify_rows(
            _read_rows(self._connection), self._public_key, self.party_id
        )

    def spends(
        self, study_id: str | None = None, hospital_id: str | None = None
    ) -> list[LedgerEntry]:
        """Return the verified spend entries, optionally for one study and hospital."""
        return [
            entry
            for entry in self.entries()
            if entry.kind == SPEND
            and (study_id is None or entry.payload["study_id"] == study_id)
            and (hospital_id is None or entry.payload["hospital_id"] == hospital_id)
        ]

    def history(
        self, study_id: str | None = None, hospital_id: str | None = None
    ) -> list[DPParameters]:
        """Return the DP parameters of every spend, in order, for accounting.

        ``study_id=None`` returns the spends of all studies on this ledger.
        """
        return [_dp_from_payload(e.payload) for e in self.spends(study_id, hospital_id)]

    @property
    def head_hash(self) -> str:
        """Hash of the last entry; the genesis hash for an empty ledger."""
        row = self._connection.execute(
            "SELECT entry_hash FROM entries ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return str(row[0]) if row else GENESIS_HASH

    @staticmethod
    def read_verified(
        path: str | Path,
        public_key: Ed25519PublicKey,
        *,
        party_id: str | None = None,
    ) -> list[LedgerEntry]:
        """Read and verify every entry of a ledger file, read-only.

        Raises:
            LedgerIntegrityError: names the first faulty entry and the kind.
            LedgerError: the file is missing or not a ledger.

        """
        path = Path(path)
        if not path.is_file():
            raise LedgerError(f"ledger file {path} not found")
        uri = f"file:{path.resolve()}?mode=ro"
        try:
            connection = sqlite3.connect(uri, uri=True)
            try:
                rows = _read_rows(connection)
            finally:
                connection.close()
        except sqlite3.DatabaseError as error:
            raise LedgerError(f"{path} is not a readable ledger: {error}") from None
        return _verify_rows(rows, public_key, party_id)

    @staticmethod
    def verify(
        path: str | Path,
        public_key: Ed25519PublicKey,
        *,
        party_id: str | None = None,
        expected_head_hash: str | None = None,
    ) -> VerificationReport:
        """Verify a ledger file read-only, without trusting its writer.

        Args:
            path: the ledger's SQLite file; opened read-only.
            public_key: the party's enrolled Ed25519 public key.
            party_id: when given, every entry must name this party.
            expected_head_hash: a head hash known from elsewhere (a receipt);
                it must be the hash of some entry, else the ledger was truncated
                or replaced.

        Raises:
            LedgerIntegrityError: names the first faulty entry and the kind.
            LedgerError: the file is missing or not a ledger.

        """
        path = Path(path)
        entries = Ledger.read_verified(path, public_key, party_id=party_id)
        head = entries[-1].entry_hash if entries else GENESIS_HASH
        if expected_head_hash is not None and expected_head_hash not in {
            e.entry_hash for e in entries
        } | {GENESIS_HASH}:
            raise LedgerIntegrityError(
                "truncated",
                len(entries) + 1,
                "the expected head hash is not in the ledger, so entries after "
                f"number {len(entries)} were removed or the ledger was replaced",
            )
        return VerificationReport(
            path=path,
            party_id=entries[0].party_id if entries else (party_id or ""),
            entries=len(entries),
            spends=sum(1 for e in entries if e.kind == SPEND),
            head_hash=head,
        )


@contextmanager
def _transaction(
    connection: sqlite3.Connection, *, immediate: bool = False
) -> Iterator[None]:
    connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
