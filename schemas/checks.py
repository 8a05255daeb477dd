"""Vectorized parsing and checking of one column against its declaration."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from schemas import kernels
from schemas.model import (
    BooleanColumn,
    CategoricalColumn,
    Column,
    DateColumn,
    DateRange,
    IdentifierColumn,
    Range,
    Schema,
)

NUMBER_PATTERN = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"


@dataclass
class ColumnCheck:
    """Typed values of one column and a boolean mask per kind of problem.

    ``values`` is a NumPy array: float64 for numbers, codes and booleans,
    datetime64 for dates, objects for text. It contains NaN (or NaT, or None for
    text) wherever the value is missing or failed a check. The masks are
    disjoint except ``implausible``, which is a warning on values that passed
    every other check.
    """

    values: np.ndarray
    missing: np.ndarray
    wrong_type: np.ndarray
    invalid_code: np.ndarray
    out_of_range: np.ndarray
    implausible: np.ndarray

    @property
    def invalid(self) -> np.ndarray:
        """Rows whose value is present but unusable."""
        return np.asarray(self.wrong_type | self.invalid_code | self.out_of_range)


def check_column(raw: pd.Series | None, column: Column, schema: Schema) -> ColumnCheck:
    """Parse ``raw`` cells as ``column`` declares and flag every problem.

    ``raw`` is the column as pandas read it, with text missing markers already
    NaN; ``None`` stands for an optional column that the file lacks.
    """
    if raw is None:
        raise ValueError("use check_absent_column for a column missing from the file")
    if isinstance(column, IdentifierColumn):
        return _check_identifier(raw, column, schema)
    if isinstance(column, DateColumn):
        return _check_date(raw, column, schema)
    if isinstance(column, CategoricalColumn) and not column.numeric_codes():
        return _check_text_codes(raw, column, schema)
    if isinstance(column, BooleanColumn) and _text_tokens(column):
        return _check_text_boolean(raw, column, schema)
    return _check_numeric(raw, column, schema)


def check_absent_column(length: int) -> ColumnCheck:
    """Return the check of an optional column that the file does not contain."""
    nothing = np.zeros(length, dtype=bool)
    return ColumnCheck(
        values=np.full(length, np.nan),
        missing=np.ones(length, dtype=bool),
        wrong_type=nothing,
        invalid_code=nothing.copy(),
        out_of_range=nothing.copy(),
        implausible=nothing.copy(),
    )


def _numeric_markers(column: Column, schema: Schema) -> list[float]:
    """Return the markers that stand for a missing number, as floats.

    A text marker that reads as a number ("999") counts too, because pandas
    parses a cell such as " 999" as the number before any text comparison.
    """
    numbers = []
    for marker in (*schema.missing_values, *column.missing_values):
        if isinstance(marker, int | float):
            numbers.append(float(marker))
        elif re.fullmatch(NUMBER_PATTERN, marker.strip(), re.ASCII):
            numbers.append(float(marker))
    return numbers


def _text_markers(column: Column, schema: Schema) -> set[str]:
    markers = [*schema.missing_values, *column.missing_values]
    return {str(m) for m in markers}


def _text_tokens(column: BooleanColumn) -> bool:
    return any(isinstance(v, str) for v in (*column.true_values, *column.false_values))


def _parse_numbers(
    raw: pd.Series, text_markers: frozenset[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Return float values, the missing and wrong-type masks, and integrality.

    Values are NaN wherever a cell is missing or not a number. The flag is True
    when pandas parsed the column as integers, so no value can have a fractional
    part and none can be missing. In a column read as text, a cell whose trimmed
    text is one of ``text_markers`` is missing.
    """
    rows = len(raw)
    dtype = raw.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "iu":
        values = raw.to_numpy().astype(np.float64)
        nothing = np.zeros(rows, dtype=bool)
        return values, nothing, nothing.copy(), True
    if (isinstance(dtype, np.dtype) and dtype.kind == "f") or (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    ):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(values)
        wrong = np.zeros(rows, dtype=bool)
    else:
        values, marked = _parse_text_numbers(raw, text_markers)
        missing = np.asarray(raw.isna(), dtype=bool) | marked
        wrong = np.isnan(values) & ~missing
    infinite = np.isinf(values)
    if infinite.any():
        wrong |= infinite
        values = np.where(infinite, np.nan, values)
    return values, missing, wrong, False


def _parse_text_numbers(
    raw: pd.Series, text_markers: frozenset[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Return float values of text cells and the mask of missing markers.

    A value is NaN where a cell is not a number. Arrow's cast and RE2 matcher
    are more than 10 times faster than ``pd.to_numeric`` on text (pandas 3.1,
    50,000 cells). Only plain decimal and
    scientific notation count as numbers, so 'nan' and 'inf' are wrong types
    rather than values.
    """
    try:
        array = pa.array(raw.array, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        array = None
    if array is None or not (
        pa.types.is_string(array.type) or pa.types.is_large_string(array.type)
    ):
        # A column of Python objects (numbers beyond int64 mixed with text,
        # booleans) is checked as the text of each value, like a text column.
        text = [None if pd.isna(value) else str(value) for value in raw.tolist()]
        array = pa.array(text, type=pa.large_string())
    # Most cells are plain digits, at most 18 of them: they fit int64 and need
    # neither trimming nor the regular expression, which costs 25 times more.
    plain = pc.fill_null(
        pc.and_(pc.ascii_is_decimal(array), pc.less_equal(pc.binary_length(array), 18)),
        False,
    )
    integers = pc.cast(pc.if_else(plain, array, None), pa.int64())
    values = np.array(integers.to_numpy(zero_copy_only=False), dtype=np.float64)
    is_plain = np.asarray(plain.to_numpy(zero_copy_only=False), dtype=bool)
    present = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    others = np.flatnonzero(~is_plain & present)
    marked = np.zeros(len(array), dtype=bool)
    if len(others):
        other_text = pc.utf8_trim_whitespace(array.take(pa.array(others)))
        matched = pc.match_substring_regex(other_text, NUMBER_PATTERN)
        numbers = pc.cast(pc.if_else(matched, other_text, None), pa.float64())
        values[others] = numbers.to_numpy(zero_copy_only=False)
        if text_markers:
            hits = pc.is_in(other_text, value_set=pa.array(sorted(text_markers)))
            marked[others] = hits.to_numpy(zero_copy_only=False)
    return values, marked


def _range_masks(
    values: np.ndarray,
    usable: np.ndarray,
    hard: Range | DateRange | None,
    plausible: Range | DateRange | None,
) -> tuple[np.ndarray, np.ndarray]:
    out = _outside(values, hard) & usable
    implausible = _outside(values, plausible) & usable & ~out
    return out, implausible


def _outside(values: np.ndarray, bounds: Range | DateRange | None) -> np.ndarray:
    """Mark values below or above ``bounds``; NaN and NaT are never outside."""
    result = np.zeros(len(values), dtype=bool)
    if bounds is None:
        return result
    if bounds.min is not None:
        low = np.datetime64(bounds.min) if isinstance(bounds, DateRange) else bounds.min
        result |= values < low
    if bounds.max is not None:
        high = (
            np.datetime64(bounds.max) if isinstance(bounds, DateRange) else bounds.max
        )
        result |= values > high
    return result


@dataclass(frozen=True)
class _NumericPlan:
    """The parameters of a numeric column's check, derived once per column."""

    string_markers: frozenset[str]
    markers: np.ndarray
    integer: bool
    kind: int
    allowed: np.ndarray
    false_values: np.ndarray
    bounds: np.ndarray


_PLANS: dict[int, tuple[Column, Schema, _NumericPlan]] = {}


def _numeric_plan(column: Column, schema: Schema) -> _NumericPlan:
    """Return the check parameters of ``column``, cached by object identity."""
    cached = _PLANS.get(id(column))
    if cached is not None and cached[0] is column and cached[1] is schema:
        return cached[2]
    empty = np.zeros(0, dtype=np.float64)
    allowed, false_values = empty, empty
    if isinstance(column, CategoricalColumn):
        kind = kernels.CODE_CHECK
        allowed = np.array([float(code) for code in column.codes])
    elif isinstance(column, BooleanColumn):
        kind = kernels.BOOLEAN_CHECK
        allowed = np.array([float(v) for v in column.true_values])
        false_values = np.array([float(v) for v in column.false_values])
    else:
        kind = kernels.RANGE_CHECK
    plan = _NumericPlan(
        string_markers=frozenset(
            m
            for m in (*schema.missing_values, *column.missing_values)
            if isinstance(m, str)
        ),
        markers=np.array(_numeric_markers(column, schema), dtype=np.float64),
        integer=column.type == "integer",
        kind=kind,
        allowed=allowed,
        false_values=false_values,
        bounds=np.array(
            [
                *_bounds(getattr(column, "hard_range", None)),
                *_bounds(getattr(column, "plausible_range", None)),
            ]
        ),
    )
    _PLANS[id(column)] = (column, schema, plan)
    return plan


def _check_numeric(raw: pd.Series, column: Column, schema: Schema) -> ColumnCheck:
    """Check a number, integer, numeric-code or numeric-boolean column.

    The column is parsed to floats, then checked in one compiled loop.
    """
    plan = _numeric_plan(column, schema)
    values, missing, wrong, integral = _parse_numbers(raw, plan.string_markers)
    values, invalid_code, out, implausible = kernels.check_numbers(
        values,
        missing,
        wrong,
        plan.markers,
        plan.integer and not integral,
        plan.kind,
        plan.allowed,
        plan.false_values,
        plan.bounds,
    )
    return ColumnCheck(
        values=values,
        missing=missing,
        wrong_type=wrong,
        invalid_code=invalid_code,
        out_of_range=out,
        implausible=implausible,
    )


def check_parsed_numbers(
    values: np.ndarray, kinds: np.ndarray, column: Column, schema: Schema
) -> ColumnCheck:
    """Check a numeric column that the compiled parse read.

    ``values`` is NaN wherever ``kinds`` is not ``kernels.CELL_NUMBER``.
    """
    plan = _numeric_plan(column, schema)
    missing = kinds == kernels.CELL_MISSING
    wrong = kinds == kernels.CELL_WRONG
    checked, invalid_code, out, implausible = kernels.check_numbers(
        np.ascontiguousarray(values),
        missing,
        wrong,
        plan.markers,
        plan.integer,
        plan.kind,
        plan.allowed,
        plan.false_values,
        plan.bounds,
    )
    return ColumnCheck(
        values=checked,
        missing=missing,
        wrong_type=wrong,
        invalid_code=invalid_code,
        out_of_range=out,
        implausible=implausible,
    )


def _bounds(bounds: Range | None) -> tuple[float, float]:
    """Return a numeric range's bounds, infinite where open."""
    if bounds is None:
        return -np.inf, np.inf
    low = -np.inf if bounds.min is None else float(bounds.min)
    high = np.inf if bounds.max is None else float(bounds.max)
    return low, high


def _clean_text(
    raw: pd.Series, column: Column, schema: Schema
) -> tuple[pd.Series, np.ndarray]:
    missing = raw.isna().to_numpy()
    text = raw.astype(object).where(~missing, None)
    text = text.where(missing, text.astype(str).str.strip())
    markers = _text_markers(column, schema)
    missing = missing | text.isin(markers).to_numpy()
    return text.where(~missing, None), missing


def _check_text_codes(
    raw: pd.Series, column: CategoricalColumn, schema: Schema
) -> ColumnCheck:
    text, missing = _clean_text(raw, column, schema)
    invalid = ~missing & ~text.isin([str(code) for code in column.codes]).to_numpy()
    nothing = np.zeros(len(raw), dtype=bool)
    return ColumnCheck(
        values=text.where(~invalid, None).to_numpy(dtype=object),
        missing=missing,
        wrong_type=nothing,
        invalid_code=invalid,
        out_of_range=nothing.copy(),
        implausible=nothing.copy(),
    )


def _check_text_boolean(
    raw: pd.Series, column: BooleanColumn, schema: Schema
) -> ColumnCheck:
    text, missing = _clean_text(raw, column, schema)
    lowered = text.str.lower()
    true_tokens = {str(v).lower() for v in column.true_values}
    false_tokens = {str(v).lower() for v in column.false_values}
    numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    true_numbers = [float(v) for v in column.true_values if not isinstance(v, str)]
    false_numbers = [float(v) for v in column.false_values if not isinstance(v, str)]
    is_true = lowered.isin(true_tokens).to_numpy() | np.isin(numbers, true_numbers)
    is_false = lowered.isin(false_tokens).to_numpy() | np.isin(numbers, false_numbers)
    invalid = ~missing & ~is_true & ~is_false
    values = np.where(is_true, 1.0, np.where(is_false, 0.0, np.nan))
    nothing = np.zeros(len(raw), dtype=bool)
    return ColumnCheck(
        values=values,
        missing=missing,
        wrong_type=nothing,
        invalid_code=invalid,
        out_of_range=nothing.copy(),
        implausible=nothing.copy(),
    )


def _check_date(raw: pd.Series, column: DateColumn, schema: Schema) -> ColumnCheck:
    text, missing = _clean_text(raw, column, schema)
    parsed = pd.to_datetime(text, format=column.format, errors="coerce")
    values = parsed.to_numpy(dtype="datetime64[ns]")
    wrong = np.isnat(values) & ~missing
    present = ~missing & ~wrong
    out, implausible = _range_masks(
        values, present, column.hard_range, column.plausible_range
    )
    typed = parsed.where(~(out | wrong | missing))
    nothing = np.zeros(len(raw), dtype=bool)
    return ColumnCheck(
        values=typed.to_numpy(dtype="datetime64[ns]"),
        missing=missing,
        wrong_type=wrong,
        invalid_code=nothing,
        out_of_range=out,
        implausible=implausible,
    )


def _check_identifier(
    raw: pd.Series, column: IdentifierColumn, schema: Schema
) -> ColumnCheck:
    text, missing = _clean_text(raw, column, schema)
    wrong = np.zeros(len(raw), dtype=bool)
    if column.pattern is not None:
        matched = text.str.fullmatch(re.compile(column.pattern)).fillna(False)
        wrong = ~missing & ~matched.to_numpy(dtype=bool)
    nothing = np.zeros(len(raw), dtype=bool)
    return ColumnCheck(
        values=text.where(~wrong, None).to_numpy(dtype=object),
        missing=missing,
        wrong_type=wrong,
        invalid_code=nothing,
        out_of_range=nothing.copy(),
        implausible=nothing.copy(),
    )
