"""validate, check-schema and export-json-schema on real files."""

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from schemas.commands import check_schema, export_json_schema
from silo_agent.validate_command import validate

DATA = Path(__file__).resolve().parents[2] / "data" / "heart-disease"
GOOD = "63,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n"


def make_app():
    app = typer.Typer()
    app.command("validate")(validate)
    app.command("check-schema")(check_schema)
    app.command("export-json-schema")(export_json_schema)
    return app


RUNNER = CliRunner()


def test_validate_clean_exit_0(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(GOOD)
    result = RUNNER.invoke(make_app(), ["validate", str(path)])
    assert result.exit_code == 0
    assert not (tmp_path / "data.csv.quarantine.csv").exists()


def test_validate_quarantine_exit_1(tmp_path):
    report = tmp_path / "report.json"
    quarantine = tmp_path / "q.csv"
    result = RUNNER.invoke(
        make_app(),
        [
            "validate",
            str(DATA / "processed.va.data"),
            "--quarantine",
            str(quarantine),
            "--report-json",
            str(report),
        ],
    )
    assert result.exit_code == 1
    assert quarantine.exists()
    assert json.loads(report.read_text())["quarantined_rows"] == 1


def test_validate_unusable_exit_2(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    result = RUNNER.invoke(make_app(), ["validate", str(path)])
    assert result.exit_code == 2


def test_validate_no_row_passes_exit_2(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("?,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n")
    result = RUNNER.invoke(make_app(), ["validate", str(path)])
    assert result.exit_code == 2


def test_check_schema_exit_codes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversion: 1.0.0\ncolumns: []\n")
    good = Path(__file__).resolve().parents[2] / "schemas/bundled/heart_disease.yaml"
    assert RUNNER.invoke(make_app(), ["check-schema", str(good)]).exit_code == 0
    failed = RUNNER.invoke(make_app(), ["check-schema", str(bad)])
    assert failed.exit_code == 2
    assert "columns" in failed.output


def test_export_json_schema(tmp_path):
    output = tmp_path / "schema.json"
    result = RUNNER.invoke(make_app(), ["export-json-schema", str(output)])
    assert result.exit_code == 0
    assert "columns" in json.loads(output.read_text())["properties"]


def test_validate_tab_delimiter(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text(GOOD.replace(",", "\t"))
    result = RUNNER.invoke(make_app(), ["validate", str(path), "--delimiter", "tab"])
    assert result.exit_code == 0


def test_validate_long_delimiter(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(GOOD)
    result = RUNNER.invoke(make_app(), ["validate", str(path), "--delimiter", ";;"])
    assert result.exit_code == 2
