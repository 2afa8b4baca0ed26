"""The MQTT collector in a child process, so paho's per-message work runs on another core.

paho-mqtt decodes every packet in Python (tens of microseconds a message); in the runner's
process that competes with the pipeline for the GIL. Here the child owns the MQTT connection
and ships messages to the parent in batches over a pipe (msgpack); the parent sends back the
ids to acknowledge once it has committed them. Backpressure runs the whole way: a full hand-off
stops the parent's reader, the pipe fills, the child's sender blocks, and once the child's own
bounded buffer is full its paho thread stops reading the socket, so the broker holds the backlog.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import threading
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from citywatch.config import MqttSettings
from citywatch.ingest.collector import Collector, Message
from citywatch.ingest.handoff import Handoff

log = logging.getLogger(__name__)

BATCH_MAX = 1000
BATCH_WAIT_S = 0.002


class _Buffer:
    """The child's bounded list of received messages, filled by paho, emptied by the sender."""

    def __init__(self, maxsize: int) -> None:
        self.items: list[tuple[Any, ...]] = []
        self.cond = threading.Condition()
        self.maxsize = maxsize

    def put(self, item: tuple[Any, ...]) -> None:
        with self.cond:
            while len(self.items) >= self.maxsize:
                self.cond.wait(0.5)
            self.items.append(item)
            if len(self.items) == 1 or len(self.items) >= BATCH_MAX:
                self.cond.notify_all()

    def take(self) -> list[tuple[Any, ...]]:
        with self.cond:
            if not self.items:
                self.cond.wait(0.5)
            if self.items and len(self.items) < BATCH_MAX:
                self.cond.wait(BATCH_WAIT_S)  # let a burst gather into one batch
            batch, self.items = self.items, []
            self.cond.notify_all()
            return batch


class _ChildHandoff:
    """What the thread collector's paho callback puts into, in the child."""

    def __init__(self, buffer: _Buffer) -> None:
        self.buffer = buffer
        self.blocked_s = 0.0

    def put(self, m: Message) -> None:
        self.buffer.put(tuple(m))

    def close(self) -> None:
        pass


def _child(settings: MqttSettings, protocol: int, data: Connection, control: Connection, maxsize: int) -> None:
    buffer = _Buffer(maxsize)
    collector = Collector(settings, _ChildHandoff(buffer), protocol)  # type: ignore[arg-type]
    stopping = threading.Event()
    encode = msgspec.msgpack.Encoder().encode

    def send() -> None:
        while not stopping.is_set():
            batch = buffer.take()
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


class ProcessCollector:
    """Same surface as `Collector` for the runner: start, wait_connected, ack, stop, counters."""

    def __init__(self, settings: MqttSettings, handoff: Handoff[Message], protocol: int) -> None:
        self.settings = settings
        self.handoff = handoff
        self.protocol = protocol
        ctx = mp.get_context("spawn")
        self._data_parent, data_child = ctx.Pipe(duplex=False)
        control_child, self._control = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, name="citywatch-collector", daemon=True,
                                 # pickled, not dumped as JSON: a JSON dump would mask the password
                                 args=(settings, protocol, data_child,
                                       control_child, settings.queue_size))
        self._send_lock = threading.Lock()
        self.connected = threading.Event()
        self.connects = 0
        self.received = 0
        self.generation = 0
        self.stopping = False
        self._reader = threading.Thread(target=self._read, name="collector-reader", daemon=True)

    def start(self) -> None:
        self._proc.start()
        self._reader.start()

    def _read(self) -> None:
        decode = msgspec.msgpack.Decoder().decode
        while True:
            try:
                raw = self._data_parent.recv_bytes()
            except (EOFError, OSError):
                break
            (connected, connects, received, generation), batch = decode(raw)
            self.connects, self.received, self.generation = connects, received, generation
            if connected:
                self.connected.set()
            else:
                self.connected.clear()
            if batch:
                self.handoff.put_many([Message(*item) for item in batch])

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def ack(self, messages: list[Message]) -> None:
        acks = [(m.mid, m.qos) for m in messages if m.qos > 0]
        if acks:
            generations = {m.generation for m in messages}
            with self._send_lock:
                for generation in generations:
                    self._control.send(("ack", generation, [(m.mid, m.qos) for m in messages
                                                            if m.qos > 0 and m.generation == generation]))

    def stop(self) -> None:
        self.stopping = True
        self.handoff.close()
        with self._send_lock, contextlib.suppress(BrokenPipeError, OSError):
            self._control.send(("stop",))
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._data_parent.close()
        self._reader.join(5)
