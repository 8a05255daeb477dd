"""Benchmark the secure-aggregation cryptography in one process.

Measures, side by side in one run:

1. Mask expansion (``secure_aggregation.primitives.expand_mask``) against the raw
   ChaCha20 keystream rate of the same ``cryptography`` build.
2. All parties' work in one secure round (every agent masks, the hub collects,
   every agent unmasks, the hub finalizes), with no dropout and with one
   dropout, against a plain in-process sum of the same float updates.
3. The same round with Flower's own SecAgg+ primitives
   (``flwr.common.secure_aggregation`` and ``flwr.supercore.primitives``), called
   in the order of Flower 1.42's ``secaggplus_mod`` stages 0-3 and the
   unmasking of ``SecAggPlusWorkflow``. SecAgg+ agrees keys every round, so its
   round includes key generation and share distribution; our key setup runs
   once per study and is reported separately.

Message transport is not measured here: these are the cryptographic costs only.

Run: .venv/bin/python benchmarks/bench_masking.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from functools import partial

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

import numpy as np  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: E402
    Ed25519PrivateKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms  # noqa: E402

from secure_aggregation.primitives import add_mask, expand_mask  # noqa: E402
from secure_aggregation.protocol import (  # noqa: E402
    AgentSession,
    HubSession,
    SecureAggregationConfig,
)

PARTY_COUNTS = (5, 10, 20)
DIMENSIONS = (10**4, 10**5, 10**6)


def median_seconds(
    actions: dict[str, Callable[[], object]], repeats: int
) -> dict[str, float]:
    """Time each action ``repeats`` times, interleaved; return the medians.

    Interleaving puts every action under the same background load, so the
    ratios between them stay meaningful on a shared machine.
    """
    timings: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeats):
        for name, action in actions.items():
            start = time.perf_counter()
            action()
            timings[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in timings.items()}


# Mask expansion.


def bench_mask_expansion(repeats: int) -> list[str]:
    length = 10**6
    seed = os.urandom(32)
    zeros = bytes(8 * length)

    def raw_keystream() -> bytes:
        cipher = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None)
        return cipher.encryptor().update(zeros)

    def expansion() -> np.ndarray:
        return expand_mask(seed, length)

    target = np.zeros(length, dtype=np.uint64)

    def expansion_and_add() -> np.ndarray:
        add_mask(target, seed)
        return target

    medians = median_seconds(
        {"raw": raw_keystream, "expand": expansion, "add": expansion_and_add},
        repeats,
    )
    raw, expanded, added = medians["raw"], medians["expand"], medians["add"]
    megabytes = 8 * length / 1e6
    return [
        "| step | MB/s | ratio to raw keystream |",
        "| --- | ---: | ---: |",
        f"| raw ChaCha20 keystream | {megabytes / raw:.0f} | 1.00 |",
        f"| expand_mask (k = 64) | {megabytes / expanded:.0f} | {raw / expanded:.2f} |",
        "| add_mask: expand and add to a uint64 vector in place | "
        f"{megabytes / added:.0f} | {raw / added:.2f} |",
    ]


# Our protocol.


class OurStudy:
    """A study after key setup, ready to run rounds."""

    def __init__(self, count: int, dimension: int) -> None:
        self.config = SecureAggregationConfig(
            threshold=count // 2 + 1,
            model_size=dimension,
            clipping_range=1.0,
            max_weight=1000,
        )
        ids = [f"hospital-{index:02d}" for index in range(count)]
        identities = {party: Ed25519PrivateKey.generate() for party in ids}
        roster = {p: k.public_key().public_bytes_raw() for p, k in identities.items()}
        self.agents = {
            party: AgentSession.create(
                "bench", party, identities[party], roster, self.config
            )
            for party in ids
        }
        self.hub = HubSession("bench", ids, self.config)
        self.round_number = 0
        rng = np.random.default_rng(0)
        self.deltas = {}
        for party in ids:
            delta = rng.normal(size=dimension)
            self.deltas[party] = delta * (0.5 / np.linalg.norm(delta))

    def setup(self) -> None:
        advertisements = {p: a.advertise_keys() for p, a in self.agents.items()}
        bundle = self.hub.collect_advertisements(advertisements)
        confirmations = {p: a.confirm_keys(bundle) for p, a in self.agents.items()}
        for party, data in self.hub.route_confirmations(confirmations).items():
            self.agents[party].receive_confirmations(data)

    def run_round(self, dropped: int = 0) -> np.ndarray:
        self.round_number += 1
        start = self.hub.begin_round(self.round_number)
        senders = start.participants[dropped:]
        masked = {
            party: self.agents[party].mask_update(
                start.round_number,
                start.nonce,
                start.participants,
                self.deltas[party],
                100,
            )
            for party in senders
        }
        requests = self.hub.collect_masked_inputs(
            start.round_number, start.nonce, masked
        )
        responses = {
            party: self.agents[party].unmask(
                request.round_number,
                request.nonce,
                request.survivors,
                request.dropped,
                request.encrypted_shares,
            )
            for party, request in requests.items()
        }
        total, _ = self.hub.finalize(responses)
        return total

    def plain_round(self) -> np.ndarray:
        total = np.zeros(self.config.model_size)
        for delta in self.deltas.values():
            total += delta * 100
        return total


# Flower SecAgg+ (flwr 1.42), called stage by stage.


def flower_round(
    count: int, dimension: int, dropped: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Run one SecAgg+ round; return the unmasked sum and the plain sum."""
    from flwr.common.secure_aggregation.crypto.shamir import (
        combine_shares,
        create_shares,
    )
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
        decrypt,
        encrypt,
        generate_shared_key,
    )
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize, quantize
    from flwr.common.secure_aggregation.secaggplus_utils import (
        pseudo_rand_gen,
        share_keys_plaintext_concat,
        share_keys_plaintext_separate,
    )
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_private_key,
        bytes_to_public_key,
        generate_key_pairs,
        private_key_to_bytes,
        public_key_to_bytes,
    )

    # Flower's defaults: quantization_range 2**22, modulus_range 2**32.
    clipping_range, target_range, mod_range = 8.0, 2**22, 2**32
    threshold = count // 2 + 1
    ids = list(range(1, count + 1))
    rng = np.random.default_rng(0)
    updates = {i: [rng.normal(size=dimension) * 1e-3] for i in ids}

    # Stage 0: two key pairs per client.
    keys = {}
    for i in ids:
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        keys[i] = (
            private_key_to_bytes(sk1),
            public_key_to_bytes(pk1),
            private_key_to_bytes(sk2),
            public_key_to_bytes(pk2),
        )
    # Stage 1: share the self-mask seed and sk1, encrypt shares per peer.
    seeds = {i: os.urandom(32) for i in ids}
    inbox: dict[int, list[tuple[int, bytes]]] = {i: [] for i in ids}
    own_shares = {}
    for i in ids:
        b_shares = create_shares(seeds[i], threshold, count)
        sk_shares = create_shares(keys[i][0], threshold, count)
        for index, j in enumerate(ids):
            if j == i:
                own_shares[i] = (b_shares[index], sk_shares[index])
                continue
            key = generate_shared_key(
                bytes_to_private_key(keys[i][2]), bytes_to_public_key(keys[j][3])
            )
            plaintext = share_keys_plaintext_concat(
                i, j, b_shares[index], sk_shares[index]
            )
            inbox[j].append((i, encrypt(key, plaintext)))
    # Stage 2: decrypt shares, quantize, add self and pairwise masks.
    senders = ids[dropped:]
    held = {i: {i: own_shares[i]} for i in ids}
    masked_vectors = {}
    for i in senders:
        for source, ciphertext in inbox[i]:
            key = generate_shared_key(
                bytes_to_private_key(keys[i][2]), bytes_to_public_key(keys[source][3])
            )
            _, _, b_share, sk_share = share_keys_plaintext_separate(
                decrypt(key, ciphertext)
            )
            held[i][source] = (b_share, sk_share)
        quantized = quantize(updates[i], clipping_range, target_range)
        quantized = factor_combine(target_range, quantized)
        shapes = [a.shape for a in quantized]
        quantized = parameters_addition(
            quantized, pseudo_rand_gen(seeds[i], mod_range, shapes)
        )
        for j in ids:
            if j == i:
                continue
            shared = generate_shared_key(
                bytes_to_private_key(keys[i][0]), bytes_to_public_key(keys[j][1])
            )
            mask = pseudo_rand_gen(shared, mod_range, shapes)
            if i > j:
                quantized = parameters_addition(quantized, mask)
            else:
                quantized = parameters_subtraction(quantized, mask)
        masked_vectors[i] = parameters_mod(quantized, mod_range)
    # Stage 3 and server unmasking.
    total = masked_vectors[senders[0]]
    for i in senders[1:]:
        total = parameters_addition(total, masked_vectors[i])
    shapes = [a.shape for a in total]
    responders = senders[:threshold]
    for i in ids:
        if i in senders:
            secret = combine_shares([held[j][i][0] for j in responders])
            total = parameters_subtraction(
                total, pseudo_rand_gen(secret, mod_range, shapes)
            )
        else:
            secret = combine_shares([held[j][i][1] for j in responders])
            for j in senders:
                shared = generate_shared_key(
                    bytes_to_private_key(secret), bytes_to_public_key(keys[j][1])
                )
                mask = pseudo_rand_gen(shared, mod_range, shapes)
                if i > j:
                    total = parameters_addition(total, mask)
                else:
                    total = parameters_subtraction(total, mask)
    total = parameters_mod(total, mod_range)
    aggregate = dequantize(total[1:], clipping_range, target_range)[0]
    aggregate -= (len(senders) - 1) * clipping_range
    return aggregate, sum(updates[i][0] for i in senders)


# Report.


def bench_rounds(
    repeats: int, counts: tuple[int, ...], dims: tuple[int, ...]
) -> list[str]:
    lines = [
        "| n | d | plain sum (s) | ours, no dropout (s) | ours, 1 dropout (s) "
        "| SecAgg+, no dropout (s) | SecAgg+, 1 dropout (s) | overhead ratio, "
        "SecAgg+ / ours (no dropout) | our key setup, once per study (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines), flush=True)
    for count in counts:
        for dimension in dims:
            rounds = repeats if dimension < 10**6 else max(3, repeats // 2)
            study = OurStudy(count, dimension)
            setup = median_seconds({"setup": study.setup}, 1)["setup"]
            medians = median_seconds(
                {
                    "plain": study.plain_round,
                    "ours": study.run_round,
                    "ours_drop": partial(study.run_round, dropped=1),
                    "theirs": partial(flower_round, count, dimension),
                    "theirs_drop": partial(flower_round, count, dimension, dropped=1),
                },
                rounds,
            )
            plain, ours, ours_drop = (
                medians["plain"],
                medians["ours"],
                medians["ours_drop"],
            )
            theirs, theirs_drop = medians["theirs"], medians["theirs_drop"]
            lines.append(
                f"| {count} | {dimension:.0e} | {plain:.4f} | {ours:.3f} | "
                f"{ours_drop:.3f} | {theirs:.3f} | {theirs_drop:.3f} | "
                f"{(theirs - plain) / (ours - plain):.1f} | {setup:.3f} |"
            )
            print(lines[-1], flush=True)
    return lines


def check_sums() -> list[str]:
    """Check both protocols against the plain sum before any timing."""
    lines = []
    for dropped in (0, 1):
        unmasked, plain = flower_round(5, 1000, dropped)
        error = float(np.max(np.abs(unmasked - plain)))
        if error > 1e-4:
            raise SystemExit(f"SecAgg+ round is wrong: max error {error}")
        lines.append(f"SecAgg+ sum, {dropped} dropped: max abs error {error:.1e}")
        study = OurStudy(5, 1000)
        study.setup()
        ours = study.run_round(dropped)
        senders = sorted(study.agents)[dropped:]
        expected = sum(study.deltas[party] * 100 for party in senders)
        error = float(np.max(np.abs(ours - expected)))
        if error > 1e-4:
            raise SystemExit(f"secure round is wrong: max error {error}")
        lines.append(f"our sum, {dropped} dropped: max abs error {error:.1e}")
    return lines


def machine() -> str:
    model = "unknown"
    try:
        output = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout
        for line in output.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import cryptography

    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"NumPy {np.__version__}, cryptography {cryptography.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="only n = 5 and d = 10^4, 10^5"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed runs per cell; the median is reported",
    )
    arguments = parser.parse_args()
    counts = (5,) if arguments.quick else PARTY_COUNTS
    dims = DIMENSIONS[:2] if arguments.quick else DIMENSIONS
    print(f"machine: {machine()}")
    print("\n".join(check_sums()))
    print()
    print("\n".join(bench_mask_expansion(max(arguments.repeats, 9))))
    print()
    bench_rounds(arguments.repeats, counts, dims)


if __name__ == "__main__":
    main()
