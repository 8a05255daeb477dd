"""Find several rows of one patient, the privacy unit, across a file's chunks."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from schemas.checks import ColumnCheck, check_column
from schemas.model import Schema
from schemas.reading import Chunk


class DuplicateTracker:
    """Find rows of a patient already seen, across every chunk of the file.

    With ``keep_first``, a map from patient key to the line of its first row grows
    chunk by chunk. With ``quarantine_all``, a first pass over the file counts
    each patient's rows before validation starts. ``chunks`` returns a new
    iterator over the file's chunks and is called only for that first pass.
    """

    def __init__(self, schema: Schema, chunks: Callable[[], Iterator[Chunk]]) -> None:
        self.unit = schema.privacy_unit
        # Keys of patients seen in earlier chunks (disjoint hash indexes) and the
        # line of each patient's first row.
        self._seen: list[tuple[pd.Index, np.ndarray]] = []
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
        keys = patient_keys(checks, self.unit.patient_id_column)
        eligible = eligible & keys.notna().to_numpy()
        if self._counts is not None:
            return self._check_all(keys, eligible)
        return self._check_first(keys, lines, eligible)

    def _check_first(
        self, keys: pd.Series, lines: np.ndarray, eligible: np.ndarray
    ) -> tuple[np.ndarray, pd.Series]:
        positions = np.flatnonzero(eligible)
        codes, uniques = pd.factorize(keys.to_numpy()[positions])
        # pd.factorize numbers keys in order of first appearance, so a row is
        # its key's first row exactly where its code exceeds every earlier code.
        highest = np.maximum.accumulate(codes)
        first_seen = np.ones(len(codes), dtype=bool)
        first_seen[1:] = highest[1:] > highest[:-1]
        first_line = np.empty(len(uniques), dtype=np.int64)
        first_line[codes[first_seen]] = lines[positions[first_seen]]
        earlier = self._lookup_earlier(uniques, first_line)
        self._remember(uniques[~earlier], first_line[~earlier])
        row_first = first_line[codes]
        is_duplicate = row_first != lines[positions]
        mask = np.zeros(len(keys), dtype=bool)
        mask[positions[is_duplicate]] = True
        texts = pd.Series(np.full(len(keys), "", dtype=object), dtype=object)
        label = (
            "duplicate of line "
            if self.unit.patient_id_column is None
            else "duplicate patient id, first row at line "
        )
        texts.iloc[positions[is_duplicate]] = (
            label + pd.Series(row_first[is_duplicate]).astype(str)
        ).to_numpy()
        return mask, texts

    def _lookup_earlier(self, keys: np.ndarray, first_line: np.ndarray) -> np.ndarray:
        """Mark keys seen in earlier chunks and copy their first line in place."""
        earlier = np.zeros(len(keys), dtype=bool)
        for seen_keys, seen_lines in self._seen:
            found = seen_keys.get_indexer(keys)
            hit = found >= 0
            first_line[hit] = seen_lines[found[hit]]
            earlier |= hit
        return earlier

    def _remember(self, keys: np.ndarray, first_line: np.ndarray) -> None:
        """Add keys not seen before as a new level, merging levels of equal size.

        The levels form a log-structured merge: each key is copied O(log chunks)
        times, and a lookup probes O(log chunks) hash indexes.
        """
        self._seen.append((pd.Index(keys), first_line))
        while len(self._seen) > 1 and len(self._seen[-1][0]) >= len(self._seen[-2][0]):
            newer_keys, newer_lines = self._seen.pop()
            older_keys, older_lines = self._seen.pop()
            self._seen.append(
                (
                    older_keys.append(newer_keys),
                    np.concatenate([older_lines, newer_lines]),
                )
            )

    def _check_all(
        self, keys: pd.Series, eligible: np.ndarray
    ) -> tuple[np.ndarray, pd.Series]:
        assert self._counts is not None
        table = pd.DataFrame({"key": keys.to_numpy()})[eligible]
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


def patient_keys(checks: dict[str, ColumnCheck], id_column: str | None) -> pd.Series:
    """Return each row's patient key: its id, or a hash of all its values.

    A row without a usable id gets a missing key and takes no part in the search.
    """
    if id_column is not None:
        check = checks[id_column]
        return check.values.where(~check.missing & ~check.invalid, None).reset_index(
            drop=True
        )
    # NOTE: rows are compared by a 64-bit hash of their typed values. A hash
    # collision between different rows quarantines the later one as a duplicate,
    # which loses a row but never admits a second row of a patient.
    return pd.Series(row_hashes([check.values for check in checks.values()]))


def row_hashes(columns: list[pd.Series]) -> np.ndarray:
    """Combine per-column 64-bit hashes into one hash per row.

    The combination equals pandas' ``hash_pandas_object`` (pandas 3.1), whose
    source describes it as CPython's tuple hash: xor, then multiply by a
    multiplier that changes per position, so column order matters.
    """
    rows = len(columns[0]) if columns else 0
    combined = np.full(rows, 0x345678, dtype=np.uint64)
    multiplier = np.uint64(1000003)
    hashed = np.empty(rows, dtype=np.uint64)
    scratch = np.empty(rows, dtype=np.uint64)
    for position, series in enumerate(columns):
        values = series.to_numpy()
        if values.dtype == np.float64:
            _hash_floats(values, hashed, scratch)
            combined ^= hashed
        else:
            combined ^= pd.util.hash_array(values)
        combined *= multiplier
        multiplier += np.uint64(82520 + 2 * (len(columns) - position))
    combined += np.uint64(97531)
    return combined


_NAN_BITS = np.array(np.nan, dtype=np.float64).view(np.uint64)
_NEGATIVE_ZERO_BITS = np.array(-0.0, dtype=np.float64).view(np.uint64)


def _hash_floats(values: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """Write ``pd.util.hash_array(values)`` of float64 values into ``out``.

    The steps are those of pandas 3.1's ``_hash_ndarray``: every NaN and -0.0
    get one bit pattern, so that equal values hash equal, then three shift-xor
    and two multiply steps mix the bits. Working in place, with ``scratch`` for
    the shifts, avoids the temporary arrays that pandas allocates at each step.
    """
    np.copyto(out, values.view(np.uint64))
    nan = np.isnan(values)
    if nan.any():
        out[nan] = _NAN_BITS
    negative_zero = out == _NEGATIVE_ZERO_BITS
    if negative_zero.any():
        out[negative_zero] = 0
    for shift, multiplier in (
        (30, np.uint64(0xBF58476D1CE4E5B9)),
        (27, np.uint64(0x94D049BB133111EB)),
    ):
        np.right_shift(out, shift, out=scratch)
        out ^= scratch
        out *= multiplier
    np.right_shift(out, 31, out=scratch)
    out ^= scratch


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
            pd.DataFrame(
                {"key": check.values.to_numpy()[usable], "line": chunk.lines[usable]}
            )
        )
    if not parts:
        return pd.DataFrame(columns=["rows", "first"])
    table = pd.concat(parts)
    grouped = table.groupby("key", sort=False)["line"]
    return pd.DataFrame({"rows": grouped.size(), "first": grouped.min()})
