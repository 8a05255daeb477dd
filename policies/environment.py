"""Environment settings that keep every healthfed process inside its federation.

Flower 1.42 reports telemetry and checks for updates by default (even for
``--help``), Ray reports usage statistics, and a Flower SuperLink installs each
app's dependencies from the package index with ``uv sync``. Every process that
healthfed starts, and every command it provides, runs with these off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

NO_PHONE_HOME_ENVIRONMENT: Mapping[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def apply_no_phone_home_environment() -> None:
    """Set the variables in this process; Flower reads them when it is imported."""
    os.environ.update(NO_PHONE_HOME_ENVIRONMENT)
