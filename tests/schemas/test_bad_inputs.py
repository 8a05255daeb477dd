"""Bad and unusual input files, each with its expected outcome."""

import hashlib

import numpy as np
import pandas as pd
import pytest

from schemas import HEART_DISEASE_SCHEMA_PATH, ICU_OUTCOME_SCHEMA_PATH, load_schema
from schemas.duplicates import row_hashes
from schemas.errors import (
    EmptyCohortError,
    LabelMappingError,
    MissingColumnError,
    UnreadableFileError,
)
from schemas.reading import CsvOptions
from schemas.validation import validate_file, validate_frame

HEADER = "age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num"
GOOD = "63,1,1,145,233,1,2,150,0,2.3,3,0,6,0"
ICU_HEADER = (
    "patient_id,admitted_on,birth_date,sex,heart_rate,mean_arterial_pressure,"
    "lactate,ventilated,outcome"
)


@pytest.fixture(scope="module")
def heart():
    return load_schema(HEART_DISEASE_SCHEMA_PATH)


@pytest.fixture(scope="module")
def icu():
    return load_schema(ICU_OUTCOME_SCHEMA_PATH)


def write(tmp_path, text, name="data.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def quarantine_rows(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_question_marks_are_missing(heart, tmp_path):
    path = write(tmp_path, "63,1,1,145,?,1,2,150,0,2.3,?,?,?,0\n")
    result = validate_file(path, heart)
    assert result.accepted_rows == 1
    assert result.report.columns["chol"].missing == 1
    assert np.isnan(result.accepted.loc[1, "ca"])


def test_question_mark_rejected_column(heart, tmp_path):
    path = write(tmp_path, f"?,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n{GOOD}\n")
    quarantine = tmp_path / "q.csv"
    result = validate_file(path, heart, quarantine)
    rows = quarantine_rows(quarantine)
    assert result.quarantined_rows == 1
    assert rows.loc[0, "line"] == "1"
    assert rows.loc[0, "reasons"] == "age: missing (rejected by the schema)"
    assert rows.loc[0, "row"] == "?,1,1,145,233,1,2,150,0,2.3,3,0,6,0"


def test_bom_on_first_header(heart, tmp_path):
    path = write(tmp_path, f"{HEADER}\n{GOOD}\n", encoding="utf-8-sig")
    result = validate_file(path, heart)
    assert result.report.header is True
    assert result.accepted_rows == 1
    assert result.accepted.index[0] == 2


def test_bom_without_header(heart, tmp_path):
    path = write(tmp_path, f"{GOOD}\n", encoding="utf-8-sig")
    result = validate_file(path, heart)
    assert result.accepted.loc[1, "age"] == 63


def test_zero_means_not_measured(heart, tmp_path):
    path = write(tmp_path, "63,1,1,0,0.0,1,2,150,0,2.3,3,0,6,0\n")
    result = validate_file(path, heart)
    assert result.accepted_rows == 1
    assert result.report.columns["trestbps"].missing == 1
    assert result.report.columns["chol"].missing == 1


def test_code_outside_set(heart, tmp_path):
    path = write(tmp_path, f"63,1,5,145,233,1,2,150,0,2.3,3,0,6,0\n{GOOD}\n")
    quarantine = tmp_path / "q.csv"
    result = validate_file(path, heart, quarantine)
    assert result.quarantined_rows == 1
    assert result.report.columns["cp"].invalid_code == 1
    assert "cp: code not in the declared codes" in quarantine.read_text()


def test_out_of_hard_range(heart, tmp_path):
    path = write(tmp_path, f"63,1,1,145,233,1,2,400,0,2.3,3,0,6,0\n{GOOD}\n")
    result = validate_file(path, heart)
    assert result.report.columns["thalach"].out_of_range == 1
    assert result.quarantined_rows == 1


def test_implausible_is_warning(heart, tmp_path):
    path = write(tmp_path, "12,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n")
    result = validate_file(path, heart)
    assert result.accepted_rows == 1
    assert result.report.columns["age"].warnings == 1


def test_type_change_in_large_file(heart, tmp_path):
    # Age, blood pressure and heart rate vary so that no two rows are equal.
    rows = [
        f"{30 + i % 40},1,1,{100 + i // 40 % 100},233,1,2,{100 + i // 4000},0,"
        "2.3,3,0,6,0"
        for i in range(30_000)
    ]
    for i in range(20_000, 30_000, 1000):
        rows[i] = rows[i].replace(",233,", ",high,")
    path = write(tmp_path, "\n".join(rows) + "\n")
    quarantine = tmp_path / "q.csv"
    result = validate_file(
        path, heart, quarantine, options=CsvOptions(chunk_rows=7_000)
    )
    lines = quarantine_rows(quarantine)["line"].astype(int).tolist()
    assert result.report.columns["chol"].wrong_type == 10
    assert lines == list(range(20_001, 30_001, 1000))
    assert result.accepted_rows == 29_990


def test_exact_duplicate_across_chunks(heart, tmp_path):
    other = "50,0,2,120,200,0,0,160,0,0,1,0,3,0"
    path = write(tmp_path, "\n".join([GOOD, other, other, GOOD]) + "\n")
    quarantine = tmp_path / "q.csv"
    validate_file(path, heart, quarantine, options=CsvOptions(chunk_rows=2))
    rows = quarantine_rows(quarantine)
    assert rows["line"].tolist() == ["3", "4"]
    assert rows["reasons"].tolist() == ["duplicate of line 2", "duplicate of line 1"]


def test_float_and_int_duplicate(heart, tmp_path):
    as_float = ",".join(f"{float(v)}" for v in GOOD.split(","))
    path = write(tmp_path, f"{GOOD}\n{as_float}\n")
    result = validate_file(path, heart)
    assert result.report.duplicate_rows == 1


def icu_row(patient, outcome="home", admitted="2021-03-04"):
    return f"{patient},{admitted},1950-02-01,F,88,75.5,2.1,yes,{outcome}"


def test_patient_quarantine_all(icu, tmp_path):
    rows = [icu_row("P000001"), icu_row("P000002"), icu_row("P000001", "died")]
    path = write(tmp_path, ICU_HEADER + "\n" + "\n".join(rows) + "\n")
    quarantine = tmp_path / "q.csv"
    result = validate_file(path, icu, quarantine, options=CsvOptions(chunk_rows=1))
    rows = quarantine_rows(quarantine)
    assert result.accepted.index.tolist() == [3]
    assert rows["line"].tolist() == ["2", "4"]
    assert rows["reasons"].tolist() == [
        "patient id shared by 2 rows, first at line 2",
        "patient id shared by 2 rows, first at line 2",
    ]


def test_patient_keep_first(icu, tmp_path):
    schema = icu.model_copy(
        update={
            "privacy_unit": icu.privacy_unit.model_copy(
                update={"on_duplicate": "keep_first"}
            )
        }
    )
    rows = [icu_row("P000001"), icu_row("P000002"), icu_row("P000001", "died")]
    path = write(tmp_path, ICU_HEADER + "\n" + "\n".join(rows) + "\n")
    quarantine = tmp_path / "q.csv"
    result = validate_file(path, schema, quarantine, options=CsvOptions(chunk_rows=1))
    assert result.accepted.index.tolist() == [2, 3]
    assert quarantine_rows(quarantine)["reasons"].tolist() == [
        "duplicate patient id, first row at line 2"
    ]


def test_bad_date_and_pattern(icu, tmp_path):
    rows = [icu_row("P000001", admitted="2021-13-01"), icu_row("X1")]
    path = write(tmp_path, ICU_HEADER + "\n" + "\n".join(rows) + "\n")
    result = validate_file(path, icu)
    assert result.report.columns["admitted_on"].wrong_type == 1
    assert result.report.columns["patient_id"].wrong_type == 1


def test_empty_file(heart, tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(EmptyCohortError, match="empty"):
        validate_file(path, heart)


def test_header_without_rows(heart, tmp_path):
    path = write(tmp_path, HEADER + "\n")
    quarantine = tmp_path / "q.csv"
    with pytest.raises(EmptyCohortError, match="no data rows"):
        validate_file(path, heart, quarantine)
    assert not quarantine.exists()


def test_missing_required_column(heart, tmp_path):
    header = HEADER.replace("chol", "cholesterol")
    path = write(tmp_path, f"{header}\n{GOOD}\n")
    with pytest.raises(MissingColumnError) as caught:
        validate_file(path, heart)
    assert caught.value.column == "chol"
    assert str(path) in str(caught.value)


def test_label_outside_mapping(heart, tmp_path):
    path = write(tmp_path, f"{GOOD}\n63,1,1,145,233,1,2,150,0,2.3,3,0,6,7\n")
    quarantine = tmp_path / "q.csv"
    with pytest.raises(LabelMappingError, match="line 2") as caught:
        validate_file(path, heart, quarantine)
    assert caught.value.column == "num"
    assert not quarantine.exists()


def test_file_not_found(heart, tmp_path):
    with pytest.raises(UnreadableFileError, match="not found"):
        validate_file(tmp_path / "absent.csv", heart)


def test_too_many_fields(heart, tmp_path):
    path = write(tmp_path, f"{HEADER}\n{GOOD}\n{GOOD},9\n")
    with pytest.raises(UnreadableFileError, match="parsed"):
        validate_file(path, heart)


def test_wrong_field_count_without_header(heart, tmp_path):
    path = write(tmp_path, "1,2,3\n")
    with pytest.raises(UnreadableFileError, match="no header"):
        validate_file(path, heart)


def test_quoted_line_break(icu, tmp_path):
    row = icu_row("P000001")
    text = f'{ICU_HEADER},ward_note\n{row},"bed\n4"\n'
    path = write(tmp_path, text)
    with pytest.raises(UnreadableFileError, match="spans several lines"):
        validate_file(path, icu)


def test_semicolon_latin1(heart, tmp_path):
    text = "# ignored?\n"
    path = write(
        tmp_path,
        f"{HEADER};note\n".replace(",", ";") + GOOD.replace(",", ";") + ";café\n",
        encoding="latin-1",
    )
    del text
    result = validate_file(path, heart)
    assert result.report.delimiter == ";"
    assert result.accepted_rows == 1
    assert result.report.extra_columns == ["note"]


def test_utf16_input(heart, tmp_path):
    path = write(
        tmp_path,
        f"{HEADER}\n{GOOD}\n?,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n",
        encoding="utf-16",
    )
    quarantine = tmp_path / "q.csv"
    result = validate_file(path, heart, quarantine)
    assert result.accepted_rows == 1
    assert quarantine_rows(quarantine).loc[0, "row"].startswith("?,1,1")


def test_blank_line_is_empty_row(heart, tmp_path):
    path = write(tmp_path, f"{GOOD}\n\n50,0,2,120,200,0,0,160,0,0,1,0,3,0\n")
    quarantine = tmp_path / "q.csv"
    result = validate_file(path, heart, quarantine)
    assert result.report.empty_rows == 1
    assert result.accepted.index.tolist() == [1, 3]
    assert quarantine_rows(quarantine).loc[0, "reasons"] == (
        "empty row: every field is missing"
    )


def test_parquet_input(heart, tmp_path):
    frame = pd.read_csv(
        pd.io.common.StringIO(
            f"{HEADER}\n{GOOD}\n63,1,9,145,233,1,2,150,0,2.3,3,0,6,0\n"
        )
    )
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    quarantine = tmp_path / "q.csv"
    result = validate_file(path, heart, quarantine)
    assert result.accepted_rows == 1
    assert quarantine_rows(quarantine).loc[0, "line"] == "2"


def test_input_never_modified(heart, tmp_path):
    path = write(tmp_path, f"{GOOD}\n?,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    validate_file(path, heart, tmp_path / "q.csv")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_no_quarantine_when_clean(heart, tmp_path):
    path = write(tmp_path, f"{GOOD}\n")
    quarantine = tmp_path / "q.csv"
    result = validate_file(path, heart, quarantine)
    assert result.quarantine_path is None
    assert not quarantine.exists()


def test_frame_input(heart, tmp_path):
    frame = pd.read_csv(
        pd.io.common.StringIO(
            f"{HEADER}\n{GOOD}\n?,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n"
        ),
        dtype=str,
        keep_default_na=False,
    )
    quarantine = tmp_path / "q.csv"
    result = validate_frame(frame, heart, quarantine)
    rows = quarantine_rows(quarantine)
    assert result.accepted.index.tolist() == [1]
    assert rows.loc[0, "line"] == "2"
    assert rows.loc[0, "row"] == "?,1,1,145,233,1,2,150,0,2.3,3,0,6,0"


def test_frame_without_rows(heart):
    frame = pd.DataFrame(columns=HEADER.split(","))
    with pytest.raises(EmptyCohortError):
        validate_frame(frame, heart)


def test_bom_with_declared_utf8(heart, tmp_path):
    path = write(tmp_path, f"{HEADER}\n{GOOD}\n", encoding="utf-8-sig")
    result = validate_file(path, heart, options=CsvOptions(encoding="utf-8"))
    assert result.accepted_rows == 1


def test_unknown_encoding(heart, tmp_path):
    path = write(tmp_path, f"{GOOD}\n")
    with pytest.raises(UnreadableFileError, match="unknown encoding"):
        validate_file(path, heart, options=CsvOptions(encoding="klingon-8"))


def test_integer_patient_id(icu, tmp_path):
    document = icu.model_dump()
    document["columns"] = list(document["columns"])
    document["columns"][0] = {
        "name": "patient_id",
        "type": "integer",
        "feature": False,
        "hard_range": {"min": 1, "max": 999999},
    }
    schema = type(icu).model_validate(document)
    rows = [icu_row("17"), icu_row("17.0", "died"), icu_row("18")]
    path = write(tmp_path, ICU_HEADER + "\n" + "\n".join(rows) + "\n")
    result = validate_file(path, schema)
    assert result.accepted.index.tolist() == [4]
    assert result.report.duplicate_rows == 2


def test_parquet_dates(icu, tmp_path):
    frame = pd.DataFrame(
        {
            "patient_id": ["P000001", "P000002"],
            "admitted_on": pd.to_datetime(["2021-03-04", "1990-01-01"]),
            "birth_date": pd.to_datetime(["1950-02-01", "1960-01-01"]),
            "sex": ["F", None],
            "heart_rate": [88, None],
            "mean_arterial_pressure": [75.5, 0.0],
            "lactate": [2.1, None],
            "ventilated": ["yes", "no"],
            "outcome": ["home", "died"],
        }
    )
    path = tmp_path / "icu.parquet"
    frame.to_parquet(path)
    quarantine = tmp_path / "q.csv"
    result = validate_file(path, icu, quarantine)
    assert result.accepted.index.tolist() == [1]
    assert result.report.columns["admitted_on"].out_of_range == 1
    assert result.report.columns["mean_arterial_pressure"].missing == 1
    assert quarantine_rows(quarantine).loc[0, "line"] == "2"


def test_row_hashes_equal_for_equal_values():
    other_nan = np.array([0x7FF8000000000001], dtype=np.uint64).view(np.float64)[0]
    text = np.array(["x", None, "y"], dtype=object)
    first = [np.array([0.0, np.nan, 2.5]), text]
    second = [np.array([-0.0, other_nan, 2.5]), text.copy()]
    np.testing.assert_array_equal(row_hashes(first), row_hashes(second))


def test_row_hashes_depend_on_column_order():
    a, b = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    assert not np.any(row_hashes([a, b]) == row_hashes([b, a]))


def test_row_hashes_separate_rows_of_small_whole_numbers():
    # Whole numbers as float64 differ only in their high bits. A hash that
    # only multiplies and adds, or xors and multiplies, maps these 400,000
    # rows to about 16,000 values.
    rng = np.random.default_rng(1)
    columns = [rng.integers(0, 6, 400_000).astype(float) for _ in range(14)]
    distinct_rows = len(pd.DataFrame(dict(enumerate(columns))).drop_duplicates())
    assert len(np.unique(row_hashes(columns))) == distinct_rows


@pytest.mark.filterwarnings("error::pandas.errors.DtypeWarning")
def test_type_change_within_chunk(heart, tmp_path):
    # 150,000 rows span two of the row buffers that pandas' C parser fills when
    # low_memory is on, and only the second buffer contains text.
    rows = [
        f"{30 + i % 40},1,1,{100 + i // 40 % 100},233,1,2,{100 + i // 4000 % 100},"
        "0,2.3,3,0,6,0"
        for i in range(150_000)
    ]
    rows[140_000] = rows[140_000].replace(",233,", ",high,")
    path = write(tmp_path, "\n".join(rows) + "\n")
    result = validate_file(path, heart)
    assert result.report.columns["chol"].wrong_type == 1
    assert result.accepted_rows == 149_999


def test_every_row_one_field_more(heart, tmp_path):
    # pandas would silently use the first field as the index and shift columns.
    path = write(tmp_path, f"{HEADER}\n{GOOD},\n{GOOD},\n")
    with pytest.raises(UnreadableFileError, match="more fields than the header"):
        validate_file(path, heart)


def test_later_row_extra_field(heart, tmp_path):
    path = write(tmp_path, f"{GOOD}\n{GOOD},9\n")
    with pytest.raises(UnreadableFileError, match="parsed"):
        validate_file(path, heart)


def test_late_non_utf8_byte(heart, tmp_path):
    rows = [
        f"{30 + i % 40},1,1,{100 + i // 40},233,1,2,150,0,2.3,3,0,6,0"
        for i in range(3_000)
    ]
    notes = ["x"] * (len(rows) - 1) + ["é"]
    body = "\n".join(f"{row},{note}" for row, note in zip(rows, notes, strict=True))
    text = f"{HEADER},note\n{body}\n"
    path = write(tmp_path, text, encoding="latin-1")
    with pytest.raises(UnreadableFileError, match="encoding"):
        validate_file(path, heart)
    result = validate_file(path, heart, options=CsvOptions(encoding="latin-1"))
    assert result.accepted_rows == 3_000


def test_spaces_after_delimiters(heart, tmp_path):
    spaced = "63, 1, 1, 145, ?, 1, 2, 150, 0, 2.3, 3, 0, 6, 0"
    path = write(tmp_path, f"{HEADER}\n{spaced}\n{GOOD}\n")
    result = validate_file(path, heart)
    assert result.accepted_rows == 2
    assert result.report.columns["chol"].missing == 1
    assert result.report.columns["chol"].wrong_type == 0
    assert result.accepted.loc[3, "oldpeak"] == 2.3


def test_quoted_fields_after_spaces(icu, tmp_path):
    quoted = icu_row("P000002").replace(",", ', "', 1).replace(",", '",', 2)
    quoted = quoted.replace('",', ",", 1)
    assert quoted.startswith('P000002, "')
    path = write(
        tmp_path, ICU_HEADER + "\n" + icu_row("P000001") + "\n" + quoted + "\n"
    )
    result = validate_file(path, icu)
    assert result.accepted_rows == 2
    assert (
        result.accepted.loc[3, "admitted_on"] == result.accepted.loc[2, "admitted_on"]
    )


def test_padded_marker_after_the_sample(heart, tmp_path):
    # The first 64 KiB have no space after a delimiter, so pandas keeps spaces.
    # The padded marker and the word then reach the check as text.
    rows = [
        GOOD.replace(",233,", f",{200 + i % 300},").replace(
            ",150,", f",{100 + i // 300},"
        )
        for i in range(3_000)
    ]
    rows[2_500] = GOOD.replace(",233,", ", ? ,")
    rows[2_600] = GOOD.replace(",233,", ",high,")
    path = write(tmp_path, "\n".join(rows) + "\n")
    assert path.stat().st_size > 64 * 1024
    result = validate_file(path, heart)
    assert result.report.columns["chol"].missing == 1
    assert result.report.columns["chol"].wrong_type == 1
    assert result.quarantined_rows == 1


def test_text_marker_that_reads_as_a_number(heart, tmp_path):
    columns = tuple(
        column.model_copy(update={"missing_values": ("999",)})
        if column.name == "trestbps"
        else column
        for column in heart.columns
    )
    schema = heart.model_copy(update={"columns": columns})
    rows = [GOOD, GOOD.replace(",145,", ", 999,"), GOOD.replace(",145,", ",999,")]
    path = write(tmp_path, "\n".join(rows) + "\n")
    result = validate_file(path, schema)
    assert result.report.columns["trestbps"].missing == 2


@pytest.mark.parametrize("ending", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("final_newline", [True, False], ids=["final", "no-final"])
@pytest.mark.parametrize("parser", ["compiled", "pandas"])
def test_quarantined_rows_across_line_blocks(
    heart, tmp_path, monkeypatch, ending, final_newline, parser
):
    # Blocks of 100 bytes put line ends at every position relative to a block:
    # the compiled parse's blocks, or the line reader's beside pandas' parser.
    if parser == "compiled":
        monkeypatch.setattr("schemas.reading.PARSE_BLOCK_BYTES", 100)
    else:
        monkeypatch.setattr("schemas.reading._BLOCK_BYTES", 100)
        monkeypatch.setattr(
            "schemas.validation.compiled_parse_supported", lambda *_: False
        )
    rows = [GOOD.replace(",150,", f",{100 + i},") for i in range(60)]
    for line in (1, 7, 8, 30, 59, 60):
        rows[line - 1] = rows[line - 1].replace(",1,1,", ",1,9,")
    text = ending.join(rows) + (ending if final_newline else "")
    path = write(tmp_path, text)
    quarantine = tmp_path / "q.csv"
    result = validate_file(path, heart, quarantine)
    assert result.total_rows == 60
    written = quarantine_rows(quarantine)
    assert written["line"].tolist() == ["1", "7", "8", "30", "59", "60"]
    assert written["row"].tolist() == [rows[n - 1] for n in (1, 7, 8, 30, 59, 60)]


def test_clean_run_removes_earlier_quarantine(heart, tmp_path):
    quarantine = tmp_path / "q.csv"
    path = write(tmp_path, f"{GOOD}\n{GOOD.replace(',1,1,', ',1,9,')}\n")
    assert validate_file(path, heart, quarantine).quarantined_rows == 1
    assert quarantine.exists()
    path = write(tmp_path, f"{GOOD}\n")
    assert validate_file(path, heart, quarantine).quarantined_rows == 0
    assert not quarantine.exists()


def test_clean_run_keeps_other_file_at_quarantine_path(heart, tmp_path):
    other = write(tmp_path, "not,a,quarantine\n", name="notes.csv")
    path = write(tmp_path, f"{GOOD}\n")
    assert validate_file(path, heart, other).quarantined_rows == 0
    assert other.read_text(encoding="utf-8") == "not,a,quarantine\n"


def test_lone_carriage_return(heart, tmp_path):
    bad = GOOD.replace(",1,1,", ",1,9,")
    path = write(tmp_path, f"{HEADER}\n{GOOD}\r{bad}\n")
    with pytest.raises(UnreadableFileError, match="lone carriage return"):
        validate_file(path, heart, tmp_path / "q.csv")
