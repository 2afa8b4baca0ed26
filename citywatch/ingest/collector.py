"""The MQTT collector: paho-mqtt in its own network thread, handing messages to the runner.

QoS 1 with a persistent session and manual acknowledgements: a message is acknowledged to
the broker only after the runner has committed what it produced, so a crash redelivers it.
Reconnection uses paho's loop with exponential backoff (reconnect_min_s .. reconnect_max_s).
CONNECT carries MQTT 5 Maximum Packet Size (mqtt.max_packet_bytes): a broker then drops larger
publishes for us instead of sending them, so they are never buffered in our process (Mosquitto
logs "Dropping too large outgoing PUBLISH"; citywatch never sees them).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citywatch.config import MqttSettings
from citywatch.ingest.handoff import Handoff

log = logging.getLogger(__name__)


class Message(NamedTuple):
    generation: int  # connection number: acks of an older connection are void (the broker redelivers)
    mid: int
    qos: int
    topic: str
    payload: bytes
    received_at: float


def message_size(m: Message) -> int:
    """Bytes a message holds in the hand-off (payload and topic), for its byte bound."""
    return len(m.payload) + len(m.topic)


class BrokerAddress(NamedTuple):
    host: str
    port: int
    tls: bool


def parse_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls)


READ_CHUNK = 65536  # bytes per socket read: hundreds of telemetry PUBLISH packets
PublishCallback = Callable[[int, int, bytes, bytes], None]  # qos, mid, topic, payload


KEEPALIVE_CHECK_S = 1.0  # at most this (a tenth of the keepalive if less) between keepalive checks in a long read


class FastClient(mqtt.Client):
    """paho's client with its per-message costs cut, for a subscriber receiving thousands a second.

    paho reads each packet with three recv calls (command byte, remaining length, body), one
    packet per select, and builds an MQTTMessage and, in MQTT 5, a Properties object per PUBLISH:
    over 100 µs of CPU a message. Here the socket is read in chunks of READ_CHUNK bytes, every
    whole packet in the chunk is handled before the next select, and a QoS 0/1 PUBLISH without
    properties goes straight to `on_publish_fields`. Everything else (a partial packet, QoS 2,
    properties such as a topic alias, other packet types) takes paho's own path unchanged, reading
    from the same buffer, so protocol handling, acks and keepalive stay paho's.
    """

    on_publish_fields: PublishCallback | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._rbuf = b""
        self._rpos = 0
        self._rsock: object = None

    def _sock_recv(self, bufsize: int) -> bytes:
        """paho's recv, served from our chunk (a new socket starts with an empty one)."""
        if self._rsock is not self._sock:
            self._rsock, self._rbuf, self._rpos = self._sock, b"", 0
        pos, buf = self._rpos, self._rbuf
        if pos >= len(buf):
            buf = super()._sock_recv(READ_CHUNK)  # raises BlockingIOError when nothing is there
            self._rbuf, pos = buf, 0
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()  # paho's clock
        end = min(pos + bufsize, len(buf))
        self._rpos = end
        return buf[pos:end]

    def _buffered(self) -> bool:
        return self._rsock is self._sock and self._rpos < len(self._rbuf)

    def _check_keepalive(self) -> None:
        """paho closes the connection when, after its PINGREQ, no bytes came for a keepalive. Bytes
        we hold unread are bytes still arriving: the broker's PINGRESP is queued behind them, so a
        slow read of a backlog is our delay, not a dead broker (CI, loaded, saw a 2 s keepalive
        dropped so). They count as received now; PINGREQs still go out when due."""
        if self._buffered():
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()
        super()._check_keepalive()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle every packet already read before returning to select (which cannot see them).

        With a backlog at the broker the socket is never empty and a packet straddling the chunk's
        end reads the next chunk, so this can go on for minutes: paho's keepalive (loop_misc) and
        writes (loop_write) run from here every tenth of a keepalive (at most KEEPALIVE_CHECK_S)
        meanwhile. Without that no PINGREQ went out, and the broker dropped the connection after 1.5
        keepalives with its whole queue (the 1M-device run lost 372,703 QoS 0 messages so)."""
        rc = super().loop_read(max_packets)
        check_every = min(KEEPALIVE_CHECK_S, self._keepalive / 10 or KEEPALIVE_CHECK_S)
        next_check = time.monotonic() + check_every
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._buffered():
            rc = super().loop_read(max_packets)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + check_every
                self.loop_misc()  # a PINGREQ when due
                if self._sock is not None and self.want_write():
                    self.loop_write()
        return rc

    def _packet_read(self) -> MQTTErrorCode:
        on_publish = self.on_publish_fields
        if on_publish is None or self._in_packet["command"] != 0:
            return super()._packet_read()
        if not self._buffered():
            try:
                self._sock_recv(0)  # read the next chunk, so its first packet takes this path too
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError:
                return super()._packet_read()  # paho logs it and reports the lost connection
            if not self._buffered():
                return super()._packet_read()  # end of stream: paho reports the lost connection
        buf, start = self._rbuf, self._rpos
        header, n = buf[start], len(buf)
        qos = (header & 0x06) >> 1
        if (header & 0xF0) != 0x30 or qos == 2:  # not a PUBLISH, or QoS 2 (paho's handshake)
            return super()._packet_read()
        length, mult, i = 0, 1, start + 1
        while True:  # remaining length: 1 to 4 bytes, 7 bits each
            if i >= n or i > start + 4:
                return super()._packet_read()
            byte = buf[i]
            i += 1
            length += (byte & 127) * mult
            mult *= 128
            if not byte & 128:
                break
        end = i + length
        if end > n or length < 2:
            return super()._packet_read()
        topic_end = i + 2 + (buf[i] << 8 | buf[i + 1])
        pos = topic_end + (2 if qos else 0)
        v5 = self._protocol == mqtt.MQTTv5
        if pos + v5 > end or (v5 and buf[pos] != 0) or (not v5 and topic_end == i + 2):
            return super()._packet_read()  # properties, or malformed: paho decides
        mid = buf[topic_end] << 8 | buf[topic_end + 1] if qos else 0
        self._rpos = end
        with self._in_callback_mutex:  # as paho calls on_message
            on_publish(qos, mid, buf[i + 2:topic_end], buf[pos + v5:end])
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def make_client(settings: MqttSettings, client_id: str, protocol: int = mqtt.MQTTv5,
                manual_ack: bool = False) -> FastClient:
    """A paho client configured from settings (auth, TLS with CA verification on by default)."""
    version = MQTTProtocolVersion(protocol)
    if version == mqtt.MQTTv5:
        client = FastClient(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
                            manual_ack=manual_ack)
    else:
        client = FastClient(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
                            manual_ack=manual_ack, clean_session=False)
    if settings.username:
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
    if parse_url(settings.url).tls:
        client.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None,
                       certfile=str(settings.cert_file) if settings.cert_file else None,
                       keyfile=str(settings.key_file) if settings.key_file else None,
                       cert_reqs=ssl.CERT_REQUIRED)
        if settings.tls_insecure:
            client.tls_insecure_set(True)
    client.reconnect_delay_set(max(1, int(settings.reconnect_min_s)), max(1, int(settings.reconnect_max_s)))
    return client


class Collector:
    """Subscribes to `<prefix>/#` and puts every message, good or bad, into the hand-off."""

    def __init__(self, settings: MqttSettings, handoff: Handoff[Message], protocol: int = mqtt.MQTTv5) -> None:
        self.settings = settings
        self.handoff = handoff
        self.protocol = protocol
        self.address = parse_url(settings.url)
        self.client = make_client(settings, settings.client_id, protocol, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish_fields = self._on_publish_fields
        self.generation = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.connects = 0
        self.disconnects = 0
        self.stopping = False
        self.started = False
        self.received = 0

    def start(self) -> None:
        props = None
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.settings.session_expiry_s
            props.ReceiveMaximum = self.settings.receive_maximum
            if self.settings.max_packet_bytes:
                props.MaximumPacketSize = self.settings.max_packet_bytes
        if self.protocol == mqtt.MQTTv5:
            self.client.connect_async(self.address.host, self.address.port, self.settings.keepalive_s,
                                      clean_start=False, properties=props)
        else:
            self.client.connect_async(self.address.host, self.address.port, self.settings.keepalive_s)
        self.client.loop_start()
        self.started = True

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return self.connected.wait(timeout) and self.subscribed.wait(max(0.0, deadline - time.monotonic()))

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                    properties: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("MQTT connect to %s:%s refused: %s", self.address.host, self.address.port, reason)
            return
        self.generation += 1
        self.connects += 1
        log.info("MQTT connected to %s:%s (session present: %s)", self.address.host, self.address.port,
                 getattr(flags, "session_present", None))
        client.subscribe(f"{self.settings.topic_prefix}/#", qos=self.settings.qos)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                       properties: object) -> None:
        self.connected.clear()
        self.disconnects += 1
        if self.stopping:
            log.info("MQTT disconnected")
        else:
            log.warning("MQTT disconnected (%s); reconnecting with backoff", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
        payload = cast(bytes, msg.payload)  # paho gives bytes (typed bytes | bytearray)
        self.handoff.put(Message(self.generation, msg.mid, msg.qos, topic, payload, time.time()))

    def _on_publish_fields(self, qos: int, mid: int, topic: bytes, payload: bytes) -> None:
        """The fast path of `_on_message` (FastClient): the same Message, without paho's MQTTMessage."""
        self.received += 1
        self.handoff.put(Message(self.generation, mid, qos, topic.decode("utf-8", "replace"), payload, time.time()))

    def ack(self, messages: list[Message]) -> None:
        """Acknowledge committed messages of the current connection (older ones are redelivered)."""
        generation = self.generation
        for m in messages:
            if m.qos > 0 and m.generation == generation:
                self.client.ack(m.mid, m.qos)

    def alive(self) -> bool:
        """paho's network thread still runs once started (it ends if a callback raises; paho then
        sets it to None)."""
        thread = getattr(self.client, "_thread", None)
        return self.stopping or not self.started or (thread is not None and thread.is_alive())

    def stop(self) -> None:
        self.stopping = True
        self.handoff.close()
        self.client.disconnect()
        self.client.loop_stop()


PACKET_HEADROOM = 4096  # topic, properties and MQTT headers around the largest payload we accept


def with_packet_limit(settings: MqttSettings, max_payload_bytes: int) -> MqttSettings:
    """Settings with max_packet_bytes resolved: unset means max_payload_bytes plus headroom, so
    every payload we would process fits and everything far larger stays at the broker."""
    if settings.max_packet_bytes is not None:
        return settings
    return settings.model_copy(update={"max_packet_bytes": max_payload_bytes + PACKET_HEADROOM})
