"""ClientApp that echoes the node's `agent-config` and the query's nonce."""

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(message: Message, context: Context) -> Message:
    """Reply with the nonce received and the node config's `agent-config` path."""
    nonce = str(message.content["probe"]["nonce"])
    agent_config = str(context.node_config.get("agent-config", ""))
    reply = ConfigRecord({"nonce": nonce, "agent-config": agent_config})
    return Message(RecordDict({"probe": reply}), reply_to=message)
