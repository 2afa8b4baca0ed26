"""Publishing telemetry to an MQTT broker: one paho-mqtt client for many devices, optionally
rate-limited, waiting for every acknowledgement (used by `citywatch simulate`, the demo and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from citywatch.ingest.topics import status_topic
from citywatch.model import Device

__all__ = ["publish", "publish_sync"]


# -- publishing ------------------------------------------------------------------------------------


class _Stopped(Exception):
    """The async caller was cancelled."""


def _parse_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"broker url {url!r}: expected mqtt://host:port or mqtts://host:port")
    tls = parts.scheme in ("mqtts", "ssl")
    port = parts.port or (8883 if tls else 1883)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname or "127.0.0.1", port, tls, username, password


class _Acks:
    """Connection state and acknowledgement counts, updated by paho's network thread."""

    def __init__(self, stop: threading.Event) -> None:
        self.cond = threading.Condition()
        self.stop = stop
        self.connect_result: Any = None
        self.done = 0
        self.failed = 0

    def on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self.cond:
            self.connect_result = reason_code
            self.cond.notify_all()

    def on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self.cond:
            if getattr(reason_code, "is_failure", False):
                self.failed += 1
            else:
                self.done += 1
            self.cond.notify_all()

    def lost(self) -> None:
        with self.cond:
            self.failed += 1

    def _wait(self, ready: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> None:
        """Wait until `ready()`; time out only after `timeout_s` without progress."""
        with self.cond:
            progress = (self.done, self.failed)
            deadline = time.monotonic() + timeout_s
            while not ready():
                if self.stop.is_set():
                    raise _Stopped
                if (self.done, self.failed) != progress:
                    progress = (self.done, self.failed)
                    deadline = time.monotonic() + timeout_s
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(what())
                self.cond.wait(min(remaining, 0.2))

    def wait_connected(self, timeout_s: float, where: str) -> None:
        self._wait(lambda: self.connect_result is not None, timeout_s,
                   lambda: f"no CONNACK from {where} within {timeout_s:g} s")
        if getattr(self.connect_result, "is_failure", False):
            raise ConnectionError(f"{where} refused the connection: {self.connect_result}")

    def wait_below(self, sent: int, limit: int, timeout_s: float) -> None:
        self._wait(lambda: sent - self.done - self.failed < limit, timeout_s,
                   lambda: f"{sent - self.done - self.failed} publishes unacknowledged for {timeout_s:g} s")


def _pause(seconds: float, stop: threading.Event) -> None:
    if seconds > 0 and stop.wait(seconds):
        raise _Stopped


def _publish_blocking(url: str, messages: Iterable[Sequence[Any]], qos: int, rate: float | None,
                      client_id: str | None, username: str | None, password: str | None, *,
                      online: Iterable[Device], topic_prefix: str, retain: bool, realtime: bool,
                      timeout_s: float, max_pending: int, keepalive: int, ca_file: str | None,
                      tls_insecure: bool, stop: threading.Event) -> int:
    if qos not in (0, 1, 2):
        raise ValueError("qos must be 0, 1 or 2")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive (messages per second)")
    host, port, tls, url_user, url_password = _parse_url(url)
    username = username if username is not None else url_user
    password = password if password is not None else url_password
    where = f"broker {host}:{port}"
    acks = _Acks(stop)
    client = mqtt.Client(CallbackAPIVersion.VERSION2,
                         client_id=client_id or f"citywatch-sim-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv311, clean_session=True)
    client.on_connect = acks.on_connect
    client.on_publish = acks.on_publish
    client.max_inflight_messages_set(max(1, min(max_pending, 1000)))
    client.max_queued_messages_set(0)
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set(ca_certs=ca_file)
        if tls_insecure:
            client.tls_insecure_set(True)
    try:
        client.connect(host, port, keepalive)
    except OSError as exc:
        raise ConnectionError(f"cannot connect to {where}: {exc}") from exc
    client.loop_start()
    try:
        acks.wait_connected(timeout_s, where)
        statuses = ((status_topic(d.kind, d.id, topic_prefix), b"online", None, True) for d in online)
        items = ((m[0], m[1], m[2] if len(m) > 2 else None, retain) for m in messages)
        sent = 0
        started = time.monotonic()
        for topic, payload, ts, keep in _chain(statuses, items):
            if stop.is_set():
                raise _Stopped
            if rate is not None:
                _pause(started + sent / rate - time.monotonic(), stop)
            if realtime and ts is not None:
                _pause(ts - time.time(), stop)
            if sent - acks.done - acks.failed >= max_pending:
                acks.wait_below(sent, max_pending, timeout_s)
            info = client.publish(topic, payload, qos=qos, retain=keep)
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0 or info.rc not in (
                    MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                acks.lost()  # QoS 0 while disconnected is dropped; QoS > 0 is queued and resent
            sent += 1
        acks.wait_below(sent, 1, timeout_s)
        return acks.done
    finally:
        client.disconnect()
        client.loop_stop()


def _chain(*iterables: Iterable[Any]) -> Iterator[Any]:
    for iterable in iterables:
        yield from iterable


def publish_sync(url: str, messages: Iterable[Sequence[Any]], qos: int = 1, rate: float | None = None,
                 client_id: str | None = None, username: str | None = None, password: str | None = None, *,
                 online: Iterable[Device] = (), topic_prefix: str = "citywatch", retain: bool = False,
                 realtime: bool = False, timeout_s: float = 30.0, max_pending: int = 1000,
                 keepalive: int = 60, ca_file: str | None = None, tls_insecure: bool = False) -> int:
    """Publish (topic, payload[, event_ts]) items with one client and wait for every acknowledgement.

    `url` is mqtt://[user:pass@]host:port or mqtts://...; `rate` caps messages per second;
    `online` devices first get a retained `online` on their status topic; `realtime` holds each
    item until the wall clock reaches its event ts. Returns how many were acknowledged (QoS 0:
    written to the socket). Raises ConnectionError if the broker cannot be reached or refuses us,
    TimeoutError if acknowledgements stop coming for `timeout_s`."""
    return _publish_blocking(url, messages, qos, rate, client_id, username, password, online=online,
                             topic_prefix=topic_prefix, retain=retain, realtime=realtime, timeout_s=timeout_s,
                             max_pending=max_pending, keepalive=keepalive, ca_file=ca_file,
                             tls_insecure=tls_insecure, stop=threading.Event())


async def publish(url: str, messages: Iterable[Sequence[Any]], qos: int = 1, rate: float | None = None,
                  client_id: str | None = None, username: str | None = None, password: str | None = None,
                  **options: Any) -> int:
    """`publish_sync` in a worker thread, so the event loop (maybe running the broker) stays free.
    Cancelling stops publishing promptly and disconnects."""
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    call = functools.partial(
        _publish_blocking, url, messages, qos, rate, client_id, username, password,
        online=options.pop("online", ()), topic_prefix=options.pop("topic_prefix", "citywatch"),
        retain=options.pop("retain", False), realtime=options.pop("realtime", False),
        timeout_s=options.pop("timeout_s", 30.0), max_pending=options.pop("max_pending", 1000),
        keepalive=options.pop("keepalive", 60), ca_file=options.pop("ca_file", None),
        tls_insecure=options.pop("tls_insecure", False), stop=stop)
    if options:
        raise TypeError(f"publish() got unexpected options: {', '.join(sorted(options))}")
    future = loop.run_in_executor(None, call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(BaseException):
            await future
        raise
