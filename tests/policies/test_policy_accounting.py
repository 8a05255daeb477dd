"""Cross-checks of compute_epsilon against independent accountants.

Tolerances and directions, checked below:

- Opacus RDP stepped one step at a time (no history merging) must equal
  compute_epsilon to 1e-9 relative: same library, different path.
- Google dp-accounting RDP on the same integer orders must equal Opacus RDP to
  1e-6 relative: two implementations of the Poisson-subsampled Gaussian RDP
  (Mironov, Talwar and Zhang 2019) and the same RDP-to-DP conversion.
- With each library's default orders, dp-accounting may be higher by up to 1%,
  never lower by more than 1e-9 relative: it drops fractional orders
  below 2 whose series fails to converge, so it minimises over fewer orders.
- Opacus PRV returns the top of its error interval (eps_error 0.01), and
  dp-accounting's PLD (pessimistic estimate, discretisation 1e-3) is an upper
  bound within its own discretisation: PRV must be at or above PLD and at most
  0.03 above it.
- RDP's conversion is loose, so RDP must be at or above PLD.
"""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from policy_helpers import dp

from policies.accounting import compute_epsilon, merge_history, plan_noise_multiplier
from policies.models import DPParameters, PolicyError

HISTORIES = {
    "bundled_plan": [dp(2.666, 0.2, 3)] * 15,
    "heterogeneous": [dp(1.2, 0.2, 3)] * 4 + [dp(1.5, 0.25, 2)] * 3 + [dp(2.0, 0.1, 5)],
    "small_rate_many_steps": [dp(1.1, 0.01, 100)] * 10,
}
DELTAS = [1e-5, 1e-3]
INTEGER_ORDERS = list(range(2, 64))


def _dp_event(history: list[DPParameters]) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    p.sample_rate, dp_accounting.GaussianDpEvent(p.noise_multiplier)
                ),
                p.steps,
            )
            for p in history
        ]
    )


def _opacus_stepped(history: list[DPParameters], delta: float, kind: str) -> float:
    accountant = RDPAccountant() if kind == "rdp" else PRVAccountant()
    for parameters in history:
        for _ in range(parameters.steps):
            accountant.step(
                noise_multiplier=parameters.noise_multiplier,
                sample_rate=parameters.sample_rate,
            )
    return float(accountant.get_epsilon(delta=delta))


@pytest.mark.parametrize("name", sorted(HISTORIES))
@pytest.mark.parametrize("delta", DELTAS)
def test_rdp_matches_opacus_stepped(name: str, delta: float) -> None:
    history = HISTORIES[name]
    expected = _opacus_stepped(history, delta, "rdp")
    assert compute_epsilon(history, delta, "rdp") == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", ["bundled_plan", "heterogeneous"])
def test_prv_matches_opacus_stepped(name: str) -> None:
    history = HISTORIES[name]
    expected = _opacus_stepped(history, 1e-5, "prv")
    # Merging changes PRV's discretisation grid; both are upper bounds with
    # eps_error 0.01, so they agree within twice that.
    assert abs(compute_epsilon(history, 1e-5, "prv") - expected) <= 0.02


@pytest.mark.parametrize("name", sorted(HISTORIES))
@pytest.mark.parametrize("delta", DELTAS)
def test_rdp_integer_orders_match_dp_accounting(name: str, delta: float) -> None:
    history = HISTORIES[name]
    opacus = RDPAccountant()
    opacus.history = merge_history(history)
    ours = opacus.get_epsilon(delta=delta, alphas=INTEGER_ORDERS)
    google = rdp_privacy_accountant.RdpAccountant(orders=INTEGER_ORDERS)
    google.compose(_dp_event(history))
    assert ours == pytest.approx(google.get_epsilon(delta), rel=1e-6)


@pytest.mark.parametrize("name", sorted(HISTORIES))
@pytest.mark.parametrize("delta", DELTAS)
def test_rdp_default_orders_vs_dp_accounting(name: str, delta: float) -> None:
    history = HISTORIES[name]
    ours = compute_epsilon(history, delta, "rdp")
    google = rdp_privacy_accountant.RdpAccountant()
    google.compose(_dp_event(history))
    theirs = google.get_epsilon(delta)
    assert ours <= theirs * (1 + 1e-9)
    assert ours >= theirs * (1 - 1e-2)


def _pld_epsilon(history: list[DPParameters], delta: float) -> float:
    accountant = pld_privacy_accountant.PLDAccountant(
        value_discretization_interval=1e-3
    )
    accountant.compose(_dp_event(history))
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("name", ["bundled_plan", "heterogeneous"])
def test_prv_within_tolerance_of_pld(name: str) -> None:
    history = HISTORIES[name]
    pld = _pld_epsilon(history, 1e-5)
    prv = compute_epsilon(history, 1e-5, "prv")
    assert prv >= pld - 1e-3
    assert prv - pld <= 0.03


@pytest.mark.parametrize("name", ["bundled_plan", "heterogeneous"])
def test_rdp_at_or_above_pld(name: str) -> None:
    history = HISTORIES[name]
    assert compute_epsilon(history, 1e-5, "rdp") >= _pld_epsilon(history, 1e-5)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_short_rounds_equal_one_run(accountant: str) -> None:
    rounds = [dp(1.3, 0.2, 3)] * 10
    one_run = [dp(1.3, 0.2, 30)]
    short = compute_epsilon(rounds, 1e-5, accountant)
    assert short == compute_epsilon(one_run, 1e-5, accountant)


def test_rdp_short_rounds_equal_one_run_unmerged() -> None:
    # Independent of the merging: Opacus stepped per step vs one 30-step entry.
    stepped = _opacus_stepped([dp(1.3, 0.2, 3)] * 10, 1e-5, "rdp")
    assert stepped == pytest.approx(
        compute_epsilon([dp(1.3, 0.2, 30)], 1e-5, "rdp"), rel=1e-12
    )


def test_history_order_does_not_matter() -> None:
    history = HISTORIES["heterogeneous"]
    forward = compute_epsilon(history, 1e-5, "rdp")
    assert compute_epsilon(list(reversed(history)), 1e-5, "rdp") == forward


def test_empty_history_is_zero() -> None:
    assert compute_epsilon([], 1e-5, "rdp") == 0.0


@pytest.mark.parametrize(
    ("delta", "accountant"),
    [
        (0.0, "rdp"),
        (1.0, "rdp"),
        (-1e-5, "rdp"),
        (math.nan, "rdp"),
        (math.inf, "rdp"),
        (1e-5, "gdp"),
    ],
)
def test_invalid_delta_or_accountant_raises(delta: float, accountant: str) -> None:
    with pytest.raises(PolicyError):
        compute_epsilon([dp()], delta, accountant)


def test_prv_tiny_delta_raises() -> None:
    with pytest.raises(PolicyError, match="prv accountant failed"):
        compute_epsilon([dp()], 1e-300, "prv")


parameters = st.builds(
    dp,
    noise_multiplier=st.floats(0.6, 5.0),
    sample_rate=st.floats(0.01, 0.5),
    steps=st.integers(1, 20),
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(parameters, min_size=0, max_size=6), extra=parameters)
def test_rdp_epsilon_never_decreases(
    history: list[DPParameters], extra: DPParameters
) -> None:
    before = compute_epsilon(history, 1e-5, "rdp")
    assert compute_epsilon([*history, extra], 1e-5, "rdp") >= before


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(parameters, min_size=1, max_size=3), extra=parameters)
def test_prv_epsilon_never_decreases(
    history: list[DPParameters], extra: DPParameters
) -> None:
    before = compute_epsilon(history, 1e-5, "prv")
    assert compute_epsilon([*history, extra], 1e-5, "prv") >= before


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_grows_with_rounds(accountant: str) -> None:
    epsilons = [compute_epsilon([dp()] * n, 1e-5, accountant) for n in range(1, 8)]
    assert epsilons == sorted(epsilons)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_planner_meets_target(accountant: str) -> None:
    sigma = plan_noise_multiplier(
        target_epsilon=2.0,
        delta=1e-5,
        sample_rate=0.2,
        total_steps=45,
        accountant=accountant,
    )
    achieved = compute_epsilon([dp(sigma, 0.2, 45)], 1e-5, accountant)
    assert achieved <= 2.0
    assert achieved >= 2.0 - 0.05
