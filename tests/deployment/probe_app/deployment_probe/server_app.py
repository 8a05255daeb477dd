"""ServerApp that queries every SuperNode and times each round trip.

Run config: `expected-nodes` (SuperNodes to wait for), `rounds` (query rounds),
`fail` (raise after the rounds, to produce a failed run) and `report-path`
(a JSON file that receives the node configs and round-trip times, or "").
"""

import json
import secrets
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

NODE_WAIT_SECONDS = 60.0
REPLY_WAIT_SECONDS = 60.0
POLL_SECONDS = 0.05

app = ServerApp()


class ProbeFailure(RuntimeError):
    """The probe app failed on purpose or received a wrong reply."""


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Query every node `rounds` times, check replies, optionally fail."""
    expected = int(context.run_config["expected-nodes"])
    rounds = int(context.run_config["rounds"])
    node_ids = _wait_for_nodes(grid, expected)

    round_trip_seconds: list[float] = []
    agent_configs: dict[str, str] = {}
    for round_number in range(1, rounds + 1):
        started = time.monotonic()
        replies = _query_all(grid, node_ids, round_number)
        round_trip_seconds.append(time.monotonic() - started)
        agent_configs = {str(node): config for node, config in replies.items()}

    report_path = str(context.run_config["report-path"])
    if report_path:
        report = {
            "nodes": len(node_ids),
            "agent_configs": agent_configs,
            "round_trip_seconds": round_trip_seconds,
        }
        Path(report_path).write_text(json.dumps(report, indent=2), encoding="utf-8")

    if bool(context.run_config["fail"]):
        raise ProbeFailure("the probe run was configured to fail (fail=true)")


def _wait_for_nodes(grid: Grid, expected: int) -> list[int]:
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= expected:
            return node_ids
        if time.monotonic() > deadline:
            raise ProbeFailure(
                f"only {len(node_ids)} of {expected} SuperNodes connected "
                f"within {NODE_WAIT_SECONDS:.0f} s"
            )
        time.sleep(0.2)


def _query_all(grid: Grid, node_ids: list[int], round_number: int) -> dict[int, str]:
    nonces = {node: secrets.token_hex(8) for node in node_ids}
    messages = [
        Message(
            RecordDict({"probe": ConfigRecord({"nonce": nonces[node]})}),
            dst_node_id=node,
            message_type=MessageType.QUERY,
            group_id=str(round_number),
        )
        for node in node_ids
    ]
    pending = set(grid.push_messages(messages))
    replies: dict[int, str] = {}
    deadline = time.monotonic() + REPLY_WAIT_SECONDS
    while pending:
        for reply in grid.pull_messages(list(pending)):
            pending.discard(reply.metadata.reply_to_message_id)
            node = reply.metadata.src_node_id
            if reply.has_error():
                raise ProbeFailure(f"node {node} replied with error {reply.error}")
            probe = reply.content["probe"]
            if probe["nonce"] != nonces[node]:
                raise ProbeFailure(f"node {node} echoed a wrong nonce")
            replies[node] = str(probe["agent-config"])
        if pending and time.monotonic() > deadline:
            raise ProbeFailure(f"{len(pending)} replies missing after round trip wait")
        if pending:
            time.sleep(POLL_SECONDS)
    return replies
