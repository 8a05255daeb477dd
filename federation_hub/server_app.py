"""Flower ServerApp of the hub.

The federation folder comes from the run config key ``federation-dir`` (``flwr
run . <connection> --run-config 'federation-dir="/path"'``) or, for the embedded
simulation, from the ``HEALTHFED_FEDERATION_DIR`` environment variable.
"""

from __future__ import annotations

import json
import logging
import os

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federation_hub.config import load_hub_config
from federation_hub.report import write_study_report
from federation_hub.study import StudyRunner

logger = logging.getLogger(__name__)

FEDERATION_DIR_ENV = "HEALTHFED_FEDERATION_DIR"

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the study of the federation folder and write its budget report."""
    federation_dir = str(
        context.run_config.get("federation-dir", "")
    ) or os.environ.get(FEDERATION_DIR_ENV, "")
    if not federation_dir:
        raise RuntimeError(
            "no federation folder: pass --run-config 'federation-dir=\"/path\"' to "
            "flwr run, or set HEALTHFED_FEDERATION_DIR"
        )
    config = load_hub_config(federation_dir)
    runner = StudyRunner(grid, config)
    result = runner.run()
    path = write_study_report(config.reports_dir, result)
    logger.info(
        "study %s finished: %s; report %s", result.study_id, result.stop_reason, path
    )
    logger.info("budget: %s", json.dumps(result.budget))
