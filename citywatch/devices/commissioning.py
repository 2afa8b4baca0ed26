"""`devices check ID`: the installer's commissioning test, at the device, before leaving the street.

Listens on the broker as the collector does (settings.mqtt credentials) for the device's next
live message, then runs it through the real pipeline (parse, validate, rules) over a copy of the
stored device state: "accepted" (with the alerts it would open) or the dead-letter reason the
running pipeline gives it. It also shows whether a running pipeline recorded it.
"""

from __future__ import annotations

import queue
import secrets
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
import paho.mqtt.client as mqtt

from citywatch.config import Settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.detectors.record import stored_seen
from citywatch.devices.registry import Registry, registry_path
from citywatch.i18n import Translator, current, local_time
from citywatch.ingest.collector import make_client, parse_url
from citywatch.labels import label
from citywatch.model import Alert, Device, Output, Reading, Transition
from citywatch.sinks.store import AlertStore, StoredRecord, store_path
from citywatch.streams.pipeline import Pipeline
from citywatch.terminal import for_terminal

CONFIRM_S = 3.0  # how long to wait for a running pipeline to record the message


class Heard(NamedTuple):
    topic: str
    payload: bytes
    retain: bool
    received_at: float


class CheckResult(msgspec.Struct, kw_only=True):
    """What `check` found; `outcome` is accepted | dead_letter | no_message | broker_refused."""

    device: Device
    outcome: str
    reason: str = ""
    detail: str = ""
    message: Heard | None = None
    reading: Reading | None = None
    battery: float | None = None
    rssi: float | None = None
    statuses: list[str] = []  # status messages heard meanwhile ("online", "offline (retained)")
    would: list[str] = []  # alert transitions this message would cause
    would_transitions: list[Transition] = []  # the same transitions (rendered in the reader's language)
    last_seen_before: float | None = None
    last_seen: float | None = None  # as recorded by a running pipeline after the message
    open_alerts: list[Alert] = []

    @property
    def ok(self) -> bool:
        return self.outcome == "accepted"


Ready = Callable[[], None]


def _listen(settings: Settings, device: Device, heard: queue.Queue[Heard | str], on_ready: Ready | None) -> mqtt.Client:
    """A throwaway subscriber (own client id, clean session) on every topic of this device id."""
    protocol = mqtt.MQTTv311 if settings.mqtt.embedded else mqtt.MQTTv5
    client = make_client(settings.mqtt, f"{settings.mqtt.client_id}-check-{secrets.token_hex(4)}", protocol)
    topic = f"{settings.mqtt.topic_prefix}/+/{device.id}/#"

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            heard.put(f"broker refused the login of {settings.mqtt.username or 'anonymous'}: {reason}")
        else:
            c.subscribe(topic, qos=1)

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        heard.put(Heard(msg.topic, bytes(msg.payload), bool(msg.retain), time.time()))

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = lambda *args: on_ready() if on_ready is not None else None
    address = parse_url(settings.mqtt.url)
    kwargs: dict[str, Any] = {"clean_start": True} if protocol == mqtt.MQTTv5 else {}
    client.connect_async(address.host, address.port, settings.mqtt.keepalive_s, **kwargs)
    client.loop_start()
    return client


def wait_for_message(settings: Settings, device: Device, timeout: float, on_ready: Ready | None = None
                     ) -> tuple[Heard | str | None, list[str]]:
    """The device's next live, non-status message (or a broker error, or None), and statuses heard.
    `on_ready` is called once the subscription is in place: from then on nothing is missed."""
    heard: queue.Queue[Heard | str] = queue.Queue()
    statuses: list[str] = []
    client = _listen(settings, device, heard, on_ready)
    deadline = time.monotonic() + timeout
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                item = heard.get(timeout=remaining)
            except queue.Empty:
                break
            if isinstance(item, str) or not item.topic.endswith("/status"):
                if isinstance(item, str) or not item.retain:
                    return item, statuses
                continue  # a retained non-status message is old news
            text = item.payload[:32].decode("utf-8", "replace")
            statuses.append(f"{text} (retained)" if item.retain else text)
        return None, statuses
    finally:
        client.disconnect()
        client.loop_stop()


def _numbers(payload: bytes) -> tuple[float | None, float | None]:
    """Battery and rssi from a payload the pipeline rejected, when they are readable at all."""
    try:
        body = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    values = [body.get(k) for k in ("battery", "rssi")]
    ok = [v if isinstance(v, int | float) and not isinstance(v, bool) else None for v in values]
    return ok[0], ok[1]


def evaluate(settings: Settings, registry: Registry, message: Heard, state: StoredRecord | None,
             open_alerts: list[Alert], result: CheckResult) -> None:
    """Run the message through a throwaway Pipeline built like the runner's; fill `result`."""
    device_id = result.device.id
    engine = AlertEngine(settings.alerts, open_alerts)
    pipeline = Pipeline(settings, registry, engine, {device_id: state} if state else {},
                        started_at=message.received_at)
    out = Output()
    pipeline.process(message.topic, message.payload, message.received_at, out)
    result.message = message
    if out.dead_letters:
        dead = out.dead_letters[0]
        result.outcome, result.reason, result.detail = "dead_letter", dead.reason, dead.detail
        result.battery, result.rssi = _numbers(message.payload)
        return
    result.outcome = "accepted"
    if out.accepted:
        result.reading = reading = out.accepted[0][0]
        result.battery, result.rssi = reading.battery, reading.rssi
    result.would = [f"{t.transition} {t.alert.rule} ({t.alert.severity}): {t.alert.message}"
                    for t in out.transitions]
    result.would_transitions = list(out.transitions)


def _state(store: AlertStore, device_id: str) -> StoredRecord | None:
    """One device's stored record (detectors/record.py), None if it never sent anything."""
    return store.device_state(device_id)


def _stored(store: AlertStore, device_id: str) -> tuple[StoredRecord | None, list[Alert]]:
    return _state(store, device_id), [a for a in store.alerts("open") if a.device_id == device_id]


def check_device(settings: Settings, device_id: str, timeout: float, confirm_s: float = CONFIRM_S,
                 on_ready: Ready | None = None) -> CheckResult:
    """Wait up to `timeout` s for the device's next message and say what the pipeline makes of it."""
    registry = Registry(registry_path(settings.data_dir))
    store = AlertStore(store_path(settings.data_dir))
    try:
        device = registry.require(device_id)
        state, open_alerts = _stored(store, device_id)  # before listening: the runner may be faster
        result = CheckResult(device=device, outcome="no_message",
                             last_seen_before=stored_seen(state) if state is not None else None)
        message, result.statuses = wait_for_message(settings, device, timeout, on_ready)
        if isinstance(message, str):
            result.outcome, result.detail = "broker_refused", message
        elif message is not None:
            evaluate(settings, registry, message, state, open_alerts, result)
        if result.ok:
            result.last_seen = _confirm(store, device_id, result.last_seen_before, confirm_s)
        result.open_alerts = _stored(store, device_id)[1]
        return result
    finally:
        store.close()
        registry.close()


def _confirm(store: AlertStore, device_id: str, before: float | None, within_s: float) -> float | None:
    """The `seen` time a running pipeline stored after this message, if it does so in time."""
    deadline = time.monotonic() + within_s
    while True:
        state = _state(store, device_id)
        seen = stored_seen(state) if state is not None else None
        if seen is not None and (before is None or seen > before):
            return seen
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def _when(ts: float | None, t: Translator) -> str:
    """Local time in the city's zone (the configured one) with its offset."""
    return t.gettext("never") if ts is None else local_time(ts, seconds=True)


def render(r: CheckResult, t: Translator | None = None) -> str:
    """The check's report for the installer, in `t`'s language (default: the configured one)."""
    from citywatch.alert_text import alert_message

    t = t or current()
    _ = t.gettext
    d = r.device
    state = label(t, "device status", "enabled" if d.enabled else "disabled")
    lines = [_("device {id} ({kind}, {state}) {district} {grid} {address}", id=d.id, kind=label(t, "kind", d.kind),
               state=state if d.enabled else state.upper(), district=d.district, grid=d.grid, address=d.address)]
    lines.append(_("last seen before the check: {time}", time=_when(r.last_seen_before, t)))
    lines += [_("status: {status}", status=s) for s in r.statuses]
    if r.outcome == "broker_refused":
        lines.append(_("FAILED: {detail}", detail=r.detail))
    elif r.message is None:
        lines.append(_("FAILED: no message from the device in time (powered? right broker, username, password?)"))
    else:
        lines.append(_("message on {topic}: {payload}", topic=r.message.topic,
                       payload=r.message.payload[:200].decode("utf-8", "replace")))
        lines.append(_("battery: {battery} %   rssi: {rssi} dBm", battery=r.battery if r.battery is not None else "-",
                       rssi=r.rssi if r.rssi is not None else "-"))
        if r.ok:
            lines.append(_("pipeline: ACCEPTED values {values}", values=r.reading.values) if r.reading
                         else _("pipeline: ACCEPTED"))
            lines += [_("would: {transition} {rule} ({severity}): {message}",
                        transition=label(t, "transition", w.transition), rule=label(t, "rule", w.alert.rule),
                        severity=label(t, "severity", w.alert.severity), message=alert_message(t, w.alert))
                      for w in r.would_transitions]
            lines.append(_("running pipeline recorded it: {time}", time=_when(r.last_seen, t)) if r.last_seen else
                         _("running pipeline recorded it: not within a few seconds (is `citywatch run` running?)"))
        else:
            lines.append(_("pipeline: DEAD LETTER {reason}: {detail}", reason=r.reason, detail=r.detail))
    lines.append(_("open alerts: {n}", n=len(r.open_alerts)))
    lines += [f"  {a.id} {label(t, 'rule', a.rule)} {label(t, 'severity', a.severity)} "
              f"{label(t, 'alert status', a.status)}: {alert_message(t, a)}" for a in r.open_alerts]
    return "\n".join(for_terminal(line) for line in lines)  # the device's own bytes may hold escape sequences


def exit_code(r: CheckResult) -> int:
    """0 accepted, 1 would be dead-lettered, 3 nothing arrived or the broker refused the check."""
    return 0 if r.ok else 1 if r.outcome == "dead_letter" else 3

