"""Explicit clipping and fixed-point quantization of model deltas."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secure_aggregation.errors import QuantizationRangeError

FloatArray = npt.NDArray[np.float64]
UIntArray = npt.NDArray[np.uint64]

# Clipping scales by C / norm and shrinks by this relative margin, so float
# rounding of the product never puts a coordinate above C.
_CLIP_MARGIN = 1.0 - 2.0**-40


@dataclass(frozen=True)
class ClipResult:
    """A delta clipped to an L2 norm bound, and whether clipping changed it."""

    delta: FloatArray
    clipped: bool


def clip_update(delta: FloatArray, clipping_range: float) -> ClipResult:
    """Scale ``delta`` down to L2 norm at most ``clipping_range`` if it is longer.

    Raises QuantizationRangeError on a NaN or infinite coordinate.
    """
    values = np.asarray(delta, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise QuantizationRangeError(
            "delta contains NaN or infinite coordinates. Fix the training step "
            "that produced it"
        )
    # einsum avoids the BLAS thread pool, whose start-up cost dominates
    # np.linalg.norm on a busy machine.
    norm = math.sqrt(float(np.einsum("i,i->", values, values)))
    if norm <= clipping_range:
        return ClipResult(delta=values, clipped=False)
    scale = clipping_range / norm * _CLIP_MARGIN
    return ClipResult(delta=values * scale, clipped=True)


class Quantizer:
    """Map reals in [-bound, bound] to integers modulo 2**modulus_bits and back.

    ``encode`` rounds ``value / step`` to the nearest integer and reduces it
    modulo 2**k. It raises on any value outside [-bound, bound] instead of
    clipping. ``decode`` reads a sum of encodings as a signed residue, so it is
    exact while the true integer sum lies in (-2**(k-1), 2**(k-1)).
    """

    def __init__(self, step: float, bound: float, modulus_bits: int) -> None:
        if not 16 <= modulus_bits <= 64:
            raise ValueError(f"modulus_bits must be in [16, 64]: got {modulus_bits}")
        self.step = step
        self.bound = bound
        self.modulus_bits = modulus_bits
        self._residue_mask = np.uint64((1 << modulus_bits) - 1)

    def encode(self, values: FloatArray) -> UIntArray:
        """Return the fixed-point residues of ``values`` as uint64."""
        array = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(array)):
            raise QuantizationRangeError(
                "values contain NaN or infinite coordinates. Fix the training "
                "step that produced them"
            )
        if array.size and float(np.max(np.abs(array))) > self.bound:
            outside = int(np.count_nonzero(np.abs(array) > self.bound))
            raise QuantizationRangeError(
                f"{outside} coordinates lie outside the quantization range "
                f"[-{self.bound}, {self.bound}]. Clip the update with "
                "clip_update before quantizing"
            )
        integers = np.rint(array / self.step).astype(np.int64).view(np.uint64)
        if self.modulus_bits < 64:
            integers &= self._residue_mask
        return integers

    def to_signed(self, residues: UIntArray) -> npt.NDArray[np.int64]:
        """Return ``residues`` modulo 2**k as signed integers."""
        reduced = np.asarray(residues, dtype=np.uint64)
        if self.modulus_bits == 64:
            return reduced.view(np.int64)
        reduced = reduced & self._residue_mask
        # Shifting the residue to the top bits and back with an arithmetic shift
        # extends its sign bit (bit k - 1).
        shift = 64 - self.modulus_bits
        return (reduced << np.uint64(shift)).view(np.int64) >> np.int64(shift)

    def decode(self, residues: UIntArray) -> FloatArray:
        """Return the real values whose encodings sum to ``residues``."""
        return self.to_signed(residues).astype(np.float64) * self.step
