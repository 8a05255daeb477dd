"""Turn validated rows into the feature matrix that the schema alone defines.

Every hospital builds the same feature vector because nothing here looks at the
data: one-hot columns come from declared codes, scaling from declared ranges,
imputation and missing indicators from the declared missing policy.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from schemas.model import (
    BooleanColumn,
    CategoricalColumn,
    Column,
    DateColumn,
    IdentifierColumn,
    IntegerColumn,
    NumberColumn,
    Schema,
)

MISSING_SUFFIX = "__missing"


@dataclass(frozen=True)
class _Block:
    """Features produced by one schema column."""

    column: Column
    names: tuple[str, ...]


class FeatureEncoder:
    """Encode accepted rows into float32 features and int64 class indices.

    Feature names, in order, for each feature column in schema order:

    - integer, number and date columns: ``name``, scaled to [0, 1] over the
      declared range (values inside the hard range but outside the scaling range
      fall outside [0, 1]; dates count in days);
    - boolean columns: ``name`` as 0 or 1;
    - categorical columns: ``name=code`` for each declared code, one-hot;
    - then ``name__missing`` (1 where the value was missing) when the column
      declares ``indicator: true``.
    """

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._blocks = tuple(_block(column) for column in schema.feature_columns)
        names = tuple(name for block in self._blocks for name in block.names)
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(
                f"schema '{schema.name}' yields feature names {repeated} twice; "
                "rename the columns whose names end in '__missing' or contain '='"
            )
        self.feature_names: tuple[str, ...] = names
        self._classes = schema.label.classes
        self._class_index = {name: i for i, name in enumerate(self._classes)}

    @property
    def num_classes(self) -> int:
        """Number of label classes."""
        return len(self._classes)

    @property
    def num_features(self) -> int:
        """Length of a feature vector."""
        return len(self.feature_names)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the float32 feature matrix ``[rows, num_features]`` of ``frame``.

        ``frame`` has the typed columns of ``ValidationResult.accepted``.

        Raises:
            ValueError: a feature column is absent, or contains a missing value that
                the schema does not impute (such rows should have been quarantined).

        """
        parts = [self._encode(block, frame) for block in self._blocks]
        if not parts:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return np.hstack(parts).astype(np.float32, copy=False)

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the int64 class index of each row's label.

        Raises:
            ValueError: the label column is absent, or a value is missing or
                outside the label mapping.

        """
        label = self.schema.label
        if label.column not in frame.columns:
            raise ValueError(f"label column '{label.column}' is not in the frame")
        raw = frame[label.column]
        index_of = {
            _mapping_key(key): self._class_index[name]
            for key, name in label.mapping.items()
        }
        keys = raw.map(_mapping_key)
        indices = keys.map(index_of)
        if indices.isna().any():
            first = raw.index[indices.isna().to_numpy()][0]
            raise ValueError(
                f"label column '{label.column}' has a missing or unmapped value at "
                f"row {first}; validate the file before encoding"
            )
        return np.asarray(indices.to_numpy(dtype=np.int64), dtype=np.int64)

    def _encode(self, block: _Block, frame: pd.DataFrame) -> np.ndarray:
        column = block.column
        if column.name not in frame.columns:
            raise ValueError(
                f"feature column '{column.name}' is not in the frame; encode the "
                "accepted rows of a validation result"
            )
        values = frame[column.name]
        missing = values.isna().to_numpy()
        if missing.any() and column.missing.action != "impute":
            raise ValueError(
                f"column '{column.name}' has missing values but the schema does not "
                "impute them; validate the file before encoding"
            )
        encoded = _encode_values(column, values, missing)
        if column.missing.indicator:
            encoded = np.column_stack([encoded, missing.astype(np.float64)])
        return encoded


def _block(column: Column) -> _Block:
    if isinstance(column, CategoricalColumn):
        names = tuple(f"{column.name}={code}" for code in column.codes)
    elif isinstance(column, IdentifierColumn):
        raise ValueError(f"identifier column '{column.name}' cannot be a feature")
    else:
        names = (column.name,)
    if column.missing.indicator:
        names = (*names, f"{column.name}{MISSING_SUFFIX}")
    return _Block(column=column, names=names)


def _encode_values(
    column: Column, values: pd.Series, missing: np.ndarray
) -> np.ndarray:
    fill = column.missing.value
    if isinstance(column, CategoricalColumn):
        codes = list(column.codes)
        if column.numeric_codes():
            numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
            if missing.any():
                numbers = np.where(missing, float(fill), numbers)  # type: ignore[arg-type]
            one_hot = numbers[:, None] == np.array(codes, dtype=np.float64)
            return np.asarray(one_hot, dtype=np.float64)
        text = values.astype(object).where(~missing, str(fill)).astype(str)
        one_hot = text.to_numpy()[:, None] == np.array([str(c) for c in codes])
        return np.asarray(one_hot, dtype=np.float64)
    if isinstance(column, BooleanColumn):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        return np.where(missing, float(bool(fill)), numbers)[:, None]
    if isinstance(column, DateColumn):
        scaling = column.scaling_range()
        assert scaling is not None and scaling.min is not None
        assert scaling.max is not None
        stamps = pd.to_datetime(values).to_numpy(dtype="datetime64[ns]")
        if missing.any():
            assert isinstance(fill, dt.datetime)
            stamps = np.where(missing, np.datetime64(fill, "ns"), stamps)
        low = np.datetime64(scaling.min, "ns")
        span = (np.datetime64(scaling.max, "ns") - low) / np.timedelta64(1, "D")
        days = (stamps - low) / np.timedelta64(1, "D")
        return np.asarray(days / span, dtype=np.float64)[:, None]
    if isinstance(column, IntegerColumn | NumberColumn):
        numeric_range = column.scaling_range()
        assert numeric_range is not None
        assert numeric_range.min is not None and numeric_range.max is not None
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        if missing.any():
            numbers = np.where(missing, float(fill), numbers)  # type: ignore[arg-type]
        width = numeric_range.max - numeric_range.min
        return np.asarray((numbers - numeric_range.min) / width)[:, None]
    raise ValueError(f"column '{column.name}' of type '{column.type}' is not encoded")


def _mapping_key(value: object) -> object:
    """Normalise a label value so that 2, 2.0 and '2' look up the same class."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        return int(number) if number.is_integer() else number
    if isinstance(value, str):
        stripped = value.strip()
        try:
            number = float(stripped)
        except ValueError:
            return stripped
        return int(number) if number.is_integer() else stripped
    return value
