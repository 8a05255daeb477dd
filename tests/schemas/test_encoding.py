"""Feature encoder: known-answer vectors and independence from the data."""

import numpy as np
import pandas as pd
import pytest

from schemas import HEART_DISEASE_SCHEMA_PATH, ICU_OUTCOME_SCHEMA_PATH, load_schema
from schemas.encoding import FeatureEncoder


@pytest.fixture(scope="module")
def encoder():
    return FeatureEncoder(load_schema(HEART_DISEASE_SCHEMA_PATH))


def frame(**values):
    base = {
        "age": 63.0,
        "sex": 1.0,
        "cp": 1.0,
        "trestbps": 145.0,
        "chol": 233.0,
        "fbs": 1.0,
        "restecg": 2.0,
        "thalach": 150.0,
        "exang": 0.0,
        "oldpeak": 2.3,
        "slope": 3.0,
        "ca": 0.0,
        "thal": 6.0,
        "num": 2.0,
    }
    base.update(values)
    return pd.DataFrame([base], index=pd.Index([1], name="line"))


def test_feature_names_stable(encoder):
    assert encoder.feature_names[:9] == (
        "age",
        "sex=0",
        "sex=1",
        "cp=1",
        "cp=2",
        "cp=3",
        "cp=4",
        "trestbps",
        "trestbps__missing",
    )
    assert len(encoder.feature_names) == 33
    assert encoder.num_classes == 2


def test_known_vector(encoder):
    row = dict(zip(encoder.feature_names, encoder.transform(frame())[0], strict=True))
    assert row["age"] == pytest.approx((63 - 18) / (100 - 18))
    assert row["sex=1"] == 1.0
    assert row["sex=0"] == 0.0
    assert row["trestbps"] == pytest.approx((145 - 80) / (220 - 80))
    assert row["ca"] == pytest.approx(0.0)
    assert row["thal=6"] == 1.0
    assert row["ca__missing"] == 0.0


def test_imputes_declared_value(encoder):
    row = dict(
        zip(
            encoder.feature_names, encoder.transform(frame(chol=np.nan))[0], strict=True
        )
    )
    assert row["chol"] == pytest.approx((200 - 100) / (600 - 100))
    assert row["chol__missing"] == 1.0


def test_missing_category_imputes_code(encoder):
    row = dict(
        zip(
            encoder.feature_names, encoder.transform(frame(thal=np.nan))[0], strict=True
        )
    )
    assert row["thal=3"] == 1.0
    assert row["thal__missing"] == 1.0


def test_row_independent_of_batch(encoder):
    batch = pd.concat([frame(), frame(age=40.0, chol=np.nan)])
    batch.index = pd.Index([1, 2])
    np.testing.assert_array_equal(
        encoder.transform(batch)[:1], encoder.transform(frame())
    )


def test_rejected_missing_raises(encoder):
    with pytest.raises(ValueError, match="age"):
        encoder.transform(frame(age=np.nan))


def test_labels_binary(encoder):
    batch = pd.concat([frame(num=0.0), frame(num=3.0)])
    assert encoder.labels(batch).tolist() == [0, 1]


def test_labels_unmapped_raises(encoder):
    with pytest.raises(ValueError, match="unmapped"):
        encoder.labels(frame(num=9.0))


def test_icu_multiclass_labels():
    icu = FeatureEncoder(load_schema(ICU_OUTCOME_SCHEMA_PATH))
    labels = pd.DataFrame({"outcome": ["died", "home", "transfer"]})
    assert icu.labels(labels).tolist() == [2, 0, 1]
    assert icu.num_classes == 3
    assert "patient_id" not in icu.feature_names
    assert "ward_note" not in icu.feature_names
