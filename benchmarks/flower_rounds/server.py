"""ServerApp of the round benchmark: plain, healthfed secure and SecAgg+ rounds.

For one node count, the ServerApp runs every dimension in turn. For each, it runs
the key setup of healthfed's secure aggregation once (timed separately), then
``warmup + rounds`` rounds of each of the three methods. The three methods take
turns within each round index, with the order rotated every round, so they share
the machine's background load. All three aggregate the same synthetic updates,
and every round's result is checked against an independent float64 sum of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid, ServerApp

from federation_hub.secure_rounds import SecureAggregator, secure_aggregation_config
from flower_rounds.client import (
    BENCH,
    IDENTIFY,
    PLAIN,
    SECURE,
    TIMING,
    field_of,
    hospital_id,
    synthetic_update,
)
from policies import wire
from policies.models import TrainingConfig

logger = logging.getLogger(__name__)

METHODS = ("plain", "ours", "secaggplus")

#: Clip norm of the study, in update units (TrainingConfig's default).
CLIP_NORM = 1.0


@dataclass(frozen=True)
class BenchSettings:
    """What one simulation measures.

    Attributes:
        node_count: Number of simulated nodes (hospitals).
        dimensions: Update lengths to measure, in parameters.
        rounds: Timed rounds per method and dimension.
        warmup: Untimed rounds per method and dimension before the timed ones.
        seed: Seed of the synthetic updates.
        timeout_s: Longest wait for the replies of one exchange, in seconds.

    """

    node_count: int
    dimensions: tuple[int, ...]
    rounds: int
    warmup: int = 1
    seed: int = 0
    timeout_s: float = 900.0


@dataclass
class DimensionResult:
    """Round times and checks of one (node count, dimension) configuration."""

    node_count: int
    dimension: int
    round_seconds: dict[str, list[float]] = field(
        default_factory=lambda: {method: [] for method in METHODS}
    )
    max_error: dict[str, float] = field(
        default_factory=lambda: {method: 0.0 for method in METHODS}
    )
    exchange_seconds: dict[str, list[float]] = field(
        default_factory=lambda: {method: [] for method in METHODS}
    )
    node_seconds: dict[str, list[float]] = field(
        default_factory=lambda: {method: [] for method in METHODS}
    )
    exchanges: dict[str, int] = field(default_factory=dict)
    tolerance: dict[str, float] = field(default_factory=dict)
    setup_seconds: float = float("nan")


class TimedGrid:
    """A Grid wrapper that adds up the time spent in ``send_and_receive``.

    The time between pushing the messages and holding every reply covers the
    nodes' work, the transport and the grid's reply polling (every 0.1 s in
    Flower 1.42's simulation engine). The rest of a round is the ServerApp's own
    work. ``node_seconds`` adds up the handler times that the nodes' timing mod
    reports in their replies.
    """

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.exchange_seconds = 0.0
        self.node_seconds = 0.0
        self.exchanges = 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Push ``messages`` and return their replies, timing the wait."""
        start = time.perf_counter()
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.exchange_seconds += time.perf_counter() - start
        self.exchanges += 1
        for reply in replies:
            if reply.has_content() and TIMING in reply.content.config_records:
                timing = reply.content.config_records[TIMING]
                self.node_seconds += field_of(timing, "seconds", float)
        return replies

    def reset(self) -> None:
        """Start counting from zero."""
        self.exchange_seconds = 0.0
        self.node_seconds = 0.0
        self.exchanges = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class SumMismatchError(RuntimeError):
    """An aggregated sum differs from the plain sum by more than its tolerance."""


def _exchange(grid: Grid, timeout_s: float) -> Callable[[list[Message]], list[Message]]:
    def exchange(messages: list[Message]) -> list[Message]:
        replies = list(grid.send_and_receive(messages, timeout=timeout_s))
        if len(replies) != len(messages):
            raise RuntimeError(
                f"{len(replies)} of {len(messages)} replies arrived within "
                f"{timeout_s} s. Raise --timeout"
            )
        failed = [reply for reply in replies if reply.has_error()]
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(replies)} nodes failed, the first from node "
                f"{failed[0].metadata.src_node_id}: {failed[0].error}"
            )
        return replies

    return exchange


def _discover(grid: Grid, settings: BenchSettings) -> dict[str, int]:
    """Return the node id of each hospital, by the nodes' partition ids."""
    while len(list(grid.get_node_ids())) < settings.node_count:
        time.sleep(0.1)
    messages = [
        Message(RecordDict(), dst_node_id=node, message_type=IDENTIFY)
        for node in list(grid.get_node_ids())
    ]
    replies = _exchange(grid, settings.timeout_s)(messages)
    return {
        hospital_id(
            field_of(reply.content.config_records[wire.RESULT], "partition", int)
        ): (reply.metadata.src_node_id)
        for reply in replies
    }


def _bench_record(
    settings: BenchSettings, dimension: int, round_index: int
) -> dict[str, Any]:
    return {"seed": settings.seed, "dimension": dimension, "round_index": round_index}


class _Methods:
    """The three ways of aggregating one round, for one dimension."""

    def __init__(
        self,
        grid: Grid,
        context: Context,
        nodes: dict[str, int],
        settings: BenchSettings,
        dimension: int,
    ) -> None:
        self.grid = grid
        self.nodes = nodes
        self.settings = settings
        self.dimension = dimension
        self.exchange = _exchange(grid, settings.timeout_s)
        self.global_model = np.zeros(dimension, dtype=np.float32)
        self.round_index = 0

        training = TrainingConfig(update_clip_norm=CLIP_NORM)
        self.training = training
        self.secure_config = secure_aggregation_config(
            sorted(nodes), dimension, training
        )
        self.aggregator = SecureAggregator(
            f"bench-n{len(nodes)}-d{dimension}",
            nodes,
            self.secure_config,
            self.exchange,
        )
        self.secure_round = 0

        count = len(nodes)
        self.secaggplus_workflow = SecAggPlusWorkflow(
            num_shares=count,
            reconstruction_threshold=count // 2 + 1,
            max_weight=1.0,
            clipping_range=CLIP_NORM,
            timeout=settings.timeout_s,
        )
        client_manager = SimpleClientManager()
        for node in nodes.values():
            client_manager.register(
                GridClientProxy(node_id=node, grid=grid, run_id=grid.run.run_id)
            )
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=count,
            min_available_clients=count,
            on_fit_config_fn=lambda _: _bench_record(
                settings, dimension, self.round_index
            ),
        )
        self.legacy = LegacyContext(
            context,
            config=ServerConfig(num_rounds=1),
            strategy=strategy,
            client_manager=client_manager,
        )

    @property
    def tolerances(self) -> dict[str, float]:
        """Largest admissible error per coordinate of each method's sum.

        Ours rounds each coordinate to the nearest of ``quantization_levels``
        steps per clip norm; SecAgg+ rounds stochastically to one of
        ``quantization_range`` steps over twice its clipping range. Either way a
        node adds less than one step, so n nodes stay within n steps. The plain
        sum adds float32 rounding only.
        """
        count = len(self.nodes)
        ours_step = self.secure_config.quantization_step
        secaggplus_step = 2 * CLIP_NORM / self.secaggplus_workflow.quantization_range
        return {
            "plain": 1e-6,
            "ours": count * ours_step,
            "secaggplus": count * secaggplus_step,
        }

    def global_record(self) -> ArrayRecord:
        return ArrayRecord({"vector": Array(self.global_model)})

    def expected_sum(self) -> npt.NDArray[np.float64]:
        """Return the float64 sum of this round's updates, computed here."""
        total = np.zeros(self.dimension, dtype=np.float64)
        for partition in range(len(self.nodes)):
            total += synthetic_update(
                self.settings.seed, partition, self.dimension, self.round_index
            )
        return total

    def setup(self) -> float:
        """Run the secure key setup (two exchanges); return its seconds."""
        start = time.perf_counter()
        key_set = self.aggregator.setup(self.training)
        seconds = time.perf_counter() - start
        if len(key_set) != len(self.nodes):
            raise RuntimeError(
                f"key setup kept {len(key_set)} of {len(self.nodes)} hospitals: "
                f"{self.aggregator.rejections}"
            )
        return seconds

    def plain(self) -> npt.NDArray[np.float64]:
        """One exchange; each node returns its update, the hub sums them."""
        settings = ConfigRecord(
            _bench_record(self.settings, self.dimension, self.round_index)
        )
        messages = [
            Message(
                RecordDict({BENCH: settings, wire.GLOBAL_MODEL: self.global_record()}),
                dst_node_id=node,
                message_type=PLAIN,
            )
            for node in self.nodes.values()
        ]
        total = np.zeros(self.dimension, dtype=np.float64)
        for reply in self.exchange(messages):
            total += reply.content.array_records[wire.UPDATE]["vector"].numpy()
        return total

    def ours(self) -> npt.NDArray[np.float64]:
        """The masked-input exchange plus the unmasking exchange."""
        self.secure_round += 1
        start = self.aggregator.begin_round(self.secure_round, sorted(self.nodes))
        record = _bench_record(self.settings, self.dimension, self.round_index)
        record.update(
            study_id=self.aggregator.study_id,
            round_number=start.round_number,
            nonce=start.nonce,
        )
        messages = [
            Message(
                RecordDict(
                    {
                        BENCH: ConfigRecord(record),
                        wire.SECAGG: self.aggregator.round_record(hospital, start),
                        wire.GLOBAL_MODEL: self.global_record(),
                    }
                ),
                dst_node_id=node,
                message_type=SECURE,
            )
            for hospital, node in self.nodes.items()
        ]
        by_node = {node: hospital for hospital, node in self.nodes.items()}
        inputs = {
            by_node[reply.metadata.src_node_id]: SecureAggregator.masked_input(reply)
            for reply in self.exchange(messages)
        }
        like = {"vector": self.global_model}
        total, weight = self.aggregator.unmask(start, inputs, like)
        if weight != len(self.nodes):
            raise SumMismatchError(
                f"secure sum of weights is {weight}, expected {len(self.nodes)}"
            )
        return np.asarray(total["vector"], dtype=np.float64)

    def secaggplus(self) -> npt.NDArray[np.float64]:
        """One SecAgg+ round: its four exchanges and the server's unmasking."""
        state = self.legacy.state
        state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {Key.CURRENT_ROUND: self.round_index + 1, Key.START_TIME: time.time()}
        )
        parameters = ndarrays_to_parameters([self.global_model])
        state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            parameters, keep_input=True
        )
        self.secaggplus_workflow(self.grid, self.legacy)
        result = compat.arrayrecord_to_parameters(
            state.array_records[MAIN_PARAMS_RECORD], keep_input=True
        )
        # SecAgg+ returns the weighted mean; every node's weight is 1.
        average = parameters_to_ndarrays(result)[0]
        return np.asarray(average, dtype=np.float64) * len(self.nodes)


def _check(
    result: DimensionResult,
    method: str,
    total: npt.NDArray[np.float64],
    expected: npt.NDArray[np.float64],
) -> None:
    error = float(np.max(np.abs(total - expected)))
    result.max_error[method] = max(result.max_error[method], error)
    if error > result.tolerance[method]:
        raise SumMismatchError(
            f"{method} sum at n={result.node_count}, d={result.dimension} is off by "
            f"{error:.3g}, above its tolerance {result.tolerance[method]:.3g}"
        )


def measure_dimension(
    grid: TimedGrid,
    context: Context,
    nodes: dict[str, int],
    settings: BenchSettings,
    dimension: int,
) -> DimensionResult:
    """Time and check every method's rounds at one dimension."""
    methods = _Methods(cast(Grid, grid), context, nodes, settings, dimension)
    actions = {
        "plain": methods.plain,
        "ours": methods.ours,
        "secaggplus": methods.secaggplus,
    }
    result = DimensionResult(len(nodes), dimension, tolerance=methods.tolerances)
    result.setup_seconds = methods.setup()

    for round_index in range(settings.warmup + settings.rounds):
        methods.round_index = round_index
        expected = methods.expected_sum()
        shift = round_index % len(METHODS)
        for method in METHODS[shift:] + METHODS[:shift]:
            grid.reset()
            start = time.perf_counter()
            total = actions[method]()
            seconds = time.perf_counter() - start
            _check(result, method, total, expected)
            result.exchanges[method] = grid.exchanges
            if round_index >= settings.warmup:
                result.round_seconds[method].append(seconds)
                result.exchange_seconds[method].append(grid.exchange_seconds)
                result.node_seconds[method].append(grid.node_seconds)
        logger.info("n=%d d=%d round %d done", len(nodes), dimension, round_index)
    return result


def make_server_app(
    settings: BenchSettings, results: list[DimensionResult]
) -> ServerApp:
    """Return a ServerApp that appends one result per dimension to ``results``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = _discover(grid, settings)
        timed = TimedGrid(grid)
        for dimension in settings.dimensions:
            results.append(
                measure_dimension(timed, context, nodes, settings, dimension)
            )

    return app
