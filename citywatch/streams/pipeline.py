"""The pipeline core: topic + bytes in; readings, alert transitions and dead letters out.

Plain Python with no MQTT, Kafka or HTTP import. The embedded runner and the Faust runner both
call `process` per message and `tick` on their clock, then commit the `Output` to their sinks and
the records of the devices it touched (`take_dirty`, `encode`: one stored form, record.py).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import msgspec

from citywatch.config import Settings
from citywatch.detectors.base import Rule, verdict
from citywatch.detectors.deadman import Deadman
from citywatch.detectors.flooding import FLOODING_RULE, FloodWatch
from citywatch.detectors.health import LAST_WILL, OFFLINE_RULE, offline_finding
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.detectors.record import DeviceRecord, RecordCodec, stored_header
from citywatch.detectors.registry import FAULT_RULES, build_rules
from citywatch.errors import DeadLetterReason, InvalidMessage
from citywatch.ingest.schemas import DECODERS, KIND_FIELDS, epoch_seconds, parse_status, parse_telemetry
from citywatch.ingest.topics import check_device_id, split_topic
from citywatch.model import DeadLetter, Device, Finding, Output, Reading

DEAD_LETTER_PAYLOAD_LIMIT: Final = 2048
log = logging.getLogger(__name__)


# A district's power cut silences tens of thousands of devices at once: declare them offline this many a
# tick (the rest on the next ticks, oldest first), so one tick's transaction and webhooks stay bounded and
# the loop keeps turning (and answering /health) meanwhile.
OFFLINE_PER_TICK: Final = 5000
SEQ_WINDOW: Final = 64  # how far back a late message can still be told from a duplicate


def check_seq(record: DeviceRecord, seq: int, ts: float, last_ts: float) -> None:
    """Accept each seq once. A sliding window of the last SEQ_WINDOW seqs (one int bitmap in the
    device record, like IPsec's anti-replay window) tells a late first delivery (accepted) from a
    redelivery (duplicate). A lower seq with a newer ts is a device that restarted its counter."""
    top = record.seq  # -1: none yet
    if top < 0 or seq > top:
        shift = seq - top if top >= 0 else SEQ_WINDOW
        mask = record.seqmask
        record.seqmask = ((mask << shift) | 1) & ((1 << SEQ_WINDOW) - 1) if shift < SEQ_WINDOW else 1
        record.seq = seq
        return
    if ts > last_ts and seq < top:  # False while last_ts is UNSET
        record.seq, record.seqmask = seq, 1  # counter reset (reboot)
        return
    back = top - seq
    if back >= SEQ_WINDOW:
        raise InvalidMessage("out_of_order", f"seq {seq} is {back} behind {top}: too old to tell from a repeat",
                             "seq")
    mask = record.seqmask
    if mask >> back & 1:
        raise InvalidMessage("duplicate", f"seq {seq} was already processed", "seq")
    record.seqmask = mask | 1 << back


def read_telemetry(kind: str, device_id: str, payload: bytes, received_at: float, max_future_skew_s: float,
                   min_ts: float) -> Reading:
    """`parse_telemetry`, compiled for the message it accepts (it runs interpreted: schemas.py holds
    msgspec Structs). Anything this does not accept outright goes to `parse_telemetry`, which says
    why it is refused: the reasons have one definition, and this path can only be stricter."""
    try:
        decoded = DECODERS[kind].decode(payload)
    except Exception:
        return parse_telemetry(kind, device_id, payload, received_at, max_future_skew_s, min_ts)
    raw_ts = decoded.ts
    ts = (raw_ts / 1000.0 if raw_ts > 1e11 else raw_ts) if isinstance(raw_ts, float) else epoch_seconds(raw_ts)
    payload_id, payload_kind = decoded.device_id, decoded.kind
    if ((payload_id is not None and payload_id != device_id) or (payload_kind is not None and payload_kind != kind)
            or not math.isfinite(ts) or ts < min_ts or ts > received_at + max_future_skew_s):
        return parse_telemetry(kind, device_id, payload, received_at, max_future_skew_s, min_ts)
    values: dict[str, Any] = {}
    for name in KIND_FIELDS[kind]:
        value = getattr(decoded, name)
        if value is not None:
            values[name] = value
    return Reading(device_id, kind, ts, received_at, values, decoded.seq, decoded.battery, decoded.rssi)


class DeviceLookup(Protocol):
    def get(self, device_id: str) -> Device | None: ...


class Pipeline:
    """Parse, validate, enrich, detect, fold into alerts. One record per device (`records`); `stored`
    gives the records as a store kept them (any stored format: record.py migrates older ones). A
    stored record is decoded at the device's first message, so a restart (a Faust worker taking
    partitions over) reads only the headers the offline timers need."""

    def __init__(
        self,
        settings: Settings,
        devices: DeviceLookup,
        alerts: AlertEngine,
        stored: Mapping[str, Any] | None = None,
        started_at: float = 0.0,
        rules: dict[str, list[Rule]] | None = None,
    ) -> None:
        self.settings = settings
        self.devices = devices
        self.alerts = alerts
        self.dirty: set[str] = set()
        self.rules = rules if rules is not None else build_rules(settings)
        self.codec = RecordCodec(self.rules)
        self.records: dict[str, DeviceRecord] = {}
        self.stored: dict[str, Any] = {}  # device -> stored record not decoded yet
        self.prefix = settings.mqtt.topic_prefix
        self.max_payload = settings.ingest.max_payload_bytes
        self.max_skew = settings.ingest.max_future_skew_s
        self.min_ts = settings.ingest.min_timestamp.timestamp()
        self.offline_intervals = settings.rules.health.offline_intervals
        self.clock_lead = settings.ingest.clock_lead_tolerance_s
        self.flood_watch = FloodWatch(settings.ingest.flood_dead_letters_per_min)
        self.counters: Counter[str] = Counter()
        self.deadman = Deadman(grace_from=started_at)
        for device_id, raw in (stored or {}).items():
            if devices.get(device_id) is None:
                continue  # removed from the registry: its record goes with it
            self.stored[device_id] = raw
            header = stored_header(raw)
            seen = max(header["seen"] or 0.0, header["online_at"] or 0.0)
            timeout = header["timeout"]
            if seen > 0.0 and timeout is not None and not self.alerts.is_open(device_id, OFFLINE_RULE):
                self.deadman.seen(device_id, timeout, seen)

    # -- messages ---------------------------------------------------------------------------

    def process(self, topic: str, payload: bytes, received_at: float, out: Output) -> float:
        """Process one message; a bad one becomes a dead letter, never an exception. Returns the
        reading's score: the highest of its learned rules' scores (0.5 at their alert threshold)."""
        self.counters["received"] += 1
        device: Device | None = None
        try:
            kind, device_id, channel = split_topic(topic, self.prefix)
            device = self.devices.get(device_id)
            if device is None:
                check_device_id(device_id)  # a registered id was checked when it was registered
            if len(payload) > self.max_payload:
                raise InvalidMessage("payload_too_large", f"{len(payload)} bytes > {self.max_payload}")
            if device is None:
                raise InvalidMessage("unknown_device", f"device {device_id} is not registered", "device_id")
            if not device.enabled:
                raise InvalidMessage("device_disabled", f"device {device_id} is disabled", "device_id")
            if device.kind != kind:
                raise InvalidMessage("kind_mismatch", f"device {device_id} is registered as {device.kind}", "kind")
            if channel == "status":
                self._status(device, parse_status(payload), received_at, out)
            else:
                reading = read_telemetry(kind, device_id, payload, received_at, self.max_skew, self.min_ts)
                return self._reading(reading, device, out)
        except InvalidMessage as exc:
            self._dead_letter(topic, payload, exc.reason, exc.detail, received_at, out, exc.field)
            if device is not None and device.enabled:
                self._flood(device, received_at, out)
        except Exception as exc:  # a bug of ours must not stop the stream: keep the message, say why
            log.exception("internal error processing a message on %s", topic[:200])
            self._dead_letter(topic, payload, "internal_error", f"{type(exc).__name__}: {exc}", received_at, out)
        return 0.0

    def _flood(self, device: Device, received_at: float, out: Output) -> None:
        finding = self.flood_watch.dead_letter(device.id, received_at)
        if finding is not None:
            self._apply(device, finding, received_at, out)

    def _dead_letter(self, topic: str, payload: bytes, reason: DeadLetterReason, detail: str, received_at: float,
                     out: Output, field: str | None = None) -> None:
        self.counters["dead_letters"] += 1
        self.counters["dead_letter." + reason] += 1
        out.dead_letters.append(DeadLetter(topic[:512], payload[:DEAD_LETTER_PAYLOAD_LIMIT], reason,
                                           detail[:500], received_at, len(payload),
                                           field[:64] if field else None))

    def record(self, device: Device) -> DeviceRecord:
        """The device's record, a fresh one for a device never seen."""
        record = self.records.get(device.id)
        if record is None:
            raw = self.stored.pop(device.id, None)
            record = self.codec.fresh(device.kind) if raw is None else self.codec.decode(raw, device.kind)
            self.records[device.id] = record
        return record

    def _reading(self, reading: Reading, device: Device, out: Output) -> float:
        device_id = reading.device_id
        record = self.record(device)
        ts, received_at = reading.ts, reading.received_at  # read once: Reading is not a compiled class
        if ts > received_at + self.clock_lead:
            # A fast device clock: processed at arrival, so it cannot make later readings look late.
            reading = msgspec.structs.replace(reading, ts=received_at)
            ts = received_at
            self.counters["clock_ahead"] += 1
        last_ts = record.ts
        seq = reading.seq
        if seq is not None:
            check_seq(record, seq, ts, last_ts)
        self.counters["processed"] += 1
        record.count += 1  # readings accepted from this device, ever
        self.dirty.add(device_id)
        out.accepted.append((reading, device))
        timeout = device.interval_s * self.offline_intervals
        if ts >= received_at - timeout:  # backfill does not prove the device is alive
            self._alive(device, record, timeout, received_at, ts, out)
        late = ts < last_ts  # False while last_ts is UNSET
        if late:
            self.counters["late"] += 1
        score = self._evaluate(reading, device, record, late, out)
        if not late:
            record.ts = ts
        return score

    def _evaluate(self, reading: Reading, device: Device, record: DeviceRecord, late: bool, out: Output) -> float:
        """Every rule sees the reading (late ones: all but the in-order-only learned series). Fault
        rules run first: an alarm on the same reading is marked suspect, never withheld (fail safe).
        A late reading may open or raise an alert; only readings in order clear one. Returns the
        highest score of the learned (in-order-only) rules."""
        engaged = self.alerts.engaged
        device_id = device.id
        suspect = ""
        states = record.states
        top = 0.0
        for i, rule in enumerate(self.rules[reading.kind]):
            if rule.in_order_only:
                if late:
                    continue
                finding, score = verdict(rule, reading, device, record, states[i])
                if score > top:
                    top = score
            else:
                finding = verdict(rule, reading, device, record, states[i])[0]
            if finding is None:
                continue
            if finding.active:
                if finding.rule in FAULT_RULES:
                    suspect = finding.message
                elif suspect:
                    finding = msgspec.structs.replace(finding, suspect=suspect)
                self._apply(device, finding, reading.ts, out)
            elif not late and device_id in engaged:
                self._apply(device, finding, reading.ts, out)
        return top

    def _alive(self, device: Device, record: DeviceRecord, timeout: float, received_at: float, at: float,
               out: Output) -> None:
        """The device proved it is alive at `received_at`: re-arm its offline timer from then."""
        device_id = device.id
        record.seen = received_at
        record.timeout = timeout
        self.deadman.seen(device_id, timeout, received_at)
        if device_id in self.alerts.engaged and self.alerts.is_open(device_id, OFFLINE_RULE):
            self._apply(device, offline_finding(False, "reporting again"), at, out)

    def _apply(self, device: Device, finding: Finding, at: float, out: Output) -> None:
        transition = self.alerts.apply(device, finding, at)
        if transition is not None:
            self.counters["transitions." + transition.transition] += 1
            out.transitions.append(transition)

    def _status(self, device: Device, status: str, received_at: float, out: Output) -> None:
        """`offline` (the last will) opens device_offline at once. `online` re-arms the offline timer
        from now, as one reading would, and resolves an offline alert the last will opened; an alert
        opened by silence waits for data. `online` never counts as data beyond one timeout."""
        self.counters["processed"] += 1
        self.counters["status." + status] += 1
        out.statuses.append((device, status, received_at))
        if status == "offline":
            self.deadman.forget(device.id)
            self._apply(device, offline_finding(True, "device announced offline (last will)", last_will=True),
                        received_at, out)
            return
        record = self.record(device)
        self.dirty.add(device.id)
        record.online_at = received_at  # not `seen`: that is the last data (devices check reads it)
        record.timeout = timeout = device.interval_s * self.offline_intervals
        self.deadman.seen(device.id, timeout, received_at)
        alert = self.alerts.by_key.get((device.id, OFFLINE_RULE))
        if alert is not None and alert.value == LAST_WILL:
            self._apply(device, offline_finding(False, "device announced online"), received_at, out)

    # -- clock ------------------------------------------------------------------------------

    def tick(self, now: float, out: Output, silence_as_of: float | None = None) -> None:
        """Time-driven work: devices gone silent, alert deadlines passed. Silence is judged as of
        `silence_as_of` (default `now`): the runner passes the last moment it had no backlog, so
        readings still queued never count as silence (streams/sight.py)."""
        as_of = now if silence_as_of is None else min(now, silence_as_of)
        for declared, (device_id, silent, timeout) in enumerate(self.deadman.overdue(as_of), 1):
            device = self.devices.get(device_id)
            if device is not None and device.enabled:
                finding = offline_finding(True, f"no data for {silent:.0f} s (expected every {device.interval_s:g} s)",
                                          silent, timeout)
                self._apply(device, finding, now, out)
            if declared >= OFFLINE_PER_TICK:
                break  # after this one: `overdue` takes a device off its queue only as it yields it
        for device_id in self.flood_watch.quiet(now):
            device = self.devices.get(device_id)
            if device is not None and self.alerts.is_open(device_id, FLOODING_RULE):
                self._apply(device, Finding(FLOODING_RULE, False), now, out)
        for transition in self.alerts.tick(now):
            self.counters["transitions." + transition.transition] += 1
            out.transitions.append(transition)

    def take_dirty(self) -> set[str]:
        """Devices whose record changed since the last call."""
        dirty = self.dirty
        self.dirty = set()
        return dirty

    def encode(self, device_id: str) -> bytes | None:
        """The device's record in its stored form (None: no record)."""
        record = self.records.get(device_id)
        if record is not None:
            return self.codec.encode(record)
        raw = self.stored.get(device_id)
        if raw is None:
            return None
        if isinstance(raw, bytes):
            return raw  # not decoded yet: as it was stored
        device = self.devices.get(device_id)  # an older format: migrated when written back
        return self.codec.encode(self.record(device)) if device is not None else None


Clock = Callable[[], float]
