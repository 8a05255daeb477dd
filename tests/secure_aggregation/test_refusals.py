"""Every refusal of the agent and the hub, each triggered by tampered input."""

from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from secagg_harness import STUDY, Federation, make_config, random_deltas

from secure_aggregation.encoding import b64, from_json_bytes, to_json_bytes
from secure_aggregation.messages import (
    ADVERTISEMENT_BUNDLE_FORMAT,
    UNMASK_RESPONSE_FORMAT,
    KeyAdvertisement,
)
from secure_aggregation.protocol import (
    AgentSession,
    HubSession,
    InsufficientPartiesError,
    InsufficientSurvivorsError,
    InvalidSignatureError,
    KeyConfirmationError,
    KeyEpochError,
    MalformedMessageError,
    ModulusTooSmallError,
    OverlappingPartyListsError,
    PartyListMismatchError,
    ProtocolStateError,
    ReplayError,
    RoundAbortedError,
    ShapeMismatchError,
    ShareDecryptionError,
    StaleRoundError,
    UnknownPartyError,
)

COUNT = 5


@pytest.fixture
def federation() -> Federation:
    federation = Federation.build(make_config(COUNT), COUNT)
    federation.setup()
    return federation


def bundle_of(advertisements: list[KeyAdvertisement]) -> bytes:
    return to_json_bytes(
        ADVERTISEMENT_BUNDLE_FORMAT,
        {"study_id": STUDY, "advertisements": [a.to_dict() for a in advertisements]},
    )


def current_advertisements(federation: Federation) -> list[KeyAdvertisement]:
    return [
        KeyAdvertisement.from_bytes(agent.advertise_keys())
        for agent in federation.agents.values()
    ]


def replace_field(
    advertisement: KeyAdvertisement, **changes: object
) -> KeyAdvertisement:
    values = {
        "study_id": advertisement.study_id,
        "party_id": advertisement.party_id,
        "epoch": advertisement.epoch,
        "share_public_key": advertisement.share_public_key,
        "masking_public_key": advertisement.masking_public_key,
        "signature": advertisement.signature,
    }
    values.update(changes)
    return KeyAdvertisement(**values)  # type: ignore[arg-type]


def open_round(
    federation: Federation, round_number: int = 1
) -> tuple[list[str], object, dict[str, np.ndarray]]:
    start = federation.hub.begin_round(round_number)
    rng = np.random.default_rng(round_number)
    deltas = random_deltas(rng, start.participants, federation.config.model_size, 1.0)
    return start.participants, start, deltas


def masked_round(federation: Federation, skip: tuple[str, ...] = ()) -> dict:
    parties, start, deltas = open_round(federation)
    weights = dict.fromkeys(parties, 1)
    masked = federation.mask_all(start, deltas, weights, skip=skip)  # type: ignore[arg-type]
    return federation.hub.collect_masked_inputs(1, start.nonce, masked)  # type: ignore[attr-defined]


# Study setup.


def test_confirm_rejects_forged_key(federation: Federation) -> None:
    advertisements = current_advertisements(federation)
    advertisements[1] = replace_field(advertisements[1], masking_public_key=bytes(32))
    agent = federation.agents["hospital-00"]
    with pytest.raises(InvalidSignatureError):
        agent.confirm_keys(bundle_of(advertisements))


def test_confirm_rejects_other_identity(federation: Federation) -> None:
    advertisements = current_advertisements(federation)
    impostor = replace_field(advertisements[1], signature=b"").sign(
        Ed25519PrivateKey.generate()
    )
    advertisements[1] = impostor
    with pytest.raises(InvalidSignatureError):
        federation.agents["hospital-00"].confirm_keys(bundle_of(advertisements))


def test_confirm_rejects_unknown_party(federation: Federation) -> None:
    advertisements = current_advertisements(federation)
    stranger = replace_field(advertisements[1], party_id="hospital-99")
    with pytest.raises(UnknownPartyError):
        federation.agents["hospital-00"].confirm_keys(
            bundle_of([*advertisements, stranger])
        )


def test_confirm_rejects_other_study(federation: Federation) -> None:
    advertisements = current_advertisements(federation)
    identity = federation.identities["hospital-01"]
    advertisements[1] = replace_field(advertisements[1], study_id="other").sign(
        identity
    )
    with pytest.raises(ReplayError):
        federation.agents["hospital-00"].confirm_keys(bundle_of(advertisements))


def test_confirm_rejects_older_epoch(federation: Federation) -> None:
    old_bundle = bundle_of(current_advertisements(federation))
    federation.agents["hospital-01"].rotate_keys()
    federation.setup()
    with pytest.raises(KeyEpochError, match="older"):
        federation.agents["hospital-00"].confirm_keys(old_bundle)


def test_confirm_rejects_two_keys_one_epoch(federation: Federation) -> None:
    advertisements = current_advertisements(federation)
    identity = federation.identities["hospital-01"]
    twin = replace_field(advertisements[1], masking_public_key=os.urandom(32)).sign(
        identity
    )
    with pytest.raises(KeyEpochError, match="two different"):
        federation.agents["hospital-00"].confirm_keys(
            bundle_of([*advertisements[:1], twin, *advertisements[2:]])
        )


def test_confirm_rejects_duplicate_party(federation: Federation) -> None:
    advertisements = current_advertisements(federation)
    with pytest.raises(KeyEpochError, match="two advertisements"):
        federation.agents["hospital-00"].confirm_keys(
            bundle_of([*advertisements, advertisements[1]])
        )


def test_confirm_rejects_bundle_without_own_keys(federation: Federation) -> None:
    advertisements = current_advertisements(federation)
    with pytest.raises(KeyConfirmationError, match="lacks"):
        federation.agents["hospital-00"].confirm_keys(bundle_of(advertisements[1:]))


def test_confirmations_reject_split_view() -> None:
    federation = Federation.build(make_config(COUNT), COUNT)
    advertisements = current_advertisements(federation)
    full = bundle_of(advertisements)
    without_last = bundle_of(advertisements[:-1])
    confirmations = {
        party: agent.confirm_keys(without_last if party == "hospital-00" else full)
        for party, agent in federation.agents.items()
        if party != "hospital-04"
    }
    hub = federation.hub
    hub.collect_advertisements({a.party_id: a.to_bytes() for a in advertisements})
    routed = hub.route_confirmations(confirmations)
    with pytest.raises(KeyConfirmationError, match="different advertisement"):
        federation.agents["hospital-01"].receive_confirmations(routed["hospital-01"])


def test_confirmations_reject_missing_member(federation: Federation) -> None:
    bundle = federation.hub.collect_advertisements(
        {p: a.advertise_keys() for p, a in federation.agents.items()}
    )
    confirmations = {p: a.confirm_keys(bundle) for p, a in federation.agents.items()}
    routed = federation.hub.route_confirmations(confirmations)
    document = json.loads(routed["hospital-00"])
    del document["confirmations"]["hospital-02"]
    with pytest.raises(KeyConfirmationError, match="no key confirmation"):
        federation.agents["hospital-00"].receive_confirmations(
            json.dumps(document).encode()
        )


def test_setup_dropouts_shrink_key_set() -> None:
    federation = Federation.build(make_config(COUNT), COUNT)
    key_set = federation.setup(
        skip_advertise={"hospital-00"}, skip_confirm={"hospital-01"}
    )
    assert key_set == ["hospital-02", "hospital-03", "hospital-04"]
    assert federation.agents["hospital-02"].key_set == key_set


def test_setup_aborts_below_minimum() -> None:
    federation = Federation.build(make_config(COUNT), COUNT)
    with pytest.raises(RoundAbortedError, match="key advertisements"):
        federation.setup(skip_advertise={"hospital-00", "hospital-01", "hospital-02"})


# Study parameters.


def test_study_rejects_two_parties() -> None:
    with pytest.raises(InsufficientPartiesError, match="at least 3"):
        HubSession(STUDY, ["a", "b"], make_config(3, threshold=2))


@pytest.mark.parametrize("threshold", [2, 6])
def test_study_rejects_threshold_outside_majority(threshold: int) -> None:
    with pytest.raises(ValueError, match="strict majority"):
        HubSession(STUDY, [f"p{i}" for i in range(5)], make_config(5, threshold))


def test_study_rejects_small_modulus() -> None:
    config = make_config(5, modulus_bits=32, max_weight=1000, quantization_levels=2**20)
    with pytest.raises(ModulusTooSmallError, match="modulus_bits=32"):
        HubSession(STUDY, [f"p{i}" for i in range(5)], config)


def test_agent_rejects_foreign_identity() -> None:
    roster = {
        f"p{i}": Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        for i in range(3)
    }
    with pytest.raises(UnknownPartyError, match="does not match"):
        AgentSession.create(
            STUDY, "p0", Ed25519PrivateKey.generate(), roster, make_config(3)
        )


# Masking.


def test_mask_rejects_before_setup() -> None:
    federation = Federation.build(make_config(COUNT), COUNT)
    agent = federation.agents["hospital-00"]
    with pytest.raises(ProtocolStateError):
        agent.mask_update(1, os.urandom(32), list(federation.agents), np.zeros(16), 1)


def test_mask_rejects_stale_round(federation: Federation) -> None:
    parties, start, deltas = open_round(federation, 2)
    agent = federation.agents["hospital-00"]
    agent.mask_update(2, start.nonce, parties, deltas["hospital-00"], 1)  # type: ignore[attr-defined]
    with pytest.raises(StaleRoundError):
        agent.mask_update(2, os.urandom(32), parties, deltas["hospital-00"], 1)
    with pytest.raises(StaleRoundError):
        agent.mask_update(1, os.urandom(32), parties, deltas["hospital-00"], 1)


def test_mask_rejects_replayed_nonce(federation: Federation) -> None:
    parties, start, deltas = open_round(federation)
    agent = federation.agents["hospital-00"]
    agent.mask_update(1, start.nonce, parties, deltas["hospital-00"], 1)  # type: ignore[attr-defined]
    with pytest.raises(ReplayError):
        agent.mask_update(2, start.nonce, parties, deltas["hospital-00"], 1)  # type: ignore[attr-defined]


def test_mask_rejects_unknown_participant(federation: Federation) -> None:
    parties, start, deltas = open_round(federation)
    agent = federation.agents["hospital-00"]
    with pytest.raises(UnknownPartyError):
        agent.mask_update(
            1,
            start.nonce,
            [*parties, "hospital-99"],
            deltas["hospital-00"],
            1,  # type: ignore[attr-defined]
        )


def test_mask_rejects_too_few_participants(federation: Federation) -> None:
    agent = federation.agents["hospital-00"]
    with pytest.raises(InsufficientPartiesError):
        agent.mask_update(
            1, os.urandom(32), ["hospital-00", "hospital-01"], np.zeros(16), 1
        )


def test_mask_rejects_list_without_self(federation: Federation) -> None:
    agent = federation.agents["hospital-00"]
    others = ["hospital-01", "hospital-02", "hospital-03", "hospital-04"]
    with pytest.raises(PartyListMismatchError):
        agent.mask_update(1, os.urandom(32), others, np.zeros(16), 1)


@pytest.mark.parametrize("shape", [(15,), (17,), (4, 4)])
def test_mask_rejects_shape_mismatch(federation: Federation, shape: tuple) -> None:
    agent = federation.agents["hospital-00"]
    with pytest.raises(ShapeMismatchError):
        agent.mask_update(
            1, os.urandom(32), list(federation.agents), np.zeros(shape), 1
        )


@pytest.mark.parametrize("weight", [0, 2, 1.5, True])
def test_mask_rejects_weight_outside_range(
    federation: Federation, weight: object
) -> None:
    agent = federation.agents["hospital-00"]
    with pytest.raises(ValueError, match="weight"):
        agent.mask_update(
            1, os.urandom(32), list(federation.agents), np.zeros(16), weight
        )  # type: ignore[arg-type]


def test_mask_refusal_leaves_state(federation: Federation) -> None:
    parties, start, deltas = open_round(federation)
    agent = federation.agents["hospital-00"]
    with pytest.raises(ShapeMismatchError):
        agent.mask_update(1, start.nonce, parties, np.zeros(3), 1)  # type: ignore[attr-defined]
    masked = agent.mask_update(1, start.nonce, parties, deltas["hospital-00"], 1)  # type: ignore[attr-defined]
    assert masked.round_number == 1


# Unmasking.


def test_unmask_rejects_overlapping_lists(federation: Federation) -> None:
    requests = masked_round(federation)
    request = requests["hospital-00"]
    agent = federation.agents["hospital-00"]
    with pytest.raises(OverlappingPartyListsError):
        agent.unmask(
            1,
            request.nonce,
            request.survivors,
            ["hospital-01"],
            request.encrypted_shares,
        )


def test_unmask_rejects_self_dropped(federation: Federation) -> None:
    requests = masked_round(federation)
    request = requests["hospital-00"]
    survivors = [p for p in request.survivors if p != "hospital-00"]
    with pytest.raises(PartyListMismatchError):
        federation.agents["hospital-00"].unmask(
            1, request.nonce, survivors, ["hospital-00"], request.encrypted_shares
        )


def test_unmask_rejects_incomplete_lists(federation: Federation) -> None:
    requests = masked_round(federation)
    request = requests["hospital-00"]
    with pytest.raises(PartyListMismatchError):
        federation.agents["hospital-00"].unmask(
            1, request.nonce, request.survivors[:-1], [], request.encrypted_shares
        )


def test_unmask_rejects_unknown_party(federation: Federation) -> None:
    requests = masked_round(federation)
    request = requests["hospital-00"]
    with pytest.raises(UnknownPartyError):
        federation.agents["hospital-00"].unmask(
            1,
            request.nonce,
            request.survivors,
            ["hospital-99"],
            request.encrypted_shares,
        )


def test_unmask_rejects_few_survivors(federation: Federation) -> None:
    requests = masked_round(federation)
    request = requests["hospital-00"]
    survivors = ["hospital-00", "hospital-01"]
    dropped = ["hospital-02", "hospital-03", "hospital-04"]
    with pytest.raises(InsufficientSurvivorsError):
        federation.agents["hospital-00"].unmask(
            1, request.nonce, survivors, dropped, request.encrypted_shares
        )


def test_unmask_rejects_other_round(federation: Federation) -> None:
    requests = masked_round(federation)
    request = requests["hospital-00"]
    with pytest.raises(StaleRoundError):
        federation.agents["hospital-00"].unmask(
            2, request.nonce, request.survivors, [], request.encrypted_shares
        )


def test_unmask_rejects_other_nonce(federation: Federation) -> None:
    requests = masked_round(federation)
    request = requests["hospital-00"]
    with pytest.raises(ReplayError):
        federation.agents["hospital-00"].unmask(
            1, os.urandom(32), request.survivors, [], request.encrypted_shares
        )


def test_unmask_rejects_replay(federation: Federation) -> None:
    requests = masked_round(federation)
    request = requests["hospital-00"]
    agent = federation.agents["hospital-00"]
    args = (
        1,
        request.nonce,
        request.survivors,
        request.dropped,
        request.encrypted_shares,
    )
    agent.unmask(*args)
    with pytest.raises(ReplayError):
        agent.unmask(*args)


def test_unmask_rejects_tampered_share(federation: Federation) -> None:
    requests = masked_round(federation)
    request = requests["hospital-00"]
    shares = dict(request.encrypted_shares)
    blob = bytearray(shares["hospital-01"])
    blob[20] ^= 1
    shares["hospital-01"] = bytes(blob)
    with pytest.raises(ShareDecryptionError):
        federation.agents["hospital-00"].unmask(
            1, request.nonce, request.survivors, request.dropped, shares
        )


def test_unmask_rejects_swapped_share(federation: Federation) -> None:
    requests = masked_round(federation)
    request = requests["hospital-00"]
    shares = dict(request.encrypted_shares)
    shares["hospital-01"] = requests["hospital-02"].encrypted_shares["hospital-01"]
    with pytest.raises(ShareDecryptionError):
        federation.agents["hospital-00"].unmask(
            1, request.nonce, request.survivors, request.dropped, shares
        )


def test_unmask_rejects_missing_share(federation: Federation) -> None:
    requests = masked_round(federation)
    request = requests["hospital-00"]
    shares = dict(request.encrypted_shares)
    del shares["hospital-01"]
    with pytest.raises(ShareDecryptionError, match="lacks"):
        federation.agents["hospital-00"].unmask(
            1, request.nonce, request.survivors, request.dropped, shares
        )


def test_unmask_refusal_keeps_round_open(federation: Federation) -> None:
    requests = masked_round(federation)
    request = requests["hospital-00"]
    agent = federation.agents["hospital-00"]
    with pytest.raises(OverlappingPartyListsError):
        agent.unmask(
            1,
            request.nonce,
            request.survivors,
            ["hospital-01"],
            request.encrypted_shares,
        )
    response = agent.unmask(
        1, request.nonce, request.survivors, request.dropped, request.encrypted_shares
    )
    assert from_json_bytes(UNMASK_RESPONSE_FORMAT, response)["round_number"] == 1


# Hub.


def test_hub_aborts_on_wrong_share(federation: Federation) -> None:
    requests = masked_round(federation)
    responses = federation.unmask_all(requests, skip={"hospital-03", "hospital-04"})
    corrupt_self_mask_share(responses, "hospital-00", "hospital-01")
    with pytest.raises(RoundAbortedError, match="commitment"):
        federation.hub.finalize(responses)


def test_hub_aborts_on_too_few_responses(federation: Federation) -> None:
    requests = masked_round(federation)
    responses = federation.unmask_all(
        requests, skip={"hospital-02", "hospital-03", "hospital-04"}
    )
    with pytest.raises(RoundAbortedError, match="fewer than threshold"):
        federation.hub.finalize(responses)


def test_hub_rejects_stale_round(federation: Federation) -> None:
    federation.hub.begin_round(3)
    with pytest.raises(StaleRoundError):
        federation.hub.begin_round(3)


def test_hub_drops_malformed_input(federation: Federation) -> None:
    parties, start, deltas = open_round(federation)
    masked = federation.mask_all(start, deltas, dict.fromkeys(parties, 1))  # type: ignore[arg-type]
    masked["hospital-00"].masked_vector = masked["hospital-00"].masked_vector[:-1]
    requests = federation.hub.collect_masked_inputs(1, start.nonce, masked)  # type: ignore[attr-defined]
    assert requests["hospital-01"].dropped == ["hospital-00"]


def test_unmask_rejects_malformed_bundle(federation: Federation) -> None:
    # A malicious peer encrypts a bundle without its self-mask share; only its
    # own session can produce a bundle that passes AES-GCM authentication.
    requests = masked_round(federation)
    request = requests["hospital-00"]
    sender = federation.agents["hospital-01"]
    shares = dict(request.encrypted_shares)
    shares["hospital-01"] = sender._encrypt_round_shares(
        1, request.nonce, "hospital-00", {"pairs": {}}
    )
    with pytest.raises(MalformedMessageError, match="lacks its self-mask share"):
        federation.agents["hospital-00"].unmask(
            1, request.nonce, request.survivors, request.dropped, shares
        )


def test_confirm_rejects_twin_after_rotation(federation: Federation) -> None:
    # Rotating its own keys clears an agent's setup, not what it accepted.
    agent = federation.agents["hospital-00"]
    agent.rotate_keys()
    advertisements = current_advertisements(federation)
    identity = federation.identities["hospital-01"]
    advertisements[1] = replace_field(
        advertisements[1], masking_public_key=os.urandom(32)
    ).sign(identity)
    with pytest.raises(KeyEpochError, match="two different"):
        agent.confirm_keys(bundle_of(advertisements))


def test_rotation_setup_round_exact(federation: Federation) -> None:
    federation.agents["hospital-02"].rotate_keys()
    federation.setup()
    assert federation.agents["hospital-02"].epoch == 2
    parties, start, deltas = open_round(federation)
    masked = federation.mask_all(start, deltas, dict.fromkeys(parties, 1))  # type: ignore[arg-type]
    requests = federation.hub.collect_masked_inputs(1, start.nonce, masked)  # type: ignore[attr-defined]
    total, total_weight = federation.hub.finalize(federation.unmask_all(requests))
    assert total_weight == float(len(parties))
    assert np.max(np.abs(total - sum(deltas.values()))) <= 1e-5


def corrupt_self_mask_share(responses: dict, responder: str, owner: str) -> None:
    document = json.loads(responses[responder])
    share = bytearray(base64.b64decode(document["self_mask_shares"][owner]))
    share[-1] ^= 1
    document["self_mask_shares"][owner] = b64(bytes(share))
    responses[responder] = json.dumps(document).encode()


@pytest.mark.parametrize("wrong", [["hospital-00"], ["hospital-00", "hospital-03"]])
def test_hub_skips_wrong_spare_shares(federation: Federation, wrong: list[str]) -> None:
    parties, start, deltas = open_round(federation)
    masked = federation.mask_all(start, deltas, dict.fromkeys(parties, 1))  # type: ignore[arg-type]
    requests = federation.hub.collect_masked_inputs(1, start.nonce, masked)  # type: ignore[attr-defined]
    responses = federation.unmask_all(requests)
    for responder in wrong:
        corrupt_self_mask_share(responses, responder, "hospital-01")
    total, total_weight = federation.hub.finalize(responses)
    assert total_weight == 5.0
    assert np.max(np.abs(total - sum(deltas.values()))) <= 1e-5
