"""Installers' input to `citywatch devices ...`: control characters refused, bad files and pids
answered with one clear line (never a traceback), and nothing half-written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from citywatch.devices import credentials
from citywatch.devices.credentials import CredentialError, reload_broker


@pytest.fixture
def no_signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records instead of signalling: a regression here would SIGHUP every process on the machine."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(credentials.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    return sent


@pytest.mark.parametrize("text", ["-1", "0", "1", " -1\n"])
def test_reload_refuses_pids_that_signal_more_than_one_process(tmp_path: Path, no_signals: list[Any],
                                                                text: str) -> None:
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(text)
    with pytest.raises(CredentialError, match="above 1"):
        reload_broker(pid_file=pid_file)
    with pytest.raises(CredentialError, match="above 1"):
        reload_broker(pid=int(text))
    assert no_signals == []


def test_reload_refuses_a_process_that_is_not_mosquitto(no_signals: list[Any]) -> None:
    with pytest.raises(CredentialError, match="not mosquitto"):
        reload_broker(pid=os.getpid())  # this pytest process
    assert no_signals == []
