"""Find several rows of one patient, the privacy unit, across a file's chunks."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from schemas import kernels
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
        self._first_seen = _FirstLines(expected_rows)
        self._counts: pd.DataFrame | None = None
        if self.unit.on_duplicate == "quarantine_all":
            self._counts = count_patient_rows(schema, chunks())

    def check(
        self,
        checks: dict[str, ColumnCheck],
        lines: np.ndarray,
        eligible: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the duplicate mask and each row's reason text ("" if none)."""
        id_column = self.unit.patient_id_column
        if id_column is None:
            keys = row_hashes([check.values for check in checks.values()])
            return self._check_first(keys, lines, eligible)
        ids, usable = patient_ids(checks[id_column])
        if self._counts is not None:
            return self._check_all(ids, eligible & usable)
        return self._check_first(pd.util.hash_array(ids), lines, eligible & usable)

    def _check_first(
        self, keys: np.ndarray, lines: np.ndarray, eligible: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Find rows whose key, a 64-bit hash, an earlier row already had.

        NOTE: rows and patient ids are compared by 64-bit hashes. A collision
        between two different ones quarantines the later row as a duplicate,
        which loses a row but never admits a second row of a patient. With
        random 64-bit hashes, a million rows collide with probability about
        3e-8.
        """
        positions = np.flatnonzero(eligible)
        own_lines = lines[positions]
        row_first = self._first_seen.first_lines(keys[positions], own_lines)
        is_duplicate = row_first != own_lines
        mask = np.zeros(len(keys), dtype=bool)
        mask[positions[is_duplicate]] = True
        texts = np.full(len(keys), "", dtype=object)
        if not is_duplicate.any():
            return mask, texts
        label = (
            "duplicate of line "
            if self.unit.patient_id_column is None
            else "duplicate patient id, first row at line "
        )
        texts[positions[is_duplicate]] = [
            f"{label}{line}" for line in row_first[is_duplicate].tolist()
        ]
        return mask, texts

    def _check_all(
        self, keys: np.ndarray, eligible: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self._counts is not None
        table = pd.DataFrame({"key": keys})[eligible]
        joined = table.join(self._counts, on="key")
        shared = (joined["rows"] > 1).to_numpy()
        mask = np.zeros(len(keys), dtype=bool)
        mask[np.flatnonzero(eligible)[shared]] = True
        texts = np.full(len(keys), "", dtype=object)
        hits = joined[shared]
        texts[np.flatnonzero(mask)] = [
            f"patient id shared by {rows} rows, first at line {first}"
            for rows, first in zip(
                hits["rows"].tolist(), hits["first"].tolist(), strict=True
            )
        ]
        return mask, texts


class _FirstLines:
    """The line of each key's first row, in one hash table for the whole file.

    Keys are 64-bit hashes. The table uses open addressing and doubles before it
    is half full; sized from the expected rows, it takes about 35 ms per
    million random keys on one core.
    """

    _MAX_EXPECTED_ROWS = 4_000_000

    def __init__(self, expected_rows: int | None) -> None:
        expected = min(max(expected_rows or 0, 1024), self._MAX_EXPECTED_ROWS)
        self._keys = 0
        self._allocate(2 * expected)

    def _allocate(self, minimum: int) -> None:
        bits = max(int(minimum - 1).bit_length(), 10)
        self._shift = np.uint64(64 - bits)
        self._table_keys = np.zeros(1 << bits, dtype=np.uint64)
        self._table_lines = np.zeros(1 << bits, dtype=np.int64)

    def first_lines(self, keys: np.ndarray, lines: np.ndarray) -> np.ndarray:
        """Return the first line of each key, remembering keys not seen before."""
        if 2 * (self._keys + len(keys)) > len(self._table_keys):
            self._grow(2 * (self._keys + len(keys)))
        first = np.empty(len(keys), dtype=np.int64)
        self._keys += kernels.first_lines(
            self._table_keys,
            self._table_lines,
            self._shift,
            np.ascontiguousarray(keys, dtype=np.uint64),
            np.ascontiguousarray(lines, dtype=np.int64),
            first,
        )
        return first

    def _grow(self, minimum: int) -> None:
        used = np.flatnonzero(self._table_lines)
        keys, lines = self._table_keys[used], self._table_lines[used]
        self._allocate(max(minimum, 2 * len(self._table_keys)))
        kernels.first_lines(
            self._table_keys,
            self._table_lines,
            self._shift,
            keys,
            lines,
            np.empty(len(keys), dtype=np.int64),
        )


def patient_ids(check: ColumnCheck) -> tuple[np.ndarray, np.ndarray]:
    """Return each row's patient id as text ("" where unusable), and usability.

    A row without a usable id takes no part in the search.
    """
    usable = ~check.missing & ~check.invalid
    ids = check.values.astype(object)
    ids[~usable] = ""
    return ids, usable


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
    for position, values in enumerate(columns):
        multiplier = _MULTIPLIERS[position % len(_MULTIPLIERS)]
        if values.dtype == np.float64:
            bits = np.ascontiguousarray(values).view(np.uint64)
            kernels.fold_floats(combined, bits, multiplier)
        else:
            kernels.fold_words(combined, pd.util.hash_array(values), multiplier)
    return combined


def count_patient_rows(schema: Schema, chunks: Iterator[Chunk]) -> pd.DataFrame:
    """Count rows and the first line per patient id in one pass over the file."""
    id_column = schema.privacy_unit.patient_id_column
    assert id_column is not None
    column = schema.column(id_column)
    parts: list[pd.DataFrame] = []
    for chunk in chunks:
        # An id column is text, which only pandas' parser reads into a frame.
        assert chunk.frame is not None
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
