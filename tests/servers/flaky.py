"""A webhook receiver that can be down, slow, or flaky: aiohttp on its own loop thread.

Its port is fixed at construction but nothing listens until `start()`, so "down" is a closed
port (connection refused), as when a team's server is off. While up, each request draws its
fate from a seeded RNG: a 500, a hang past the sender's timeout, or acceptance. Accepted
requests are recorded in arrival order; a hung request is recorded (as `late`) when it finally
completes, as a real receiver that processed it slowly would have done. With `secret`, each
accepted request's Standard Webhooks signature is verified; failures are counted, not answered.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

from aiohttp import web

from citywatch.sinks.webhooks import verify
from tests.servers.mosquitto import free_port


@dataclass(frozen=True)
class Arrival:
    webhook_id: str
    body_id: str
    alert_id: str
    n: int  # the transition's number within its alert (the suffix of its id)
    at: float
    body: bytes
    late: bool  # completed after the sender had likely given up (a hang)


class FlakyReceiver:
    def __init__(self, fail_rate: float = 0.0, hang_rate: float = 0.0, hang_s: float = 1.0,
                 delay_s: float = 0.0, seed: int = 1, port: int | None = None,
                 secret: str | None = None) -> None:
        self.port = port or free_port()
        self.secret = secret
        self.fail_rate = fail_rate
        self.hang_rate = hang_rate
        self.hang_s = hang_s
        self.delay_s = delay_s
        self.rng = random.Random(seed)
        self.arrivals: list[Arrival] = []
        self.counts: Counter[str] = Counter()  # requests, ok, failed, hung, bad_signature
        self.lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def up(self) -> bool:
        return self._runner is not None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            self.counts["requests"] += 1
            draw = self.rng.random()
        if draw < self.fail_rate:
            with self.lock:
                self.counts["failed"] += 1
            return web.Response(status=500, text="flaky")
        late = draw < self.fail_rate + self.hang_rate
        if late:
            with self.lock:
                self.counts["hung"] += 1
            await asyncio.sleep(self.hang_s)
        elif self.delay_s:
            await asyncio.sleep(self.delay_s)
        data = json.loads(body)
        webhook_id = request.headers.get("webhook-id", "")
        signed = self.secret is None or verify(self.secret, request.headers, body)
        with self.lock:
            self.counts["ok"] += 1
            self.counts["bad_signature"] += not signed
            self.arrivals.append(Arrival(webhook_id, data["id"], data["alert"]["id"],
                                         int(data["id"].rsplit(".", 1)[1]), time.time(), body, late))
        return web.Response(status=204)

    async def _start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None

    def start(self) -> FlakyReceiver:
        """Listen (again) on the same port."""
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="flaky-receiver", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(10)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    def snapshot(self) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals)

    def unique_ids(self) -> set[str]:
        with self.lock:
            return {a.webhook_id for a in self.arrivals}
