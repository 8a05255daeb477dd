"""Configuration of a secure-aggregation study."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field, model_validator

from secure_aggregation.errors import ModulusTooSmallError

logger = logging.getLogger(__name__)

#: Minimum number of parties in one secure round. With two, each party learns
#: the other's update by subtracting its own from the sum.
MIN_PARTIES = 3


class SecureAggregationConfig(BaseModel):
    """Study-wide parameters that the hub and every agent must share.

    Attributes:
        threshold: Shamir threshold t, the number of shares that reconstruct a
            secret. It must be a strict majority of the parties that hold shares
            of one secret (all roster parties, or one party and its neighbors in
            sparse mode), so that a hub that shows different survivor lists to
            different parties cannot collect t shares of both secrets of one
            party. See ``minimum_threshold``.
        model_size: Number of model parameters, the length of the flattened
            model delta. An update of another length is rejected.
        clipping_range: L2 norm bound C of one party's model delta, in model
            parameter units (the update clip norm). Each coordinate of a clipped
            delta lies in [-C, C].
        quantization_levels: Fixed-point steps per clipping range, so the
            quantization step is ``clipping_range / quantization_levels``.
            Default 2**20 (an absolute error of at most half a step per
            coordinate per party).
        modulus_bits: k, where masked values are integers modulo 2**k. Default
            64, where NumPy's uint64 arithmetic wraps around for free.
        max_weight: Largest FedAvg weight (record count) a party may send. A
            larger record count is capped to it explicitly. Default 1.
        fixed_weight: Weight every party sends instead of its record count
            (None: record counts capped at ``max_weight``). Must not exceed
            ``max_weight``.
        neighbors: Degree k of the sparse masking graph of Bell et al. (CCS
            2020), an even number below the roster size. None (default) masks
            every pair of parties.

    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: int = Field(ge=2)
    model_size: int = Field(ge=1)
    clipping_range: float = Field(gt=0.0, allow_inf_nan=False)
    quantization_levels: int = Field(default=2**20, ge=1)
    modulus_bits: int = Field(default=64, ge=16, le=64)
    max_weight: int = Field(default=1, ge=1)
    fixed_weight: int | None = Field(default=None, ge=1)
    neighbors: int | None = Field(default=None, ge=2)

    @model_validator(mode="after")
    def _check_weights(self) -> SecureAggregationConfig:
        if self.fixed_weight is not None and self.fixed_weight > self.max_weight:
            raise ValueError(
                f"fixed_weight must not exceed max_weight: got fixed_weight="
                f"{self.fixed_weight}, max_weight={self.max_weight}. Raise "
                "max_weight or lower fixed_weight"
            )
        if self.neighbors is not None and self.neighbors % 2 == 1:
            raise ValueError(
                f"neighbors must be even (a circulant graph of odd degree needs an "
                f"even party count): got {self.neighbors}. Use {self.neighbors + 1}"
            )
        return self

    @property
    def quantization_step(self) -> float:
        """Value of one fixed-point unit, in model parameter units."""
        return self.clipping_range / self.quantization_levels

    @property
    def weighted_range(self) -> float:
        """Bound on each coordinate of ``weight * delta``: max_weight * C."""
        return self.max_weight * self.clipping_range

    def weight_for(self, record_count: int) -> int:
        """Return the FedAvg weight of a party with ``record_count`` records.

        The fixed weight when one is set, else the record count capped at
        ``max_weight``. The cap is logged, never applied silently.
        """
        if record_count < 1:
            raise ValueError(
                f"record_count must be at least 1: got {record_count}. A party "
                "without records must not join the round"
            )
        if self.fixed_weight is not None:
            return self.fixed_weight
        if record_count > self.max_weight:
            logger.info("record count capped at max_weight=%d", self.max_weight)
            return self.max_weight
        return record_count

    def check_capacity(self, party_count: int) -> None:
        """Raise ModulusTooSmallError unless the sum of every party fits.

        Each party's quantized coordinate is an integer in [-W*L, W*L], where W
        is ``max_weight`` and L ``quantization_levels``, and its weight
        coordinate an integer in [1, W]. The sum over n parties lies in
        [-n*W*L, n*W*L], and decoding it as a signed residue modulo 2**k is
        exact when n*W*L < 2**(k-1).
        """
        largest_sum = party_count * self.max_weight * self.quantization_levels
        if largest_sum >= 2 ** (self.modulus_bits - 1):
            raise ModulusTooSmallError(
                f"modulus_bits={self.modulus_bits} cannot hold the sum of "
                f"{party_count} parties: party_count * max_weight * "
                f"quantization_levels = {largest_sum} must be below "
                f"2**(modulus_bits - 1). Raise modulus_bits, or lower max_weight "
                "or quantization_levels"
            )


def minimum_threshold(holder_count: int, colluding_parties: int = 0) -> int:
    """Return the smallest safe threshold for ``holder_count`` share holders.

    A hub that lies about who dropped needs t shares of a party's self-mask
    seed from parties that saw it survive and t shares of its pairwise seeds
    from parties that saw it drop. Each honest party responds once per round and
    never reveals both for one party, and each of ``colluding_parties`` can
    reveal both, so the attack needs 2t <= holder_count + colluding_parties.
    The result is floor((holder_count + colluding_parties) / 2) + 1.
    """
    return (holder_count + colluding_parties) // 2 + 1
