"""Child process for crash tests: one agent handles one round instruction.

Usage: python agent_process.py AGENT_YAML INSTRUCTION_JSON OUTPUT_JSON MODE MARKER

MODE ``train`` handles the instruction and writes a digest of the reply to
OUTPUT_JSON. MODE ``hang-in-training`` and ``hang-after-outbox`` touch MARKER at
that point of the round and then wait to be killed: a SIGKILL at an exact point
between two statements cannot be caused from outside the process otherwise.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from policies.architecture import initial_parameters
from policies.enforcement import RoundInstruction
from policies.models import TrainingConfig
from silo_agent import agent as agent_module
from silo_agent.config import load_agent_config


def _hang(marker: Path) -> None:
    marker.write_text("reached", encoding="utf-8")
    while True:
        time.sleep(1)


def main() -> None:
    config_path, instruction_path, output_path, mode, marker = sys.argv[1:6]
    document = json.loads(Path(instruction_path).read_text(encoding="utf-8"))
    instruction = RoundInstruction.from_config(document["instruction"])
    training = TrainingConfig(**document["training"])

    if mode == "hang-in-training":

        def hanging_training(*args: Any, **kwargs: Any) -> Any:
            _hang(Path(marker))

        agent_module.train_dp_sgd = hanging_training  # type: ignore[assignment]
    elif mode == "hang-after-outbox":
        store = agent_module.SiloAgent._store_reply

        def store_then_hang(self: Any, path: Path, reply: Any) -> None:
            store(self, path, reply)
            _hang(Path(marker))

        agent_module.SiloAgent._store_reply = store_then_hang  # type: ignore[method-assign]

    agent = agent_module.SiloAgent(load_agent_config(config_path))
    parameters = initial_parameters(
        training.model,
        len(agent.encoder.feature_names),
        training.hidden_units,
        training.seed,
    )
    reply = agent.train(instruction, training, parameters)
    digest = hashlib.sha256()
    for name in sorted(reply.delta):
        digest.update(np.ascontiguousarray(reply.delta[name]).tobytes())
    Path(output_path).write_text(
        json.dumps(
            {"delta_sha256": digest.hexdigest(), "epsilon": reply.receipt.epsilon_after}
        ),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
