"""A real Mosquitto broker for tests, on a free loopback port, in its own temp directory."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


class MosquittoServer:
    """Start/stop/restart a Mosquitto with the given extra configuration lines."""

    def __init__(self, workdir: Path, extra: str = "", port: int | None = None) -> None:
        if not Path(MOSQUITTO).exists():
            raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto (CI does this)")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def write_conf(self) -> None:
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # tests run as root with 0700 temp dirs: stay root so the broker can read and persist there
            "user root\n"
            f"persistence true\npersistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 1000\n"
            "log_dest stderr\n"
            + self.extra + "\n"
        )

    def start(self) -> None:
        self.write_conf()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class AuthMosquittoServer(MosquittoServer):
    """A Mosquitto that requires a login and applies an ACL: the files `citywatch devices
    mosquitto-auth` writes. As root, Mosquitto drops to user mosquitto before reading them, so
    `auth_dir` must be traversable by that user (the files themselves are chowned by citywatch)."""

    def __init__(self, workdir: Path, auth_dir: Path, port: int | None = None) -> None:
        super().__init__(workdir, port=port)
        self.auth_dir = auth_dir

    def write_conf(self) -> None:
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "per_listener_settings false\n"
            "allow_anonymous false\n"
            f"password_file {self.auth_dir / 'passwd'}\n"
            f"acl_file {self.auth_dir / 'acl'}\n"
            "persistence false\n"
            "log_dest stderr\n"
            + self.extra + "\n"
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid
