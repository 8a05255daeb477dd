"""Time one budget check with 1,000 rounds of history.

A budget check is what the agent does before it accepts a round: read and
verify its ledger, replay the study's and all studies' histories with the
accountant, and compare with its policy (check_instruction). Cases:

- identical rounds: 1,000 rounds with the same DP parameters (the usual case;
  the history merges into one accountant entry);
- distinct rounds: 1,000 rounds, each with its own noise multiplier (worst
  case; 1,000 accountant entries);
- ledger read: Ledger.history() on a ledger with 1,000 signed spends;
- full agent check: ledger read plus check_instruction.

Run: .venv/bin/python benchmarks/bench_budget.py [--repeats N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opacus.accountants import RDPAccountant

from policies.enforcement import RoundInstruction, check_instruction
from policies.ledger import Ledger
from policies.models import DPParameters, HospitalPolicy

ROUNDS = 1000
DELTA = 1e-5
COHORT = 240


def _dp(noise_multiplier: float) -> DPParameters:
    return DPParameters(
        noise_multiplier=noise_multiplier, sample_rate=0.01, steps=1, max_grad_norm=1.0
    )


def _policy(accountant: str) -> HospitalPolicy:
    return HospitalPolicy(
        hospital_id="bench",
        max_epsilon_per_study=100.0,
        max_epsilon_total=100.0,
        min_noise_multiplier=0.5,
        max_sample_rate=1.0,
        max_max_grad_norm=10.0,
        max_rounds=ROUNDS + 1,
        accepted_accountants=(accountant,),  # type: ignore[arg-type]
        max_delta=1e-4,
        total_delta=DELTA,
        total_accountant=accountant,  # type: ignore[arg-type]
    )


def _instruction(accountant: str) -> RoundInstruction:
    return RoundInstruction(
        study_id="bench",
        round=ROUNDS + 1,
        nonce="0123456789abcdef0123456789abcdef",
        schema_hash="sha256:bench",
        accountant=accountant,  # type: ignore[arg-type]
        delta=DELTA,
        dp=_dp(2.0),
        secure_aggregation=True,
    )


def _median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up: imports and caches
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def _cpu_model() -> str:
    try:
        output = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in output.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    repeats = arguments.repeats

    identical = [_dp(2.0)] * ROUNDS
    distinct = [_dp(2.0 + index * 1e-3) for index in range(ROUNDS)]
    results: dict[str, float] = {}

    for accountant in ("rdp", "prv"):
        policy, instruction = _policy(accountant), _instruction(accountant)
        results[f"check_instruction {accountant}, identical rounds"] = _median_seconds(
            lambda p=policy, i=instruction: check_instruction(
                p, i, identical, identical, COHORT
            ),
            repeats,
        )
    policy, instruction = _policy("rdp"), _instruction("rdp")
    results["check_instruction rdp, distinct rounds"] = _median_seconds(
        lambda: check_instruction(policy, instruction, distinct, distinct, COHORT),
        repeats,
    )

    def unmerged_rdp() -> float:
        # The same replay without merging: one Opacus entry per round.
        accountant = RDPAccountant()
        accountant.history = [
            (p.noise_multiplier, p.sample_rate, p.steps) for p in identical
        ]
        return float(accountant.get_epsilon(delta=DELTA))

    results["rdp replay without merging, identical rounds"] = _median_seconds(
        unmerged_rdp, repeats
    )

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.db"
        with Ledger.open(path, "bench", Ed25519PrivateKey.generate()) as ledger:
            for index, parameters in enumerate(identical, start=1):
                ledger.record_spend(
                    "bench",
                    index,
                    f"nonce-{index:06d}-padding",
                    parameters,
                    "rdp",
                    DELTA,
                    1.0,
                )
            results["Ledger.history, 1,000 signed spends"] = _median_seconds(
                lambda: ledger.history("bench"), repeats
            )

            def full_check() -> float:
                study_history = ledger.history("bench")
                return check_instruction(
                    policy, instruction, study_history, study_history, COHORT
                )

            results["full agent check (ledger read + rdp check)"] = _median_seconds(
                full_check, repeats
            )

    print(f"machine: {_cpu_model()}, Python {platform.python_version()}")
    print(f"median of {repeats} runs, {ROUNDS} rounds of history")
    baseline = results["check_instruction rdp, identical rounds"]
    for name, seconds in results.items():
        print(f"{name:48s} {seconds * 1e3:10.1f} ms  ({seconds / baseline:6.2f}x)")


if __name__ == "__main__":
    main()
