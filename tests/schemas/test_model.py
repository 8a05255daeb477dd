"""Schema language: loading, content hash, errors with locations, JSON Schema."""

import datetime as dt
import hashlib

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from schemas import (
    HEART_DISEASE_SCHEMA_PATH,
    ICU_OUTCOME_SCHEMA_PATH,
    SchemaFileError,
    load_schema,
)
from schemas.commands import json_schema
from schemas.loading import parse_schema


@pytest.fixture(scope="module")
def heart_text():
    return HEART_DISEASE_SCHEMA_PATH.read_text()


def test_bundled_schemas_load():
    heart = load_schema(HEART_DISEASE_SCHEMA_PATH)
    icu = load_schema(ICU_OUTCOME_SCHEMA_PATH)
    assert heart.name == "heart-disease"
    assert heart.version == "1.0.0"
    assert heart.privacy_unit.patient_id_column is None
    assert icu.privacy_unit.patient_id_column == "patient_id"
    assert icu.label.kind == "multiclass"


def test_hash_ignores_layout(heart_text, tmp_path):
    document = yaml.safe_load(heart_text)
    reordered = dict(reversed(list(document.items())))
    path = tmp_path / "reordered.yaml"
    path.write_text("# a comment\n" + yaml.safe_dump(reordered, sort_keys=False))
    assert (
        load_schema(path).content_hash
        == load_schema(HEART_DISEASE_SCHEMA_PATH).content_hash
    )


def test_hash_ignores_spelled_defaults(heart_text, tmp_path):
    document = yaml.safe_load(heart_text)
    document["columns"][0]["required"] = True
    path = tmp_path / "defaults.yaml"
    path.write_text(yaml.safe_dump(document))
    assert (
        load_schema(path).content_hash
        == load_schema(HEART_DISEASE_SCHEMA_PATH).content_hash
    )


def test_hash_changes_with_range(heart_text, tmp_path):
    document = yaml.safe_load(heart_text)
    document["columns"][0]["hard_range"]["max"] = 121
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(document))
    assert (
        load_schema(path).content_hash
        != load_schema(HEART_DISEASE_SCHEMA_PATH).content_hash
    )


def test_hash_distinguishes_code_types(heart_text, tmp_path):
    document = yaml.safe_load(heart_text)
    document["columns"][1]["codes"] = {"0": "female", "1": "male"}
    path = tmp_path / "text_codes.yaml"
    path.write_text(yaml.safe_dump(document))
    assert (
        load_schema(path).content_hash
        != load_schema(HEART_DISEASE_SCHEMA_PATH).content_hash
    )


TINY_SCHEMA = """\
name: tiny
version: 1.0.0
columns:
  - name: sex
    type: categorical
    codes: {0: female, 1: male}
  - name: y
    type: boolean
    feature: false
label: {column: y, kind: binary, classes: [neg, pos], mapping: {0: neg, 1: pos}}
privacy_unit:
  patient_id_column: null
  duplicate_key: all_columns
  on_duplicate: keep_first
"""

# Known answer for TINY_SCHEMA: defaults filled in, keys sorted, code tables as
# [code, meaning] pairs. Any change to the canonical form changes every pinned
# hash, so it must fail here first.
TINY_CANONICAL = (
    '{"columns":[{"codes":[[0,"female"],[1,"male"]],"description":"",'
    '"feature":true,"missing":{"action":"reject","indicator":false,"value":null},'
    '"missing_values":[],"name":"sex","required":true,"type":"categorical",'
    '"unit":null},{"description":"","false_values":[0,"false","no"],'
    '"feature":false,"missing":{"action":"reject","indicator":false,"value":null},'
    '"missing_values":[],"name":"y","required":true,"true_values":[1,"true","yes"],'
    '"type":"boolean","unit":null}],"description":"","label":{"classes":["neg",'
    '"pos"],"column":"y","kind":"binary","mapping":[[0,"neg"],[1,"pos"]]},'
    '"missing_values":["?","","NA"],"name":"tiny","privacy_unit":{"duplicate_key":'
    '"all_columns","on_duplicate":"keep_first","patient_id_column":null},'
    '"version":"1.0.0"}'
)


def test_canonical_form_known_answer():
    schema = parse_schema(TINY_SCHEMA, HEART_DISEASE_SCHEMA_PATH)
    assert schema.canonical_json() == TINY_CANONICAL


def test_hash_known_answer():
    schema = parse_schema(TINY_SCHEMA, HEART_DISEASE_SCHEMA_PATH)
    expected = hashlib.sha256(TINY_CANONICAL.encode("utf-8")).hexdigest()
    assert schema.content_hash == expected
    assert expected == (
        "146999782c5fccf7cb061b5ef66856646640ccf01cac8fa0d1590f3becc055c8"
    )


def test_schema_is_frozen():
    schema = load_schema(HEART_DISEASE_SCHEMA_PATH)
    with pytest.raises(ValidationError):
        schema.name = "other"  # type: ignore[misc]


BAD_SCHEMA = """\
name: broken
version: "1.0"
columns:
  - name: age
    type: integr
  - name: chol
    type: integer
    hard_range: {min: 500, max: 100}
  - name: thal
    type: categorical
    codes: {3: normal, 6: fixed}
    missing: {action: impute, value: 9}
label: {column: num, kind: binary, classes: [no, yes], mapping: {0: no, 1: yes}}
"""


def test_errors_have_locations(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BAD_SCHEMA)
    with pytest.raises(SchemaFileError) as caught:
        load_schema(path)
    found = {(p.location, p.line) for p in caught.value.problems}
    assert ("version", 2) in found
    assert ("columns[0:age]", 4) in found
    assert ("columns[1:chol].hard_range", 8) in found
    assert ("columns[2:thal]", 9) in found
    assert ("privacy_unit", 1) in found


def test_invalid_yaml_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ncolumns: [\n")
    with pytest.raises(SchemaFileError) as caught:
        load_schema(path)
    assert caught.value.problems[0].line is not None


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {
                "privacy_unit": {
                    "patient_id_column": None,
                    "duplicate_key": "all_columns",
                    "on_duplicate": "quarantine_all",
                }
            },
            "keep_first",
        ),
        (
            {
                "privacy_unit": {
                    "patient_id_column": "age",
                    "duplicate_key": "patient_id",
                    "on_duplicate": "keep_first",
                }
            },
            "cannot be a feature",
        ),
        (
            {
                "label": {
                    "column": "num",
                    "kind": "binary",
                    "classes": ["a", "b"],
                    "mapping": {0: "a", 1: "b"},
                }
            },
            "codes",
        ),
        ({"missing_values": ["?"], "version": "one"}, "semantic version"),
    ],
)
def test_cross_field_rules(heart_text, patch, message):
    document = yaml.safe_load(heart_text)
    document.update(patch)
    with pytest.raises(SchemaFileError, match=message):
        parse_schema(yaml.safe_dump(document), HEART_DISEASE_SCHEMA_PATH)


def test_optional_column_cannot_reject(heart_text):
    document = yaml.safe_load(heart_text)
    document["columns"][0]["required"] = False
    with pytest.raises(SchemaFileError, match="optional"):
        parse_schema(yaml.safe_dump(document), HEART_DISEASE_SCHEMA_PATH)


def test_date_ranges_parse():
    icu = load_schema(ICU_OUTCOME_SCHEMA_PATH)
    birth = icu.column("birth_date")
    assert birth.hard_range.min == dt.datetime(1900, 1, 1)


@pytest.mark.parametrize("path", [HEART_DISEASE_SCHEMA_PATH, ICU_OUTCOME_SCHEMA_PATH])
def test_json_schema_accepts_bundled(path):
    # An editor checks YAML as JSON: text keys, and dates as ISO text.
    document = _jsonable(yaml.safe_load(path.read_text()))
    jsonschema.validate(document, json_schema())


def test_json_schema_rejects_typo():
    document = _jsonable(yaml.safe_load(HEART_DISEASE_SCHEMA_PATH.read_text()))
    document["columns"][0]["hard_rnge"] = {"min": 0}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, json_schema())


def _jsonable(value):
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def test_yaml_alias_rejected(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("a: &x [1, 2]\nb: [*x, *x]\n")
    with pytest.raises(SchemaFileError, match="alias") as caught:
        load_schema(path)
    assert caught.value.problems[0].line == 1


def test_oversized_schema_rejected(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * 200_000)
    with pytest.raises(SchemaFileError, match="over the limit"):
        load_schema(path)
