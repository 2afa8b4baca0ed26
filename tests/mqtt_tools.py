"""Publishing from tests with a plain paho client (QoS 1, waits for every PUBACK)."""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.servers.mosquitto import MosquittoServer


def publish_all(server: MosquittoServer, messages: list[tuple[str, bytes]], qos: int = 1,
                retain: bool = False) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{id(messages)}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", server.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=qos, retain=retain) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def _publish_child(port: int, factory: str, args: tuple[object, ...], qos: int) -> None:
    import importlib

    module, name = factory.split(":")
    messages = getattr(importlib.import_module(module), name)(*args)
    server = MosquittoServer.__new__(MosquittoServer)
    server.port = port
    publish_all(server, messages, qos)


def publish_from_another_process(server: MosquittoServer, factory: str, args: tuple[object, ...],
                                 qos: int = 1) -> None:
    """Build the messages with `module:function(*args)` and publish them from a separate process,
    so neither the messages nor the publisher's buffers count in this process's memory."""
    import multiprocessing as mp

    proc = mp.get_context("spawn").Process(target=_publish_child, args=(server.port, factory, args, qos))
    proc.start()
    proc.join(300)
    assert proc.exitcode == 0, f"publisher exited with {proc.exitcode}"
