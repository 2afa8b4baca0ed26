"""Shared fixtures: a real Mosquitto per test, settings pointing at it, a running pipeline."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from citywatch.config import Settings, load_settings
from citywatch.native import stale_sources
from tests.servers.mosquitto import MosquittoServer

# The suite's human-facing text is English (what most tests read); the shipped default is zh-CN, which
# tests/test_i18n.py and the other language tests set explicitly (settings or CITYWATCH_LANGUAGE).
os.environ.setdefault("CITYWATCH_LANGUAGE", "en")


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = stale_sources()
    if stale:
        raise pytest.UsageError(f"compiled modules are older than their sources {stale}: "
                                "run `pip install -e .` again (or delete the .so files)")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path / "mosquitto")
    server.start()
    yield server
    server.stop()


def make_settings(data_dir: Path, **sections: Any) -> Settings:
    overrides: dict[str, Any] = {"data_dir": data_dir, "api": {"port": 0}}
    overrides.update(sections)
    return load_settings(None, overrides)


def wait_until(condition: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll `condition` until it is truthy; fail the test with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class RunnerThread:
    """An EmbeddedRunner in a background thread with its own event loop, stoppable from the test."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        from citywatch.streams.embedded import EmbeddedRunner

        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.runner: EmbeddedRunner | None = None
        self.clock = clock
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self._ready = threading.Event()

    def _main(self) -> None:
        from citywatch.streams.embedded import EmbeddedRunner

        asyncio.set_event_loop(self.loop)

        async def go() -> None:
            self.stop_event = asyncio.Event()
            self.runner = EmbeddedRunner(self.settings, clock=self.clock)
            task = asyncio.create_task(self.runner.run(self.stop_event))
            await self.runner.ready.wait()
            self._ready.set()
            await task

        try:
            self.loop.run_until_complete(go())
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            self._ready.set()
            self.loop.close()

    def start(self) -> RunnerThread:
        self.thread.start()
        self._ready.wait(30)
        if self.error:
            raise self.error
        return self

    def subscribed(self, timeout: float = 60.0) -> RunnerThread:
        """Wait until the runner's collector is connected and subscribed. The runner reports itself
        started after 10 s without a broker (it retries in the background), and a message published
        before its subscription is not delivered to a new session: on a loaded machine a test that
        publishes at once would lose it."""
        runner = self.runner
        assert runner is not None and runner.collector is not None
        collector = runner.collector
        wait_until(lambda: collector.wait_connected(0.25), timeout=timeout)
        return self

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the runner's loop thread and return its result."""
        async def wrapper() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def stop(self) -> None:
        if self.stop_event is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)
        if self.error:
            raise self.error
