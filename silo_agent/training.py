"""Local DP-SGD training and evaluation with Opacus.

Training uses Opacus's building blocks directly: ``GradSampleModule`` for
per-sample gradients, ``DPOptimizer`` for clipping and Gaussian noise, and
``UniformWithReplacementSampler`` for Poisson sampling at the sample rate the hub
sent. No ``PrivacyEngine`` is created, because privacy is accounted from the
agent's ledger, which replays every round of the study, never from an accountant
object that lives for one round.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from sklearn.metrics import roc_auc_score

logger = logging.getLogger(__name__)

Parameters = dict[str, NDArray[np.float32]]


@dataclass(frozen=True)
class TrainingSettings:
    """One round of local DP-SGD, as the hub instructed and the agent accepted.

    ``noise_multiplier`` is the ratio of the Gaussian noise's standard deviation
    to ``max_grad_norm`` (the L2 bound on each per-sample gradient).
    ``sample_rate`` is the Poisson probability that a record joins a batch, in
    (0, 1]. ``steps`` is the number of optimizer steps (batches) this round.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    learning_rate: float
    seed: int


@dataclass(frozen=True)
class TrainingOutcome:
    """Parameters after local training and what the round did."""

    parameters: Parameters
    steps: int
    mean_batch_size: float
    final_loss: float


def load_parameters(model: torch.nn.Module, parameters: Parameters) -> None:
    """Copy ``parameters`` into ``model``, checking names and shapes first."""
    state = model.state_dict()
    if set(state) != set(parameters):
        raise ValueError(
            "global model parameters do not match the local model: expected "
            f"{sorted(state)}, received {sorted(parameters)}; the hub and the agent "
            "must use the same study model and schema"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(parameters[name].shape):
            raise ValueError(
                f"global parameter {name!r} has shape {parameters[name].shape}, the "
                f"local model expects {tuple(tensor.shape)}; the hub and the agent "
                "must use the same study model and schema"
            )
        if not np.all(np.isfinite(parameters[name])):
            raise ValueError(
                f"global parameter {name!r} contains NaN or infinite values"
            )
    model.load_state_dict(
        {
            name: torch.from_numpy(np.asarray(value))
            for name, value in parameters.items()
        }
    )


def model_parameters(model: torch.nn.Module) -> Parameters:
    """Return the model's parameters by their plain names (no Opacus prefixes)."""
    return {
        name: tensor.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, tensor in model.state_dict().items()
    }


def train_dp_sgd(
    model: torch.nn.Module,
    features: NDArray[np.float32],
    labels: NDArray[np.int64],
    settings: TrainingSettings,
) -> TrainingOutcome:
    """Train ``model`` in place for ``settings.steps`` DP-SGD steps.

    Each step draws a Poisson batch (every record independently with probability
    ``sample_rate``), clips each per-sample gradient to ``max_grad_norm`` and adds
    Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm`` to
    the sum, divided by the expected batch size ``sample_rate * N``. An empty
    batch still takes a noise-only step, as the privacy analysis assumes.
    """
    num_records = len(features)
    if num_records == 0:
        raise ValueError("cannot train on an empty cohort: no accepted training rows")
    expected_batch_size = max(1, round(settings.sample_rate * num_records))
    # NOTE: the noise and the Poisson sampling come from torch's Mersenne Twister
    # seeded from os.urandom, not from a cryptographically secure generator
    # (Opacus offers one only through the torchcsprng package, not installed).
    # secure_mode below still draws the noise as Opacus's defence against
    # floating-point attacks on the Gaussian mechanism.
    generator = torch.Generator().manual_seed(settings.seed)

    module = GradSampleModule(model, loss_reduction="mean")
    optimizer = DPOptimizer(
        torch.optim.SGD(module.parameters(), lr=settings.learning_rate),
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
        generator=generator,
        secure_mode=True,
    )
    sampler = UniformWithReplacementSampler(
        num_samples=num_records, sample_rate=settings.sample_rate, generator=generator
    )
    inputs = torch.from_numpy(features)
    targets = torch.from_numpy(labels.astype(np.float32)).unsqueeze(1)

    batch_sizes: list[int] = []
    loss_value = math.nan
    module.train()
    while len(batch_sizes) < settings.steps:
        for indices in sampler:
            if len(batch_sizes) == settings.steps:
                break
            batch = torch.as_tensor(indices, dtype=torch.long)
            optimizer.zero_grad(set_to_none=True)
            logits = module(inputs[batch])
            if len(batch) == 0:
                # The sum over an empty batch gives empty per-sample gradients,
                # so the optimizer step adds noise only.
                loss = logits.sum()
            else:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, targets[batch]
                )
                loss_value = float(loss.detach())
            with warnings.catch_warnings():
                # Opacus's per-sample hooks sit on the first layer, whose input
                # (the records) needs no gradient, so PyTorch warns on every step.
                warnings.filterwarnings(
                    "ignore",
                    message="Full backward hook is firing",
                    category=UserWarning,
                )
                loss.backward()
            optimizer.step()
            batch_sizes.append(len(batch))

    module.to_standard_module()
    logger.debug(
        "trained %d DP-SGD steps on %d records, mean batch size %.1f",
        len(batch_sizes),
        num_records,
        float(np.mean(batch_sizes)),
    )
    return TrainingOutcome(
        parameters=model_parameters(model),
        steps=len(batch_sizes),
        mean_batch_size=float(np.mean(batch_sizes)),
        final_loss=loss_value,
    )


def evaluate(
    model: torch.nn.Module, features: NDArray[np.float32], labels: NDArray[np.int64]
) -> dict[str, float]:
    """Return accuracy, ROC AUC and log loss of ``model`` on one test split.

    ROC AUC is NaN when the split holds a single class, where it is undefined.
    """
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(features)).squeeze(1)
        probabilities = torch.sigmoid(logits).numpy().astype(np.float64)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.from_numpy(labels.astype(np.float32))
        )
    predictions = (probabilities >= 0.5).astype(np.int64)
    accuracy = float(np.mean(predictions == labels))
    if len(np.unique(labels)) < 2:
        auc = math.nan
    else:
        auc = float(roc_auc_score(labels, probabilities))
    return {
        "accuracy": accuracy,
        "roc_auc": auc,
        "loss": float(loss),
        "examples": float(len(labels)),
    }
