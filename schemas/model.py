"""Pydantic models of the shared table-schema language.

A schema file is a YAML document that a hub publishes and every hospital pins by
its content hash. The models are frozen and reject unknown keys, so a misspelled
option is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)
_UCUM = re.compile(r"^[!-~]+$")

Code = int | str
MissingMarker = int | float | str


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Range(_Frozen):
    """Closed numeric interval ``[min, max]``; either bound may be left open."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _check_order(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(
                f"min ({self.min}) is greater than max ({self.max}); swap the bounds"
            )
        return self

    def is_closed(self) -> bool:
        """Return whether both bounds are set."""
        return self.min is not None and self.max is not None


class DateRange(_Frozen):
    """Closed interval of dates or timestamps; either bound may be left open."""

    min: dt.datetime | None = None
    max: dt.datetime | None = None

    @field_validator("min", "max", mode="before")
    @classmethod
    def _accept_dates(cls, value: Any) -> Any:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return dt.datetime(value.year, value.month, value.day)
        return value

    @model_validator(mode="after")
    def _check_order(self) -> DateRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(
                f"min ({self.min}) is later than max ({self.max}); swap the bounds"
            )
        return self

    def is_closed(self) -> bool:
        """Return whether both bounds are set."""
        return self.min is not None and self.max is not None


class MissingPolicy(_Frozen):
    """Rule for a missing value in a column, applied by validation and encoding.

    ``reject`` quarantines the row. ``impute`` replaces the value with the declared
    ``value`` at encoding time, and ``indicator: true`` adds a 0/1 feature that is 1
    where the value was missing. ``keep`` leaves the value missing and is allowed
    only for columns that are not features (an admission date kept for audit).
    """

    action: Literal["reject", "impute", "keep"] = "reject"
    value: int | float | str | dt.datetime | None = None
    indicator: bool = False

    @model_validator(mode="after")
    def _check_value(self) -> MissingPolicy:
        if self.action == "impute" and self.value is None:
            raise ValueError(
                "action 'impute' needs a declared 'value'; add 'value: <fill value>'"
            )
        if self.action != "impute" and self.value is not None:
            raise ValueError(
                f"'value' is only used with action 'impute', not '{self.action}'; "
                "remove it or set 'action: impute'"
            )
        if self.indicator and self.action != "impute":
            raise ValueError(
                "'indicator: true' needs 'action: impute'; a rejected row has no "
                "missing value to indicate"
            )
        return self


class _ColumnBase(_Frozen):
    name: str = Field(min_length=1, description="Column name in the file header.")
    description: str = ""
    unit: str | None = Field(
        default=None,
        description="UCUM unit code, for example 'mm[Hg]', 'mg/dL', 'a' or '/min'.",
    )
    required: bool = Field(
        default=True,
        description="Whether the file must contain this column.",
    )
    feature: bool = Field(
        default=True,
        description="Whether the encoder turns this column into model features.",
    )
    missing_values: tuple[MissingMarker, ...] = Field(
        default=(),
        description=(
            "Values that mean missing in this column, in addition to the file-wide "
            "markers. A number matches numerically, so 0 matches '0' and '0.0'."
        ),
    )
    missing: MissingPolicy = MissingPolicy()

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if value != value.strip():
            raise ValueError(
                f"column name {value!r} has leading or trailing spaces; remove them"
            )
        return value

    @field_validator("unit")
    @classmethod
    def _check_unit(cls, value: str | None) -> str | None:
        if value is not None and not _UCUM.match(value):
            raise ValueError(
                f"unit {value!r} is not a UCUM code (printable ASCII without "
                "spaces); write for example 'mm[Hg]' or 'mg/dL'"
            )
        return value

    @model_validator(mode="after")
    def _check_missing_policy(self) -> _ColumnBase:
        if not self.required and self.missing.action == "reject":
            raise ValueError(
                f"column '{self.name}' is optional but missing values are rejected, "
                "so a file without it would lose every row; set 'missing.action' "
                "to 'impute' or 'keep', or make the column required"
            )
        if self.missing.action == "keep" and self.feature:
            raise ValueError(
                f"column '{self.name}' is a feature, so a missing value must be "
                "rejected or imputed; use 'action: impute' or set 'feature: false'"
            )
        return self


class _NumericBase(_ColumnBase):
    hard_range: Range | None = Field(
        default=None, description="Values outside this range are invalid."
    )
    plausible_range: Range | None = Field(
        default=None, description="Values outside this range are counted as warnings."
    )
    scale: Range | None = Field(
        default=None,
        description=(
            "Range mapped to [0, 1] by the encoder. Defaults to the plausible range, "
            "then to the hard range."
        ),
    )

    def scaling_range(self) -> Range | None:
        """Return the declared range the encoder maps to [0, 1], if closed."""
        for candidate in (self.scale, self.plausible_range, self.hard_range):
            if candidate is not None and candidate.is_closed():
                return candidate
        return None

    @model_validator(mode="after")
    def _check_numeric(self) -> _NumericBase:
        if self.feature and self.scaling_range() is None:
            raise ValueError(
                f"feature column '{self.name}' has no closed range to scale by; "
                "declare 'scale', 'plausible_range' or 'hard_range' with min and max"
            )
        scaling = self.scaling_range()
        if scaling is not None and scaling.min == scaling.max:
            raise ValueError(
                f"column '{self.name}' scales by an empty range "
                f"[{scaling.min}, {scaling.max}]; widen it"
            )
        value = self.missing.value
        if self.missing.action == "impute":
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(
                    f"column '{self.name}' imputes {value!r}, which is not a number"
                )
            _require_in_range(self.name, float(value), self.hard_range)
        return self


def _require_in_range(name: str, value: float, bounds: Range | None) -> None:
    if bounds is None:
        return
    if (bounds.min is not None and value < bounds.min) or (
        bounds.max is not None and value > bounds.max
    ):
        raise ValueError(
            f"column '{name}' imputes {value}, outside its hard range "
            f"[{bounds.min}, {bounds.max}]; choose a value inside it"
        )


class IntegerColumn(_NumericBase):
    """Whole numbers; '63.0' is accepted as 63, '63.5' is a wrong type."""

    type: Literal["integer"]


class NumberColumn(_NumericBase):
    """Real numbers, written with or without a leading zero ('.7')."""

    type: Literal["number"]


class BooleanColumn(_ColumnBase):
    """Two-valued column; matching is case-insensitive and numbers match by value."""

    type: Literal["boolean"]
    true_values: tuple[Code, ...] = (1, "true", "yes")
    false_values: tuple[Code, ...] = (0, "false", "no")

    @model_validator(mode="after")
    def _check_values(self) -> BooleanColumn:
        true_tokens = {str(v).lower() for v in self.true_values}
        false_tokens = {str(v).lower() for v in self.false_values}
        overlap = true_tokens & false_tokens
        if overlap:
            raise ValueError(
                f"column '{self.name}' lists {sorted(overlap)} as both true and false"
            )
        value = self.missing.value
        if self.missing.action == "impute" and value not in (0, 1, True, False):
            raise ValueError(
                f"column '{self.name}' imputes {value!r}; a boolean imputes 0 or 1"
            )
        return self


class CategoricalColumn(_ColumnBase):
    """Column of declared codes; the encoder one-hot encodes them in declared order."""

    type: Literal["categorical"]
    codes: dict[Code, str] = Field(
        description="Each allowed code and its meaning, e.g. {1: 'typical angina'}."
    )

    @field_validator("codes")
    @classmethod
    def _check_codes(cls, value: dict[Code, str]) -> dict[Code, str]:
        if len(value) < 2:
            raise ValueError("a categorical column needs at least two codes")
        kinds = {type(code) for code in value}
        if bool in kinds:
            raise ValueError(
                "a code parsed as true/false; quote it in YAML, for example 'yes':"
            )
        if len(kinds) > 1:
            raise ValueError(
                "codes mix numbers and text; quote every code or none, so that "
                "matching is either numeric or textual"
            )
        return value

    def numeric_codes(self) -> bool:
        """Return whether codes are integers, which match by numeric value."""
        return all(isinstance(code, int) for code in self.codes)

    @model_validator(mode="after")
    def _check_impute(self) -> CategoricalColumn:
        if self.missing.action == "impute" and self.missing.value not in self.codes:
            raise ValueError(
                f"column '{self.name}' imputes {self.missing.value!r}, which is not "
                f"one of its codes {list(self.codes)}; impute a declared code"
            )
        return self


class DateColumn(_ColumnBase):
    """Date or timestamp written in a declared strftime format."""

    type: Literal["date", "datetime"]
    format: str = Field(description="strftime format, for example '%Y-%m-%d'.")
    hard_range: DateRange | None = None
    plausible_range: DateRange | None = None
    scale: DateRange | None = Field(
        default=None,
        description=(
            "Range mapped to [0, 1] by the encoder. Defaults to the plausible range, "
            "then to the hard range."
        ),
    )

    @field_validator("format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        if "%" not in value:
            raise ValueError(
                f"format {value!r} has no strftime directive; write e.g. '%Y-%m-%d'"
            )
        return value

    def scaling_range(self) -> DateRange | None:
        """Return the declared range the encoder maps to [0, 1], if closed."""
        for candidate in (self.scale, self.plausible_range, self.hard_range):
            if candidate is not None and candidate.is_closed():
                return candidate
        return None

    @model_validator(mode="after")
    def _check_date(self) -> DateColumn:
        if self.feature and self.scaling_range() is None:
            raise ValueError(
                f"feature column '{self.name}' has no closed date range to scale by; "
                "declare 'scale', 'plausible_range' or 'hard_range' with min and max"
            )
        if self.missing.action == "impute" and not isinstance(
            self.missing.value, dt.datetime
        ):
            raise ValueError(
                f"column '{self.name}' imputes {self.missing.value!r}, which is not "
                "a date; write it as YYYY-MM-DD"
            )
        return self


class IdentifierColumn(_ColumnBase):
    """Text identifier, such as a patient or encounter id; never a feature."""

    type: Literal["identifier"]
    feature: bool = False
    pattern: str | None = Field(
        default=None, description="Regular expression that every value must match."
    )

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(
                    f"pattern {value!r} is not a valid regex: {exc}"
                ) from exc
        return value

    @model_validator(mode="after")
    def _check_identifier(self) -> IdentifierColumn:
        if self.feature:
            raise ValueError(
                f"identifier column '{self.name}' cannot be a feature; "
                "an identifier carries no clinical signal and would leak identity"
            )
        if self.missing.action == "impute":
            raise ValueError(f"identifier column '{self.name}' cannot be imputed")
        return self


Column = Annotated[
    IntegerColumn
    | NumberColumn
    | BooleanColumn
    | CategoricalColumn
    | DateColumn
    | IdentifierColumn,
    Field(discriminator="type"),
]


class Label(_Frozen):
    """Training target: the label column and the mapping of raw values to classes."""

    column: str
    kind: Literal["binary", "multiclass"]
    classes: tuple[str, ...] = Field(
        description="Class names; the position of a name is its class index."
    )
    mapping: dict[Code, str] = Field(
        description="Each raw label value and the class it belongs to."
    )

    @model_validator(mode="after")
    def _check_classes(self) -> Label:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("class names must be unique")
        if self.kind == "binary" and len(self.classes) != 2:
            raise ValueError(
                f"a binary label has exactly 2 classes, got {len(self.classes)}; "
                "use kind 'multiclass' or list two classes"
            )
        if self.kind == "multiclass" and len(self.classes) < 3:
            raise ValueError(
                f"a multiclass label has at least 3 classes, got {len(self.classes)};"
                " use kind 'binary' for two"
            )
        unknown = sorted(set(self.mapping.values()) - set(self.classes))
        if unknown:
            raise ValueError(f"mapping targets {unknown} are not listed in 'classes'")
        unused = [name for name in self.classes if name not in self.mapping.values()]
        if unused:
            raise ValueError(f"classes {unused} have no raw value in 'mapping'")
        return self


class PrivacyUnit(_Frozen):
    """Rule that identifies several rows of one patient, the privacy unit.

    Record-level differential privacy equals patient-level privacy only when each
    patient contributes one row. With a patient-id column, rows sharing an id are
    one patient. Without one (``patient_id_column: null``), ``duplicate_key:
    all_columns`` treats rows equal in every schema column as copies of one
    patient's record.
    """

    patient_id_column: str | None = Field(
        description="Column that identifies a patient, or null if the files have none."
    )
    duplicate_key: Literal["patient_id", "all_columns"]
    on_duplicate: Literal["keep_first", "quarantine_all"]

    @model_validator(mode="after")
    def _check_key(self) -> PrivacyUnit:
        if self.patient_id_column is None and self.duplicate_key != "all_columns":
            raise ValueError(
                "without a patient_id_column the duplicate_key must be 'all_columns'"
            )
        if self.patient_id_column is not None and self.duplicate_key != "patient_id":
            raise ValueError(
                "with a patient_id_column the duplicate_key must be 'patient_id'"
            )
        if self.duplicate_key == "all_columns" and self.on_duplicate != "keep_first":
            raise ValueError(
                "identical rows are copies of one record, so 'all_columns' keeps the "
                "first copy; set 'on_duplicate: keep_first'"
            )
        return self


class Schema(_Frozen):
    """Shared table schema: the contract a hospital's records meet before training."""

    name: str = Field(min_length=1)
    version: str = Field(description="Semantic version, for example '1.2.0'.")
    description: str = ""
    missing_values: tuple[MissingMarker, ...] = Field(
        default=("?", "", "NA"),
        description="Values that mean missing in every column.",
    )
    columns: tuple[Column, ...] = Field(min_length=1)
    label: Label
    privacy_unit: PrivacyUnit

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not _SEMVER.match(value):
            raise ValueError(
                f"version {value!r} is not a semantic version; write e.g. '1.0.0'"
            )
        return value

    @model_validator(mode="after")
    def _check_references(self) -> Schema:
        names = [column.name for column in self.columns]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"column names {duplicates} are declared more than once")
        by_name = {column.name: column for column in self.columns}
        _check_label_column(self.label, by_name)
        _check_patient_column(self.privacy_unit, by_name, self.label.column)
        return self

    def column(self, name: str) -> Column:
        """Return the declared column called ``name``; raise KeyError if absent."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    @property
    def column_names(self) -> tuple[str, ...]:
        """Declared column names in schema order."""
        return tuple(column.name for column in self.columns)

    @property
    def feature_columns(self) -> tuple[Column, ...]:
        """Columns the encoder turns into features, in schema order."""
        return tuple(
            column
            for column in self.columns
            if column.feature and column.name != self.label.column
        )

    def canonical_json(self) -> str:
        """Return the canonical form that ``content_hash`` digests.

        Defaults are filled in, keys are sorted and code dictionaries become sorted
        lists of ``[code, meaning]`` pairs, so the integer code 1 and the text code
        '1' stay distinct. Two files that differ only in layout, comments, key
        order or spelled-out defaults have the same canonical form.
        """
        return json.dumps(
            _canonical(self.model_dump(mode="python")),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @property
    def content_hash(self) -> str:
        """Hex SHA-256 of the canonical form; hub and agents pin a schema by it."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()


def _check_label_column(label: Label, by_name: dict[str, Column]) -> None:
    if label.column not in by_name:
        raise ValueError(
            f"label column '{label.column}' is not declared in 'columns'; declare it"
        )
    column = by_name[label.column]
    if column.missing.action != "reject":
        raise ValueError(
            f"label column '{label.column}' must reject missing values; a row "
            "without a label cannot train"
        )
    if isinstance(column, CategoricalColumn):
        unmapped = [code for code in column.codes if code not in label.mapping]
        extra = [raw for raw in label.mapping if raw not in column.codes]
        if unmapped or extra:
            raise ValueError(
                f"label mapping keys must equal the codes of '{label.column}': "
                f"codes without a class {unmapped}, mapped values that are not "
                f"codes {extra}"
            )
    elif isinstance(column, IntegerColumn | BooleanColumn):
        if not all(isinstance(raw, int) for raw in label.mapping):
            raise ValueError(
                f"label column '{label.column}' is numeric, so mapping keys must be "
                "integers"
            )
    elif not isinstance(column, IdentifierColumn):
        raise ValueError(
            f"label column '{label.column}' has type '{column.type}'; a label is "
            "categorical, integer, boolean or text"
        )


def _check_patient_column(
    unit: PrivacyUnit, by_name: dict[str, Column], label_column: str
) -> None:
    name = unit.patient_id_column
    if name is None:
        return
    if name not in by_name:
        raise ValueError(
            f"patient_id_column '{name}' is not declared in 'columns'; declare it"
        )
    column = by_name[name]
    if not isinstance(column, IdentifierColumn | IntegerColumn):
        raise ValueError(
            f"patient_id_column '{name}' has type '{column.type}'; "
            "use an 'identifier' or 'integer' column"
        )
    if column.feature or name == label_column:
        raise ValueError(f"patient_id_column '{name}' cannot be a feature or label")
    if column.missing.action != "reject":
        raise ValueError(
            f"patient_id_column '{name}' must reject missing values; a row without "
            "a patient id cannot be checked for duplicates"
        )


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: _canonical(item) for key, item in value.items()}
        pairs = [[_canonical(key), _canonical(item)] for key, item in value.items()]
        return sorted(pairs, key=lambda pair: json.dumps(pair[0]))
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value
