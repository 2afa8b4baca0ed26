"""FastClient (collector.py) reads PUBLISH packets from its own chunked buffer: whatever the chunking
and whatever the packet, the collector gets the same topic, payload, QoS and id as paho would give."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citywatch.ingest import collector
from citywatch.ingest.collector import FastClient
from tests.conftest import wait_until
from tests.servers.mosquitto import MosquittoServer


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (128 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: bytes, payload: bytes, qos: int = 0, mid: int = 0, v5: bool = True,
            props: bytes = b"") -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    if v5:
        body += varint(len(props)) + props
    body += payload
    return bytes([0x30 | qos << 1]) + varint(len(body)) + body


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def client_on(sock: socket.socket, v5: bool = True) -> tuple[FastClient, list[tuple[object, ...]]]:
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    client = FastClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol, manual_ack=True)
    got: list[tuple[object, ...]] = []
    client.on_publish_fields = lambda qos, mid, topic, payload: got.append(("fast", qos, mid, topic, payload))
    client.on_message = lambda c, u, m: got.append(("paho", m.qos, m.mid, m._topic, m.payload))
    client._sock = sock  # type: ignore[assignment]
    return client, got


def read_all(client: FastClient) -> None:
    while client.loop_read() == mqtt.MQTT_ERR_SUCCESS and client._buffered():
        pass


@pytest.mark.parametrize("chunk", [1, 3, 7, 100, 65536])
def test_every_packet_arrives_intact_whatever_the_read_size(pair: tuple[socket.socket, socket.socket],
                                                           monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(collector, "READ_CHUNK", chunk)
    a, b = pair
    client, got = client_on(a)
    big = bytes(range(256)) * 80  # a remaining length of three bytes
    packets = [publish(b"citywatch/gas/g1/telemetry", b'{"lel_pct": 3}'),
               publish(b"citywatch/x/y", b"", qos=1, mid=65535),
               publish(b"citywatch/big", big, qos=1, mid=7),
               publish(b"citywatch/\xff", b"bad topic bytes")]
    b.sendall(b"".join(packets))
    for _ in range(50_000):
        if len(got) == len(packets):
            break
        read_all(client)
    assert [g[1:] for g in got] == [(0, 0, b"citywatch/gas/g1/telemetry", b'{"lel_pct": 3}'),
                                    (1, 65535, b"citywatch/x/y", b""),
                                    (1, 7, b"citywatch/big", big),
                                    (0, 0, b"citywatch/\xff", b"bad topic bytes")]
    if chunk == 65536:
        assert {g[0] for g in got} == {"fast"}  # one read, and every packet was whole in the buffer


def test_properties_and_qos2_take_paho_s_own_path(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    client, got = client_on(a)
    user_property = b"\x26" + (1).to_bytes(2, "big") + b"k" + (1).to_bytes(2, "big") + b"v"
    b.sendall(publish(b"citywatch/p", b"with props", props=user_property)
              + publish(b"citywatch/q", b"fast again"))
    read_all(client)
    assert got == [("paho", 0, 0, b"citywatch/p", b"with props"), ("fast", 0, 0, b"citywatch/q", b"fast again")]
    b.sendall(publish(b"citywatch/r", b"x") + publish(b"citywatch/s", b"exactly once", qos=2, mid=9))
    read_all(client)
    assert got[2:] == [("fast", 0, 0, b"citywatch/r", b"x")]  # QoS 2: paho holds it until PUBREL
    assert 9 in client._in_messages


def test_mqtt311_has_no_properties_field(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    client, got = client_on(a, v5=False)
    b.sendall(publish(b"citywatch/z", b"", v5=False) + publish(b"citywatch/a", b"\x00payload", qos=1, mid=3, v5=False))
    read_all(client)
    assert got == [("fast", 0, 0, b"citywatch/z", b""), ("fast", 1, 3, b"citywatch/a", b"\x00payload")]


def test_a_new_socket_starts_with_an_empty_buffer(pair: tuple[socket.socket, socket.socket],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes read from a lost connection must never be parsed as the start of the next one."""
    monkeypatch.setattr(collector, "READ_CHUNK", 65536)
    a, b = pair
    client, got = client_on(a)
    b.sendall(publish(b"citywatch/old", b"1"))
    assert client._sock_recv(1) == b"\x30"  # the rest of that packet sits in the buffer
    c, d = socket.socketpair()
    c.setblocking(False)
    client._sock = c  # type: ignore[assignment]  # as after a reconnect
    client._in_packet["command"] = 0
    d.sendall(publish(b"citywatch/new", b"2"))
    read_all(client)
    assert got == [("fast", 0, 0, b"citywatch/new", b"2")]
    c.close()
    d.close()


def test_a_closed_connection_is_reported_as_lost(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    client, got = client_on(a)
    b.sendall(publish(b"citywatch/last", b"1"))
    b.close()
    assert client._packet_read() == mqtt.MQTT_ERR_SUCCESS
    assert client._packet_read() == mqtt.MQTT_ERR_CONN_LOST
    assert got == [("fast", 0, 0, b"citywatch/last", b"1")]


def test_nothing_to_read_is_not_an_error(pair: tuple[socket.socket, socket.socket]) -> None:
    client, got = client_on(pair[0])
    assert client._packet_read() == mqtt.MQTT_ERR_AGAIN
    assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
    assert got == []


def flood_a_slow_reader(mosquitto: MosquittoServer, total: int, payload: bytes, delay_s: float,
                        deadline_s: float) -> tuple[list[object], int]:
    """Publish `total` QoS 0 messages at a real Mosquitto to a FastClient (2 s keepalive: the broker
    drops it after 3 s without a packet) that takes `delay_s` over each; (its disconnects, messages got)."""
    got: list[int] = []
    disconnects: list[object] = []
    subscribed = threading.Event()
    client = FastClient(CallbackAPIVersion.VERSION2, client_id="slow-reader", protocol=mqtt.MQTTv5)

    def on_fields(qos: int, mid: int, topic: bytes, payload: bytes) -> None:
        got.append(1)
        time.sleep(delay_s)  # a slow consumer: the backlog stays at the broker and in the socket

    client.on_publish_fields = on_fields
    client.on_message = lambda c, u, m: on_fields(m.qos, m.mid, m._topic, m.payload)  # a packet split by a chunk
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("flood/#", qos=0)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_disconnect = lambda *a: disconnects.append(a)
    client.connect("127.0.0.1", mosquitto.port, keepalive=2)
    client.loop_start()
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flood")
    try:
        assert subscribed.wait(10)
        publisher.connect("127.0.0.1", mosquitto.port)
        publisher.loop_start()
        infos = [publisher.publish(f"flood/{i % 100}", payload, qos=0) for i in range(total)]
        infos[-1].wait_for_publish(30)
        wait_until(lambda: len(got) >= total or bool(disconnects), deadline_s)
        return list(disconnects), len(got)  # a copy: our own disconnect below is not the broker's doing
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        client.loop_stop()
        client.disconnect()


def test_a_long_read_of_a_backlog_keeps_the_connection_alive(mosquitto: MosquittoServer) -> None:
    """A slow consumer with a backlog at a real Mosquitto: the socket is never empty for many
    keepalives. The client must still send its PINGREQs, or the broker drops it after 1.5 keepalives
    with everything it queued (the 1M-device run lost 372,703 QoS 0 messages so)."""
    disconnects, got = flood_a_slow_reader(mosquitto, 20_000, b"x" * 100, 0.0004, 90)  # about 10 s
    assert disconnects == [] and got == 20_000, (disconnects, got)


def test_a_chunk_read_slower_than_a_keepalive_does_not_drop_the_connection(mosquitto: MosquittoServer) -> None:
    """The broker's PINGRESP waits behind the backlog it sent first. When one chunk of it takes longer
    than a keepalive to handle (a loaded machine), paho saw no new bytes for a keepalive after its
    PINGREQ and closed the connection itself ('Keep alive timeout'); bytes held unread count as arriving.
    2 kB messages: a 64 kB chunk holds 32, so 3.2 s a chunk against the 2 s keepalive (not 1 s: the
    broker's limit, 1.5 keepalives, leaves a PINGREQ due after 1 s only 0.5 s to arrive, which a
    loaded CI machine can miss)."""
    disconnects, got = flood_a_slow_reader(mosquitto, 70, b"y" * 2000, 0.1, 60)  # about 7 s
    assert disconnects == [] and got == 70, (disconnects, got)
