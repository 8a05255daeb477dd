"""Run a study on Flower's simulation engine, in this process.

Flower's simulation engine runs each hospital's ClientApp in a warm Ray worker,
so one message exchange costs about 0.1 s on a 2-core machine, against several
seconds on a loopback deployment, where each message starts a fresh ClientApp
process. The ServerApp and ClientApp are the same in both engines.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federation_hub.config import load_hub_config
from federation_hub.report import write_study_report
from federation_hub.server_app import FEDERATION_DIR_ENV
from federation_hub.study import ProgressCallback, StudyResult, StudyRunner
from policies.environment import apply_no_phone_home_environment
from policies.roster import load_roster

logger = logging.getLogger(__name__)


class StudyFailedError(RuntimeError):
    """The study raised inside the ServerApp; the log above shows the error."""


def run_simulation_study(
    federation_dir: Path, progress: ProgressCallback | None = None
) -> StudyResult:
    """Run the study of ``federation_dir`` with one virtual node per hospital."""
    apply_no_phone_home_environment()
    # Imported after the environment is set: importing Flower's simulation
    # package does not start Ray, but keeping the order makes that irrelevant.
    from flwr.simulation import run_simulation

    from silo_agent.client_app import app as client_app

    federation_dir = federation_dir.resolve()
    config = load_hub_config(federation_dir)
    hospitals = len(load_roster(config.roster).hospitals)
    os.environ[FEDERATION_DIR_ENV] = str(federation_dir)
    # Ray's socket paths must stay short, so its folder lives in the system's
    # temporary folder rather than inside the federation folder.
    ray_dir = tempfile.mkdtemp(prefix="healthfed-ray-")
    os.environ["RAY_TMPDIR"] = ray_dir

    outcome: dict[str, StudyResult | BaseException] = {}
    # Set when the engine returns, so a ServerApp thread still waiting for
    # replies (the engine failed to start, say) stops instead of keeping the
    # process alive until its timeouts expire.
    engine_stopped = threading.Event()
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            runner = StudyRunner(grid, config, progress, engine_stopped)
            outcome["result"] = runner.run()
        except BaseException as error:
            outcome["error"] = error
            raise

    workers = max(1, min(hospitals, os.cpu_count() or 1))
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=hospitals,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {
                    "num_cpus": workers,
                    "num_gpus": 0,
                    "include_dashboard": False,
                    "_temp_dir": ray_dir,
                },
            },
        )
    finally:
        engine_stopped.set()
        shutil.rmtree(ray_dir, ignore_errors=True)

    error = outcome.get("error")
    if isinstance(error, BaseException):
        raise StudyFailedError(f"the study failed: {error}") from error
    result = outcome.get("result")
    if not isinstance(result, StudyResult):
        raise StudyFailedError(
            "the simulation ended without a study result; see Flower's log above"
        )
    write_study_report(config.reports_dir, result)
    return result
