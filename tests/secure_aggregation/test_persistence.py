"""Agent state survives a process restart between every message."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from secagg_harness import Federation, make_config, random_deltas

from secure_aggregation.protocol import (
    AgentSession,
    MalformedMessageError,
    ReplayError,
    UnknownPartyError,
)

COUNT = 4


def restart(federation: Federation, directory: Path) -> None:
    """Save every agent to its own file and replace it with a restored copy."""
    for party, agent in list(federation.agents.items()):
        path = directory / f"{party}.state"
        agent.save(path)
        federation.agents[party] = AgentSession.load(path, federation.identities[party])


def test_round_exact_across_restarts(tmp_path: Path) -> None:
    config = make_config(COUNT, max_weight=9)
    federation = Federation.build(config, COUNT)
    restart(federation, tmp_path)
    advertisements = {p: a.advertise_keys() for p, a in federation.agents.items()}
    restart(federation, tmp_path)
    bundle = federation.hub.collect_advertisements(advertisements)
    confirmations = {p: a.confirm_keys(bundle) for p, a in federation.agents.items()}
    restart(federation, tmp_path)
    for party, data in federation.hub.route_confirmations(confirmations).items():
        federation.agents[party].receive_confirmations(data)
    restart(federation, tmp_path)

    start = federation.hub.begin_round(1)
    rng = np.random.default_rng(3)
    deltas = random_deltas(rng, start.participants, config.model_size, 1.0)
    weights = {party: 9 for party in start.participants}
    masked = federation.mask_all(start, deltas, weights, skip={"hospital-03"})
    restart(federation, tmp_path)
    requests = federation.hub.collect_masked_inputs(1, start.nonce, masked)
    responses = federation.unmask_all(requests)
    total, total_weight = federation.hub.finalize(responses)

    expected = sum(deltas[p] * 9 for p in ["hospital-00", "hospital-01", "hospital-02"])
    assert total_weight == 27.0
    assert np.max(np.abs(total - expected)) <= 3 * config.quantization_step


def test_restart_keeps_replay_protection(tmp_path: Path) -> None:
    federation = Federation.build(make_config(COUNT), COUNT)
    federation.setup()
    start = federation.hub.begin_round(1)
    deltas = {p: np.zeros(16) for p in start.participants}
    masked = federation.mask_all(start, deltas, dict.fromkeys(start.participants, 1))
    requests = federation.hub.collect_masked_inputs(1, start.nonce, masked)
    federation.unmask_all(requests)
    restart(federation, tmp_path)
    request = requests["hospital-00"]
    with pytest.raises(ReplayError):
        federation.agents["hospital-00"].unmask(
            1,
            request.nonce,
            request.survivors,
            request.dropped,
            request.encrypted_shares,
        )
    with pytest.raises(ReplayError):
        federation.agents["hospital-00"].mask_update(
            2, start.nonce, start.participants, np.zeros(16), 1
        )


def test_state_file_mode_0600(tmp_path: Path) -> None:
    federation = Federation.build(make_config(COUNT), COUNT)
    path = tmp_path / "agent.state"
    federation.agents["hospital-00"].save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_state_excludes_identity_key(tmp_path: Path) -> None:
    federation = Federation.build(make_config(COUNT), COUNT)
    identity = federation.identities["hospital-00"]
    raw = identity.private_bytes_raw()
    state = federation.agents["hospital-00"].to_bytes()
    assert raw not in state
    assert base64.b64encode(raw) not in state


def test_state_format_versioned() -> None:
    federation = Federation.build(make_config(COUNT), COUNT)
    document = json.loads(federation.agents["hospital-00"].to_bytes())
    assert document["format"] == "healthfed-secagg-agent-state/1"


def test_restore_rejects_other_identity() -> None:
    federation = Federation.build(make_config(COUNT), COUNT)
    data = federation.agents["hospital-00"].to_bytes()
    with pytest.raises(UnknownPartyError):
        AgentSession.from_bytes(data, Ed25519PrivateKey.generate())


@pytest.mark.parametrize("field", ["share_private_key", "last_round", "config"])
def test_restore_rejects_damaged_state(field: str) -> None:
    federation = Federation.build(make_config(COUNT), COUNT)
    document = json.loads(federation.agents["hospital-00"].to_bytes())
    document[field] = "damaged"
    with pytest.raises(MalformedMessageError):
        AgentSession.from_bytes(
            json.dumps(document).encode(), federation.identities["hospital-00"]
        )


def test_restore_rejects_other_format() -> None:
    federation = Federation.build(make_config(COUNT), COUNT)
    with pytest.raises(MalformedMessageError):
        AgentSession.from_bytes(
            b'{"format": "other/1"}', federation.identities["hospital-00"]
        )
