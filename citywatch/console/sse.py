"""Live updates for the console: what each committed batch changed, pushed to the browsers allowed to
see it, as server-sent events.

The runner calls `Hub.listener` with every committed Output (embedded.py `_published`: each batch of
the pipeline and each person's action). It only notes the latest state of each alert and incident
that changed (a dict assignment per transition) and wakes the pump. The pump, a task on the event
loop, waits `interval_s` to gather what changed together, then makes one *cycle* (a sequence number)
of it: for every open stream it decides, per changed case, whether the stream's user may see it
(the policy: a Nanhu operator's stream never carries a Xiuzhou alert, not even its id) and whether it
matches the stream's filters, and sends the row's server-rendered HTML (`alert`, `incident`), its
removal (`remove`), or for the map a device's new colour (`device`). Rows are rendered once per
language per cycle, whatever the number of streams.

Nothing is lost across a reconnection: each event's id is its cycle, the last `history` cycles are
kept, and a stream (re)connecting with `Last-Event-ID` (or `?since=` from the page it was served
with) gets what changed since, merged to the latest state; a gap older than that gets `reload`. A
stream that falls `QUEUE_MAX` events behind (a stalled tab) is cut to one `reload` too. Streams end
when their session ends (`signed-out`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from citywatch.console.map import worst
from citywatch.console.sessions import Session
from citywatch.console.views import Filters, may_view_alert, may_view_incident
from citywatch.model import TERMINAL_STATUSES, Alert, Incident

log = logging.getLogger("citywatch.console")

QUEUE_MAX = 512  # events waiting for one stream before it is told to reload instead
HEARTBEAT_S = 15.0


class Renderer(Protocol):
    """What the hub needs from the console app: rows rendered in a language, and map facts."""

    def alert_row_html(self, alert: Alert, language: str) -> str: ...

    def incident_row_html(self, incident: Incident, language: str) -> str: ...

    def incident_deadline(self, incident: Incident) -> float | None: ...

    def device_marker(self, device_id: str) -> dict[str, Any] | None: ...

    def incident_of(self, alert_id: str) -> Incident | None: ...


@dataclass
class Change:
    """One cycle: the latest state of each alert and incident that changed in it."""

    seq: int
    alerts: dict[str, Alert] = field(default_factory=dict)
    incidents: dict[str, Incident] = field(default_factory=dict)


def event(name: str, data: Any, seq: int | None = None) -> bytes:
    """One server-sent event (JSON data on one line: json.dumps escapes line breaks)."""
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class Stream:
    """One connected page: whose it is, what it shows, and its queue of encoded events."""

    def __init__(self, session: Session, page: str, filters: Filters) -> None:
        self.session = session
        self.page = page  # "queue", "map", "alert:<id>", "incident:<id>"
        self.filters = filters
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.overflowed = False

    def put(self, data: bytes) -> None:
        if self.overflowed:
            return
        if self.queue.qsize() >= QUEUE_MAX:  # a stalled tab: drop what waits, tell it to reload
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(event("reload", {"why": "behind"}))
            return
        self.queue.put_nowait(data)


class Hub:
    def __init__(self, renderer: Renderer, open_alerts: Iterable[Alert] = (), interval_s: float = 0.1,
                 history: int = 256) -> None:
        self.renderer = renderer
        self.interval_s = interval_s
        self.seq = 0
        self.history: deque[Change] = deque(maxlen=history)
        self.streams: set[Stream] = set()
        self._alerts: dict[str, Alert] = {}
        self._incidents: dict[str, Incident] = {}
        self._wake = asyncio.Event()
        # device id -> its unfinished alerts (the map's colours), kept from the transitions
        self.open_by_device: dict[str, dict[str, Alert]] = {}
        for alert in open_alerts:
            self._track(alert)
        self.counts = {"cycles": 0, "events": 0, "reloads": 0}

    # -- fed by the runner --------------------------------------------------------------------------

    def listener(self, out: Any) -> None:
        """The runner's listener: called on the event loop with each committed Output; cheap."""
        if not out.transitions and not out.incident_transitions:
            return
        for t in out.transitions:
            self._alerts[t.alert_id] = t.alert
        for it in out.incident_transitions:
            self._incidents[it.incident_id] = it.incident
        self._wake.set()

    def _track(self, alert: Alert) -> None:
        mine = self.open_by_device.setdefault(alert.device_id, {})
        if alert.status in TERMINAL_STATUSES:
            mine.pop(alert.id, None)
            if not mine:
                del self.open_by_device[alert.device_id]
        else:
            mine[alert.id] = alert

    # -- the pump -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: a cycle whenever something changed, at most one per interval."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.interval_s)
            self._wake.clear()
            try:
                self.cycle()
            except Exception:  # a bug of ours must not end live updates for everyone
                log.exception("console: live update cycle failed")

    def cycle(self) -> Change | None:
        if not self._alerts and not self._incidents:
            return None
        self.seq += 1
        change = Change(self.seq, self._alerts, self._incidents)
        self._alerts, self._incidents = {}, {}
        for alert in change.alerts.values():
            self._track(alert)
        # incidents whose members changed without an incident transition (a member joined, or its
        # status moved): their rows show member counts and deadlines
        for alert_id in change.alerts:
            incident = self.renderer.incident_of(alert_id)
            if incident is not None and incident.id not in change.incidents:
                change.incidents[incident.id] = incident
        self.history.append(change)
        self.counts["cycles"] += 1
        cache: dict[tuple[str, str, str], str] = {}
        for stream in list(self.streams):
            for data in self.events(stream, change, cache):
                stream.put(data)
        return change

    # -- per stream ---------------------------------------------------------------------------------

    def events(self, stream: Stream, change: Change,
               cache: dict[tuple[str, str, str], str] | None = None) -> list[bytes]:
        """The events of `change` for `stream`: only what its user may see."""
        cache = {} if cache is None else cache
        user, language, seq = stream.session.user, stream.session.language, change.seq
        out: list[bytes] = []
        page = stream.page
        if page == "queue":
            for alert in change.alerts.values():
                if not may_view_alert(user, alert):
                    continue
                if alert.status not in TERMINAL_STATUSES and stream.filters.match_alert(alert):
                    key = ("alert", alert.id, language)
                    html = cache.get(key)
                    if html is None:
                        html = cache[key] = self.renderer.alert_row_html(alert, language)
                    out.append(event("alert", {"id": alert.id, "html": html}, seq))
                else:
                    out.append(event("remove", {"id": alert.id, "type": "alert"}, seq))
            for incident in change.incidents.values():
                if not may_view_incident(user, incident):
                    continue
                if incident.status != "closed" and stream.filters.match_incident(incident):
                    key = ("incident", incident.id, language)
                    html = cache.get(key)
                    if html is None:
                        html = cache[key] = self.renderer.incident_row_html(incident, language)
                    out.append(event("incident", {"id": incident.id, "html": html}, seq))
                else:
                    out.append(event("remove", {"id": incident.id, "type": "incident"}, seq))
        elif page == "map":
            for device_id in {a.device_id for a in change.alerts.values() if may_view_alert(user, a)}:
                marker = self.renderer.device_marker(device_id)
                if marker is None:
                    continue
                seen = [a.severity for a in self.open_by_device.get(device_id, {}).values() if may_view_alert(user, a)]
                out.append(event("device", {**marker, "severity": worst(seen)}, seq))
        elif page.startswith("alert:"):
            alert_id = page.partition(":")[2]
            one = change.alerts.get(alert_id)
            if one is not None and may_view_alert(user, one):
                out.append(event("changed", {"id": alert_id, "status": one.status}, seq))
        elif page.startswith("incident:"):
            incident_id = page.partition(":")[2]
            case = change.incidents.get(incident_id)
            if case is not None and may_view_incident(user, case):
                out.append(event("changed", {"id": incident_id, "status": case.status}, seq))
        if not out and change.seq % 16 == 0:
            out.append(event("seq", {}, seq))  # keeps the stream's Last-Event-ID near the head
        self.counts["events"] += len(out)
        return out

    def replay(self, stream: Stream, since: int) -> list[bytes]:
        """What changed after cycle `since`, for a (re)connecting stream: merged to the latest state;
        `reload` when the history no longer reaches back that far."""
        if since >= self.seq:
            return []
        if since < 0 or not self.history or since < self.history[0].seq - 1:
            self.counts["reloads"] += 1
            return [event("reload", {"why": "gap"}, self.seq)]
        merged = Change(self.seq)
        for change in self.history:
            if change.seq > since:
                merged.alerts.update(change.alerts)
                merged.incidents.update(change.incidents)
        return self.events(stream, merged)

    def attach(self, stream: Stream) -> None:
        self.streams.add(stream)

    def detach(self, stream: Stream) -> None:
        self.streams.discard(stream)

    def close_session(self, session: Session) -> None:
        """Its streams end (signed out, expired, account changed)."""
        for stream in [s for s in self.streams if s.session is session]:
            stream.put(event("signed-out", {}))

    def stats(self) -> dict[str, int]:
        return {"streams": len(self.streams), "seq": self.seq, **self.counts}


def final(data: bytes) -> bool:
    """The stream ends after this event (the page reloads, or goes to the sign-in page)."""
    head = data[:80]
    return b"event: signed-out\n" in head or b"event: reload\n" in head


async def drain(stream: Stream, timeout: float) -> bytes | None:
    """The next event of a stream, or None after `timeout` (time for a heartbeat)."""
    with contextlib.suppress(TimeoutError):
        return await asyncio.wait_for(stream.queue.get(), timeout)
    return None
