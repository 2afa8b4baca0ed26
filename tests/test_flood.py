"""Issue 17's flood finding, reproduced: one client publishing garbage as fast as the broker takes it
(2,000 msg/s of garbage had filled a 30 MB data dir and halted processing for good). Now the data dir
on a 48 MB tmpfs stays under its bound, processing never stops, every garbage message is counted, and
every gas alarm sent meanwhile arrives as a webhook. Parameters are explicit below; benchmarks/flood.py
runs the same scenario for longer.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from citywatch.sinks.store import AlertStore, store_path
from tests.flood_scenario import FloodConfig, run_flood

TMPFS_MB = 48
DEAD_LETTERS_MAX_MB = 2
# The bound for this scenario: stored dead letters (at most DEAD_LETTERS_MAX_MB, and in 25 s at most
# total_burst + 25 x total_per_s = 700 rows, < 1 MB), the WAL between checkpoints (SQLite checkpoints
# every 1000 pages, 4 MB; journal_size_limit truncates it), and the live data of 360 devices, their
# alerts and webhooks (< 3 MB). Without sampling, 25 s of this flood is about 100 MB of dead letters.
BOUND_MB = 16
CONFIG = FloodConfig(seconds=25, alarms=40, city_devices=300, city_rate=200, garbage_bytes=1200, garbage_qos=1,
                     env={"CITYWATCH_RETENTION__DEAD_LETTERS__MAX_MB": str(DEAD_LETTERS_MAX_MB)})


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {TMPFS_MB} MB tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_garbage_flood_neither_fills_the_disk_nor_delays_alarms_past_delivery(tmp_path: Path,
                                                                                small_disk: Path) -> None:
    result = run_flood(small_disk, tmp_path, CONFIG)
    print("\n" + result.summary())
    assert result.runner_rc == 0, (tmp_path / "runner.log").read_text()[-3000:]
    assert result.garbage_rate > 1000, "the flood was too weak to mean anything"
    assert result.storage_errors == [], result.storage_errors[:3]
    assert result.max_data_dir < BOUND_MB * 1e6, f"data dir reached {result.max_data_dir / 1e6:.1f} MB"
    assert len(result.latencies) == result.alarms_sent == CONFIG.alarms, "alarms lost during the flood"
    counters = result.stats["counters"]
    assert counters["dead_letters"] == result.garbage_sent  # every garbage message counted, none silently lost
    store = AlertStore(store_path(small_disk / "data"), check=False)
    summary = store.summary()
    store.close()
    dead = summary["dead_letters"]
    assert dead["counted"] == result.garbage_sent and sum(dead["by_reason"].values()) == result.garbage_sent
    assert dead["stored"] <= 200 + 20 * (CONFIG.seconds + 30)  # total_burst + total_per_s x time
    assert dead["sampled_out"] == dead["counted"] - dead["stored"] - dead["purged"]
