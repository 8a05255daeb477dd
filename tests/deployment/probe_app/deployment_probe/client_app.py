"""ClientApp that echoes the node's `agent-config` and the query's nonce."""

import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(message: Message, context: Context) -> Message:
    """Reply with the nonce, the node's `agent-config` and the handling time.

    `handled-at` is the Unix time at which this handler ran, so the ServerApp on
    the same machine can split a round trip into dispatch and return.
    """
    nonce = str(message.content["probe"]["nonce"])
    agent_config = str(context.node_config.get("agent-config", ""))
    reply = ConfigRecord(
        {"nonce": nonce, "agent-config": agent_config, "handled-at": time.time()}
    )
    return Message(RecordDict({"probe": reply}), reply_to=message)
