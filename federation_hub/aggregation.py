"""Server-side aggregation of the hospitals' model deltas."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

Parameters = dict[str, np.ndarray]


class FedAvg:
    """Weighted federated averaging of model deltas (McMahan et al., AISTATS 2017).

    The new global model is ``w + server_learning_rate * sum_i(n_i * d_i) /
    sum_i(n_i)``, where ``d_i`` is hospital i's clipped delta and ``n_i`` its
    weight (its number of training records). A server learning rate of 1.0 is
    plain FedAvg.
    """

    name = "fedavg"

    def __init__(self, server_learning_rate: float = 1.0) -> None:
        if not np.isfinite(server_learning_rate) or server_learning_rate <= 0:
            raise ValueError(
                "server_learning_rate must be finite and > 0, got "
                f"{server_learning_rate}"
            )
        self.server_learning_rate = server_learning_rate

    def apply(
        self, parameters: Parameters, updates: Sequence[tuple[Parameters, float]]
    ) -> Parameters:
        """Return the global model after applying the weighted mean of ``updates``."""
        total_weight = float(sum(weight for _, weight in updates))
        if not updates or total_weight <= 0:
            raise ValueError(
                "aggregation needs at least one update with positive weight"
            )
        weighted_sum: Parameters = {}
        for name, value in parameters.items():
            total = np.zeros(np.shape(value), dtype=np.float64)
            for delta, weight in updates:
                total += np.asarray(delta[name], dtype=np.float64) * weight
            weighted_sum[name] = total
        return self.apply_sum(parameters, weighted_sum, total_weight)

    def apply_sum(
        self, parameters: Parameters, weighted_sum: Parameters, total_weight: float
    ) -> Parameters:
        """Return the global model after a step along ``weighted_sum / total_weight``.

        Secure aggregation reveals only these two sums, never a single update.
        """
        if not total_weight > 0:
            raise ValueError(f"total weight must be > 0, got {total_weight}")
        return {
            name: (
                np.asarray(value, dtype=np.float64)
                + self.server_learning_rate
                * np.asarray(weighted_sum[name])
                / total_weight
            ).astype(np.float32)
            for name, value in parameters.items()
        }
