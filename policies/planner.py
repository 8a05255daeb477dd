"""Study planning: the noise multiplier and the epsilon after each planned round."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from policies.accounting import PlanError, epsilon_of_merged
from policies.models import DPParameters, StudyPolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyPlan:
    """The resolved parameters of a study and the epsilon after each round."""

    study_id: str
    accountant: str
    delta: float
    dp: DPParameters
    noise_multiplier_planned: bool
    """True when the noise multiplier was derived from ``dp.target_epsilon``."""
    epsilon_by_round: list[float]
    """Epsilon of a hospital that took part in rounds 1..r, at index r - 1."""
    budgets: dict[str, float]
    last_round_within_budget: dict[str, int]
    """Last round each hospital can take part in; 0 when none."""


def plan_study(study: StudyPolicy) -> StudyPlan:
    """Resolve the study's DP parameters and check that every round can run.

    Each hospital takes part in a round while its epsilon after that round is
    within its budget; the hub skips it from then on.

    Raises:
        PlanError: no noise multiplier reaches the target, or some planned
            round would have fewer hospitals within budget than
            ``min_hospitals_per_round``. The reason names the round, the
            epsilon and the hospitals.

    """
    dp = study.dp_parameters()
    epsilon_by_round = [
        epsilon_of_merged(
            [(dp.noise_multiplier, dp.sample_rate, dp.steps * round_number)],
            study.delta,
            study.accountant,
        )
        for round_number in range(1, study.rounds + 1)
    ]
    budgets = {h: study.epsilon_budget_for(h) for h in study.hospitals}
    last_round = {
        hospital: sum(1 for epsilon in epsilon_by_round if epsilon <= budget)
        for hospital, budget in budgets.items()
    }
    for round_number, epsilon in enumerate(epsilon_by_round, start=1):
        within = sorted(h for h, budget in budgets.items() if epsilon <= budget)
        if len(within) < study.min_hospitals_per_round:
            raise PlanError(
                f"plan of study {study.study_id} is impossible: after round "
                f"{round_number} of {study.rounds} epsilon is {epsilon:.4f} with "
                f"noise_multiplier={dp.noise_multiplier:.4g}, within the budget of "
                f"only {len(within)} hospitals {within}, below "
                f"min_hospitals_per_round={study.min_hospitals_per_round}; raise the "
                "budgets or the noise multiplier, or lower rounds, steps or "
                "sample_rate"
            )
    logger.info(
        "planned study %s: noise_multiplier=%s, epsilon after %d rounds %.4f",
        study.study_id,
        dp.noise_multiplier,
        study.rounds,
        epsilon_by_round[-1],
    )
    return StudyPlan(
        study_id=study.study_id,
        accountant=study.accountant,
        delta=study.delta,
        dp=dp,
        noise_multiplier_planned=study.dp.target_epsilon is not None,
        epsilon_by_round=epsilon_by_round,
        budgets=budgets,
        last_round_within_budget=last_round,
    )
