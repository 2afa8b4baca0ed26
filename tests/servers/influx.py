"""A real InfluxDB 1.6.7 (`influxd`) for tests, plus a small v2-write bridge in front of it.

Debian ships only influxd 1.6.7, which serves v1 `/write` and `/query` but not the `/api/v2/write`
that influxdb-client speaks. The bridge translates `POST /api/v2/write?bucket=DB[/RP]` into
`POST /write?db=DB&rp=RP` and passes status and body back, so our writes still go through
InfluxDB's own line-protocol parser and storage.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.servers.mosquitto import free_port

INFLUXD = shutil.which("influxd") or "/usr/bin/influxd"
_V1_PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}


def _config(root: Path, http_port: int, rpc_port: int) -> str:
    return f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[retention]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""


class InfluxServer:
    """One influxd process; `stop()`/`start()` keep its data dir, so an outage loses nothing stored."""

    def __init__(self, workdir: Path) -> None:
        if not Path(INFLUXD).exists():
            raise RuntimeError(f"influxd not found at {INFLUXD}: apt-get install -y influxdb (CI does this)")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.rpc_port = free_port()
        self.conf = workdir / "influxdb.conf"
        self.conf.write_text(_config(workdir, self.http_port, self.rpc_port))
        self.log = workdir / "influxd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([INFLUXD, "run", "-config", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"influxd did not answer /ping: {self.log.read_text()[-2000:]}")

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=1) as resp:
                return bool(resp.status == 204)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def query(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL; rows of every series as dicts (tags of GROUP BY included). Times in ns."""
        params = {"q": q, "epoch": "ns"}
        if db:
            params["db"] = db
        req = urllib.request.Request(self.url + "/query", data=urllib.parse.urlencode(params).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
        rows: list[dict[str, Any]] = []
        for result in body.get("results", []):
            if "error" in result:
                raise RuntimeError(f"InfluxQL error: {result['error']}")
            for series in result.get("series", []):
                tags = series.get("tags", {})
                for values in series.get("values", []):
                    rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
        return rows

    def create_database(self, db: str) -> None:
        self.query(f'CREATE DATABASE "{db}"')


class V2Bridge:
    """aiohttp on its own loop thread: v2 write, ping and health in front of an InfluxServer."""

    def __init__(self, upstream: InfluxServer, token: str | None = None, port: int | None = None) -> None:
        self.upstream = upstream
        self.token = token
        self.port = port or free_port()
        self.requests = 0
        self.auth_failures = 0
        self.accepted_lines = 0  # lines in bodies InfluxDB answered 2xx to: doubles would show here
        self.delay_s = 0.0  # set > 0 to play a slow server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _write(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.token is not None and request.headers.get("Authorization") != f"Token {self.token}":
            self.auth_failures += 1
            return web.json_response({"code": "unauthorized", "message": "unauthorized access"}, status=401)
        bucket = request.query.get("bucket", "")
        db, _, rp = bucket.partition("/")
        params = {"db": db, "precision": _V1_PRECISION.get(request.query.get("precision", "ns"), "n")}
        if rp:
            params["rp"] = rp
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-encoding", "content-type")}
        assert self._session is not None
        body = await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        try:
            async with self._session.post(self.upstream.url + "/write", params=params, headers=headers,
                                          data=body) as resp:
                if resp.status // 100 == 2:
                    self.accepted_lines += body.count(b"\n") + (not body.endswith(b"\n"))
                return web.Response(status=resp.status, body=await resp.read(),
                                    content_type=resp.content_type or "application/json")
        except (TimeoutError, aiohttp.ClientError) as exc:
            return web.json_response({"code": "unavailable", "message": f"upstream: {type(exc).__name__}"},
                                     status=503)

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"name": "influxdb", "status": "pass", "message": "bridge"})

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application()
        app.router.add_post("/api/v2/write", self._write)
        app.router.add_get("/ping", self._ping)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        self._runner = self._session = None

    def start(self) -> None:
        """Listen (again) on the same port; safe to call after stop()."""
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="influx-bridge", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(10)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None


class InfluxStack:
    """influxd + bridge + a database: `url` is what an InfluxSink points at (bucket = `db`)."""

    def __init__(self, workdir: Path, db: str = "citywatch", token: str | None = "test-token") -> None:
        self.db = db
        self.server = InfluxServer(workdir)
        self.bridge = V2Bridge(self.server, token=token)

    @property
    def url(self) -> str:
        return self.bridge.url

    def start(self) -> InfluxStack:
        self.server.start()
        try:
            self.server.create_database(self.db)
            self.bridge.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self.bridge.stop()
        finally:
            self.server.stop()

    def query(self, q: str) -> list[dict[str, Any]]:
        return self.server.query(q, self.db)

    def count(self, measurement: str, field: str, where: str = "") -> int:
        q = f'SELECT count("{field}") FROM "{measurement}"' + (f" WHERE {where}" if where else "")
        rows = self.query(q)
        return int(rows[0]["count"]) if rows else 0


