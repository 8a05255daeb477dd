"""Compiled loops for the validator's per-row work.

NumPy runs each check as several calls over a column, and Python adds a fixed
cost to each call. These loops run without Python in between. They parse a
block of a numeric CSV file, check a numeric column, fold a column into the
row hashes, find the first row of each key, and find the line ends of a block
of the file. Numba compiles
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


CELL_NUMBER = 0
CELL_MISSING = 1
CELL_WRONG = 2
CELL_UNPARSED = 3
_CELL_PENDING = 4

PARSED = 0
QUOTE_FOUND = 1
TOO_MANY_FIELDS = 2
UNSUPPORTED = 3
TOO_MANY_CELLS = 4

_POWERS_OF_TEN = np.array([10.0**k for k in range(23)])


@numba.njit(cache=True, nogil=True)
def _is_marker(
    buffer: np.ndarray,
    start: int,
    end: int,
    marker_bytes: np.ndarray,
    marker_bounds: np.ndarray,
    first: int,
    last: int,
) -> bool:
    """Return whether ``buffer[start:end]`` equals one of markers first..last-1."""
    for marker in range(first, last):
        low = marker_bounds[marker]
        high = marker_bounds[marker + 1]
        if high - low != end - start:
            continue
        same = True
        for k in range(end - start):
            if buffer[start + k] != marker_bytes[low + k]:
                same = False
                break
        if same:
            return True
    return False


@numba.njit(cache=True, nogil=True, inline="always")
def _is_space(byte: int) -> bool:
    """Return whether an ASCII byte is whitespace to Python's ``str.strip``."""
    return byte == 32 or 9 <= byte <= 13 or 28 <= byte <= 31


@numba.njit(cache=True, nogil=True, inline="always")
def _parse_cell(  # noqa: PLR0913, PLR0912 - one compiled loop, every branch a case
    buffer: np.ndarray,
    start: int,
    end: int,
    marker_bytes: np.ndarray,
    marker_bounds: np.ndarray,
    first_marker: int,
    last_marker: int,
) -> tuple[int, float]:
    """Classify one numeric cell and return its kind and value.

    A cell equal to a missing marker, as written or without the ASCII
    whitespace around it, is missing. A plain decimal number with at most 15
    digits and 22 fractional digits is converted here, exactly: its digits as
    an integer divided by a power of ten. Python reads two kinds of cell
    (``CELL_UNPARSED``): one with a byte outside ASCII, since Python also strips
    Unicode whitespace, and one of digits, signs, points and exponents that is
    not plain. Any other cell is not a number.
    """
    if _is_marker(
        buffer, start, end, marker_bytes, marker_bounds, first_marker, last_marker
    ):
        return CELL_MISSING, np.nan
    for k in range(start, end):
        if buffer[k] >= 128:
            return CELL_UNPARSED, np.nan
    while start < end and _is_space(buffer[start]):
        start += 1
    while end > start and _is_space(buffer[end - 1]):
        end -= 1
    position = start
    negative = False
    if position < end and (buffer[position] == 45 or buffer[position] == 43):
        negative = buffer[position] == 45
        position += 1
    mantissa = 0
    digits = 0
    fraction = 0
    point = False
    plain = True
    while position < end:
        byte = buffer[position]
        if 48 <= byte <= 57:
            mantissa = mantissa * 10 + (byte - 48)
            digits += 1
            if point:
                fraction += 1
        elif byte == 46 and not point:
            point = True
        else:
            plain = False
            break
        position += 1
    if plain and digits > 0 and digits <= 15 and fraction <= 22:
        value = mantissa / _POWERS_OF_TEN[fraction]
        return CELL_NUMBER, -value if negative else value
    if _is_marker(
        buffer, start, end, marker_bytes, marker_bounds, first_marker, last_marker
    ):
        return CELL_MISSING, np.nan
    for k in range(start, end):
        byte = buffer[k]
        numeric = (48 <= byte <= 57) or byte in (43, 45, 46, 69, 101)
        if not numeric:
            return CELL_WRONG, np.nan
    if end == start:
        return CELL_WRONG, np.nan
    return CELL_UNPARSED, np.nan


@numba.njit(cache=True, nogil=True)
def parse_numeric_block(  # noqa: PLR0913, PLR0912, PLR0915 - the whole tokenizer
    buffer: np.ndarray,
    size: int,
    delimiter: int,
    column_of_field: np.ndarray,
    columns: int,
    marker_bytes: np.ndarray,
    marker_bounds: np.ndarray,
    column_markers: np.ndarray,
    empty_missing: np.ndarray,
    max_cells: int,
) -> tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``buffer[:size]``, whole lines, into cells and parse them as numbers.

    ``column_of_field[f]`` is the output column of the line's field ``f``, or -1
    to skip it. Column ``c`` matches markers ``column_markers[c]`` to
    ``column_markers[c + 1] - 1``, each ``marker_bytes[marker_bounds[m]:
    marker_bounds[m + 1]]``. A field that a line lacks, and every field of a
    blank line, counts as an empty cell, as in pandas: missing where
    ``empty_missing[c]`` (the empty text is a marker of column ``c``), else not
    a number. A line may end in CR LF.

    One pass reads the plain decimal cells, which are nearly all of them. The
    other cells are classified afterwards by :func:`_parse_cell`.

    A block with more than ``max_cells`` cells (lines times columns) is not
    parsed, so that blank or very short lines cannot claim a large memory.

    Returns six items. The first is the outcome: ``PARSED``, ``TOO_MANY_CELLS``,
    or ``QUOTE_FOUND``, ``TOO_MANY_FIELDS`` or ``UNSUPPORTED`` (a lone CR) with
    the index of the offending line as the second item, else -1. The third is
    the number of cells left to Python. The fourth is the offset of each line's
    newline, or of the buffer's end for a last line without one. The last two
    are the values (columns x lines, NaN where not a number) and each cell's
    kind.
    """
    outcome = PARSED
    lines = 0
    for k in range(size):
        lines += buffer[k] == 10
    if size > 0 and buffer[size - 1] != 10:
        lines += 1
    if lines * columns > max_cells:
        lines = 0
        outcome = TOO_MANY_CELLS
    ends = np.empty(lines, dtype=np.int64)
    values = np.full((columns, lines), np.nan)
    kinds = np.full((columns, lines), CELL_MISSING, dtype=np.uint8)
    fields = len(column_of_field)
    if outcome == TOO_MANY_CELLS:
        return outcome, -1, 0, ends, values, kinds
    failed_line = -1
    pending = 0
    line = 0
    field = 0
    cell = 0
    mantissa = 0
    digits = 0
    fraction = 0
    point = False
    negative = False
    plain = True
    for k in range(size + 1):
        byte = buffer[k] if k < size else 10
        if byte == 13:
            if k + 1 < size and buffer[k + 1] == 10:
                continue
            # pandas ends a line at a lone CR, the line ends here do not.
            outcome = UNSUPPORTED
            failed_line = line
            break
        if byte == delimiter or byte == 10:
            if k == size and k == cell and field == 0:
                break
            blank = field == 0 and (k == cell or (k == cell + 1 and buffer[cell] == 13))
            if not (byte == 10 and blank):
                if field >= fields:
                    outcome = TOO_MANY_FIELDS
                    failed_line = line
                    break
                column = column_of_field[field]
                if column >= 0:
                    if plain and 0 < digits <= 15 and fraction <= 22:
                        value = mantissa / _POWERS_OF_TEN[fraction]
                        values[column, line] = -value if negative else value
                        kinds[column, line] = CELL_NUMBER
                    else:
                        # The cell's offset waits in its value slot; the
                        # second loop below classifies it.
                        values[column, line] = cell
                        kinds[column, line] = _CELL_PENDING
                        pending += 1
                field += 1
            if byte == 10:
                for absent in range(field, fields):
                    column = column_of_field[absent]
                    if column >= 0 and not empty_missing[column]:
                        kinds[column, line] = CELL_WRONG
                ends[line] = k
                line += 1
                field = 0
            cell = k + 1
            mantissa = 0
            digits = 0
            fraction = 0
            point = False
            negative = False
            plain = True
        elif 48 <= byte <= 57:
            mantissa = mantissa * 10 + (byte - 48)
            digits += 1
            fraction += point
        elif byte == 46 and not point:
            point = True
        elif (byte == 45 or byte == 43) and k == cell:
            negative = byte == 45
        elif byte == 34:
            outcome = QUOTE_FOUND
            failed_line = line
            break
        else:
            plain = False
    left = 0
    if outcome != PARSED or pending == 0:
        return outcome, failed_line, 0, ends, values, kinds
    for column in range(columns):
        for row in range(lines):
            if kinds[column, row] != _CELL_PENDING:
                continue
            start = int(values[column, row])
            stop = start
            while stop < size and buffer[stop] != delimiter and buffer[stop] != 10:
                stop += 1
            if stop > start and buffer[stop - 1] == 13:
                stop -= 1
            kind, value = _parse_cell(
                buffer,
                start,
                stop,
                marker_bytes,
                marker_bounds,
                column_markers[column],
                column_markers[column + 1],
            )
            kinds[column, row] = kind
            left += kind == CELL_UNPARSED
            values[column, row] = value
    return outcome, failed_line, left, ends, values, kinds
