"""Budget enforcement on both sides: hub selection and agent veto.

The hub calls :func:`select_hospitals` before each round and skips every
hospital whose budget the round would exceed. The agent calls
:func:`check_instruction` on every instruction it receives and rejects any that
breaks its hospital policy, whatever the hub decided. A skipped or rejected
hospital spends nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import Field, Strict, ValidationError

from policies.accounting import compute_epsilon
from policies.models import (
    Accountant,
    DPParameters,
    FrozenModel,
    HospitalPolicy,
    Identifier,
    PolicyError,
    StudyPolicy,
)

logger = logging.getLogger(__name__)


class InstructionRejected(Exception):
    """The agent rejects a round instruction; ``reason`` is sent back to the hub."""

    def __init__(self, reason: str, *, limit: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.limit = limit
        """Name of the hospital-policy limit that the instruction breaks."""


class StudyStopped(Exception):
    """Fewer hospitals than the study's minimum can take part in the next round."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RoundInstruction(FrozenModel):
    """The hub's request to one hospital for one round, without the model."""

    study_id: Identifier
    round: Annotated[int, Strict(), Field(ge=1)]
    """Round number, starting at 1."""
    nonce: Annotated[
        str, Strict(), Field(min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
    ]
    """Fresh random value per round and hospital, e.g. ``secrets.token_hex(16)``."""
    schema_hash: Annotated[str, Strict(), Field(min_length=1, max_length=256)]
    accountant: Accountant
    delta: float = Field(gt=0, lt=1)
    dp: DPParameters
    secure_aggregation: Annotated[bool, Strict()]

    def to_config(self) -> dict[str, str | int | float | bool]:
        """Flatten to scalar values, e.g. for a Flower ``ConfigRecord``."""
        flat: dict[str, str | int | float | bool] = {
            "study_id": self.study_id,
            "round": self.round,
            "nonce": self.nonce,
            "schema_hash": self.schema_hash,
            "accountant": self.accountant,
            "delta": self.delta,
            "secure_aggregation": self.secure_aggregation,
        }
        for name, value in self.dp.model_dump().items():
            flat[f"dp.{name}"] = value
        return flat

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RoundInstruction:
        """Parse the output of :meth:`to_config`, validating every value.

        Raises:
            InstructionRejected: a value is missing, non-finite or out of range.

        """
        prefix = "dp."
        dp_values = {
            k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)
        }
        values = {k: v for k, v in config.items() if not k.startswith(prefix)}
        values["dp"] = dp_values
        for key, value in config.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise InstructionRejected(
                    f"instruction field {key} is {value!r}, not a finite number",
                    limit=key,
                )
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
                for item in error.errors()
            )
            raise InstructionRejected(
                f"invalid instruction: {problems}", limit="instruction"
            ) from None


def _reject(limit: str, reason: str) -> InstructionRejected:
    return InstructionRejected(f"{limit}: {reason}", limit=limit)


def _check_static_limits(
    policy: HospitalPolicy,
    instruction: RoundInstruction,
    rounds_spent: int,
    cohort_size: int,
) -> None:
    dp = instruction.dp
    if (
        policy.approved_studies is not None
        and instruction.study_id not in policy.approved_studies
    ):
        raise _reject(
            "approved_studies",
            f"study {instruction.study_id!r} is not in the approved studies "
            f"{list(policy.approved_studies)}",
        )
    if instruction.accountant not in policy.accepted_accountants:
        raise _reject(
            "accepted_accountants",
            f"accountant {instruction.accountant!r} is not in "
            f"{list(policy.accepted_accountants)}",
        )
    if policy.require_secure_aggregation and not instruction.secure_aggregation:
        raise _reject(
            "require_secure_aggregation",
            "the instruction disables secure aggregation, which this hospital requires",
        )
    if dp.noise_multiplier < policy.min_noise_multiplier:
        raise _reject(
            "min_noise_multiplier",
            f"noise_multiplier {dp.noise_multiplier} is below the minimum "
            f"{policy.min_noise_multiplier}",
        )
    if dp.sample_rate > policy.max_sample_rate:
        raise _reject(
            "max_sample_rate",
            f"sample_rate {dp.sample_rate} is above the maximum "
            f"{policy.max_sample_rate}",
        )
    if dp.max_grad_norm > policy.max_max_grad_norm:
        raise _reject(
            "max_max_grad_norm",
            f"max_grad_norm {dp.max_grad_norm} is above the maximum "
            f"{policy.max_max_grad_norm}",
        )
    if dp.steps > policy.max_steps_per_round:
        raise _reject(
            "max_steps_per_round",
            f"steps {dp.steps} is above the maximum {policy.max_steps_per_round}",
        )
    if rounds_spent + 1 > policy.max_rounds:
        raise _reject(
            "max_rounds",
            f"round {rounds_spent + 1} of study {instruction.study_id} is above the "
            f"maximum {policy.max_rounds} rounds",
        )
    if instruction.delta > policy.max_delta:
        raise _reject(
            "max_delta",
            f"delta {instruction.delta} is above the maximum {policy.max_delta}",
        )
    if instruction.delta * cohort_size >= 1:
        raise _reject(
            "delta_below_1_over_n",
            f"delta {instruction.delta} is not below 1/N = 1/{cohort_size} "
            f"= {1 / cohort_size:.3g} of the local cohort",
        )


def check_instruction(
    policy: HospitalPolicy,
    instruction: RoundInstruction,
    study_history: Sequence[DPParameters],
    all_history: Sequence[DPParameters],
    cohort_size: int,
    *,
    pinned_schema_hash: str | None = None,
) -> float:
    """Check an instruction against the hospital policy; return epsilon after it.

    Args:
        policy: this hospital's policy.
        instruction: the hub's instruction, already validated on construction.
        study_history: rounds this hospital already spent on this study.
        all_history: rounds spent on the same records by every study, this one
            included; composed with ``policy.total_accountant`` at
            ``policy.delta_for_total``.
        cohort_size: number of training records N; delta must be below 1/N.
        pinned_schema_hash: when given, the instruction's schema hash must equal it.

    Returns:
        Epsilon of this study after the round, computed with the instruction's
        accountant and delta.

    Raises:
        InstructionRejected: the reason names the limit, the requested value
            and the limit value. Nothing is spent.

    """
    if isinstance(cohort_size, bool) or not isinstance(cohort_size, int):
        raise _reject("cohort_size", f"must be an integer, received {cohort_size!r}")
    if cohort_size < 1:
        raise _reject("cohort_size", f"must be at least 1, received {cohort_size}")
    if pinned_schema_hash is not None and instruction.schema_hash != pinned_schema_hash:
        raise _reject(
            "schema_hash",
            f"schema hash {instruction.schema_hash} differs from the pinned schema "
            f"{pinned_schema_hash}",
        )
    # Re-validate: a model built with model_construct() skips validation.
    instruction = RoundInstruction.from_config(instruction.to_config())
    _check_static_limits(policy, instruction, len(study_history), cohort_size)

    study_after = [*study_history, instruction.dp]
    all_after = [*all_history, instruction.dp]
    try:
        epsilon_study = compute_epsilon(
            study_after, instruction.delta, instruction.accountant
        )
        epsilon_total = compute_epsilon(
            all_after, policy.delta_for_total, policy.total_accountant
        )
    except PolicyError as error:
        raise _reject("accounting", f"epsilon cannot be computed: {error}") from None
    if not epsilon_study <= policy.max_epsilon_per_study:
        raise _reject(
            "max_epsilon_per_study",
            f"joining round {instruction.round} would bring epsilon to "
            f"{epsilon_study:.4f}, above the maximum {policy.max_epsilon_per_study}",
        )
    if not epsilon_total <= policy.max_epsilon_total:
        raise _reject(
            "max_epsilon_total",
            f"epsilon over all studies would be {epsilon_total:.4f} at delta "
            f"{policy.delta_for_total}, above the maximum {policy.max_epsilon_total}",
        )
    logger.info(
        "accepted study %s round %d for %s: epsilon after %.4f of %s",
        instruction.study_id,
        instruction.round,
        policy.hospital_id,
        epsilon_study,
        policy.max_epsilon_per_study,
    )
    return epsilon_study


@dataclass(frozen=True)
class Selection:
    """Outcome of the hub's selection of hospitals for one round."""

    selected: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Reason for each hospital that is available but not selected."""
    epsilon_after: dict[str, float] = field(default_factory=dict)
    """Epsilon of each selected hospital after this round."""


def select_hospitals(
    study: StudyPolicy,
    histories: Mapping[str, Sequence[DPParameters]],
    available: Sequence[str],
) -> Selection:
    """Select the available hospitals whose budget allows one more round.

    Args:
        study: the study policy; its ``dp_parameters()`` are the next round's.
        histories: rounds each hospital already spent on this study, from the
            hub's ledger; a hospital that is absent has spent nothing.
        available: hospitals connected now, in the order to report them.

    Raises:
        StudyStopped: fewer than ``study.min_hospitals_per_round`` hospitals
            remain; the reason lists every skipped hospital.

    """
    dp = study.dp_parameters()
    selection = Selection()
    for hospital_id in dict.fromkeys(available):
        if hospital_id not in study.hospitals:
            selection.skipped[hospital_id] = "not a hospital of this study"
            continue
        history = list(histories.get(hospital_id, ()))
        if len(history) >= study.rounds:
            selection.skipped[hospital_id] = (
                f"already took part in all {study.rounds} planned rounds"
            )
            continue
        budget = study.epsilon_budget_for(hospital_id)
        try:
            epsilon = compute_epsilon([*history, dp], study.delta, study.accountant)
        except PolicyError as error:
            selection.skipped[hospital_id] = f"epsilon cannot be computed: {error}"
            continue
        if not epsilon <= budget:
            selection.skipped[hospital_id] = (
                f"epsilon after this round would be {epsilon:.4f}, above its "
                f"budget {budget}"
            )
            continue
        selection.selected.append(hospital_id)
        selection.epsilon_after[hospital_id] = epsilon

    for hospital_id, reason in selection.skipped.items():
        logger.info("study %s skips %s: %s", study.study_id, hospital_id, reason)
    if len(selection.selected) < study.min_hospitals_per_round:
        skipped = "; ".join(f"{h}: {r}" for h, r in selection.skipped.items())
        missing = sorted(set(study.hospitals) - set(available))
        raise StudyStopped(
            f"study {study.study_id} stops: {len(selection.selected)} hospitals can "
            f"take part, below min_hospitals_per_round="
            f"{study.min_hospitals_per_round} (skipped: {skipped or 'none'}; "
            f"not available: {missing or 'none'})"
        )
    return selection


__all__ = [
    "InstructionRejected",
    "PolicyError",
    "RoundInstruction",
    "Selection",
    "StudyStopped",
    "check_instruction",
    "select_hospitals",
]
