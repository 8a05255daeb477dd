"""Study and hospital privacy policies: frozen pydantic models and YAML loaders.

A study policy is written by the hub operator and names the accountant, delta,
the epsilon budget of each hospital and the DP-SGD parameters of every round,
either given directly or planned from a target epsilon. A hospital policy is
written by the hospital and bounds what its agent accepts from any hub.

Every number is checked when it is loaded: NaN, infinite, negative and
out-of-range values raise :class:`PolicyError`, so a malformed policy never
reaches the accountant (fail closed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

logger = logging.getLogger(__name__)

Accountant = Literal["rdp", "prv"]
"""Opacus accountant: ``"rdp"`` (Renyi DP) or ``"prv"`` (privacy random variables)."""

# Opacus's planner gives up above this noise multiplier (opacus.accountants.utils).
MAX_NOISE_MULTIPLIER = 1e6
MAX_EPSILON = 100.0
MAX_STEPS_PER_ROUND = 100_000
MAX_ROUNDS = 100_000

Identifier = Annotated[
    str, Strict(), Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
]
StrictPositiveInt = Annotated[int, Strict(), Field(ge=1)]


class PolicyError(ValueError):
    """A policy or DP parameter set is invalid: missing, malformed or out of range."""


class FrozenModel(BaseModel):
    """Immutable model that rejects unknown keys, NaN and infinity."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class DPParameters(FrozenModel):
    """DP-SGD parameters of one round at one hospital (Poisson-sampled Gaussian).

    Epsilon depends only on ``noise_multiplier``, ``sample_rate`` and ``steps``;
    ``max_grad_norm`` sets the scale of the clipping and the noise.
    """

    noise_multiplier: float = Field(gt=0, le=MAX_NOISE_MULTIPLIER)
    """Ratio of the Gaussian noise's standard deviation to ``max_grad_norm``;
    finite, in (0, 1e6]. Larger means more noise and less epsilon per step."""

    sample_rate: float = Field(gt=0, le=1)
    """Poisson sampling probability of each record in one step; in (0, 1]."""

    steps: Annotated[int, Strict(), Field(ge=1, le=MAX_STEPS_PER_ROUND)]
    """Local DP-SGD steps in this round; integer in [1, 100000]."""

    max_grad_norm: float = Field(gt=0, le=1e6)
    """L2 bound on each per-sample gradient (clipping norm); finite, > 0."""


class EpsilonBudget(FrozenModel):
    """Epsilon budget of each hospital in one study: a default and overrides."""

    default: float = Field(gt=0, le=MAX_EPSILON)
    """Budget of every hospital without an override; in (0, 100]."""

    overrides: dict[Identifier, Annotated[float, Field(gt=0, le=MAX_EPSILON)]] = Field(
        default_factory=dict
    )
    """Budget of a named hospital; each in (0, 100]. Default: none."""


class RoundPlan(FrozenModel):
    """DP-SGD parameters of every round: a noise multiplier or a target epsilon.

    Exactly one of ``noise_multiplier`` and ``target_epsilon`` is set. With a
    target, the planner derives the noise multiplier with Opacus's
    ``get_noise_multiplier`` so that a hospital taking part in all planned
    rounds ends at or below the target.
    """

    sample_rate: float = Field(gt=0, le=1)
    steps: Annotated[int, Strict(), Field(ge=1, le=MAX_STEPS_PER_ROUND)]
    max_grad_norm: float = Field(gt=0, le=1e6)
    noise_multiplier: float | None = Field(default=None, gt=0, le=MAX_NOISE_MULTIPLIER)
    target_epsilon: float | None = Field(default=None, gt=0, le=MAX_EPSILON)

    @model_validator(mode="after")
    def _one_of_noise_or_target(self) -> RoundPlan:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(
                "set exactly one of dp.noise_multiplier and dp.target_epsilon "
                f"(received noise_multiplier={self.noise_multiplier}, "
                f"target_epsilon={self.target_epsilon})"
            )
        return self


class TrainingConfig(FrozenModel):
    """Model and optimisation settings shared by every hospital of a study."""

    model: Literal["logreg", "mlp"] = "logreg"
    hidden_units: Annotated[int, Strict(), Field(ge=1, le=4096)] = 16
    """Width of the MLP's hidden layer; ignored for ``logreg``. Default 16."""
    learning_rate: float = Field(default=0.1, gt=0, le=100)
    """Local DP-SGD learning rate. Default 0.1."""
    update_clip_norm: float = Field(default=1.0, gt=0, le=1e6)
    """L2 bound on each hospital's model delta before aggregation; it also sets
    the fixed-point range of secure aggregation. Default 1.0."""
    server_learning_rate: float = Field(default=1.0, gt=0, le=100)
    """Step size applied to the aggregated delta (1.0 is FedAvg). Default 1.0."""
    seed: Annotated[int, Strict(), Field(ge=0, le=2**32 - 1)] = 0
    """Seed of model initialisation; never used for DP noise or sampling."""


class StudyPolicy(FrozenModel):
    """Hub-side policy of one study."""

    study_id: Identifier
    accountant: Accountant = "rdp"
    delta: float = Field(gt=0, lt=1)
    """Target delta of every hospital's guarantee; in (0, 1). Each agent also
    requires it to be below 1/N of its own cohort."""
    rounds: Annotated[int, Strict(), Field(ge=1, le=MAX_ROUNDS)]
    """Number of planned rounds."""
    hospitals: tuple[Identifier, ...] = Field(min_length=1)
    """Hospitals that take part in the study."""
    min_hospitals_per_round: StrictPositiveInt = 2
    """The hub stops the study when fewer hospitals remain. Default 2."""
    secure_aggregation: Annotated[bool, Strict()] = True
    epsilon_budget: EpsilonBudget
    dp: RoundPlan
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @field_validator("hospitals")
    @classmethod
    def _unique_hospitals(cls, hospitals: tuple[str, ...]) -> tuple[str, ...]:
        duplicates = sorted({h for h in hospitals if hospitals.count(h) > 1})
        if duplicates:
            raise ValueError(f"hospitals are listed twice: {duplicates}")
        return hospitals

    @model_validator(mode="after")
    def _consistent(self) -> StudyPolicy:
        unknown = sorted(set(self.epsilon_budget.overrides) - set(self.hospitals))
        if unknown:
            raise ValueError(
                f"epsilon_budget.overrides names hospitals not in hospitals: "
                f"{unknown}; add them to hospitals or remove the override"
            )
        if self.min_hospitals_per_round > len(self.hospitals):
            raise ValueError(
                f"min_hospitals_per_round={self.min_hospitals_per_round} is above "
                f"the number of hospitals ({len(self.hospitals)})"
            )
        return self

    def epsilon_budget_for(self, hospital_id: str) -> float:
        """Return the epsilon budget of ``hospital_id`` in this study.

        Raises:
            PolicyError: ``hospital_id`` does not take part in the study.

        """
        if hospital_id not in self.hospitals:
            raise PolicyError(
                f"hospital {hospital_id!r} is not in study {self.study_id!r}; "
                f"its hospitals are {list(self.hospitals)}"
            )
        return self.epsilon_budget.overrides.get(
            hospital_id, self.epsilon_budget.default
        )

    @cached_property
    def _resolved_dp(self) -> DPParameters:
        # Imported here because accounting imports this module.
        from policies.accounting import plan_noise_multiplier

        plan = self.dp
        if plan.noise_multiplier is not None:
            noise_multiplier = plan.noise_multiplier
        else:
            assert plan.target_epsilon is not None
            noise_multiplier = plan_noise_multiplier(
                target_epsilon=plan.target_epsilon,
                delta=self.delta,
                sample_rate=plan.sample_rate,
                total_steps=plan.steps * self.rounds,
                accountant=self.accountant,
            )
        return DPParameters(
            noise_multiplier=noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=plan.steps,
            max_grad_norm=plan.max_grad_norm,
        )

    def dp_parameters(self) -> DPParameters:
        """Return the DP-SGD parameters of every round, planning them if needed.

        With ``dp.target_epsilon``, the noise multiplier is the smallest one that
        Opacus's binary search finds with epsilon at most the target after
        ``rounds * dp.steps`` steps. The result is computed once per policy object.

        Raises:
            PlanError: no noise multiplier up to 1e6 reaches the target.

        """
        return self._resolved_dp


class HospitalPolicy(FrozenModel):
    """Agent-side limits that a hospital applies to every instruction from a hub."""

    hospital_id: Identifier
    max_epsilon_per_study: float = Field(gt=0, le=MAX_EPSILON)
    """Largest epsilon this hospital spends on one study; in (0, 100]."""
    max_epsilon_total: float = Field(gt=0, le=MAX_EPSILON)
    """Largest epsilon over all studies on the same records, composed together
    with ``total_accountant`` at ``total_delta``; in (0, 100]."""
    min_noise_multiplier: float = Field(gt=0, le=MAX_NOISE_MULTIPLIER)
    max_sample_rate: float = Field(gt=0, le=1)
    max_max_grad_norm: float = Field(gt=0, le=1e6)
    max_rounds: Annotated[int, Strict(), Field(ge=1, le=MAX_ROUNDS)]
    """Largest number of rounds this hospital takes part in per study."""
    max_steps_per_round: Annotated[
        int, Strict(), Field(ge=1, le=MAX_STEPS_PER_ROUND)
    ] = MAX_STEPS_PER_ROUND
    accepted_accountants: tuple[Accountant, ...] = Field(
        default=("rdp", "prv"), min_length=1
    )
    max_delta: float = Field(gt=0, lt=1)
    """Largest delta accepted; the agent also requires delta < 1/N of its cohort."""
    total_delta: float | None = Field(default=None, gt=0, lt=1)
    """Delta at which the epsilon over all studies is evaluated. Default: max_delta."""
    total_accountant: Accountant = "rdp"
    """Accountant of the epsilon over all studies. Default ``"rdp"``."""
    require_secure_aggregation: Annotated[bool, Strict()] = True
    approved_studies: tuple[Identifier, ...] | None = None
    """Study ids the hospital approved; an instruction for any other study is
    rejected, so a hub cannot restart the per-study limits under a new id.
    None accepts every study, and only ``max_epsilon_total`` binds across them."""

    @model_validator(mode="after")
    def _consistent(self) -> HospitalPolicy:
        if self.max_epsilon_per_study > self.max_epsilon_total:
            raise ValueError(
                f"max_epsilon_per_study={self.max_epsilon_per_study} is above "
                f"max_epsilon_total={self.max_epsilon_total}; lower it to at most "
                "max_epsilon_total"
            )
        if self.total_delta is not None and self.total_delta > self.max_delta:
            raise ValueError(
                f"total_delta={self.total_delta} is above max_delta={self.max_delta}"
            )
        return self

    @property
    def delta_for_total(self) -> float:
        """Delta at which the epsilon over all studies is evaluated."""
        return self.max_delta if self.total_delta is None else self.total_delta


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"invalid policy {source}:"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(document)"
        received = item.get("input")
        displayed = received if _is_scalar(received) else type(received).__name__
        lines.append(f"  {location}: {item['msg']} (received {displayed!r})")
    return "\n".join(lines)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _reject_non_finite(node: Any, location: str) -> None:
    # Pydantic rejects NaN and infinity in float fields; this also catches them
    # in fields that would otherwise pass them through, and names the key.
    if isinstance(node, float) and not math.isfinite(node):
        raise PolicyError(f"{location}: {node!r} is not a finite number")
    if isinstance(node, Mapping):
        for key, value in node.items():
            _reject_non_finite(value, f"{location}.{key}")
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            _reject_non_finite(value, f"{location}[{index}]")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyError(
            f"cannot read policy file {path}: {error.strerror}"
        ) from error
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PolicyError(f"policy file {path} is not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise PolicyError(
            f"policy file {path} must contain a YAML mapping, "
            f"received {type(document).__name__}"
        )
    _reject_non_finite(document, path.name)
    return document


def parse_study_policy(
    document: Mapping[str, Any], source: str = "<dict>"
) -> StudyPolicy:
    """Validate a study policy given as a mapping; raise PolicyError if invalid."""
    try:
        return StudyPolicy.model_validate(dict(document))
    except ValidationError as error:
        raise PolicyError(_format_validation_error(source, error)) from None


def parse_hospital_policy(
    document: Mapping[str, Any], source: str = "<dict>"
) -> HospitalPolicy:
    """Validate a hospital policy given as a mapping; raise PolicyError if invalid."""
    try:
        return HospitalPolicy.model_validate(dict(document))
    except ValidationError as error:
        raise PolicyError(_format_validation_error(source, error)) from None


def load_study_policy(path: str | Path) -> StudyPolicy:
    """Load and validate a study policy from a YAML file.

    Raises:
        PolicyError: the file is unreadable, not YAML, or any value is missing,
            non-finite, negative or out of range; the message names each field.

    """
    path = Path(path)
    policy = parse_study_policy(_read_yaml(path), str(path))
    logger.info("loaded study policy %s from %s", policy.study_id, path)
    return policy


def load_hospital_policy(path: str | Path) -> HospitalPolicy:
    """Load and validate a hospital policy from a YAML file.

    Raises:
        PolicyError: the file is unreadable, not YAML, or any value is missing,
            non-finite, negative or out of range; the message names each field.

    """
    path = Path(path)
    policy = parse_hospital_policy(_read_yaml(path), str(path))
    logger.info("loaded hospital policy of %s from %s", policy.hospital_id, path)
    return policy
