"""ServerApp that queries every SuperNode and times each round trip.

Run config keys:

- `expected-nodes`: SuperNodes to wait for; `rounds`: query rounds.
- `fail`: raise after the rounds, which makes the run fail.
- `send-and-receive`: collect replies with `grid.send_and_receive`, which polls
  every 3 s, in place of a `pull_messages` loop that polls every 0.05 s.
- `report-path`: JSON file that receives the node configs and timings, or "".

Timings per round: `round_trip_seconds` from pushing the queries to the last
reply; per reply, `dispatch_seconds` from the push to the ClientApp handler and
`return_seconds` from the handler to the reply's arrival (wall clock, valid on
one machine).
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

    use_send_and_receive = bool(context.run_config["send-and-receive"])
    round_trip_seconds: list[float] = []
    dispatch_seconds: list[float] = []
    return_seconds: list[float] = []
    agent_configs: dict[str, str] = {}
    for round_number in range(1, rounds + 1):
        started = time.monotonic()
        pushed_at = time.time()
        replies = _query_all(grid, node_ids, round_number, use_send_and_receive)
        round_trip_seconds.append(time.monotonic() - started)
        for _, handled_at, received_at in replies.values():
            dispatch_seconds.append(handled_at - pushed_at)
            return_seconds.append(received_at - handled_at)
        agent_configs = {str(node): reply[0] for node, reply in replies.items()}

    report_path = str(context.run_config["report-path"])
    if report_path:
        report = {
            "nodes": len(node_ids),
            "agent_configs": agent_configs,
            "round_trip_seconds": round_trip_seconds,
            "dispatch_seconds": dispatch_seconds,
            "return_seconds": return_seconds,
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


def _query_all(
    grid: Grid, node_ids: list[int], round_number: int, use_send_and_receive: bool
) -> dict[int, tuple[str, float, float]]:
    """Query every node; return node -> (agent-config, handled-at, received-at)."""
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
    if use_send_and_receive:
        replies: dict[int, tuple[str, float, float]] = {}
        for reply in grid.send_and_receive(messages, timeout=REPLY_WAIT_SECONDS):
            received_at = time.time()
            node, agent_config, handled_at = _check(reply, nonces)
            replies[node] = (agent_config, handled_at, received_at)
        if len(replies) != len(node_ids):
            raise ProbeFailure(f"{len(node_ids) - len(replies)} replies missing")
        return replies

    pending = set(grid.push_messages(messages))
    replies = {}
    deadline = time.monotonic() + REPLY_WAIT_SECONDS
    while pending:
        for reply in grid.pull_messages(list(pending)):
            received_at = time.time()
            pending.discard(reply.metadata.reply_to_message_id)
            node, agent_config, handled_at = _check(reply, nonces)
            replies[node] = (agent_config, handled_at, received_at)
        if pending and time.monotonic() > deadline:
            raise ProbeFailure(f"{len(pending)} replies missing after round trip wait")
        if pending:
            time.sleep(POLL_SECONDS)
    return replies


def _check(reply: Message, nonces: dict[int, str]) -> tuple[int, str, float]:
    node = reply.metadata.src_node_id
    if reply.has_error():
        raise ProbeFailure(f"node {node} replied with error {reply.error}")
    probe = reply.content["probe"]
    if probe["nonce"] != nonces[node]:
        raise ProbeFailure(f"node {node} echoed a wrong nonce")
    return node, str(probe["agent-config"]), float(probe["handled-at"])
