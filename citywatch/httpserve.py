"""Serving an aiohttp app so that slow, broken or hostile clients cannot exhaust the process.

aiohttp alone keeps a connection that never finishes its request headers for an hour
(`keepalive_timeout` 3630 s), lets a request body trickle in forever, accepts connections until
the process runs out of file descriptors, and logs every malformed request as an ERROR with a
traceback. Here:

* header timeout: aiohttp's keep-alive timer starts at connect (and again after each response)
  and is not pushed back by incoming bytes, so `keepalive_timeout = api.header_timeout_s` closes a
  connection that has not completed its request headers in that time, one byte a second or not;
* request timeout: a middleware bounds headers-to-response (body included) with a 408;
* connection cap: every connection is counted; when `api.max_connections` are open, the one idle
  longest (no request in progress: slow headers or keep-alive) is closed to make room, so a flood
  of slow clients cannot lock out a real one; only when all are busy is the newcomer refused (503);
* logs: a client's malformed request is one warning line, and every repeated line is rate-limited.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import sys
from collections import Counter
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from citywatch.config import ApiSettings
from citywatch.ratelog import LogLimiter, limit_logger

log = logging.getLogger("citywatch.api")

LOG_INTERVAL_S = 10.0
# The request timeout of a request in progress: a long-lived response (the console's server-sent events,
# citywatch/console/app.py) lifts it with `request[TIMEOUT_KEY].reschedule(None)` once it streams.
TIMEOUT_KEY = web.RequestKey("request_timeout", asyncio.Timeout)
_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 22\r\n"
            b"Retry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\r\n")


def printable(text: str, limit: int = 200) -> str:
    """A peer's text made safe for one log line: control characters escaped, length bounded."""
    text = text[:limit]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def fd_bounded(wanted: int) -> int:
    """At most half the open-file limit: the rest is for the store, MQTT, webhooks, InfluxDB."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or wanted <= soft // 2:
        return wanted
    log.warning("api: max_connections %d lowered to %d (half the open-file limit %d)", wanted,
                max(soft // 2, 1), soft)
    return max(soft // 2, 1)


class _Conn:
    __slots__ = ("transport", "since", "busy")

    def __init__(self, transport: asyncio.BaseTransport, now: float) -> None:
        self.transport = transport
        self.since = now  # connected, or last response sent: idle since
        self.busy = 0  # requests in progress


class _Counted(asyncio.Protocol):
    """aiohttp's request handler behind a counter, so the guard sees every connection open and close."""

    def __init__(self, guard: Guard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.BaseTransport | None = None
        self.admitted = False  # refused connections never reach aiohttp

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.admitted = self.guard.admit(transport)
        if self.admitted:
            self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted and self.transport is not None:
            self.guard.release(self.transport)
            self.inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_REFUSED)
        transport.close()


class Guard:
    """Counts connections, closes the longest idle one when full, times requests out."""

    def __init__(self, settings: ApiSettings) -> None:
        self.max_connections = fd_bounded(settings.max_connections)
        self.request_timeout_s = settings.request_timeout_s
        self.conns: dict[asyncio.BaseTransport, _Conn] = {}
        self.counts: Counter[str] = Counter()  # accepted, evicted, refused, timed_out
        self._limiter = LogLimiter(LOG_INTERVAL_S)

    def warn(self, key: str, msg: str, *args: Any) -> None:
        """A warning at most once per LOG_INTERVAL_S per key."""
        ok, held = self._limiter.allow(key)
        if ok:
            log.warning(msg + (f" ({held} similar suppressed)" if held else ""), *args)

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        now = asyncio.get_running_loop().time()
        if len(self.conns) >= self.max_connections:
            idle = [c for c in self.conns.values() if not c.busy]
            if not idle:
                self.counts["refused"] += 1
                self.warn("refused", "api: %d connections, all busy (api.max_connections): refusing new ones",
                           len(self.conns))
                _Refused().connection_made(transport)
                return False
            victim = min(idle, key=lambda c: c.since)
            del self.conns[victim.transport]  # counted out now; its connection_lost follows
            victim.transport.close()
            self.counts["evicted"] += 1
            self.warn("evicted", "api: %d connections open (api.max_connections): closing the longest idle ones",
                       self.max_connections)
        self.conns[transport] = _Conn(transport, now)
        self.counts["accepted"] += 1
        return True

    def stats(self) -> dict[str, int]:
        """For /stats: connections open, the cap, and accepted/evicted/refused/timed_out so far."""
        return {"connections": len(self.conns), "max_connections": self.max_connections,
                **{k: self.counts[k] for k in ("accepted", "evicted", "refused", "timed_out")}}

    def release(self, transport: asyncio.BaseTransport) -> None:
        self.conns.pop(transport, None)  # gone already if it was evicted

    def protocol(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        return _Counted(self, inner)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        conn = self.conns.get(request.transport) if request.transport is not None else None
        if conn is not None:
            conn.busy += 1
        timeout = asyncio.timeout(self.request_timeout_s)
        request[TIMEOUT_KEY] = timeout
        try:
            async with timeout:
                response: web.StreamResponse = await handler(request)
                return response
        except TimeoutError:
            if not timeout.expired():
                raise
            self.counts["timed_out"] += 1
            self.warn("timeout", "api: a request took over %g s (api.request_timeout_s); answered 408",
                       self.request_timeout_s)
            out = web.json_response({"error": "request timed out"}, status=408)
            out.force_close()
            return out
        finally:
            if conn is not None:
                conn.busy -= 1
                conn.since = asyncio.get_running_loop().time()


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger. A client's malformed request is one warning line, not an ERROR
    with a traceback; a failure of ours keeps its traceback. Both are rate-limited."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self.limiter = LogLimiter(LOG_INTERVAL_S)

    def log(self, level: int, msg: object, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        if level < logging.WARNING:
            super().log(level, msg, *args, exc_info=exc_info, **kwargs)
            return
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1] if exc_info else None
        ok, held = self.limiter.allow((type(exc).__name__, str(msg)))
        if not ok:
            return
        text = str(msg) % args if args else str(msg)
        more = f" ({held} similar suppressed)" if held else ""
        if isinstance(exc, HttpProcessingError):
            first = (exc.message or "").strip().splitlines()
            self.logger.warning("api: bad HTTP request (%s): %s%s", printable(text, 120),
                                printable(first[0] if first else type(exc).__name__), more)
        else:
            self.logger.log(level, "api: %s%s", text, more, exc_info=exc_info)


class _Site(web.BaseSite):
    """A TCP site that accepts one connection at a time and hands it to the guard before taking the
    next: asyncio's own server accepts up to `backlog` sockets in one go, before any of them can be
    counted, so a burst would overshoot the cap (up to the open-file limit) before eviction ran."""

    __slots__ = ("_host", "_port", "_guard", "_socks", "_tasks")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: Guard) -> None:
        super().__init__(runner, backlog=64)
        self._host, self._port, self._guard = host, port, guard
        self._socks: list[socket.socket] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        return int(self._socks[0].getsockname()[1]) if self._socks else self._port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self._host or None, self._port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):  # every address, as asyncio binds
                sock = socket.socket(family, kind, proto)
                self._socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(self._backlog)
                sock.setblocking(False)
        except OSError:
            for sock in self._socks:
                sock.close()
            self._socks.clear()
            raise
        self._tasks = [asyncio.create_task(self._accept(sock), name="api-accept") for sock in self._socks]

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard = self._guard
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # out of file descriptors, or the peer gave up: wait a little
                guard.warn("accept", "api: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            try:  # returns once connection_made ran: the guard counted (or refused) it
                await loop.connect_accepted_socket(lambda: guard.protocol(server()), conn)
            except OSError:
                conn.close()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in self._socks:
            sock.close()
        self._tasks, self._socks = [], []
        await super().stop()


GUARD_KEY = web.AppKey("guard", Guard)


async def serve(app: web.Application, settings: ApiSettings) -> tuple[web.AppRunner, Guard, int]:
    """Start `app` on api.host:api.port behind the guard; returns the runner (cleanup() stops it),
    the guard (its counts) and the bound port."""
    guard = app[GUARD_KEY] = Guard(settings)
    app.middlewares.insert(0, guard.middleware)
    limit_logger("asyncio", LOG_INTERVAL_S)  # a repeated loop error, once per interval
    runner = web.AppRunner(app, access_log=None,  # the rest goes to each connection's RequestHandler
                           keepalive_timeout=settings.header_timeout_s,
                           lingering_time=min(10.0, settings.header_timeout_s),
                           logger=ServerLog(logging.getLogger("citywatch.api.http")))
    await runner.setup()
    site = _Site(runner, settings.host, settings.port, guard)
    await site.start()
    return runner, guard, site.port
