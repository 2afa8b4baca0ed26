"""`citywatch run` as a real subprocess (python -m citywatch run), with a config file pointing at a
test Mosquitto: for what only a whole process shows (exit codes, stderr, file locks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.servers.mosquitto import free_port

ROOT = Path(__file__).resolve().parent.parent


def get_json(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a GET, for 2xx and error statuses alike."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class RunnerProcess:
    def __init__(self, workdir: Path, data_dir: Path, mqtt_url: str, client_id: str, **sections: Any) -> None:
        self.workdir = workdir
        self.data_dir = data_dir
        self.port = free_port()
        config: dict[str, Any] = {"data_dir": str(data_dir), "log_level": "INFO",
                                  "mqtt": {"url": mqtt_url, "client_id": client_id},
                                  "api": {"host": "127.0.0.1", "port": self.port}}
        for section, values in sections.items():
            config.setdefault(section, {}).update(values)
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / f"config-{self.port}.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.stderr_path = workdir / f"stderr-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RunnerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITYWATCH_")}
        env["CITYWATCH_CONFIG"] = str(self.config)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "citywatch", "run"], cwd=ROOT, env=env,
                                         stdout=subprocess.DEVNULL, stderr=err)
        return self

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"citywatch run exited with {self.proc.returncode}: {self.stderr[-3000:]}")
            try:
                status, body = get_json(f"{self.base}/ready", timeout=1)
            except (OSError, ValueError):
                status, body = 0, {}
            if status == 200:
                return body
            time.sleep(0.05)
        raise AssertionError(f"not ready within {timeout} s: {self.stderr[-3000:]}")

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
