"""Hypothesis properties of validation and encoding on generated files."""

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import HEART_DISEASE_SCHEMA_PATH, ICU_OUTCOME_SCHEMA_PATH, load_schema
from schemas.encoding import FeatureEncoder
from schemas.reading import CsvOptions
from schemas.validation import validate_file

SCHEMA = load_schema(HEART_DISEASE_SCHEMA_PATH)
ENCODER = FeatureEncoder(SCHEMA)
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

VALID_CELLS = {
    "age": st.integers(18, 100).map(str),
    "sex": st.sampled_from(["0", "1", "1.0"]),
    "cp": st.sampled_from(["1", "2", "3", "4"]),
    "trestbps": st.one_of(st.integers(80, 220).map(str), st.just("?"), st.just("0")),
    "chol": st.one_of(st.integers(100, 600).map(str), st.just("0")),
    "fbs": st.sampled_from(["0", "1", "?"]),
    "restecg": st.sampled_from(["0", "1", "2", "?"]),
    "thalach": st.integers(60, 220).map(str),
    "exang": st.sampled_from(["0", "1"]),
    "oldpeak": st.sampled_from(["0", ".7", "-1.5", "2.3", "?"]),
    "slope": st.sampled_from(["1", "2", "3", "?"]),
    "ca": st.sampled_from(["0", "1.0", "3", "?"]),
    "thal": st.sampled_from(["3", "6", "7", "?"]),
    "num": st.sampled_from(["0", "1", "2", "3", "4"]),
}
BAD_CELLS = st.sampled_from(["x", "", "999", "-5", "2.5", "NA"])

valid_row = st.tuples(*VALID_CELLS.values()).map(",".join)


@st.composite
def any_row(draw):
    cells = list(draw(st.tuples(*VALID_CELLS.values())))
    if draw(st.booleans()):
        position = draw(st.integers(0, len(cells) - 2))
        cells[position] = draw(BAD_CELLS)
    return ",".join(cells)


def run(tmp_path, rows, chunk_rows):
    path = tmp_path / "data.csv"
    path.write_text("\n".join(rows) + "\n")
    quarantine = tmp_path / "q.csv"
    quarantine.unlink(missing_ok=True)
    result = validate_file(
        path, SCHEMA, quarantine, options=CsvOptions(chunk_rows=chunk_rows)
    )
    quarantined = (
        pd.read_csv(quarantine, dtype=str, keep_default_na=False)
        if quarantine.exists()
        else pd.DataFrame({"line": [], "row": []})
    )
    return result, quarantined


@SETTINGS
@given(rows=st.lists(any_row(), min_size=1, max_size=40), chunk_rows=st.integers(1, 9))
def test_every_row_once(tmp_path, rows, chunk_rows):
    result, quarantined = run(tmp_path, rows, chunk_rows)
    accepted_lines = set(result.accepted.index.tolist())
    quarantined_lines = quarantined["line"].astype(int).tolist()
    assert len(quarantined_lines) == len(set(quarantined_lines))
    assert accepted_lines.isdisjoint(quarantined_lines)
    assert accepted_lines | set(quarantined_lines) == set(range(1, len(rows) + 1))
    assert result.accepted_rows + result.quarantined_rows == result.total_rows
    assert result.total_rows == len(rows)
    for line, row in zip(quarantined_lines, quarantined["row"], strict=True):
        assert row == rows[line - 1]


@SETTINGS
@given(
    rows=st.lists(valid_row, min_size=1, max_size=40, unique=True),
    chunk_rows=st.integers(1, 9),
)
def test_valid_row_accepted(tmp_path, rows, chunk_rows):
    # Distinct text can still be one record ('1' and '1.0'): compare typed rows.
    typed = pd.read_csv(
        pd.io.common.StringIO("\n".join(rows)), header=None, na_values=["?"]
    )
    typed = typed.replace({3: {0: np.nan}, 4: {0: np.nan}})
    distinct = (~typed.duplicated()).sum()
    result, _ = run(tmp_path, rows, chunk_rows)
    assert result.accepted_rows == distinct
    assert result.report.duplicate_rows == len(rows) - distinct


@SETTINGS
@given(rows=st.lists(any_row(), min_size=1, max_size=30))
def test_validation_encoding_deterministic(tmp_path, rows):
    first, _ = run(tmp_path, rows, 4)
    second, _ = run(tmp_path, rows, 7)
    features = ENCODER.transform(first.accepted)
    np.testing.assert_array_equal(features, ENCODER.transform(second.accepted))
    np.testing.assert_array_equal(
        ENCODER.labels(first.accepted), ENCODER.labels(second.accepted)
    )
    assert not np.isnan(features).any()


ICU = load_schema(ICU_OUTCOME_SCHEMA_PATH)
ICU_HEADER = (
    "patient_id,admitted_on,birth_date,sex,heart_rate,mean_arterial_pressure,"
    "lactate,ventilated,outcome"
)
ICU_CELLS = [
    st.sampled_from(["P000001", "P000002", "P000003", "X", ""]),
    st.sampled_from(["2021-03-04", "2021-13-01", "1990-01-01", "NA"]),
    st.sampled_from(["1950-02-01", "2019-01-01", "", "01/02/1950"]),
    st.sampled_from(["F", "M", "X", "Q", "NULL"]),
    st.sampled_from(["88", "NA", "350", "7.5", "abc"]),
    st.sampled_from(["75.5", "0", "", "300"]),
    st.sampled_from(["2.1", "", "-1", "nan"]),
    st.sampled_from(["yes", "N", "0", "maybe", ""]),
    st.sampled_from(["home", "transfer", "died", ""]),
]


@SETTINGS
@given(
    rows=st.lists(st.tuples(*ICU_CELLS).map(",".join), min_size=1, max_size=30),
    chunk_rows=st.integers(1, 7),
)
def test_icu_every_row_once(tmp_path, rows, chunk_rows):
    path = tmp_path / "icu.csv"
    path.write_text(ICU_HEADER + "\n" + "\n".join(rows) + "\n")
    quarantine = tmp_path / "q.csv"
    quarantine.unlink(missing_ok=True)
    result = validate_file(
        path, ICU, quarantine, options=CsvOptions(chunk_rows=chunk_rows)
    )
    quarantined = (
        pd.read_csv(quarantine, dtype=str, keep_default_na=False)
        if quarantine.exists()
        else pd.DataFrame({"line": [], "row": []})
    )
    lines = set(result.accepted.index.tolist()) | set(
        quarantined["line"].astype(int).tolist()
    )
    assert lines == set(range(2, len(rows) + 2))
    assert result.accepted_rows + result.quarantined_rows == len(rows)
    patients = result.accepted["patient_id"]
    assert not patients.duplicated().any()
