"""Validation throughput on a 1,000,000-row, 14-column CSV with 1% bad values.

Compares, in one run and on the same data:

- pandas alone: ``pd.read_csv`` of the file (C engine, types inferred);
- the whole validation (``validate_file``: read, check, deduplicate, quarantine),
  which is the work of ``silo-agent validate`` after the process has started;
- our checks on an in-memory DataFrame, and pandera's lazy validation of the
  same checks (ranges, codes, missing rules, duplicate rows) on the same frame.

Run: ``.venv/bin/python benchmarks/bench_validation.py [--rows N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from schemas import HEART_DISEASE_SCHEMA_PATH, load_schema
from schemas.model import (
    BooleanColumn,
    CategoricalColumn,
    IntegerColumn,
    NumberColumn,
    Schema,
)
from schemas.validation import validate_file, validate_frame

BAD_FRACTION = 0.01


def make_csv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(29, 78, rows).astype(str),
            "sex": rng.integers(0, 2, rows).astype(str),
            "cp": rng.integers(1, 5, rows).astype(str),
            "trestbps": rng.integers(94, 200, rows).astype(str),
            "chol": rng.integers(126, 564, rows).astype(str),
            "fbs": rng.integers(0, 2, rows).astype(str),
            "restecg": rng.integers(0, 3, rows).astype(str),
            "thalach": rng.integers(71, 202, rows).astype(str),
            "exang": rng.integers(0, 2, rows).astype(str),
            "oldpeak": np.round(rng.uniform(-2, 6, rows), 1).astype(str),
            "slope": rng.integers(1, 4, rows).astype(str),
            "ca": rng.integers(0, 4, rows).astype(str),
            "thal": rng.choice(["3", "6", "7"], rows),
            "num": rng.integers(0, 5, rows).astype(str),
        }
    )
    # 1% of rows get one bad cell: out of range, invalid code, text, or '?'.
    bad_rows = rng.choice(rows, int(rows * BAD_FRACTION), replace=False)
    kinds = rng.integers(0, 4, len(bad_rows))
    frame.loc[bad_rows[kinds == 0], "thalach"] = "400"
    frame.loc[bad_rows[kinds == 1], "cp"] = "9"
    frame.loc[bad_rows[kinds == 2], "chol"] = "high"
    frame.loc[bad_rows[kinds == 3], "age"] = "?"
    frame.to_csv(path, header=False, index=False)


def pandera_schema(schema: Schema) -> pa.DataFrameSchema:
    """Build pandera's version of the schema's checks.

    Per column: type (coerced to float, so text is a failure case), whole numbers
    for integer columns, hard range or declared codes, numeric missing markers,
    nullability from the missing rule, and the plausible range as a warning.
    Across columns: no two identical rows.
    """
    columns = {}
    for column in schema.columns:
        checks = []
        if isinstance(column, IntegerColumn | NumberColumn):
            if column.hard_range is not None:
                bounds = column.hard_range
                checks.append(pa.Check.in_range(bounds.min, bounds.max))
            if column.plausible_range is not None:
                bounds = column.plausible_range
                checks.append(
                    pa.Check.in_range(bounds.min, bounds.max, raise_warning=True)
                )
            if isinstance(column, IntegerColumn):
                checks.append(pa.Check(lambda values: values % 1 == 0))
            markers = [float(m) for m in column.missing_values]
            if markers:
                checks.append(pa.Check.notin(markers))
        elif isinstance(column, CategoricalColumn):
            checks.append(pa.Check.isin([float(c) for c in column.codes]))
        elif isinstance(column, BooleanColumn):
            allowed = [*column.true_values, *column.false_values]
            checks.append(pa.Check.isin([float(v) for v in allowed]))
        columns[column.name] = pa.Column(
            float,
            checks=checks,
            nullable=column.missing.action != "reject",
            coerce=True,
        )
    return pa.DataFrameSchema(columns, unique=list(schema.column_names))


def time_interleaved(
    functions: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, round-robin, so that load from other
    processes on the machine affects every contestant alike."""
    durations: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            durations[name].append(time.perf_counter() - start)
    return durations


def our_checks(frame: pd.DataFrame, schema: Schema) -> None:
    validate_frame(frame, schema)


def pandera_checks(frame: pd.DataFrame, checker: pa.DataFrameSchema) -> None:
    try:
        checker.validate(frame, lazy=True)
    except pa.errors.SchemaErrors:
        pass


def count_failures(
    frame: pd.DataFrame, schema: Schema, checker: pa.DataFrameSchema
) -> tuple[int, int]:
    """Return the rows that we quarantine and the rows that pandera flags."""
    ours = validate_frame(frame, schema).quarantined_rows
    try:
        checker.validate(frame, lazy=True)
        flagged = 0
    except pa.errors.SchemaErrors as exc:
        flagged = exc.failure_cases["index"].dropna().nunique()
    return ours, flagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    # pandera warns once per failing plausible-range check, listing every case.
    warnings.filterwarnings("ignore", category=pa.errors.SchemaWarning)
    schema = load_schema(HEART_DISEASE_SCHEMA_PATH)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "records.csv"
        make_csv(path, args.rows)
        quarantine = Path(folder) / "quarantine.csv"
        read_frame = pd.read_csv(
            path,
            header=None,
            names=list(schema.column_names),
            keep_default_na=False,
            na_values=["?", "", "NA"],
        )
        checker = pandera_schema(schema)
        ours, flagged = count_failures(read_frame, schema, checker)
        print(f"rows failing: {ours} quarantined by us, {flagged} flagged by pandera")
        # Untimed: compiles or loads the Numba loops of the file path too.
        validate_file(path, schema, quarantine, keep_accepted=False)

        functions: dict[str, Callable[[], object]] = {
            "pandas read_csv alone": lambda: pd.read_csv(path, header=None),
            "validate_file (command's work)": lambda: validate_file(
                path, schema, quarantine, keep_accepted=False
            ),
            "our checks on the DataFrame": lambda: our_checks(read_frame, schema),
            "pandera lazy on the DataFrame": lambda: pandera_checks(
                read_frame, checker
            ),
        }
        runs = time_interleaved(functions, args.repeats)

    medians = {name: statistics.median(values) for name, values in runs.items()}
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"rows: {args.rows}, repeats: {args.repeats} (median seconds)")
    print(f"load average after the run (1, 5, 15 min): {load}")
    for name, seconds in medians.items():
        print(f"{name:32s} {seconds:8.3f} s {args.rows / seconds:12,.0f} rows/s")
    read = medians["pandas read_csv alone"]
    validation = medians["validate_file (command's work)"]
    print(f"validate_file / pandas read: {validation / read:.2f}x")
    ours = medians["our checks on the DataFrame"]
    pandera = medians["pandera lazy on the DataFrame"]
    print(f"our checks throughput / pandera: {pandera / ours:.2f}x")


if __name__ == "__main__":
    main()
