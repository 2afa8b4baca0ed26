"""What a `citywatch` command imports: commands load lazily, `citywatch replay` (generic) stays light.

Issue 20 item 4 wants `citywatch replay` on 5,000 rows in at most 0.25 s, process start to exit; the
imports once took 1.2 s (every command group eagerly, pydantic-settings for the language, aiohttp,
numpy). These tests assert which modules a run loads, not how long it takes (the time is
benchmarks/replay_cli.py's): a regression that brings a heavy module back onto the path fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from citywatch import i18n
from citywatch.cli import LAZY_COMMANDS, main
from citywatch.cli_context import Context, configured_language

ROOT = Path(__file__).resolve().parent.parent

# Each of these costs from 20 ms (msgspec) to 0.4 s (pydantic-settings) of the 0.25 s budget
# (python -X importtime); rich is only for a progress bar on a terminal, never in these pipes.
HEAVY = ("aiohttp", "pydantic", "pydantic_settings", "numpy", "asyncio", "babel", "yaml", "river", "faust", "msgspec",
         "rich", "citywatch.config", "citywatch.model", "citywatch.streams.pipeline", "citywatch.httpserve")


# Every command `citywatch --help` listed when all were imported eagerly (before issue 20).
EVERY_COMMAND = ("alerts", "audit", "backup", "bridge", "config", "dashboards", "deadletters", "demo", "devices",
                 "incidents", "influx", "replay", "report", "restore", "run", "schema", "silences", "simulate",
                 "storage", "users", "webhooks", "worker")


def loaded_after(code: str, cwd: Path, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter holds after running `code` (in `cwd`, no config file there)."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CITYWATCH_")}
    environ.update({"PYTHONPATH": str(ROOT), **(env or {})})
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m in HEAVY or m.split(".")[0] in HEAVY}


def test_importing_the_cli_loads_no_command_module_and_nothing_heavy(tmp_path: Path) -> None:
    modules = loaded_after("import citywatch.cli", tmp_path)
    assert heavy(modules) == set()
    lazy_modules = {target.partition(":")[0] for target in LAZY_COMMANDS.values()}
    assert modules & lazy_modules == set()  # imported when a command is run or listed, not before


def test_generic_replay_through_the_cli_loads_nothing_heavy(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("timestamp,value\n" + "".join(f"{1790000000 + 60 * i},{i % 7}\n"
                                                                   for i in range(300)))
    run = ("from citywatch.cli import main\n"
           "main(['replay', 'in.csv', '--out', 'out.csv'], standalone_mode=False)")
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    loaded_after(run, tmp_path, cache)  # the first run compiles the message catalog (Babel) into the cache
    modules = loaded_after(run, tmp_path, cache)
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 301
    assert heavy(modules) == set()


def test_generic_replay_of_iso_times_loads_no_numpy_for_a_small_file(tmp_path: Path) -> None:
    """A file of one chunk reads ISO 8601 row by row: numpy's import costs more than 5,000 rows."""
    (tmp_path / "in.csv").write_text("timestamp,value\n" + "".join(
        f"2026-11-{18 + i // 1440}T{i // 60 % 24:02d}:{i % 60:02d}:00Z,{i % 7}\n" for i in range(3000)))
    run = ("from citywatch.cli import main\n"
           "main(['replay', 'in.csv', '--out', 'out.csv'], standalone_mode=False)")
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    loaded_after(run, tmp_path, cache)
    modules = loaded_after(run, tmp_path, cache)
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 3001
    assert heavy(modules) == set()


def test_every_lazy_command_is_the_command_of_that_name() -> None:
    for name, target in LAZY_COMMANDS.items():
        command = main.get_command(click.Context(main), name)
        assert isinstance(command, click.Command), target
        assert command.name == name, target


def test_help_lists_every_command_translated(tmp_path: Path) -> None:
    """`citywatch --help` imports the command modules to list them, in the configured language."""
    (tmp_path / "config.yaml").write_text("language: en\n")
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "config.yaml"), "--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:")[1]
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    assert names == sorted(EVERY_COMMAND)  # each with its one-line help (a failing import would stop --help)
    result = CliRunner().invoke(main, ["replay", "--help"], env={"CITYWATCH_LANGUAGE": "zh-CN"})
    assert result.exit_code == 0, result.output
    assert "用法" in result.output and "INPUT.csv" in result.output  # a lazily loaded command's help, translated


# -- the language without the settings --------------------------------------------------------------


def test_configured_language_reads_only_that_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CITYWATCH_LANGUAGE", raising=False)
    monkeypatch.delenv("CITYWATCH_CONFIG", raising=False)
    assert configured_language() == i18n.DEFAULT_LANGUAGE
    (tmp_path / "config.yaml").write_text("language: EN\nmqtt: {url: 'not checked here'}\n")
    assert configured_language() == "en"  # ./config.yaml, normalised as the settings do
    other = tmp_path / "other.yaml"
    other.write_text("language: zh_cn\n")
    monkeypatch.setenv("CITYWATCH_CONFIG", str(other))
    assert configured_language() == "zh-CN"
    assert configured_language(tmp_path / "config.yaml") == "en"  # --config wins over CITYWATCH_CONFIG
    monkeypatch.setenv("citywatch_language", "en")  # the environment wins, in any case (as pydantic-settings)
    assert configured_language(other) == "en"
    monkeypatch.delenv("citywatch_language")
    for broken in ("language: klingon\n", "language: [en\n", "- a list\n"):
        other.write_text(broken)
        assert configured_language(other) == i18n.DEFAULT_LANGUAGE  # help and messages still print
    assert configured_language(tmp_path / "missing.yaml") == i18n.DEFAULT_LANGUAGE


def test_context_language_agrees_with_the_settings_once_loaded(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CITYWATCH_LANGUAGE", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text(f"language: en\ndata_dir: {tmp_path / 'data'}\n")
    ctx = Context(config, None)
    assert ctx.language == "en" and ctx._settings is None  # read without building the settings
    assert ctx.settings.language == ctx.language == "en"


# -- the compiled message catalog, cached ------------------------------------------------------------


def test_catalog_is_compiled_once_then_read_from_the_cache(tmp_path: Path) -> None:
    probe = ("from citywatch.i18n import translator\n"
             "print(translator('zh-CN').gettext('{n} alert', n=1))")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    first = loaded_after(probe, tmp_path, env)
    assert "babel.messages.pofile" in first
    [cached] = (tmp_path / "cache" / "citywatch").glob("zh_CN-*.mo")
    second = loaded_after(probe, tmp_path, env)
    assert "babel.messages.pofile" not in second and "babel" not in second
    cached.write_bytes(b"not a catalog")  # damaged: compiled again, and repaired
    assert "babel.messages.pofile" in loaded_after(probe, tmp_path, env)
    assert cached.read_bytes()[:4] in (b"\xde\x12\x04\x95", b"\x95\x04\x12\xde")  # a .mo again


def test_cached_catalog_translates_as_the_compiled_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    compiled = i18n.Translator("zh-CN")  # compiles and writes the cache
    cached = i18n.Translator("zh-CN")  # reads it
    assert list((tmp_path / "cache" / "citywatch").glob("zh_CN-*.mo"))
    for msgid in ("Show this message and exit.", "replaying {file}"):
        assert cached.gettext(msgid, file="x") == compiled.gettext(msgid, file="x") != msgid.format(file="x")
    assert cached.ngettext("{n} alert", "{n} alerts", 2, n=2) == compiled.ngettext("{n} alert", "{n} alerts", 2, n=2)
    (tmp_path / "file").write_text("")  # a cache that cannot be created: still translates (in memory)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    assert i18n.Translator("zh-CN").gettext("replaying {file}", file="x") == compiled.gettext("replaying {file}",
                                                                                            file="x")
