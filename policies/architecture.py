"""Model architectures a study can name, built identically by the hub and agents.

The hub needs the parameter shapes and the initial values of the global model,
and every agent must build the same module around them, so both sides build the
model here from the study's training section and the schema's feature count.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray

ModelKind = Literal["logreg", "mlp"]


def build_model(
    kind: ModelKind, num_features: int, hidden_units: int
) -> torch.nn.Module:
    """Build the binary classifier a study trains; it outputs one logit per row.

    ``logreg`` is logistic regression (one linear layer). ``mlp`` adds one hidden
    layer of ``hidden_units`` ReLU units. Both avoid batch statistics, which
    DP-SGD's per-sample gradients cannot account for.
    """
    if num_features < 1:
        raise ValueError(
            f"num_features must be at least 1, got {num_features}; check that the "
            "schema declares at least one feature column"
        )
    if kind == "logreg":
        return torch.nn.Linear(num_features, 1)
    if kind == "mlp":
        if hidden_units < 1:
            raise ValueError(
                f"hidden_units must be at least 1 for the mlp model, got {hidden_units}"
            )
        return torch.nn.Sequential(
            torch.nn.Linear(num_features, hidden_units),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden_units, 1),
        )
    raise ValueError(f"model must be 'logreg' or 'mlp', got {kind!r}")


def initial_parameters(
    kind: ModelKind, num_features: int, hidden_units: int, seed: int
) -> dict[str, NDArray[np.float32]]:
    """Return the global model's initial parameters, a pure function of its inputs.

    Logistic regression starts at zero, the usual start for a convex problem. The
    MLP takes PyTorch's default initialisation from a generator seeded with
    ``seed``, so a resumed study starts from the same values.
    """
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_model(kind, num_features, hidden_units)
    finally:
        torch.random.set_rng_state(generator_state)
    if kind == "logreg":
        for parameter in model.parameters():
            torch.nn.init.zeros_(parameter)
    return {
        name: tensor.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, tensor in model.state_dict().items()
    }


def parameters_l2_norm(parameters: dict[str, NDArray[np.floating]]) -> float:
    """Return the L2 norm of all named arrays taken as one vector, in float64."""
    return float(
        np.sqrt(
            sum(
                float(np.sum(np.asarray(v, dtype=np.float64) ** 2))
                for v in parameters.values()
            )
        )
    )
