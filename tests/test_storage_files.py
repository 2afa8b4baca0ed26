"""The database files themselves: private modes (they hold password hashes and alerts), and one clear
error naming the file, from the library and from the CLI, when a file is corrupt or read-only."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from citywatch.devices.registry import Registry, registry_path
from citywatch.errors import StorageError
from citywatch.model import DeadLetter, Device, Output
from citywatch.sinks.store import AlertStore, store_path
from tests.helpers import T0

FILES = ("state.db", "state.db-wal", "state.db-shm", "registry.db", "registry.db-wal", "registry.db-shm")


def populate(data_dir: Path, devices: int = 1) -> tuple[Registry, AlertStore]:
    registry = Registry(registry_path(data_dir))
    for n in range(devices):
        registry.add(Device(id=f"gas-{n}", kind="gas", address="x" * 200), password_hash="$pbkdf2-sha512$hash")
    store = AlertStore(store_path(data_dir))
    out = Output()
    out.dead_letters.append(DeadLetter("citywatch/gas/x/telemetry", b"{", "malformed_json", "", T0, 1))
    store.commit(out, [], {})
    return registry, store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_databases_and_their_wal_and_shm_files_are_created_private(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    old = os.umask(0o022)  # the usual umask: without care, SQLite makes them 0644
    try:
        registry, store = populate(tmp_path / "data")
    finally:
        os.umask(old)
    assert {name: mode(tmp_path / "data" / name) for name in FILES} == dict.fromkeys(FILES, 0o600)
    # new files get incremental auto-vacuum from the start, without the one-time VACUUM of older files
    assert [db.conn.execute("PRAGMA auto_vacuum").fetchone()[0] for db in (registry, store)] == [2, 2]
    assert "VACUUM" not in caplog.text
    registry.close()
    store.close()


def test_existing_files_with_wider_modes_are_tightened_when_opened(tmp_path: Path) -> None:
    registry, store = populate(tmp_path)  # kept open: the -wal/-shm files stay, as after a crash
    for name in FILES:  # as an older citywatch left them
        os.chmod(tmp_path / name, 0o644)
    again = Registry(registry_path(tmp_path)), AlertStore(store_path(tmp_path))
    assert {name: mode(tmp_path / name) for name in FILES} == dict.fromkeys(FILES, 0o600)
    for db in (*again, registry, store):
        db.close()


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CITYWATCH_CONFIG": os.devnull}
    return subprocess.run([sys.executable, "-m", "citywatch", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def assert_one_clear_line(result: subprocess.CompletedProcess[str], path: Path, words: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: ") and words in line, line


def corrupt_table_pages(path: Path, *tables: str) -> None:
    """Overwrite the b-tree page header of each table's root page: the file header is intact, the pages not."""
    conn = sqlite3.connect(path)
    roots = [conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (t,)).fetchone()[0] for t in tables]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    with open(path, "r+b") as f:
        for root in roots:
            f.seek((root - 1) * page_size)
            f.write(b"\x0d\xff\xff\xff\xff\xff\xff\xff")


@pytest.mark.parametrize("damage", ["not_a_database", "corrupt_page"])
def test_a_corrupt_database_is_one_clear_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    registry, store = populate(tmp_path, devices=50)
    registry.close()
    store.close()
    for name, tables in (("state.db", ("alerts", "dead_letters")), ("registry.db", ("devices",))):
        path = tmp_path / name
        if damage == "not_a_database":
            path.write_bytes(os.urandom(8192))
        else:  # each CLI command checks the tables it reads (the whole file when the runner starts)
            corrupt_table_pages(path, *tables)
    with pytest.raises(StorageError, match=f"^{tmp_path / 'state.db'}: the database is corrupt"):
        AlertStore(store_path(tmp_path))
    with pytest.raises(StorageError, match=f"^{tmp_path / 'registry.db'}: the database is corrupt"):
        Registry(registry_path(tmp_path))
    for args in (("alerts", "list"), ("deadletters",), ("storage",)):
        assert_one_clear_line(cli(tmp_path, *args), tmp_path / "state.db", "restore the last backup")
    assert_one_clear_line(cli(tmp_path, "devices", "list"), tmp_path / "registry.db", "corrupt")


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory on a tmpfs that is then remounted read-only (root ignores file modes)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        registry, store = populate(mount)
        registry.close()
        store.close()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_read_only_database_is_one_clear_error_naming_the_file(read_only_dir: Path) -> None:
    with pytest.raises(StorageError, match=f"^{read_only_dir / 'state.db'}: cannot write the database: "
                                           "the file system is mounted read-only"):
        AlertStore(store_path(read_only_dir))
    with pytest.raises(StorageError, match="registry.db: cannot write the database"):
        Registry(registry_path(read_only_dir))
    assert_one_clear_line(cli(read_only_dir, "alerts", "list"), read_only_dir / "state.db", "read-only")
    assert_one_clear_line(cli(read_only_dir, "devices", "list"), read_only_dir / "registry.db", "read-only")


def test_an_existing_api_token_file_is_tightened_when_read(tmp_path: Path) -> None:
    from citywatch.apitoken import api_token
    from citywatch.config import ApiSettings

    (tmp_path / "api-token").write_text("a-token-written-by-hand\n")
    os.chmod(tmp_path / "api-token", 0o644)
    assert api_token(ApiSettings(), tmp_path, create=False) == "a-token-written-by-hand"
    assert mode(tmp_path / "api-token") == 0o600
