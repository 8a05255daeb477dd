"""ClientApp of the round benchmark: synthetic updates, no model training.

Every node handles three kinds of round, each with the same synthetic update,
so that only the aggregation differs:

- ``train.plain``: the update in the clear, as a float32 array;
- healthfed's secure aggregation: the key setup queries and the unmasking query
  of ``silo_agent/client_app.py`` (same message types and record layout), and
  ``train.secure``, which masks the update with the agent's
  ``SecureAggregationState`` (session kept in a file between messages, as on a
  deployment);
- ``train``: Flower 1.42's SecAgg+ through ``secaggplus_mod``, whose inner
  handler returns the update as a legacy ``FitRes`` with ``num_examples = 1``.

Identity keys are derived from the hospital id with SHA-256, so the hub and every
node build the same roster without a key file. They exist for this benchmark
only and protect nothing.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

from policies import wire
from policies.roster import Roster
from secure_aggregation.transport import (
    masked_input_to_fields,
    unmask_request_from_fields,
)
from silo_agent.secure import SecureAggregationState, config_from_fields

#: Environment variable naming the folder where each node keeps its session file.
STATE_DIR_ENV = "HEALTHFED_BENCH_STATE_DIR"

#: Name of the record that carries the benchmark's own settings.
BENCH = "bench"

#: L2 norm of every synthetic update, below the study's clip norm of 1.0 so that
#: no update is clipped and the secure sums stay comparable with the plain sum.
UPDATE_NORM = 0.5

#: Message type of the benchmark's node discovery query.
IDENTIFY = "query.bench_identify"
PLAIN = "train.plain"
SECURE = "train.secure"


def hospital_id(partition: int) -> str:
    """Return the hospital id that simulated node ``partition`` plays."""
    return f"hospital-{partition:02d}"


def identity_key(hospital: str) -> Ed25519PrivateKey:
    """Return the benchmark's Ed25519 identity key of ``hospital``."""
    seed = hashlib.sha256(b"healthfed-bench-identity\0" + hospital.encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def bench_roster(hospitals: list[str]) -> Roster:
    """Return a roster that enrolls ``hospitals`` with their benchmark keys."""
    return Roster(
        federation="bench",
        hub=identity_key("hub").public_key(),
        hospitals={h: identity_key(h).public_key() for h in hospitals},
    )


def synthetic_update(
    seed: int, partition: int, dimension: int, round_index: int
) -> npt.NDArray[np.float32]:
    """Return node ``partition``'s float32 update of one round, L2 norm 0.5."""
    rng = np.random.default_rng([seed, partition, dimension, round_index])
    update = rng.standard_normal(dimension, dtype=np.float32)
    update *= np.float32(UPDATE_NORM / float(np.linalg.norm(update)))
    return update


T = TypeVar("T")


def field_of(record: Mapping[str, object], name: str, kind: type[T]) -> T:
    """Return ``record[name]``; raise TypeError unless it is a ``kind``."""
    value = record.get(name)
    if not isinstance(value, kind):
        raise TypeError(
            f"record field {name!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _partition(context: Context) -> int:
    return field_of(context.node_config, "partition-id", int)


def _update_for(
    context: Context, settings: Mapping[str, object]
) -> npt.NDArray[np.float32]:
    return synthetic_update(
        field_of(settings, "seed", int),
        _partition(context),
        field_of(settings, "dimension", int),
        field_of(settings, "round_index", int),
    )


def _secure_state(
    context: Context, parties: list[str] | None = None
) -> SecureAggregationState:
    """Return this node's agent-side state. Only the key setup reads ``parties``.

    ``SecureAggregationState`` reads its roster in ``advertise`` alone. The
    other steps load the session that ``advertise`` saved, so they get an empty
    roster.
    """
    hospital = hospital_id(_partition(context))
    state_dir = Path(os.environ[STATE_DIR_ENV]) / hospital
    return SecureAggregationState(
        hospital, identity_key(hospital), bench_roster(parties or []), state_dir
    )


def _result(message: Message, fields: dict[str, Any]) -> Message:
    return Message(RecordDict({wire.RESULT: ConfigRecord(fields)}), reply_to=message)


#: Name of the reply record in which ``timing_mod`` reports the handler's time.
TIMING = "bench_timing"


def timing_mod(
    message: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Run the handler and its inner mods; add their seconds to the reply."""
    start = time.perf_counter()
    reply = call_next(message, context)
    seconds = time.perf_counter() - start
    if reply.has_content():
        reply.content.config_records[TIMING] = ConfigRecord({"seconds": seconds})
    return reply


app = ClientApp(mods=[timing_mod])


@app.query("bench_identify")
def identify(message: Message, context: Context) -> Message:
    """Return the partition id of this simulated node."""
    return _result(message, {"partition": _partition(context)})


@app.train("plain")
def train_plain(message: Message, context: Context) -> Message:
    """Return this round's update in the clear."""
    update = _update_for(context, message.content.config_records[BENCH])
    record = ArrayRecord({"vector": Array(update)})
    return Message(RecordDict({wire.UPDATE: record}), reply_to=message)


@app.query("secagg_advertise")
def secagg_advertise(message: Message, context: Context) -> Message:
    """Create this study's keys and return them signed (setup exchange 1)."""
    setup = dict(message.content.config_records[wire.SECAGG])
    training = wire.decode_training(dict(message.content.config_records[wire.TRAINING]))
    study_id = field_of(setup, "study_id", str)
    parties = [str(p) for p in field_of(setup, "parties", list)]
    del setup["study_id"], setup["parties"]
    config = config_from_fields(setup)
    state = _secure_state(context, parties)
    advertisement = state.advertise(
        study_id, parties, config, training, config.model_size
    )
    return _result(message, {"status": "ok", "advertisement": advertisement})


@app.query("secagg_confirm")
def secagg_confirm(message: Message, context: Context) -> Message:
    """Verify every peer's signed keys; return a confirmation per peer."""
    setup = message.content.config_records[wire.SECAGG]
    state = _secure_state(context)
    confirmations = state.confirm(
        field_of(setup, "study_id", str), field_of(setup, "bundle", bytes)
    )
    fields: dict[str, Any] = {"status": "ok"}
    fields.update({f"to.{peer}": value for peer, value in confirmations.items()})
    return _result(message, fields)


@app.train("secure")
def train_secure(message: Message, context: Context) -> Message:
    """Mask this round's update; the first round also fixes the key set."""
    content = message.content
    settings = content.config_records[BENCH]
    secagg = content.config_records[wire.SECAGG]
    study_id = field_of(settings, "study_id", str)
    state = _secure_state(context)

    if "confirmations" in secagg:
        state.finish_setup(study_id, field_of(secagg, "confirmations", bytes))
    masked, _ = state.mask(
        study_id,
        field_of(settings, "round_number", int),
        field_of(settings, "nonce", bytes),
        [str(p) for p in field_of(secagg, "participants", list)],
        _update_for(context, settings),
        state.weight_for(study_id, 1),
    )
    fields, vector = masked_input_to_fields(masked)
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        wire.RESULT: ConfigRecord({"status": "trained"}),
        wire.MASKED: ConfigRecord(fields),
        wire.MASKED_VECTOR: ArrayRecord({"vector": Array(vector)}),
    }
    return Message(RecordDict(records), reply_to=message)


@app.query("secagg_unmask")
def secagg_unmask(message: Message, context: Context) -> Message:
    """Return this node's unmasking shares for the open round."""
    fields = dict(message.content.config_records[wire.SECAGG])
    study_id = field_of(fields, "study_id", str)
    del fields["study_id"]
    request = unmask_request_from_fields(fields)
    state = _secure_state(context)
    response = state.unmask(
        study_id,
        request.round_number,
        request.nonce,
        request.survivors,
        request.dropped,
        request.encrypted_shares,
    )
    return _result(message, {"status": "ok", "response": response})


@app.train(mods=[secaggplus_mod])
def train_secaggplus(message: Message, context: Context) -> Message:
    """Return this round's update as a legacy FitRes for ``secaggplus_mod``."""
    fit_ins = compat.recorddict_to_fitins(message.content, keep_input=True)
    settings = ConfigRecord(dict(fit_ins.config))
    update = _update_for(context, settings)
    fit_res = FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters([update]),
        num_examples=1,
        metrics={},
    )
    return Message(compat.fitres_to_recorddict(fit_res, False), reply_to=message)
