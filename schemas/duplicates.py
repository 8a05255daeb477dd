"""Find several rows of one patient, the privacy unit, across a file's chunks."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
from pandas._libs.hashtable import (
    Int64HashTable,
    Int64Vector,
    ObjectVector,
    PyObjectHashTable,
)

from schemas.checks import ColumnCheck, check_column
from schemas.model import Schema
from schemas.reading import Chunk


class DuplicateTracker:
    """Find rows of a patient already seen, across every chunk of the file.

    With ``keep_first``, the line of each patient's first row is remembered chunk
    by chunk. With ``quarantine_all``, a first pass over the file counts each
    patient's rows before validation starts. ``chunks`` returns a new iterator
    over the file's chunks and is called only for that first pass.
    ``expected_rows`` sizes the table of row hashes up front; an estimate will
    do, since the table grows as needed.
    """

    def __init__(
        self,
        schema: Schema,
        chunks: Callable[[], Iterator[Chunk]],
        expected_rows: int | None = None,
    ) -> None:
        self.unit = schema.privacy_unit
        self._first_seen = _FirstLines(
            hashed=self.unit.patient_id_column is None, expected_rows=expected_rows
        )
        self._counts: pd.DataFrame | None = None
        if self.unit.on_duplicate == "quarantine_all":
            self._counts = count_patient_rows(schema, chunks())

    def check(
        self,
        checks: dict[str, ColumnCheck],
        lines: np.ndarray,
        eligible: np.ndarray,
    ) -> tuple[np.ndarray, pd.Series]:
        """Return the duplicate mask and each row's reason text."""
        keys, usable = patient_keys(checks, self.unit.patient_id_column)
        eligible = eligible & usable
        if self._counts is not None:
            return self._check_all(keys, eligible)
        return self._check_first(keys, lines, eligible)

    def _check_first(
        self, keys: np.ndarray, lines: np.ndarray, eligible: np.ndarray
    ) -> tuple[np.ndarray, pd.Series]:
        positions = np.flatnonzero(eligible)
        own_lines = lines[positions]
        row_first = self._first_seen.first_lines(keys[positions], own_lines)
        is_duplicate = row_first != own_lines
        mask = np.zeros(len(keys), dtype=bool)
        mask[positions[is_duplicate]] = True
        texts = pd.Series(np.full(len(keys), "", dtype=object), dtype=object)
        if not is_duplicate.any():
            return mask, texts
        label = (
            "duplicate of line "
            if self.unit.patient_id_column is None
            else "duplicate patient id, first row at line "
        )
        texts.iloc[positions[is_duplicate]] = (
            label + pd.Series(row_first[is_duplicate]).astype(str)
        ).to_numpy()
        return mask, texts

    def _check_all(
        self, keys: np.ndarray, eligible: np.ndarray
    ) -> tuple[np.ndarray, pd.Series]:
        assert self._counts is not None
        table = pd.DataFrame({"key": keys})[eligible]
        joined = table.join(self._counts, on="key")
        shared = (joined["rows"] > 1).to_numpy()
        mask = np.zeros(len(keys), dtype=bool)
        mask[np.flatnonzero(eligible)[shared]] = True
        texts = pd.Series([""] * len(keys), dtype=object)
        hits = joined[shared]
        texts.iloc[np.flatnonzero(mask)] = (
            "patient id shared by "
            + hits["rows"].astype(str)
            + " rows, first at line "
            + hits["first"].astype(str)
        ).to_numpy()
        return mask, texts


class _FirstLines:
    """The line of each key's first row, in one hash table for the whole file.

    ``get_labels`` numbers keys in order of first appearance and remembers the
    numbers across calls, so each key costs one hash lookup. The tables are
    those behind pandas' own factorize; they are not public API, so the tests of
    duplicate rows are what guard an upgrade of pandas. For row hashes, a table
    sized from the expected rows takes about 50 ms per million rows, and one
    grown from small about 100 ms.
    """

    _MAX_SIZE_HINT = 4_000_000

    def __init__(self, hashed: bool, expected_rows: int | None) -> None:
        hint = min(max(expected_rows or 0, 1024), self._MAX_SIZE_HINT)
        self._hashed = hashed
        self._table = Int64HashTable(hint) if hashed else PyObjectHashTable(hint)
        self._count = 0
        self._first = np.empty(hint, dtype=np.int64)

    def first_lines(self, keys: np.ndarray, lines: np.ndarray) -> np.ndarray:
        """Return the first line of each key, remembering keys not seen before."""
        if self._hashed:
            keys = np.ascontiguousarray(keys).view(np.int64)
            vector: Int64Vector | ObjectVector = Int64Vector()
        else:
            keys = np.asarray(keys, dtype=object)
            vector = ObjectVector()
        labels = np.asarray(
            self._table.get_labels(keys, vector, count_prior=self._count), np.int64
        )
        # New keys get the numbers from self._count upwards in order of first
        # appearance, so a row is its key's first exactly where its number is
        # new and above every earlier number.
        fresh = labels >= self._count
        if len(labels) > 1:
            highest = np.maximum.accumulate(labels)
            fresh[1:] &= highest[1:] > highest[:-1]
        added = int(np.count_nonzero(fresh))
        if self._count + added > len(self._first):
            grown = np.empty(max(2 * len(self._first), self._count + added), np.int64)
            grown[: self._count] = self._first[: self._count]
            self._first = grown
        self._first[labels[fresh]] = lines[fresh]
        self._count += added
        first = lines.astype(np.int64, copy=True)
        repeated = np.flatnonzero(~fresh)
        first[repeated] = self._first[labels[repeated]]
        return first


def patient_keys(
    checks: dict[str, ColumnCheck], id_column: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return each row's patient key and whether it is usable.

    The key is the patient id, or without one a hash of all the row's values. A
    row without a usable id takes no part in the search.
    """
    if id_column is not None:
        check = checks[id_column]
        usable = ~check.missing & ~check.invalid
        keys = check.values.astype(object)
        keys[~usable] = None
        return keys, usable
    # NOTE: rows are compared by a 64-bit hash of their typed values. A hash
    # collision between different rows quarantines the later one as a duplicate,
    # which loses a row but never admits a second row of a patient. With random
    # 64-bit hashes, a million rows collide with probability about 3e-8.
    hashes = row_hashes([check.values for check in checks.values()])
    return hashes, np.ones(len(hashes), dtype=bool)


_NAN_BITS = np.array(np.nan, dtype=np.float64).view(np.uint64)
# Odd 64-bit multipliers, one per column position (cycled): the golden-ratio
# constant and splitmix64's two mixing constants.
_MULTIPLIERS = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
)


def row_hashes(columns: list[np.ndarray]) -> np.ndarray:
    """Return a 64-bit hash of each row's values, equal for equal rows.

    Float columns are hashed by their bits, with every NaN one bit pattern and
    -0.0 equal to 0.0; other columns by ``pd.util.hash_array``. Each column is
    folded in by xor, an odd multiplier and a 32-bit shift-xor, so that the high
    bits where small whole numbers differ reach every bit of the hash. Column
    order matters.
    """
    rows = len(columns[0]) if columns else 0
    combined = np.zeros(rows, dtype=np.uint64)
    bits = np.empty(rows, dtype=np.float64)
    scratch = np.empty(rows, dtype=np.uint64)
    for position, values in enumerate(columns):
        if values.dtype == np.float64:
            # Adding 0.0 turns -0.0 into 0.0 and keeps every other value.
            np.add(values, 0.0, out=bits)
            nan = np.isnan(bits)
            word = bits.view(np.uint64)
            if nan.any():
                word[nan] = _NAN_BITS
            combined ^= word
        else:
            combined ^= pd.util.hash_array(values)
        combined *= _MULTIPLIERS[position % len(_MULTIPLIERS)]
        np.right_shift(combined, 32, out=scratch)
        combined ^= scratch
    return combined


def count_patient_rows(schema: Schema, chunks: Iterator[Chunk]) -> pd.DataFrame:
    """Count rows and the first line per patient id in one pass over the file."""
    id_column = schema.privacy_unit.patient_id_column
    assert id_column is not None
    column = schema.column(id_column)
    parts: list[pd.DataFrame] = []
    for chunk in chunks:
        check = check_column(chunk.frame[id_column], column, schema)
        usable = ~check.missing & ~check.invalid
        parts.append(
            pd.DataFrame({"key": check.values[usable], "line": chunk.lines[usable]})
        )
    if not parts:
        return pd.DataFrame(columns=["rows", "first"])
    table = pd.concat(parts)
    grouped = table.groupby("key", sort=False)["line"]
    return pd.DataFrame({"rows": grouped.size(), "first": grouped.min()})
