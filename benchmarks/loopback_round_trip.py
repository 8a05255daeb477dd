"""Time one message round trip on a loopback Flower deployment with TLS.

Starts a SuperLink and 4 SuperNodes on 127.0.0.1 (LoopbackDeployment), runs the
probe app of tests/deployment/probe_app for several rounds and records, per
round, the time from pushing one query to every SuperNode until the last reply
arrives. It compares, in one run, Flower's default SuperExec task poll interval
(1 s) with FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.05. It also times the imports
that every fresh `flwr-clientapp` process pays before it handles its message: Flower's
ClientApp runtime alone, and the healthfed agent's ClientApp module.

Usage: .venv/bin/python benchmarks/loopback_round_trip.py [--rounds N] [--nodes N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from federation_hub.credentials import create_federation_credentials  # noqa: E402
from federation_hub.deployment import LoopbackDeployment  # noqa: E402
from policies.environment import NO_PHONE_HOME_ENVIRONMENT  # noqa: E402

PROBE_APP = REPOSITORY / "tests" / "deployment" / "probe_app"


CONFIGURATIONS: dict[str, tuple[float | None, bool]] = {
    "pull loop, SuperExec poll 1 s": (None, False),
    "pull loop, SuperExec poll 0.05 s": (0.05, False),
    "send_and_receive, SuperExec poll 1 s": (None, True),
}
"""Label -> (FLWR_SUPEREXEC_TASK_POLL_INTERVAL or None, use send_and_receive)."""


def measure_round_trips(
    directory: Path,
    nodes: int,
    rounds: int,
    poll_interval: float | None,
    send_and_receive: bool,
) -> dict[str, list[float] | float]:
    hospitals = [f"hospital-{i}" for i in range(nodes)]
    credentials = create_federation_credentials(directory / "credentials", hospitals)
    configs = {}
    for hospital in hospitals:
        configs[hospital] = directory / f"{hospital}.yaml"
        configs[hospital].write_text(f"hospital_id: {hospital}\n", encoding="utf-8")

    report_path = directory / "report.json"
    started = time.monotonic()
    with LoopbackDeployment(
        directory / "deployment",
        credentials,
        configs,
        superexec_poll_interval_seconds=poll_interval,
    ) as deployment:
        startup = time.monotonic() - started
        result = deployment.run_app(
            PROBE_APP,
            {
                "expected-nodes": nodes,
                "rounds": rounds,
                "send-and-receive": send_and_receive,
                "report-path": str(report_path),
            },
            timeout_seconds=600,
        )

    report = json.loads(report_path.read_text(encoding="utf-8"))
    round_trips: list[float] = report["round_trip_seconds"]
    # The first round also unpacks the app into each SuperNode's FLWR_HOME.
    later = slice(nodes, None)
    return {
        "startup_seconds": startup,
        "run_seconds": result.elapsed_seconds,
        "first_round_seconds": round_trips[0],
        "later_rounds_seconds": round_trips[1:],
        "dispatch_seconds": report["dispatch_seconds"][later],
        "return_seconds": report["return_seconds"][later],
    }


def measure_import(module: str, repeats: int) -> float:
    """Return the median wall time of `python -c 'import module'` in a fresh process."""
    times = []
    environment = {
        **NO_PHONE_HOME_ENVIRONMENT,
        "PATH": str(Path(sys.executable).parent),
    }
    for _ in range(repeats):
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            check=True,
            env=environment,
            cwd=REPOSITORY,
        )
        times.append(time.monotonic() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--import-repeats", type=int, default=5)
    arguments = parser.parse_args()

    results = {}
    for label, (interval, send_and_receive) in CONFIGURATIONS.items():
        with tempfile.TemporaryDirectory(prefix="healthfed-bench-") as directory:
            results[label] = measure_round_trips(
                Path(directory),
                arguments.nodes,
                arguments.rounds,
                interval,
                send_and_receive,
            )

    print(f"nodes: {arguments.nodes}, rounds per run: {arguments.rounds}")
    medians = {}
    for label, result in results.items():
        later = result["later_rounds_seconds"]
        dispatch = result["dispatch_seconds"]
        returned = result["return_seconds"]
        assert isinstance(later, list)
        assert isinstance(dispatch, list)
        assert isinstance(returned, list)
        medians[label] = statistics.median(later)
        print(
            f"{label}: start-up {result['startup_seconds']:.1f} s, "
            f"first round {result['first_round_seconds']:.2f} s, "
            f"median later round {medians[label]:.2f} s "
            f"(min {min(later):.2f}, max {max(later):.2f}); per reply median "
            f"dispatch {statistics.median(dispatch):.2f} s, "
            f"return {statistics.median(returned):.2f} s"
        )
    baseline_label = next(iter(CONFIGURATIONS))
    for label, median in medians.items():
        ratio = median / medians[baseline_label]
        print(f"ratio of median round trip, {label} / {baseline_label}: {ratio:.2f}")

    for module in ("flwr.supernode.runtime.run_clientapp", "silo_agent.client_app"):
        seconds = measure_import(module, arguments.import_repeats)
        print(f"fresh-process import of {module}: median {seconds:.2f} s")


if __name__ == "__main__":
    main()
