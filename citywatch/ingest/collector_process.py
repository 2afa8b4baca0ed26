"""The MQTT collector in a child process, so paho's per-message work runs on another core.

paho-mqtt decodes every packet in Python (tens of microseconds a message); in the runner's
process that competes with the pipeline for the GIL. Here the child owns the MQTT connection
and ships messages to the parent in batches over a pipe (msgpack); the parent sends back the
ids to acknowledge once it has committed them. Backpressure runs the whole way: a full hand-off
stops the parent's reader, the pipe fills, the child's sender blocks, and once the child's own
bounded buffer (messages and bytes) is full its paho thread stops reading the socket, so the
broker holds the backlog.

The child is supervised: if it dies (SIGKILL, OOM kill, a crash) the parent sees its process
sentinel, logs the gap, counts it and starts a new child with backoff (mqtt.reconnect_min_s
doubling to reconnect_max_s). Each child is an epoch: messages carry `epoch << 32 | connection`
as their generation, and acks of an older epoch are dropped (mids restart with each
connection, so they would acknowledge other messages). The broker redelivers what the dead child
had handed over unacknowledged (persistent session, QoS 1).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

import msgspec

from citywatch.config import MqttSettings
from citywatch.ingest.collector import Collector, Message
from citywatch.ingest.handoff import Handoff

log = logging.getLogger(__name__)

BATCH_MAX = 1000
BATCH_WAIT_S = 0.002
EPOCH_SHIFT = 32


class _Buffer:
    """The child's bounded list of received messages, filled by paho, emptied by the sender.
    Full at `maxsize` messages or `maxbytes` payload bytes, whichever first (one message always fits)."""

    def __init__(self, maxsize: int, maxbytes: int = 0) -> None:
        self.items: list[tuple[Any, ...]] = []
        self.cond = threading.Condition()
        self.maxsize = maxsize
        self.maxbytes = maxbytes
        self.nbytes = 0

    def _full(self) -> bool:
        return len(self.items) >= self.maxsize or (self.maxbytes > 0 and self.nbytes >= self.maxbytes)

    def put(self, item: tuple[Any, ...], size: int = 0) -> None:
        with self.cond:
            while self._full():
                self.cond.wait(0.5)
            self.items.append(item)
            self.nbytes += size
            if len(self.items) == 1 or len(self.items) >= BATCH_MAX:
                self.cond.notify_all()

    def take(self) -> list[tuple[Any, ...]]:
        with self.cond:
            if not self.items:
                self.cond.wait(0.5)
            if self.items and len(self.items) < BATCH_MAX and not self._full():
                self.cond.wait(BATCH_WAIT_S)  # let a burst gather into one batch
            batch, self.items = self.items, []
            self.nbytes = 0
            self.cond.notify_all()
            return batch


class _ChildHandoff:
    """What the thread collector's paho callback puts into, in the child."""

    def __init__(self, buffer: _Buffer) -> None:
        self.buffer = buffer
        self.blocked_s = 0.0

    def put(self, m: Message) -> None:
        self.buffer.put(tuple(m), len(m.payload) + len(m.topic))

    def close(self) -> None:
        pass


def _child(settings: MqttSettings, protocol: int, data: Connection, control: Connection, maxsize: int,
           maxbytes: int = 0) -> None:
    buffer = _Buffer(maxsize, maxbytes)
    collector = Collector(settings, _ChildHandoff(buffer), protocol)  # type: ignore[arg-type]
    stopping = threading.Event()
    encode = msgspec.msgpack.Encoder().encode

    def send() -> None:
        while not stopping.is_set():
            batch = buffer.take()
            if not collector.alive():  # paho's thread died: end this process, the parent restarts it
                log.error("MQTT collector: paho's network thread died; exiting for a restart")
                os._exit(3)
            ready = collector.connected.is_set() and collector.subscribed.is_set()
            status = (ready, collector.connects, collector.received, collector.generation)
            try:
                data.send_bytes(encode((status, batch)))
            except (BrokenPipeError, OSError):
                stopping.set()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    collector.start()
    while True:
        try:
            command = control.recv()
        except (EOFError, OSError):
            break
        if command[0] == "ack":
            generation, acks = command[1], command[2]
            if generation == collector.generation:
                for mid, qos in acks:
                    collector.client.ack(mid, qos)
        elif command[0] == "stop":
            break
    stopping.set()
    collector.stop()


class _Child:
    """One child process and the parent's ends of its two pipes."""

    def __init__(self, settings: MqttSettings, protocol: int, epoch: int) -> None:
        ctx = mp.get_context("spawn")
        self.epoch = epoch
        self.data, data_child = ctx.Pipe(duplex=False)
        control_child, self.control = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_child, name="citywatch-collector", daemon=True,
                                # pickled, not dumped as JSON: a JSON dump would mask the password
                                args=(settings, protocol, data_child, control_child, settings.queue_size,
                                      settings.queue_bytes))
        self.proc.start()
        self.started = time.monotonic()
        # our copies of the child's ends: closed, so its death is EOF on our reading end
        data_child.close()
        control_child.close()
        self.connects = self.received = 0

    def close(self) -> None:
        for conn in (self.data, self.control):
            with contextlib.suppress(OSError):
                conn.close()


class ProcessCollector:
    """Same surface as `Collector` for the runner: start, wait_connected, ack, stop, alive, counters."""

    def __init__(self, settings: MqttSettings, handoff: Handoff[Message], protocol: int) -> None:
        self.settings = settings
        self.handoff = handoff
        self.protocol = protocol
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._past_connects = 0  # counters of dead children (each child counts from zero)
        self._past_received = 0
        self.generation = 0
        self.stopping = False
        self.epoch = 0
        self.restarts = 0  # children started after the first one died
        self.last_gap_s: float | None = None  # time from a child's death to its successor's connection
        self.down_since: float | None = None  # wall time the current child died (None: one is running)
        self.stale_acks = 0  # acks dropped because their child had died
        self._child: _Child | None = None
        self._died_at: float | None = None  # monotonic, for the gap
        self._supervisor = threading.Thread(target=self._supervise, name="collector-supervisor", daemon=True)

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.proc.pid if child is not None else None

    def start(self) -> None:
        self._spawn()
        self._supervisor.start()

    def alive(self) -> bool:
        """The supervisor runs (it restarts dead children); False only if it crashed itself."""
        return self.stopping or self._supervisor.is_alive()

    def _spawn(self) -> None:
        self.epoch += 1
        self._child = _Child(self.settings, self.protocol, self.epoch)

    def _supervise(self) -> None:
        """Read the current child until it dies; then count, log and start another with backoff."""
        delay = self.settings.reconnect_min_s
        while True:
            child = self._child
            assert child is not None
            self._read(child)
            child.proc.join(5)
            if self._stop.is_set():
                return
            self.connected.clear()
            lived = time.monotonic() - child.started
            if lived > self.settings.reconnect_max_s:
                delay = self.settings.reconnect_min_s  # it had been up a while: not a crash loop
            self._died_at = time.monotonic()
            self.down_since = time.time()
            self._past_connects += child.connects
            self._past_received += child.received
            child.connects = child.received = 0  # now counted in the past totals
            child.close()
            log.warning("MQTT collector process (pid %s) died (exit code %s) after %.1f s; no messages are "
                        "received until it is back: restarting it in %.1f s", child.proc.pid, child.proc.exitcode,
                        lived, delay)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.settings.reconnect_max_s)
            with self._send_lock:
                if self._stop.is_set():
                    return
                self._spawn()
            self.restarts += 1

    def _read(self, child: _Child) -> None:
        """Batches from `child` into the hand-off until it dies (EOF on its pipe, or its sentinel)."""
        decode = msgspec.msgpack.Decoder().decode
        shift = child.epoch << EPOCH_SHIFT
        while True:
            try:
                ready = wait([child.data, child.proc.sentinel], timeout=1.0)
                if not ready or child.data not in ready:
                    if child.proc.sentinel in ready or not child.proc.is_alive():
                        return
                    continue
                raw = child.data.recv_bytes()
            except (EOFError, OSError):
                return
            (connected, connects, received, generation), batch = decode(raw)
            child.connects, child.received = connects, received
            self.generation = shift | generation
            if connected and child is self._child:
                if self._died_at is not None:
                    self.last_gap_s = round(time.monotonic() - self._died_at, 3)
                    log.warning("MQTT collector process back (pid %s) after a gap of %.1f s (restart %d)",
                                child.proc.pid, self.last_gap_s, self.restarts)
                    self._died_at = None
                    self.down_since = None
                self.connected.set()
            else:
                self.connected.clear()
            if batch:
                self.handoff.put_many([Message(shift | item[0], *item[1:]) for item in batch])

    @property
    def connects(self) -> int:
        child = self._child
        return self._past_connects + (child.connects if child is not None else 0)

    @property
    def received(self) -> int:
        child = self._child
        return self._past_received + (child.received if child is not None else 0)

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def ack(self, messages: list[Message]) -> None:
        """Send the acks of committed messages to the child that received them; drop those of a dead child."""
        acks = [m for m in messages if m.qos > 0]
        if not acks:
            return
        with self._send_lock:
            child = self._child
            if child is None:
                return
            by_generation: dict[int, list[tuple[int, int]]] = {}
            for m in acks:
                if m.generation >> EPOCH_SHIFT != child.epoch:
                    self.stale_acks += 1  # the broker redelivers these to the new child
                    continue
                by_generation.setdefault(m.generation & ((1 << EPOCH_SHIFT) - 1), []).append((m.mid, m.qos))
            for generation, pairs in by_generation.items():
                try:
                    child.control.send(("ack", generation, pairs))
                except (BrokenPipeError, OSError):
                    self.stale_acks += len(pairs)  # died meanwhile: redelivered to its successor

    def stop(self) -> None:
        self.stopping = True
        self._stop.set()
        self.handoff.close()
        with self._send_lock:
            child = self._child
        if child is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                child.control.send(("stop",))
            child.proc.join(10)
            if child.proc.is_alive():
                child.proc.terminate()
                child.proc.join(5)
        if self._supervisor.is_alive():
            self._supervisor.join(5)
        if child is not None:
            child.close()
