"""A fleetops node as the Mosquitto plugin sees it, in a process of its own so that a test can SIGKILL it.

    python -m tests.integration.mosquitto_node_process PORT NODE_ID SECRET ACK_AFTER

It registers as a handler and prints ``ready``; then one line ``got <seq> <kind> <device name> <payload>`` per
dispatched message. After its ACK_AFTER-th message it acknowledges that message's seq once and, when the broker
has taken the acknowledgement (PUBACK), prints ``acked <seq>``; it never acknowledges anything again, so every
later message is unacknowledged when the test kills it.
"""

from __future__ import annotations

import sys
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    port, node_id, secret, ack_after = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    prefix = f"$fleetops/node/{node_id}/"
    state: dict[str, Any] = {"count": 0, "ack_mid": None, "ack_seq": None}
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=node_id, clean_session=True)
    client.username_pw_set("fleetops", secret)

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        client.subscribe(prefix + "#", 1)

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, codes: Any, properties: Any) -> None:
        print("ready", flush=True)

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if not message.topic.startswith(prefix) or message.topic.endswith("/welcome"):
            return
        kind, seq, _, device_name = message.topic[len(prefix) :].split("/")
        print(f"got {seq} {kind} {device_name} {message.payload.decode()}", flush=True)
        state["count"] += 1
        if state["count"] == ack_after:
            state["ack_seq"] = seq
            state["ack_mid"] = client.publish(f"$fleetops/ack/{node_id}", seq.encode(), 1).mid

    def on_publish(client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if mid == state["ack_mid"]:
            print(f"acked {state['ack_seq']}", flush=True)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_publish = on_publish
    client.connect("127.0.0.1", port, 60)
    client.loop_forever()


if __name__ == "__main__":
    main()
