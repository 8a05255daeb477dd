"""The bundled heart-disease schema on the four real hospital files."""

from pathlib import Path

import numpy as np
import pytest

from schemas import HEART_DISEASE_SCHEMA_PATH, load_schema
from schemas.encoding import FeatureEncoder
from schemas.validation import validate_file

DATA = Path(__file__).resolve().parents[2] / "data" / "heart-disease"
SITES = {
    # site: (rows, quarantined rows: the one exact duplicate at two sites)
    "cleveland": (303, 0),
    "hungarian": (294, 1),
    "switzerland": (123, 0),
    "va": (200, 1),
}


@pytest.fixture(scope="module")
def schema():
    return load_schema(HEART_DISEASE_SCHEMA_PATH)


@pytest.mark.parametrize("site", sorted(SITES))
def test_site_counts(schema, site):
    rows, quarantined = SITES[site]
    result = validate_file(DATA / f"processed.{site}.data", schema)
    assert result.total_rows == rows
    assert result.quarantined_rows == quarantined
    assert result.accepted_rows == rows - quarantined
    assert len(result.accepted) == rows - quarantined


def test_hungarian_duplicate_reason(schema, tmp_path):
    quarantine = tmp_path / "q.csv"
    validate_file(DATA / "processed.hungarian.data", schema, quarantine)
    lines = quarantine.read_text().splitlines()
    assert lines[0] == "line,reasons,row"
    assert lines[1] == '103,duplicate of line 102,"49,0,2,110,?,0,0,160,0,0,?,?,?,0"'


def test_accepted_index_is_line(schema):
    result = validate_file(DATA / "processed.va.data", schema)
    assert result.accepted.index[0] == 1
    assert 188 not in result.accepted.index
    assert list(result.accepted.columns) == list(schema.column_names)


def test_switzerland_chol_zero_is_missing(schema):
    result = validate_file(DATA / "processed.switzerland.data", schema)
    assert result.report.columns["chol"].missing == 123
    assert result.accepted["chol"].isna().all()


def test_cleveland_float_integers(schema):
    result = validate_file(DATA / "processed.cleveland.data", schema)
    assert result.accepted.loc[1, "age"] == 63
    assert result.report.columns["age"].wrong_type == 0


def test_switzerland_leading_dot(schema):
    result = validate_file(DATA / "processed.switzerland.data", schema)
    assert result.accepted.loc[1, "oldpeak"] == pytest.approx(0.7)


def test_encoding_all_sites(schema):
    encoder = FeatureEncoder(schema)
    for site in SITES:
        result = validate_file(DATA / f"processed.{site}.data", schema)
        features = encoder.transform(result.accepted)
        labels = encoder.labels(result.accepted)
        assert features.shape == (result.accepted_rows, len(encoder.feature_names))
        assert features.dtype == np.float32
        assert not np.isnan(features).any()
        assert set(np.unique(labels)) <= {0, 1}
