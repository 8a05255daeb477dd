"""Epsilon of a DP-SGD history, replayed from scratch with Opacus's accountants.

No accountant object lives across rounds: each call builds a fresh one from the
full history read from the ledger. Composition is commutative, so the history
is first merged into one entry per distinct (noise multiplier, sample rate),
in a fixed order. Several short rounds therefore give exactly the same epsilon
as one run of the same total steps, and the cost of a call grows with the
number of distinct parameter sets, not with the number of rounds.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

from policies.models import (
    MAX_NOISE_MULTIPLIER,
    Accountant,
    DPParameters,
    PolicyError,
)

logger = logging.getLogger(__name__)

ACCOUNTANTS: tuple[Accountant, ...] = ("rdp", "prv")

# Binary-search tolerance of the planner, in epsilon. The planned noise
# multiplier gives an epsilon at most the target and within this of it.
PLANNER_EPSILON_TOLERANCE = 0.01


class PlanError(PolicyError):
    """No DP-SGD plan meets the target: the reason names the parameter."""


def merge_history(history: Sequence[DPParameters]) -> list[tuple[float, float, int]]:
    """Merge a history into (noise_multiplier, sample_rate, steps) per distinct pair.

    The order is sorted, so two histories with the same multiset of steps
    give the same list.
    """
    steps_by_pair: dict[tuple[float, float], int] = {}
    for parameters in history:
        pair = (parameters.noise_multiplier, parameters.sample_rate)
        steps_by_pair[pair] = steps_by_pair.get(pair, 0) + parameters.steps
    return [(sigma, q, steps) for (sigma, q), steps in sorted(steps_by_pair.items())]


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, float | int) and math.isfinite(delta) and 0 < delta < 1):
        raise PolicyError(
            f"delta must be a finite number in (0, 1), received {delta!r}; "
            "use a delta below 1/N of the smallest cohort"
        )


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise PolicyError(
            f"accountant must be one of {list(ACCOUNTANTS)}, received {accountant!r}"
        )


def epsilon_of_merged(
    merged: Sequence[tuple[float, float, int]], delta: float, accountant: str
) -> float:
    """Return epsilon of an already merged history; see :func:`compute_epsilon`."""
    if not merged:
        return 0.0
    # Opacus imports torch, about 3 s, so the commands that never compute an
    # epsilon (validate, verify-ledger) start without it.
    from opacus.accountants import PRVAccountant, RDPAccountant

    opacus_accountant = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    opacus_accountant.history = list(merged)
    try:
        with warnings.catch_warnings():
            # Opacus warns when the best RDP order is at the edge of its grid;
            # the bound is still valid, only looser (more epsilon).
            warnings.simplefilter("ignore", UserWarning)
            epsilon = float(opacus_accountant.get_epsilon(delta=delta))
    except (ValueError, RuntimeError, FloatingPointError, OverflowError) as error:
        # Opacus's PRV accountant raises for a delta too small for its grid.
        raise PolicyError(
            f"the {accountant} accountant failed for delta={delta} and "
            f"{len(merged)} parameter sets: {error}; use the rdp accountant or a "
            "larger delta"
        ) from error
    if math.isnan(epsilon) or epsilon < 0:
        raise PolicyError(
            f"the {accountant} accountant returned epsilon={epsilon} for "
            f"history {list(merged)} at delta={delta}"
        )
    return epsilon


def compute_epsilon(
    history: Sequence[DPParameters], delta: float, accountant: str
) -> float:
    """Compute the epsilon spent by a history of DP-SGD rounds at ``delta``.

    Args:
        history: every round spent so far on the same records, in any order.
        delta: target delta in (0, 1).
        accountant: ``"rdp"`` or ``"prv"``. ``"rdp"`` is Opacus's
            RDPAccountant over its default orders 1.1-63, with the conversion of
            Balle et al., AISTATS 2020, Theorem 21. ``"prv"`` is Opacus's
            PRVAccountant (Gopi, Lee and Wutschitz, NeurIPS 2021) with its
            default ``eps_error`` 0.01. It returns the upper end of its error
            interval.

    Returns:
        Epsilon, 0.0 for an empty history. Both accountants give an
        upper bound on the true epsilon of Poisson-sampled Gaussian steps: each
        approximation errs toward more epsilon spent.

    Raises:
        PolicyError: ``delta`` or ``accountant`` is invalid.

    """
    _check_delta(delta)
    _check_accountant(accountant)
    return epsilon_of_merged(merge_history(history), delta, accountant)


def plan_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    total_steps: int,
    accountant: str,
) -> float:
    """Find a noise multiplier with epsilon at most the target after ``total_steps``.

    Uses Opacus's ``get_noise_multiplier`` binary search with tolerance
    :data:`PLANNER_EPSILON_TOLERANCE`, then recomputes epsilon with
    :func:`compute_epsilon` so that the plan and the later enforcement use
    the same number.

    Raises:
        PlanError: no noise multiplier up to 1e6 reaches the target.

    """
    _check_delta(delta)
    _check_accountant(accountant)
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            noise_multiplier = float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=total_steps,
                    accountant=accountant,
                    epsilon_tolerance=PLANNER_EPSILON_TOLERANCE,
                )
            )
    except ValueError as error:
        raise PlanError(
            f"no noise multiplier up to {MAX_NOISE_MULTIPLIER:g} reaches "
            f"target_epsilon={target_epsilon} at delta={delta} with "
            f"sample_rate={sample_rate} over {total_steps} steps; raise "
            "target_epsilon or lower rounds, steps or sample_rate"
        ) from error
    achieved = epsilon_of_merged(
        [(noise_multiplier, sample_rate, total_steps)], delta, accountant
    )
    if not achieved <= target_epsilon:
        raise PlanError(
            f"planned noise_multiplier={noise_multiplier} gives epsilon={achieved} "
            f"above target_epsilon={target_epsilon}"
        )
    logger.info(
        "planned noise_multiplier=%s for target_epsilon=%s (epsilon %s) over %d steps",
        noise_multiplier,
        target_epsilon,
        achieved,
        total_steps,
    )
    return noise_multiplier
