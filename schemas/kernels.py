"""Compiled loops for the validator's per-row work.

NumPy runs each check as several calls over a column, and Python adds a fixed
cost to each call. These loops run without Python in between: checking a
numeric column, folding a column into the row hashes, finding the first row of
each key, and finding the line ends of a block of the file. Numba compiles
them on first use and caches the machine code next to this file, so only the
first validation after installation pays the compilation. Every loop releases
the GIL, so the parse and line-index threads run beside it.
"""

from __future__ import annotations

import numba
import numpy as np

_NEGATIVE_ZERO = np.uint64(0x8000000000000000)
_EXPONENT = np.uint64(0x7FF0000000000000)
_MANTISSA = np.uint64(0x000FFFFFFFFFFFFF)
_NAN_BITS = np.uint64(0x7FF8000000000000)
_SHIFT = np.uint64(32)
_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)

RANGE_CHECK = 0
CODE_CHECK = 1
BOOLEAN_CHECK = 2


@numba.njit(cache=True, nogil=True)
def _matches(values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Mark values equal to one of ``candidates``, one pass per candidate."""
    found = np.zeros(len(values), dtype=np.bool_)
    for candidate in candidates:
        for i in range(len(values)):
            found[i] |= values[i] == candidate
    return found


@numba.njit(cache=True, nogil=True)
def check_numbers(  # noqa: PLR0913 - one compiled loop takes every parameter
    values: np.ndarray,
    missing: np.ndarray,
    wrong: np.ndarray,
    markers: np.ndarray,
    whole_numbers: bool,
    kind: int,
    allowed: np.ndarray,
    false_values: np.ndarray,
    bounds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check parsed numbers; return typed values and three masks.

    ``values`` is NaN where a cell is missing or not a number, and ``missing``
    and ``wrong`` already mark those cells. Both masks are updated in place. A
    value equal to one of ``markers`` is missing. With ``whole_numbers``, a
    value with a fractional part is wrong. ``kind`` selects the rest:
    ``RANGE_CHECK`` compares with ``bounds`` (hard minimum and maximum, then
    plausible minimum and maximum, infinite where open), ``CODE_CHECK`` requires
    one of ``allowed``, ``BOOLEAN_CHECK`` maps ``allowed`` to 1.0 and
    ``false_values`` to 0.0. Returns the typed values (NaN wherever a cell is
    missing or rejected) and the invalid-code, out-of-range and implausible
    masks. The loops have no branches, so the compiler vectorizes them.
    """
    rows = len(values)
    usable = values == values
    if len(markers):
        marked = _matches(values, markers)
        for i in range(rows):
            missing[i] |= marked[i]
            usable[i] &= ~marked[i]
    if whole_numbers:
        for i in range(rows):
            fractional = usable[i] & (values[i] != np.floor(values[i]))
            wrong[i] |= fractional
            usable[i] &= ~fractional
    typed = np.empty(rows, dtype=np.float64)
    invalid = np.zeros(rows, dtype=np.bool_)
    out = np.zeros(rows, dtype=np.bool_)
    implausible = np.zeros(rows, dtype=np.bool_)
    if kind == RANGE_CHECK:
        low, high, plausible_low, plausible_high = bounds
        for i in range(rows):
            value = values[i]
            outside = usable[i] & ((value < low) | (value > high))
            out[i] = outside
            inside = usable[i] & ~outside
            implausible[i] = inside & (
                (value < plausible_low) | (value > plausible_high)
            )
            typed[i] = value if inside else np.nan
    elif kind == CODE_CHECK:
        member = _matches(values, allowed)
        for i in range(rows):
            invalid[i] = usable[i] & ~member[i]
            typed[i] = values[i] if usable[i] & member[i] else np.nan
    else:
        true = _matches(values, allowed)
        false = _matches(values, false_values)
        for i in range(rows):
            known = true[i] | false[i]
            invalid[i] = usable[i] & ~known
            typed[i] = np.nan
            if usable[i] & known:
                typed[i] = 1.0 if true[i] else 0.0
    return typed, invalid, out, implausible


@numba.njit(cache=True, nogil=True)
def fold_floats(hashes: np.ndarray, bits: np.ndarray, multiplier: np.uint64) -> None:
    """Fold one float64 column, given as its uint64 bits, into ``hashes``.

    Every NaN counts as one bit pattern and -0.0 as 0.0, so equal values fold
    equally. The word is xored in, multiplied by an odd ``multiplier``, and the
    high half is xored onto the low half, so that the high bits where small
    whole numbers differ reach every bit.
    """
    for i in range(len(hashes)):
        word = bits[i]
        if word == _NEGATIVE_ZERO:
            word = np.uint64(0)
        elif (word & _EXPONENT) == _EXPONENT and (word & _MANTISSA) != 0:
            word = _NAN_BITS
        mixed = (hashes[i] ^ word) * multiplier
        hashes[i] = mixed ^ (mixed >> _SHIFT)


@numba.njit(cache=True, nogil=True)
def fold_words(hashes: np.ndarray, words: np.ndarray, multiplier: np.uint64) -> None:
    """Fold one column of 64-bit hashes of its values into ``hashes``."""
    for i in range(len(hashes)):
        mixed = (hashes[i] ^ words[i]) * multiplier
        hashes[i] = mixed ^ (mixed >> _SHIFT)


@numba.njit(cache=True, nogil=True)
def first_lines(
    table_keys: np.ndarray,
    table_lines: np.ndarray,
    shift: np.uint64,
    keys: np.ndarray,
    lines: np.ndarray,
    first: np.ndarray,
) -> int:
    """Look up each key in an open-addressing table; insert keys not found.

    The table's capacity is a power of two, 2 ** (64 - ``shift``), and a key's
    first slot is its Fibonacci hash, the top bits of the key times the golden
    ratio. ``table_lines`` contains 0 in empty slots; line numbers start at 1. For
    each key, ``first`` receives the line stored with it, which is the key's
    own line when the key is new. Returns the number of keys inserted. The
    caller keeps the table at most half full, so a probe sequence is short and
    always ends.
    """
    mask = np.int64(len(table_keys) - 1)
    added = 0
    for i in range(len(keys)):
        key = keys[i]
        slot = np.int64((key * _FIBONACCI) >> shift)
        while True:
            stored = table_lines[slot]
            if stored == 0:
                table_keys[slot] = key
                table_lines[slot] = lines[i]
                first[i] = lines[i]
                added += 1
                break
            if table_keys[slot] == key:
                first[i] = stored
                break
            slot = (slot + np.int64(1)) & mask
    return added


@numba.njit(cache=True, nogil=True)
def line_ends(buffer: np.ndarray) -> np.ndarray:
    """Return the offsets of the newline bytes in ``buffer``."""
    count = 0
    for byte in buffer:
        count += byte == 10
    ends = np.empty(count, dtype=np.int64)
    found = 0
    for i in range(len(buffer)):
        if buffer[i] == 10:
            ends[found] = i
            found += 1
    return ends
