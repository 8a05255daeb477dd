"""Benchmark aggregation rounds on Flower 1.42's simulation engine.

Measures, side by side in one run, the time per round of:

1. plain aggregation: each node returns a float32 update of d values and the
   ServerApp sums them (one exchange);
2. healthfed's secure aggregation: ``federation_hub.secure_rounds``'s
   ``SecureAggregator`` on the hub and ``silo_agent.secure``'s
   ``SecureAggregationState`` on each node, with the messages of the agent's
   ClientApp. The key setup (two exchanges) runs once per study and is timed
   separately. Each round is the masked-input exchange plus the unmasking
   exchange;
3. Flower 1.42's SecAgg+: ``SecAggPlusWorkflow`` on the ServerApp and
   ``secaggplus_mod`` on the ClientApp (four exchanges per round, keys agreed in
   every round), with ``num_shares = n``, ``reconstruction_threshold =
   floor(n/2) + 1``, ``clipping_range = 1.0``, ``max_weight = 1.0`` and
   Flower's default ``quantization_range = 2**22`` and ``modulus_range = 2**32``.

No model is trained: every node draws a seeded synthetic update of L2 norm 0.5,
the same for all three methods in a round, so only the aggregation is timed.
Every round's result of every method is checked against a float64 sum of the
same updates computed by the ServerApp, within the quantization error.

One ``run_simulation`` per node count runs every dimension and method, with
Ray's files in a private temporary folder.

Run: .venv/bin/python benchmarks/bench_flower_rounds.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

for _name, _value in (
    ("FLWR_TELEMETRY_ENABLED", "0"),
    ("FLWR_DISABLE_UPDATE_CHECK", "1"),
    ("RAY_USAGE_STATS_ENABLED", "0"),
    ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1"),
):
    os.environ[_name] = _value

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
# Ray's worker processes import the ClientApp's module from this path.
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH", "")])
)

from flower_rounds import client  # noqa: E402
from flower_rounds.server import (  # noqa: E402
    METHODS,
    BenchSettings,
    DimensionResult,
    make_server_app,
)
from flwr.simulation import run_simulation  # noqa: E402

NODE_COUNTS = (5, 10, 20)
DIMENSIONS = (10**4, 10**5, 10**6)


def run_node_count(settings: BenchSettings, client_cpus: int) -> list[DimensionResult]:
    """Run one simulation with ``settings.node_count`` nodes; return its results.

    Ray gets 2 CPUs and each ClientApp ``client_cpus`` of them, so with the
    default of 2 (Flower's default) one Ray actor runs every node's handlers one
    after another.
    """
    results: list[DimensionResult] = []
    with tempfile.TemporaryDirectory(prefix="hf-bench-") as scratch:
        os.environ["RAY_TMPDIR"] = str(Path(scratch) / "ray")
        os.environ[client.STATE_DIR_ENV] = str(Path(scratch) / "agents")
        Path(os.environ["RAY_TMPDIR"]).mkdir()
        run_simulation(
            server_app=make_server_app(settings, results),
            client_app=client.app,
            num_supernodes=settings.node_count,
            backend_config={
                "init_args": {"num_cpus": 2, "include_dashboard": False},
                "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
            },
        )
    expected = len(settings.dimensions)
    if len(results) != expected:
        raise RuntimeError(
            f"the simulation with {settings.node_count} nodes returned "
            f"{len(results)} of {expected} results; see the log above"
        )
    return results


def _seconds(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _dimension_label(dimension: int) -> str:
    exponent = len(str(dimension)) - 1
    return f"10^{exponent}" if dimension == 10**exponent else str(dimension)


def table(results: list[DimensionResult]) -> list[str]:
    """Return the Markdown table of median round times and ratios."""
    lines = [
        "| n | d | plain | ours | SecAgg+ | ours / plain | SecAgg+ / plain "
        "| overhead ratio | our key setup (once per study) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        medians = {m: statistics.median(result.round_seconds[m]) for m in METHODS}
        plain, ours, secaggplus = (medians[m] for m in METHODS)
        overhead = (secaggplus - plain) / (ours - plain) if ours > plain else None
        lines.append(
            f"| {result.node_count} | {_dimension_label(result.dimension)} "
            f"| {_seconds(plain)} | {_seconds(ours)} | {_seconds(secaggplus)} "
            f"| {ours / plain:.2f} | {secaggplus / plain:.2f} "
            f"| {'n/a' if overhead is None else f'{overhead:.1f}'} "
            f"| {_seconds(result.setup_seconds)} |"
        )
    return lines


def error_table(results: list[DimensionResult]) -> list[str]:
    """Return the largest error of each method's sums against the float64 sum."""
    lines = [
        "| n | d | plain | ours (tolerance) | SecAgg+ (tolerance) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.node_count} | {_dimension_label(r.dimension)} "
            f"| {r.max_error['plain']:.1e} "
            f"| {r.max_error['ours']:.1e} ({r.tolerance['ours']:.1e}) "
            f"| {r.max_error['secaggplus']:.1e} ({r.tolerance['secaggplus']:.1e}) |"
        )
    return lines


def breakdown_table(results: list[DimensionResult]) -> list[str]:
    """Return where each method's round time goes, as medians over rounds.

    Per method: the round, the part spent inside exchanges, the nodes' handler
    time summed over nodes (part of the exchanges), and the exchange count.
    """
    lines = [
        "| n | d | plain: round / exchanges / nodes (count) | ours: ditto "
        "| SecAgg+: ditto |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        cells = []
        for method in METHODS:
            total = statistics.median(r.round_seconds[method])
            waited = statistics.median(r.exchange_seconds[method])
            nodes = statistics.median(r.node_seconds[method])
            cells.append(
                f"{_seconds(total)} / {_seconds(waited)} / {_seconds(nodes)} "
                f"({r.exchanges[method]})"
            )
        lines.append(
            f"| {r.node_count} | {_dimension_label(r.dimension)} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def machine() -> str:
    """Return the CPU model, core count and software versions."""
    import cryptography
    import flwr
    import numpy
    import ray

    model = "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True)
        for line in lscpu.stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"flwr {flwr.__version__}, ray {ray.__version__}, NumPy {numpy.__version__}, "
        f"cryptography {cryptography.__version__}"
    )


def main() -> None:
    """Parse the options, run every node count and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="n = 5 only, d = 10^4 and 10^5, 3 timed rounds",
    )
    parser.add_argument(
        "--nodes", type=int, nargs="+", help="node counts (default 5 10 20)"
    )
    parser.add_argument(
        "--dimensions", type=int, nargs="+", help="update lengths (default 10^4-10^6)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed rounds per method (default 5)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds first (default 1)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="longest wait for the replies of one exchange, in s (default 900)",
    )
    parser.add_argument(
        "--client-cpus",
        type=int,
        choices=(1, 2),
        default=2,
        help="CPUs per ClientApp out of Ray's 2: 2 runs one node at a time (default), "
        "1 runs two at a time",
    )
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    args = parser.parse_args()

    node_counts = tuple(args.nodes or ((5,) if args.quick else NODE_COUNTS))
    dimensions = tuple(
        args.dimensions or ((10**4, 10**5) if args.quick else DIMENSIONS)
    )
    rounds = 3 if args.quick and args.rounds == 5 else args.rounds
    # Progress lines only: Flower and the protocol log every stage at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("flower_rounds").setLevel(logging.INFO)

    started = time.perf_counter()
    results: list[DimensionResult] = []
    for count in node_counts:
        settings = BenchSettings(
            node_count=count,
            dimensions=dimensions,
            rounds=rounds,
            warmup=args.warmup,
            timeout_s=args.timeout,
        )
        results.extend(run_node_count(settings, args.client_cpus))
        print("\n".join(table(results)), flush=True)
    elapsed = time.perf_counter() - started

    print()
    print(f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"Machine: {machine()}")
    print(f"Median of {rounds} timed rounds after {args.warmup} warm-up round(s).")
    print(f"CPUs per ClientApp: {args.client_cpus} of 2.")
    print(f"Whole run: {elapsed / 60:.1f} min")
    print()
    print("\n".join(table(results)))
    print()
    print("Round, time inside exchanges, summed node handler time (exchanges):")
    print("\n".join(breakdown_table(results)))
    print()
    print("Largest absolute error of any round's sum against the float64 sum:")
    print("\n".join(error_table(results)))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
