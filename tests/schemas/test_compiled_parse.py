"""The compiled parse gives exactly what pandas' parser gives, on every input here.

Each file is validated twice: as the validator chooses (the compiled parse for
numeric schemas) and with the compiled parse switched off, so pandas' C parser
reads it. The reports, accepted rows, quarantine files and errors must match.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import HEART_DISEASE_SCHEMA_PATH, Schema, load_schema
from schemas import validation as validation_module
from schemas.errors import SchemaInputError
from schemas.reading import (
    CompiledParseUnsupported,
    CsvOptions,
    compiled_parse_supported,
    iter_compiled_chunks,
    open_csv,
)
from schemas.validation import validate_file

SCHEMA = load_schema(HEART_DISEASE_SCHEMA_PATH)
DATA = Path(__file__).resolve().parents[2] / "data" / "heart-disease"
HEADER = "age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num"
GOOD = "63,1,1,145,233,1,2,150,0,2.3,3,0,6,0"

CELLS = st.sampled_from(
    [
        "0", "1", "2", "3", "4", "6", "7", "63", "145", "233", "2.3", ".7", "-1.5",
        "5.", "+3", "-0", "1e2", "1E-1", "12345678901234567", "0.1234567890123",
        "?", "", "NA", " ? ", " 12 ", "\t7", "x", "high", "nan", "inf", "-inf",
        "1.2.3", "--1", "é", "١٢", "1_000", "0x10", "999", "400", "9",
    ]
)  # fmt: skip


def outcome(
    path: Path, tmp_path: Path, options: CsvOptions, schema: Schema = SCHEMA
) -> object:
    """Return everything a validation produces, or the error it raised."""
    quarantine = tmp_path / "quarantine.csv"
    quarantine.unlink(missing_ok=True)
    try:
        result = validate_file(path, schema, quarantine, options=options)
    except SchemaInputError as error:
        return ("error", type(error).__name__, str(error))
    accepted = result.accepted
    return (
        result.report.to_json(),
        # CSV writes each float's shortest round-trip form and NaN as "".
        accepted.to_csv(),
        [str(dtype) for dtype in accepted.dtypes],
        quarantine.read_bytes() if quarantine.exists() else None,
    )


def both_parsers(
    path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    chunk_rows: int,
    schema: Schema = SCHEMA,
    encoding: str | None = None,
) -> tuple[object, object]:
    options = CsvOptions(chunk_rows=chunk_rows, encoding=encoding)
    compiled = outcome(path, tmp_path, options, schema)
    with monkeypatch.context() as patch:
        patch.setattr(validation_module, "compiled_parse_supported", lambda *_: False)
        pandas = outcome(path, tmp_path, options, schema)
    return compiled, pandas


def with_markers(*markers: str) -> Schema:
    """Return the heart-disease schema with other file-wide missing markers."""
    return SCHEMA.model_copy(update={"missing_values": markers})


def write(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "data.csv"
    path.write_bytes(text.encode(encoding))
    return path


def test_numeric_schema_uses_the_compiled_parse(tmp_path):
    path = write(tmp_path, f"{HEADER}\n{GOOD}\n")
    assert compiled_parse_supported(open_csv(path, SCHEMA, CsvOptions()), SCHEMA)


@pytest.mark.parametrize("hospital", ["cleveland", "hungarian", "switzerland", "va"])
def test_hospital_files_match(hospital, tmp_path, monkeypatch):
    path = tmp_path / f"{hospital}.data"
    shutil.copy(DATA / f"processed.{hospital}.data", path)
    compiled, pandas = both_parsers(path, tmp_path, monkeypatch, 50_000)
    assert compiled == pandas


@pytest.mark.parametrize(
    "text",
    [
        f"{HEADER}\n{GOOD}\n",
        f"{GOOD}\r\n{GOOD.replace('63', '64')}\r\n",
        f"\ufeff{GOOD}\n{GOOD.replace('63', '64')}",
        f"{HEADER}\n{GOOD}\n\n{GOOD}\n",
        f"{HEADER}\n{GOOD}\n\r\n",
        f"{HEADER}\n63,1,1\n",
        f"{HEADER}\n{GOOD},\n",
        f'{HEADER}\n63,1,1,145,"233",1,2,150,0,2.3,3,0,6,0\n',
        f"{HEADER}\n{GOOD}\r{GOOD}\n",
        f"{HEADER}\n{GOOD},1,2\n",
        f"{HEADER},note\n{GOOD},free text\n{GOOD.replace('63', '64')},x\n",
        f"num,age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal\n"
        f"0,{GOOD[:-2]}\n",
        f"{HEADER}\n",
        f"{HEADER}\n\x0b63,1,1,145,233,1,2,150,0,2.3,3,0,6,0\x0c\n{GOOD}\n",
        f"{HEADER}\n?\u00a0,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n",
        f"{HEADER}\n\u00a0?,1,1,145,NA\u3000,1,2,150,0,2.3,3,0,6,0\n",
        f"{HEADER}\n63,1,1,145,233,True,2,150,0,2.3,3,0,6,0\n",
        f"{HEADER[:20]}\r{HEADER[20:]}\n{GOOD}\n{GOOD.replace('63', '64')}\n",
        f"{HEADER},n\udce9te\n{GOOD},x\n",
        f"{GOOD}\n\ufeff{GOOD.replace('63', '64')}\n",
        f"{HEADER}\n63,1,18446744073709551616,145,233,1,2,150,0,2.3,3,0,6,0\n",
        f'{HEADER}\n63,1,18446744073709551616,145,233,1,2,150,0,2.3,3,0,6,0\n'
        f'{GOOD[:-1]}"0"\n',
        f"{HEADER}\n" + f"{GOOD.replace('2.3', '2.3e0')}\n" * 3,
    ],
    ids=[
        "header", "crlf", "bom", "blank-line", "blank-crlf-line", "few-fields",
        "trailing-delimiter", "quoted", "lone-cr", "too-many-fields", "extra-column",
        "reordered", "header-only", "ascii-whitespace", "nbsp-after-marker",
        "unicode-spaces", "true-in-boolean", "lone-cr-in-header",
        "undecodable-header", "bom-mid-file", "beyond-uint64",
        "beyond-uint64-with-quote", "exponents",
    ],
)  # fmt: skip
def test_unusual_layouts_match(text, tmp_path, monkeypatch):
    path = tmp_path / "data.csv"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    compiled, pandas = both_parsers(path, tmp_path, monkeypatch, 50_000)
    assert compiled == pandas


@pytest.mark.parametrize(
    "text",
    [f"{GOOD}\n0,1\n", f"{GOOD}\n\n{GOOD.replace('63', '64')}\n", f"{GOOD},\n"],
    ids=["few-fields", "blank-line", "trailing-delimiter"],
)
def test_empty_text_not_a_marker(text, tmp_path, monkeypatch):
    path = write(tmp_path, text)
    schema = with_markers("?", "NA")
    compiled, pandas = both_parsers(path, tmp_path, monkeypatch, 50_000, schema)
    assert compiled == pandas


def test_marker_with_trailing_space(tmp_path, monkeypatch):
    path = write(tmp_path, f"{HEADER}\n63,1,1,x ,233,1,2,150,0,2.3,3,0,6,0\n")
    schema = with_markers("?", "", "NA", "x ")
    compiled, pandas = both_parsers(path, tmp_path, monkeypatch, 50_000, schema)
    assert compiled == pandas


def test_utf8_bom_in_a_latin1_file(tmp_path, monkeypatch):
    path = tmp_path / "data.csv"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n")
    compiled, pandas = both_parsers(
        path, tmp_path, monkeypatch, 50_000, encoding="latin-1"
    )
    assert compiled == pandas


def test_latin1_file_matches(tmp_path, monkeypatch):
    text = f"{HEADER};note\n" + "\n".join(
        f"{GOOD.replace(',', ';')};caf\u00e9 {i}" for i in range(5)
    )
    path = write(tmp_path, text.replace(",", ";") + "\n", encoding="latin-1")
    compiled, pandas = both_parsers(path, tmp_path, monkeypatch, 50_000)
    assert compiled == pandas


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(st.lists(CELLS, min_size=14, max_size=14), min_size=1, max_size=30),
    duplicates=st.integers(0, 3),
    chunk_rows=st.integers(1, 7),
)
def test_generated_files_match(rows, duplicates, chunk_rows, tmp_path, monkeypatch):
    lines = [",".join(row) for row in rows]
    lines += lines[:duplicates]
    path = write(tmp_path, "\n".join(lines) + "\n")
    compiled, pandas = both_parsers(path, tmp_path, monkeypatch, chunk_rows)
    assert compiled == pandas


def test_large_file_matches(tmp_path, monkeypatch):
    # More than one block of the compiled parse and one chunk of pandas'.
    rng = np.random.default_rng(3)
    rows = 80_000
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

    bad = rng.choice(rows, 800, replace=False)
    frame.loc[bad[:200], "chol"] = "high"
    frame.loc[bad[200:400], "age"] = "?"
    frame.loc[bad[400:600], "cp"] = "9"
    frame.loc[bad[600:], "oldpeak"] = "1e1"
    frame = pd.concat([frame, frame.iloc[:300]])

    path = tmp_path / "large.csv"
    frame.to_csv(path, header=False, index=False)
    assert path.stat().st_size > 2 * 1024 * 1024
    compiled, pandas = both_parsers(path, tmp_path, monkeypatch, 50_000)
    assert compiled == pandas


def test_dense_block_goes_to_pandas(tmp_path, monkeypatch):
    path = write(tmp_path, f"{GOOD}\n\n\n{GOOD.replace('63', '64')}\n")
    monkeypatch.setattr("schemas.reading._MAX_BLOCK_CELLS", 40)
    source = open_csv(path, SCHEMA, CsvOptions())
    with pytest.raises(CompiledParseUnsupported, match="cells"):
        list(iter_compiled_chunks(source, SCHEMA, 50_000))
    compiled, pandas = both_parsers(path, tmp_path, monkeypatch, 50_000)
    assert compiled == pandas


def test_exponent_heavy_block_goes_to_pandas(tmp_path, monkeypatch):
    row = ",".join(f"{cell}e0" for cell in GOOD.split(","))
    path = write(tmp_path, f"{row}\n" * 100)
    source = open_csv(path, SCHEMA, CsvOptions())
    with pytest.raises(CompiledParseUnsupported, match="left to Python"):
        list(iter_compiled_chunks(source, SCHEMA, 50_000))
    compiled, pandas = both_parsers(path, tmp_path, monkeypatch, 50_000)
    assert compiled == pandas
