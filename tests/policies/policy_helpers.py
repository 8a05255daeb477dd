"""Helpers shared by the policy tests."""

from __future__ import annotations

from pathlib import Path

from policies.models import DPParameters

BUNDLED = Path(__file__).resolve().parents[2] / "policies" / "bundled"


def dp(
    noise_multiplier: float = 1.1,
    sample_rate: float = 0.2,
    steps: int = 3,
    max_grad_norm: float = 1.0,
) -> DPParameters:
    """Build DP parameters with defaults close to the bundled study."""
    return DPParameters(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        max_grad_norm=max_grad_norm,
    )
