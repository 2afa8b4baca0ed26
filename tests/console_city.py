"""A small city for the console's tests: a real Mosquitto, a real webhook receiver, the embedded runner
(RunnerThread) with devices in two districts and accounts of each role, and helpers to drive the console
over HTTP as a browser would (cookies, forms with their CSRF token, server-sent events)."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from click.testing import CliRunner
from standardwebhooks.webhooks import Webhook

from citywatch.cli import main
from citywatch.config import Settings
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from citywatch.sinks.store import store_path
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import MosquittoServer
from tests.servers.receiver import WebhookReceiver

SECRET = "whsec_" + "Y29uc29sZS10ZXN0LXNlY3JldC1rZXktMDAwMQ=="
# Nanhu devices east, Xiuzhou devices north-west (Jiaxing): the map projects their coordinates.
DEVICES = [Device(id=f"gas-n{i}", kind="gas", district="Nanhu", grid=f"G{i % 2 + 1}", community="Jianshe",
                  city="Jiaxing", lat=30.74 + i * 0.004, lon=120.76 + i * 0.005, address=f"{i} Zhongshan Rd")
           for i in range(1, 9)]
DEVICES += [Device(id=f"gas-x{i}", kind="gas", district="Xiuzhou", grid="G9", community="Xincheng", city="Jiaxing",
                   lat=30.80 + i * 0.004, lon=120.70 + i * 0.004, address=f"{i} Xiuzhou Rd") for i in range(1, 6)]
DEVICES.append(Device(id="lock-n1", kind="lock", district="Nanhu", grid="G1", lat=30.75, lon=120.77, tenants=4))
ACCOUNTS = {"op-nanhu": ("operator", ["--scope", "district=Nanhu"]), "op-city": ("operator", []),
            "field-li": ("field", ["--scope", "district=Nanhu", "--team", "grid team 1"]),
            "inst-wang": ("installer", []), "admin-zhao": ("admin", [])}


@dataclass
class City:
    settings: Settings
    run: RunnerThread
    mosquitto: MosquittoServer
    receiver: WebhookReceiver
    tokens: dict[str, str]
    seq: dict[str, int] = field(default_factory=dict)

    @property
    def base(self) -> str:
        assert self.run.runner is not None
        return f"http://127.0.0.1:{self.run.runner.api_port}"

    @property
    def runner(self) -> Any:
        assert self.run.runner is not None
        return self.run.runner

    def alarm(self, *device_ids: str, lel: float = 60.0) -> None:
        """A gas reading at level-2 from each device (one MQTT publish each, QoS 1)."""
        messages = []
        for device_id in device_ids:
            self.seq[device_id] = self.seq.get(device_id, 0) + 1
            messages.append((f"citywatch/gas/{device_id}/telemetry",
                             json.dumps({"ts": time.time(), "seq": self.seq[device_id], "lel_pct": lel}).encode()))
        publish_all(self.mosquitto, messages)

    def lock(self, device_id: str, event: str) -> None:
        self.seq[device_id] = self.seq.get(device_id, 0) + 1
        publish_all(self.mosquitto, [(f"citywatch/lock/{device_id}/telemetry", json.dumps(
            {"ts": time.time(), "seq": self.seq[device_id], "event": event}).encode())])

    def alert_of(self, device_id: str, timeout: float = 10.0) -> str:
        """The open alert of a device (waits for the runner to open it)."""
        def find() -> str | None:
            found = [a.id for a in list(self.runner.engine.by_id.values()) if a.device_id == device_id]
            return found[0] if found else None
        return str(wait_until(find, timeout))

    def status(self, alert_id: str) -> str | None:
        alert = self.runner.engine.by_id.get(alert_id)
        return None if alert is None else str(alert.status)

    def db(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(store_path(self.settings.data_dir))
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def audit(self, *args: str) -> list[dict[str, Any]]:
        result = cli(self.settings, "audit", "--json", *args)
        assert result.exit_code == 0, result.output
        records: list[dict[str, Any]] = json.loads(result.stdout)
        return records

    def webhooks_of(self, alert_id: str) -> list[dict[str, Any]]:
        """Verified webhooks the receiver got for an alert (a forged or unsigned one fails the test)."""
        verifier = Webhook(SECRET)
        with self.receiver.lock:
            requests_ = list(self.receiver.requests)
        out = []
        for headers, body in requests_:
            payload = verifier.verify(body, headers)
            if payload.get("alert", {}).get("id") == alert_id:
                out.append(payload)
        return out


def cli(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(main, ["--data-dir", str(settings.data_dir), *args])


def add_accounts(settings: Settings) -> dict[str, str]:
    tokens = {}
    for name, (role, options) in ACCOUNTS.items():
        added = cli(settings, "users", "add", name, "--role", role, *options)
        assert added.exit_code == 0, added.output
        tokens[name] = added.stdout.strip().splitlines()[-1].strip()
        assert tokens[name].startswith("cwt."), added.stdout
    return tokens


@contextmanager
def running_city(work: Path, **sections: Any) -> Iterator[City]:
    mosquitto = MosquittoServer(work / "mosquitto")
    mosquitto.start()
    receiver = WebhookReceiver().start()
    run = None
    try:
        hooks = {"url": receiver.url, "secret": SECRET, "backoff_initial_s": 0.1, "backoff_max_s": 1.0,
                 **sections.pop("webhooks", {})}
        settings = make_settings(work / "data", mqtt={"url": mosquitto.url, "client_id": f"cw-console-{id(work)}"},
                                 webhooks=hooks, **sections)
        registry = Registry(registry_path(settings.data_dir))
        for device in DEVICES:
            registry.add(device)
        registry.close()
        tokens = add_accounts(settings)
        run = RunnerThread(settings).start()
        yield City(settings, run, mosquitto, receiver, tokens)
    finally:
        if run is not None:
            run.stop()
        receiver.stop()
        mosquitto.stop()


# -- a browser without the browser -----------------------------------------------------------------

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SIGNIN_CSRF = re.compile(r'name="signin_csrf" value="([^"]+)"')


class Client:
    """The console over HTTP with a cookie jar, as a browser would use it (Origin on POSTs)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()
        self.http.headers["User-Agent"] = "console-test/1"
        self.last: requests.Response | None = None

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        self.last = self.http.get(self.base + path, allow_redirects=False, timeout=10, **kwargs)
        return self.last

    def csrf(self) -> str:
        """This session's CSRF token, from a page's forms."""
        page = self.get("/console")
        found = CSRF.search(page.text)
        assert found, page.text[:500]
        return found.group(1)

    def post(self, path: str, data: dict[str, str] | None = None, csrf: str | None = "auto",
             headers: dict[str, str] | None = None) -> requests.Response:
        form = dict(data or {})
        if csrf == "auto":
            form["csrf"] = self.csrf()
        elif csrf is not None:
            form["csrf"] = csrf
        sent = {"Origin": self.base, **(headers or {})}
        self.last = self.http.post(self.base + path, data=form, headers=sent, allow_redirects=False, timeout=10)
        return self.last

    def sign_in(self, token: str) -> requests.Response:
        form = self.get("/console/signin")
        found = SIGNIN_CSRF.search(form.text)
        assert found, form.text[:500]
        self.last = self.http.post(self.base + "/console/signin", data={"token": token, "signin_csrf": found.group(1),
                                                                         "next": "/console"},
                                   headers={"Origin": self.base}, allow_redirects=False, timeout=10)
        return self.last


def console_of(city: City) -> Any:
    """The runner's console (citywatch.console.app.Console): the owner of the hub it listens with."""
    from citywatch.console.sse import Hub

    for listener in city.runner.listeners:
        owner = getattr(listener, "__self__", None)
        if isinstance(owner, Hub):
            return owner.renderer
    raise AssertionError("the runner has no console listener")


def signed_in(city: City, who: str) -> Client:
    client = Client(city.base)
    response = client.sign_in(city.tokens[who])
    assert response.status_code == 303, response.text[:500]
    return client


class EventReader:
    """A server-sent event stream read in a thread over a plain socket (so that closing it ends the read at
    once): (event, data) pairs as they arrive, and the raw bytes."""

    def __init__(self, client: Client, path: str) -> None:
        host, port = client.base.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        cookies = "; ".join(f"{c.name}={c.value}" for c in client.http.cookies)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
                          f"Cookie: {cookies}\r\n\r\n".encode())
        self.file = self.sock.makefile("rb")
        status = self.file.readline()
        assert b" 200 " in status, status
        self.headers: dict[str, str] = {}
        while (line := self.file.readline().strip()):
            name, _, value = line.decode().partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.sock.settimeout(None)
        self.raw: list[bytes] = []
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        """Chunked transfer: chunk-size lines are skipped (they never start an SSE field)."""
        name, data = "message", ""
        try:
            for raw in self.file:
                line = raw.rstrip(b"\r\n")
                self.raw.append(line)
                if line.startswith(b"event: "):
                    name = line[7:].decode()
                elif line.startswith(b"data: "):
                    data = line[6:].decode()
                elif not line and data:
                    self.events.put((name, json.loads(data)))
                    name, data = "message", ""
        except (OSError, ValueError):
            pass

    def until(self, condition: Callable[[str, Any], bool], timeout: float = 10.0) -> list[tuple[str, Any]]:
        """Every event up to and including the first one meeting `condition` (AssertionError at the deadline)."""
        seen: list[tuple[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such event within {timeout} s; got {[n for n, _ in seen]}")
            try:
                name, data = self.events.get(timeout=left)
            except queue.Empty:
                continue
            seen.append((name, data))
            if condition(name, data):
                return seen

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
