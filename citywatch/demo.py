"""`citywatch demo`: the whole system on one machine with nothing installed but the package.

An in-process broker (amqtt), simulated devices of every kind with scripted incidents (time
compressed: `speed` simulated seconds per real second), the embedded pipeline, and a local
webhook receiver that verifies every signature. Ends with a summary of what happened.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from citywatch.config import load_settings
from citywatch.devices.registry import Registry, registry_path
from citywatch.ingest.publisher import publish
from citywatch.ingest.simulator import Simulator, bad_messages, make_devices
from citywatch.sinks.webhooks import verify
from citywatch.streams.embedded import EmbeddedRunner
from citywatch.streams.pipeline import Output


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
    transitions: Counter[str] = field(default_factory=Counter)
    open_at_end: int = 0
    webhooks_received: int = 0
    webhooks_verified: int = 0
    seconds: float = 0.0

    def render(self) -> str:
        dead = ", ".join(f"{r} {n}" for r, n in self.dead_letters.most_common()) or "none"
        opened = ", ".join(f"{k} {n}" for k, n in sorted(self.opened_by_kind.items())) or "none"
        trans = ", ".join(f"{k} {n}" for k, n in sorted(self.transitions.items())) or "none"
        return "\n".join([
            "",
            "== citywatch demo summary ==",
            f"devices simulated     {self.devices}",
            f"messages published    {self.published} ({self.bad_published} deliberately bad)",
            f"messages processed    {self.processed}",
            f"dead letters          {sum(self.dead_letters.values())} ({dead})",
            f"alerts opened by kind {opened}",
            f"alert transitions     {trans}",
            f"alerts open at end    {self.open_at_end}",
            f"webhooks delivered    {self.webhooks_received} ({self.webhooks_verified} signatures verified)",
            f"wall time             {self.seconds:.1f} s",
            f"data kept in          {self.data_dir}  (try: citywatch --data-dir {self.data_dir} alerts list)",
        ])


class Receiver:
    """A field team's webhook endpoint: verifies signatures, counts unique deliveries."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.ids: set[str] = set()
        self.received = 0
        self.verified = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received += 1
        if verify(self.secret, request.headers, body):
            self.verified += 1
        self.ids.add(request.headers.get("webhook-id", ""))
        return web.Response(status=204)


async def run_demo(data_dir: Path | None, duration: float, n_devices: int, speed: float,
                   echo: Callable[[str], None] | None = print) -> Summary:
    started = time.monotonic()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="citywatch-demo-"))
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    receiver = Receiver(secret)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    web_runner = web.AppRunner(app, access_log=None)
    await web_runner.setup()
    hook_port = free_port()
    await web.TCPSite(web_runner, "127.0.0.1", hook_port).start()

    broker_url = f"mqtt://127.0.0.1:{free_port()}"
    os.environ.pop("CITYWATCH_CONFIG", None)
    settings = load_settings(None, {
        "data_dir": data_dir, "mqtt": {"url": broker_url, "embedded": True, "client_id": "citywatch-demo"},
        "webhooks": {"url": f"http://127.0.0.1:{hook_port}/hook", "secret": secret,
                     "backoff_initial_s": 0.2, "backoff_max_s": 2.0},
        "api": {"port": free_port()}, "alerts": {"tick_s": 0.5},
    })
    devices = make_devices(n_devices, seed=7, prefix="demo")
    registry = Registry(registry_path(data_dir))
    for device in devices:
        if registry.get(device.id) is None:
            registry.add(device)
    registry.close()

    summary = Summary(data_dir=data_dir, devices=len(devices))
    runner = EmbeddedRunner(settings)
    if echo is not None:
        runner.listeners.append(lambda out: _echo_transitions(out, echo))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await runner.ready.wait()

    sim_seconds = duration * speed
    sim = Simulator(devices, seed=7, start=time.time() - sim_seconds - 60, horizon_s=max(600.0, sim_seconds * 0.4))
    messages = [(topic, payload) for topic, payload, _ in sim.messages(sim_seconds)]
    bad = [(topic, payload) for topic, payload, _ in bad_messages(devices, seed=7, now=time.time())]
    stream = messages[: len(messages) // 2] + bad + messages[len(messages) // 2:]
    if echo is not None:
        echo(f"publishing {len(stream)} messages from {len(devices)} devices over ~{duration:.0f} s "
             f"({sim_seconds / 3600:.1f} simulated hours, {len(sim.incidents_log)} scripted incidents)")
    summary.published = await publish(broker_url, stream, qos=1, rate=len(stream) / max(duration * 0.8, 1.0),
                                      client_id="citywatch-demo-sim")
    summary.bad_published = len(bad)

    def settled() -> bool:
        c = runner.pipeline.counters
        return c["received"] >= summary.published and runner.delivery.stats().get("pending", 0) == 0

    deadline = time.monotonic() + max(30.0, duration)
    while not settled() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    await task
    await web_runner.cleanup()

    counters = runner.pipeline.counters
    summary.processed = counters["processed"]
    summary.dead_letters = Counter({k.split(".", 1)[1]: v for k, v in counters.items()
                                    if k.startswith("dead_letter.")})
    summary.transitions = Counter({k.split(".", 1)[1]: v for k, v in counters.items()
                                   if k.startswith("transitions.")})
    summary.opened_by_kind = runner_opened_by_kind(runner)
    summary.open_at_end = len(runner.engine.by_id)
    summary.webhooks_received = len(receiver.ids)
    summary.webhooks_verified = receiver.verified
    summary.seconds = time.monotonic() - started
    return summary


def runner_opened_by_kind(runner: EmbeddedRunner) -> Counter[str]:
    from citywatch.sinks.store import AlertStore, store_path

    store = AlertStore(store_path(runner.settings.data_dir))
    counts = Counter(a.kind for a in store.alerts(None))
    store.close()
    return counts


def _echo_transitions(out: Output, echo: Callable[[str], None]) -> None:
    for t in out.transitions:
        a = t.alert
        where = "/".join(x for x in (a.device.get("district"), a.device.get("grid")) if x)
        echo(f"[{t.transition:>12}] {a.severity:<8} {a.rule:<18} {a.device_id:<22} {where:<16} "
             f"{a.message or t.reason}")
