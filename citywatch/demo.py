"""`citywatch demo`: the whole system on one machine with nothing installed but the package.

An in-process broker (amqtt), simulated devices of every kind with scripted incidents plus two
city-scale scenarios (a storm over one district's water gauges, road works on one street; time
compressed: `speed` simulated seconds per real second), the embedded pipeline, and a simulated
dispatch system (citywatch/loop/dispatch_sim.py) that receives every webhook (verifying its
signature) and works the incidents: it assigns, goes on site and rectifies by calling back with its
own signed messages, sometimes too early, sometimes never. The road works run under a silence (a
maintenance window): their alerts are stored and visible, not sent. Follow-up windows are compressed
like time. Ends with a summary of what happened.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from citywatch import progress
from citywatch.config import load_settings
from citywatch.devices.registry import Registry, registry_path
from citywatch.i18n import _
from citywatch.ingest.publisher import publish
from citywatch.ingest.simulator import (
    RoadWorks,
    Scenario,
    Simulator,
    Storm,
    bad_messages,
    make_devices,
    storm_gauges,
    street_monitors,
)
from citywatch.loop.dispatch_sim import Delays, DispatchSystem, new_secret
from citywatch.loop.silences import SilenceRequest
from citywatch.model import Output
from citywatch.streams.embedded import EmbeddedRunner

STORM_DISTRICT = "Nanhu"
WORKS_STREET = "Jianguo Rd"
WORKS_REASON = "road works on Jianguo Rd (permit JX-2026-118)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Summary:
    data_dir: Path
    devices: int = 0
    published: int = 0
    bad_published: int = 0
    processed: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    opened_by_kind: Counter[str] = field(default_factory=Counter)
    transitions: Counter[str] = field(default_factory=Counter)  # every stored alert transition, people's too
    closed_verified: int = 0  # closed by the device's own readings after a rectification
    closed_confirmed: int = 0  # closed on a person's confirmation (nothing to measure)
    incidents: Counter[str] = field(default_factory=Counter)  # hazard group -> incidents opened
    incident_alerts: Counter[str] = field(default_factory=Counter)  # hazard group -> member alerts
    incidents_closed: int = 0
    dispatch_answers: Counter[str] = field(default_factory=Counter)  # HTTP status of the simulator's messages
    dispatch_plans: Counter[str] = field(default_factory=Counter)
    silence: str = ""
    silenced_alerts: int = 0
    silenced_held: int = 0
    follow_up_s: float = 0.0
    open_at_end: int = 0
    webhooks_received: int = 0
    webhooks_verified: int = 0
    webhooks_forged: int = 0
    seconds: float = 0.0

    def render(self) -> str:
        dead = ", ".join(f"{r} {n}" for r, n in self.dead_letters.most_common()) or "none"
        opened = ", ".join(f"{k} {n}" for k, n in sorted(self.opened_by_kind.items())) or "none"
        trans = ", ".join(f"{k} {n}" for k, n in sorted(self.transitions.items())) or "none"
        incidents = ", ".join(f"{g} {n} ({self.incident_alerts[g]} alerts)"
                              for g, n in sorted(self.incidents.items())) or "none"
        answers = ", ".join(f"{code} x{n}" for code, n in sorted(self.dispatch_answers.items())) or "none"
        plans = ", ".join(f"{p} {n}" for p, n in sorted(self.dispatch_plans.items())) or "none"
        t = self.transitions
        return "\n".join([
            "",
            "== citywatch demo summary ==",
            f"devices simulated     {self.devices}",
            f"messages published    {self.published} ({self.bad_published} deliberately bad)",
            f"messages processed    {self.processed}",
            f"dead letters          {sum(self.dead_letters.values())} ({dead})",
            f"alerts opened by kind {opened}",
            f"incidents             {sum(self.incidents.values())} opened: {incidents}; {self.incidents_closed} closed",
            f"dispatch (simulated)  {sum(self.dispatch_answers.values())} signed messages, answers {answers}; "
            f"cases by plan: {plans}",
            f"the loop              assigned {t['assigned']}, on site {t['on_site']}, rectified {t['rectified']}, "
            f"closed verified {self.closed_verified}, closed confirmed {self.closed_confirmed}, "
            f"reopened {t['reopened']}, verification overdue {t['verification_overdue']}, "
            f"escalated {t['escalated']} (follow-up windows {self.follow_up_s:g} s, compressed like time)",
            f"silence               {self.silence or 'none'}: {self.silenced_alerts} alerts stored and shown, "
            f"{self.silenced_held} webhooks held (not paged)",
            f"alert transitions     {trans}",
            f"alerts open at end    {self.open_at_end}",
            f"webhooks delivered    {self.webhooks_received} ({self.webhooks_verified} signatures verified, "
            f"{self.webhooks_forged} forged)",
            f"wall time             {self.seconds:.1f} s",
            f"data kept in          {self.data_dir}  (try: citywatch --data-dir {self.data_dir} alerts list; "
            "incidents list)",
        ])


def work_hours(start: float, seconds: float, zone: str) -> tuple[float, float]:
    """Working hours (local) covering the demo's simulated span, so the crew is at work during it."""
    h0 = float(datetime.fromtimestamp(start, ZoneInfo(zone)).hour)
    return h0, h0 + math.ceil(seconds / 3600.0) + 1.0


async def run_demo(data_dir: Path | None, duration: float, n_devices: int, speed: float,
                   echo: Callable[[str], None] | None = print) -> Summary:
    started = time.monotonic()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="citywatch-demo-"))
    secret, dispatch_secret = new_secret(), new_secret()
    # the dispatch centre assigns within a (simulated) minute; a team is on site in 10 and has fixed it
    # 30 later (or reports it fixed at once, too early); follow-up windows: 30 min. Compressed like time.
    minute = 60.0 / speed
    dispatch = DispatchSystem("http://127.0.0.1:9", dispatch_secret, secret, seed=7, level="incident",
                              weights=(0.55, 0.25, 0.1, 0.1),
                              delays=Delays(assign=minute, on_site=10 * minute, rectify=30 * minute,
                                            early=0.5 * minute, retry_after_reopen=10 * minute, confirm=2 * minute))
    follow_up_s = min(max(30 * minute, 2.0), 60.0)

    broker_url = f"mqtt://127.0.0.1:{free_port()}"
    os.environ.pop("CITYWATCH_CONFIG", None)
    overrides: dict[str, Any] = {
        "data_dir": data_dir, "mqtt": {"url": broker_url, "embedded": True, "client_id": "citywatch-demo"},
        "webhooks": {"url": dispatch.url, "secret": secret, "backoff_initial_s": 0.2, "backoff_max_s": 2.0,
                     "receive": ["alerts", "incidents"]},
        "dispatch": {"secret": dispatch_secret},
        "api": {"port": free_port()},
        "alerts": {"tick_s": 0.5},
    }
    rules = load_settings(None, overrides).alerts.verification.rules  # every rule's window, compressed
    overrides["alerts"]["verification"] = {"default_min": follow_up_s / 60.0,
                                           "rules": dict.fromkeys(rules, follow_up_s / 60.0)}
    settings = load_settings(None, overrides)
    devices = (make_devices(n_devices, seed=7, prefix="demo")
               + storm_gauges(24, district=STORM_DISTRICT, grids=3, prefix="demo-storm", seed=7)
               + street_monitors(4, street=WORKS_STREET, district=STORM_DISTRICT, prefix="demo-works", seed=7))
    registry = Registry(registry_path(data_dir))
    for device in devices:
        if registry.get(device.id) is None:
            registry.add(device)
    registry.close()

    summary = Summary(data_dir=data_dir, devices=len(devices), follow_up_s=follow_up_s)
    runner = EmbeddedRunner(settings)
    if echo is not None:
        runner.listeners.append(lambda out: _echo_transitions(out, echo))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await runner.ready.wait()
    dispatch.citywatch_url = f"http://127.0.0.1:{runner.api_port}"
    dispatch.start()
    sim_seconds = duration * speed
    silence = runner.silences.add(SilenceRequest(community=WORKS_STREET, kind="noise", duration="3d",
                                                 reason=WORKS_REASON, by="demo"))
    summary.silence = f"{silence.id} {silence.scope_text()} ({WORKS_REASON})"

    start = time.time() - sim_seconds - 60
    scenarios: list[Scenario] = [
        Storm(STORM_DISTRICT, start_s=0.2 * sim_seconds, spread_s=min(1200.0, 0.2 * sim_seconds)),
        RoadWorks(WORKS_STREET, days=3, hours=work_hours(start, sim_seconds, settings.timezone))]
    sim = Simulator(devices, seed=7, start=start, horizon_s=max(600.0, sim_seconds * 0.4), scenarios=scenarios)
    messages = [(topic, payload) for topic, payload, _ in sim.messages(sim_seconds)]
    bad = [(topic, payload) for topic, payload, _ in bad_messages(devices, seed=7, now=time.time())]
    stream = messages[: len(messages) // 2] + bad + messages[len(messages) // 2:]
    if echo is not None:
        echo(f"publishing {len(stream)} messages from {len(devices)} devices over ~{duration:.0f} s "
             f"({sim_seconds / 3600:.1f} simulated hours, {len(sim.incidents_log)} scripted incidents, a storm over "
             f"{STORM_DISTRICT}, road works on {WORKS_STREET} under silence {silence.id})")
    # a bar on stderr when it is a terminal (citywatch/progress.py); the transitions print above it
    summary.published = await publish(broker_url, progress.track(stream, _("publishing the simulated city")), qos=1,
                                      rate=len(stream) / max(duration * 0.8, 1.0), client_id="citywatch-demo-sim")
    summary.bad_published = len(bad)

    def settled() -> bool:
        c = runner.pipeline.counters
        return c["received"] >= summary.published and runner.delivery.stats().get("pending", 0) == 0

    deadline = time.monotonic() + max(30.0, duration)
    with progress.bar(_("waiting for the pipeline, the webhooks and the follow-up windows")):
        while not settled() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        # at most one more follow-up window, so the last rectifications can be verified (or found overdue)
        follow_up_end = min(time.monotonic() + follow_up_s + 1.0, deadline)
        while any(a.status == "verifying" for a in runner.engine.by_id.values()) \
                and time.monotonic() < follow_up_end:
            await asyncio.sleep(0.1)
    # the dispatch system stops first (its in-flight call finishes): it must not call a citywatch that is
    # shutting down (a refused connection there is the demo's shutdown, not an answer of citywatch's)
    await asyncio.to_thread(dispatch.stop)
    stop.set()
    await task

    counters = runner.pipeline.counters
    summary.processed = counters["processed"]
    summary.dead_letters = Counter({k.split(".", 1)[1]: v for k, v in counters.items()
                                    if k.startswith("dead_letter.")})
    summary.open_at_end = len(runner.engine.by_id)
    _from_store(summary, silence.id)
    summary.webhooks_received = len(dispatch.received_ids)
    summary.webhooks_verified = len(dispatch.received)  # only verified webhooks are recorded
    summary.webhooks_forged = dispatch.forged
    summary.dispatch_answers = Counter(str(s.status) for s in dispatch.sent)
    summary.dispatch_plans = Counter(c.plan for c in dispatch.cases.values())
    summary.seconds = time.monotonic() - started
    return summary


def _from_store(summary: Summary, silence_id: str) -> None:
    """Alerts, transitions, incidents and the silence's effect, as stored."""
    from citywatch.sinks.store import AlertStore, store_path

    store = AlertStore(store_path(summary.data_dir))
    try:
        summary.opened_by_kind = Counter(a.kind for a in store.alerts(None))
        for t in store.transitions():
            summary.transitions[t.transition] += 1
            if t.transition == "closed":
                if t.reason.startswith("verified"):
                    summary.closed_verified += 1
                else:
                    summary.closed_confirmed += 1
        for incident in store.incidents(open_only=False):
            summary.incidents[incident.group] += 1
            summary.incident_alerts[incident.group] += len(incident.members)
            summary.incidents_closed += incident.status == "closed"
        conn = store.conn
        summary.silenced_held = conn.execute("SELECT COUNT(*) FROM webhook_outbox WHERE silence_id = ?",
                                             (silence_id,)).fetchone()[0]
        summary.silenced_alerts = conn.execute("SELECT COUNT(DISTINCT alert_id) FROM webhook_outbox"
                                               " WHERE silence_id = ? AND alert_id LIKE 'al_%'",
                                               (silence_id,)).fetchone()[0]
    finally:
        store.close()


def _echo_transitions(out: Output, echo: Callable[[str], None]) -> None:
    for t in out.transitions:
        a = t.alert
        where = "/".join(x for x in (a.device.get("district"), a.device.get("grid")) if x)
        echo(f"[{t.transition:>20}] {a.severity:<8} {a.rule:<18} {a.device_id:<22} {where:<16} "
             f"{t.reason if t.transition not in ('opened', 'updated') else a.message or t.reason}")
    for it in getattr(out, "incident_transitions", ()):
        i = it.incident
        key = "/".join(str(v) for v in i.key.values())
        echo(f"[{'incident ' + it.transition:>20}] {i.severity:<8} {i.group:<18} {i.id:<22} {key:<16} "
             f"{len(i.members)} alerts; {it.reason}")
