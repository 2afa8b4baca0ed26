"""The `citywatch` command: thin wrappers that parse arguments and call library functions.

Every command imports what it needs inside its function, and the commands defined in other modules
load only when run (LAZY_COMMANDS): a command pays for its own imports only, which keeps a short one
short (`citywatch replay` on 5,000 rows in under 0.25 s; tests/test_cli_imports.py)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from citywatch import i18n
from citywatch.cli_context import Context, pass_ctx
from citywatch.cli_help import localize_help
from citywatch.errors import CitywatchError
from citywatch.i18n import _, ngettext, pgettext
from citywatch.labels import label
from citywatch.loop.dispatch_cli import add_commands as add_dispatch_commands

# Commands defined in their own modules, imported only when run (or listed by --help): importing them
# all took over a second (pydantic, aiohttp, numpy...), more than `citywatch replay` spends on 5,000
# rows. name -> "module:attribute"; tests/test_cli_imports.py checks each resolves to that name.
LAZY_COMMANDS = {
    "audit": "citywatch.people.cli:audit",
    "bridge": "citywatch.streams.faust_cli:bridge_command",
    "dashboards": "citywatch.dashboards.cli:dashboards",
    "devices": "citywatch.devices.cli:devices",
    "incidents": "citywatch.loop.incidents_cli:incidents",
    "influx": "citywatch.sinks.cli:influx",
    "replay": "citywatch.streams.replay:replay_command",
    "report": "citywatch.report:report_command",
    "silences": "citywatch.loop.silences_cli:silences",
    "users": "citywatch.people.cli:users",
    "webhooks": "citywatch.sinks.cli:webhooks",
    "worker": "citywatch.streams.faust_cli:worker_command",
}


class LazyGroup(click.Group):
    """A group whose `lazy` subcommands ("name" -> "module:attribute") are imported on first use
    (click's documented lazy-loading pattern), then get the translated help like the others."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            self.add_command(self.load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def load(self, cmd_name: str) -> click.Command:
        """Import the command `cmd_name` names (localized: its help in the configured language)."""
        from importlib import import_module

        module, _sep, attribute = self.lazy[cmd_name].partition(":")
        command = getattr(import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
        localize_help(command)
        return command


def _ts(value: float | None) -> str:
    """A time for people: the city's zone (settings.timezone) with its offset, e.g.
    "2026-11-28 09:30:05 (UTC+08:00)"; --json output keeps epoch seconds (UTC)."""
    return i18n.local_time(value, seconds=True)


def _version() -> str:
    """The installed distribution's version (the package's own when run from a source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("citywatch")
    except PackageNotFoundError:
        from citywatch import __version__

        return __version__


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """--version: the version, the Python, and whether the hot path is compiled (citywatch/native.py)."""
    if not value or ctx.resilient_parsing:
        return
    import platform

    from citywatch.native import describe

    click.echo(f"citywatch {_version()} (Python {platform.python_version()}; hot path: {describe()})")
    ctx.exit()


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="Print the version and exit.")
@click.option("--config", "config", type=click.Path(path_type=Path), envvar="CITYWATCH_CONFIG",
              help="config.yaml to use (default: ./config.yaml if present).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Override data_dir.")
@click.option("--token", envvar="CITYWATCH_TOKEN", default=None, show_envvar=True,
              help="Your account's token for commands that go through a running `citywatch run` (default: the "
                   "bootstrap admin's, api.token or <data_dir>/api-token).")
@click.pass_context
def main(ctx: click.Context, config: Path | None, data_dir: Path | None, token: str | None) -> None:
    """citywatch: real-time IoT sensing and alerts for city governance."""
    ctx.obj = Context(config, data_dir, token)


# -- run --------------------------------------------------------------------------------------


@main.command()
@pass_ctx
def run(ctx: Context) -> None:
    """Run the pipeline: collect MQTT, detect, alert, deliver. Stops on SIGINT/SIGTERM.

    Exits non-zero on a fatal error (one line says why: a corrupt state.db, a crashed task, the data
    dir owned by another runner), so a supervisor restarts it."""
    import asyncio
    import signal

    from citywatch.logs import setup_logging
    from citywatch.streams.embedded import EmbeddedRunner, RunnerFailed

    settings = ctx.settings
    setup_logging(settings)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = EmbeddedRunner(settings)
        await runner.run(stop)

    try:
        asyncio.run(_main())
    except RunnerFailed:
        sys.exit(1)  # the runner has logged the one line saying why
    except CitywatchError as exc:  # refused at start: data dir in use, a database that cannot be opened
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--duration", default=60.0, show_default=True, help="Seconds to run.")
@click.option("--devices", "n_devices", default=300, show_default=True, help="Simulated devices.")
@click.option("--speed", default=120.0, show_default=True, help="Simulated seconds per real second.")
@click.option("--quiet", is_flag=True, help="Do not print alerts as they happen.")
@pass_ctx
def demo(ctx: Context, duration: float, n_devices: int, speed: float, quiet: bool) -> None:
    """Everything embedded: broker, simulator, pipeline, webhook receiver; then a summary."""
    import asyncio

    from citywatch.demo import run_demo

    summary = asyncio.run(run_demo(ctx.data_dir, duration, n_devices, speed, echo=None if quiet else click.echo))
    click.echo(summary.render())


@main.command()
@click.option("--url", default=None, help="Broker URL (default: mqtt.url from config).")
@click.option("--devices", "n_devices", default=300, show_default=True)
@click.option("--duration", default=60.0, show_default=True, help="Simulated seconds of telemetry.")
@click.option("--rate", default=None, type=float, help="Messages per second (default: as fast as possible).")
@click.option("--seed", default=1, show_default=True)
@click.option("--register", is_flag=True, help="Also register the simulated devices in the registry.")
@pass_ctx
def simulate(ctx: Context, url: str | None, n_devices: int, duration: float, rate: float | None,
             seed: int, register: bool) -> None:
    """Publish simulated telemetry of all kinds (with incidents) to a broker."""
    from urllib.parse import urlsplit

    from citywatch import progress
    from citywatch.cli_errors import UsageProblem
    from citywatch.devices.registry import Registry, registry_path
    from citywatch.ingest.publisher import publish_sync
    from citywatch.ingest.simulator import Simulator, make_devices
    from citywatch.logs import mask_url_credentials

    settings = ctx.settings
    broker = url or settings.mqtt.url
    where = mask_url_credentials(broker)
    parts = urlsplit(broker)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise UsageProblem(_("{url} is not an MQTT broker URL: give mqtt://HOST:1883 or mqtts://HOST:8883 (--url, or "
                             "mqtt.url in config.yaml)", url=where))
    devices = make_devices(n_devices, seed=seed)
    if register:
        from citywatch.people.audit import Actor, device_hook, ensure_schema

        registry = Registry(registry_path(settings.data_dir), on_change=device_hook(Actor.cli()))  # audited
        ensure_schema(registry.conn)
        added = 0
        for device in devices:
            if registry.get(device.id) is None:
                registry.add(device)
                added += 1
        registry.close()
        click.echo(ngettext("registered {n} device", "registered {n} devices", added, n=added))
    sim = Simulator(devices, seed=seed, start=time.time() - duration)
    with progress.bar(_("simulating {devices} devices", devices=len(devices))):
        messages = [(topic, payload) for topic, payload, _ in sim.messages(duration)]
    try:
        sent = publish_sync(broker, progress.track(messages, _("publishing to {url}", url=where)), qos=1, rate=rate)
    except (ConnectionError, TimeoutError, OSError) as exc:  # refused, unreachable, no answer, a TLS failure
        raise click.ClickException(_("{error}: is the broker running and reachable there? Check --url (or mqtt.url), "
                                     "and for mqtts:// its certificate", error=exc)) from None
    click.echo(_("published {n} messages from {devices} devices", n=sent, devices=len(devices)))


@main.command()
def schema() -> None:
    """Print the device payload contract as JSON Schema."""
    import json

    from citywatch.ingest.schemas import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.command("config")
@pass_ctx
def show_config(ctx: Context) -> None:
    """Print the effective configuration (secrets masked, passwords in URLs too)."""
    import json

    from citywatch.logs import mask_url_credentials

    def masked(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: masked(v) for k, v in value.items()}
        if isinstance(value, list):
            return [masked(v) for v in value]
        return mask_url_credentials(value) if isinstance(value, str) else value

    click.echo(json.dumps(masked(ctx.settings.model_dump(mode="json")), indent=2))


# -- alerts and dead letters ------------------------------------------------------------------


def _store(ctx: Context, tables: tuple[str, ...] = ()) -> Any:
    """The alert store; with `tables`, only those are integrity-checked at open (fast on a big file)."""
    from citywatch.sinks.store import AlertStore, store_path

    return AlertStore(store_path(ctx.settings.data_dir), check=tables or True)


@main.group()
def alerts() -> None:
    """Show and handle alerts."""


@alerts.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include resolved alerts.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def alerts_list(ctx: Context, show_all: bool, as_json: bool) -> None:
    """Open alerts (newest first); those a silence in force covers end with `silenced by <id>`."""
    from citywatch.loop.silences import in_force
    from citywatch.loop.silences_api import mark

    store = _store(ctx, ("alerts", "silences"))
    found = store.alerts(None if show_all else "open")
    now = time.time()
    marked = mark(found, in_force(store.conn, now), now, ctx.settings.alerts.safety_rules)  # with silenced, silence_id
    store.close()
    if as_json:
        import msgspec

        click.echo(msgspec.json.encode(marked).decode())
        return
    from citywatch.alert_text import alert_message
    from citywatch.terminal import for_terminal

    t = i18n.current()
    # the heading and the count go to stderr: stdout stays one tab-separated row per alert
    click.echo("\t".join((pgettext("column", "id"), pgettext("column", "status"), pgettext("column", "severity"),
                          pgettext("column", "rule"), pgettext("column", "device"), pgettext("column", "opened"),
                          pgettext("column", "message"))), err=True)
    for a, m in zip(found, marked, strict=True):  # device text escaped: a device cannot drive the operator's terminal
        fields = (a.id, label(t, "alert status", a.status), label(t, "severity", a.severity), label(t, "rule", a.rule),
                  a.device_id, _("opened {time}", time=_ts(a.opened_at)), alert_message(t, a),
                  *((_("silenced by {silence}", silence=m["silence_id"]),) if m["silenced"] else ()))
        click.echo("\t".join(for_terminal(f) for f in fields))
    click.echo(ngettext("{n} alert", "{n} alerts", len(found), n=len(found)), err=True)


def _act(ctx: Context, alert_id: str, action: str, by: str) -> None:
    from citywatch.actions import act

    try:
        result = act(ctx.settings, alert_id, action, by)
    except CitywatchError as exc:
        raise click.ClickException(str(exc)) from None
    transition = label(i18n.current(), "transition", result.get("transition", action))
    click.echo(_("{transition}: {alert}", transition=transition, alert=alert_id))


@alerts.command("ack")
@click.argument("alert_id")
@click.option("--by", default=lambda: os.environ.get("USER", "cli"), help="Who acknowledges.")
@pass_ctx
def alerts_ack(ctx: Context, alert_id: str, by: str) -> None:
    """Acknowledge an alert (stops the review-deadline escalation)."""
    _act(ctx, alert_id, "ack", by)


@alerts.command("resolve")
@click.argument("alert_id")
@click.option("--by", default=lambda: os.environ.get("USER", "cli"), help="Who resolves.")
@pass_ctx
def alerts_resolve(ctx: Context, alert_id: str, by: str) -> None:
    """Resolve an alert (closes the case)."""
    _act(ctx, alert_id, "resolve", by)


@main.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--reason", default=None, help="Only this reason (e.g. malformed_json, unknown_device).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def deadletters(ctx: Context, limit: int, reason: str | None, as_json: bool) -> None:
    """Messages that could not be processed, with the reason (newest first)."""
    from citywatch.labels import codes

    store = _store(ctx, ("dead_letters", "counters"))
    counts = store.dead_letter_counts()  # every dead letter ever, by reason (exact: counters, not rows)
    known = codes("dead letter reason") | set(counts)
    if reason is not None and reason not in known:
        store.close()
        from citywatch.cli_errors import UsageProblem

        raise UsageProblem(_("unknown reason {reason}: give one of {known}", reason=repr(reason),
                             known=", ".join(sorted(known))))
    found = store.dead_letters(limit, reason)
    sampled = store.sampled_out_counts()
    store.close()
    if as_json:
        import json

        click.echo(json.dumps([{"topic": d.topic, "reason": d.reason, "field": d.field, "detail": d.detail,
                                "size": d.size, "received_at": d.received_at,
                                "payload": d.payload.decode("utf-8", "replace")} for d in found]))
        return
    from citywatch.terminal import for_terminal  # payloads and topics may carry terminal escape sequences

    t = i18n.current()
    click.echo("\t".join((pgettext("column", "received"), pgettext("column", "reason"), pgettext("column", "topic"),
                          pgettext("column", "payload"))), err=True)  # stderr: stdout stays the rows
    for d in found:
        payload = d.payload[:80].decode("utf-8", "replace")
        click.echo(f"{_ts(d.received_at)}\t{label(t, 'dead letter reason', d.reason)}\t{for_terminal(d.topic)}\t"
                   f"{for_terminal(payload)}")
    summary = _(", ").join(
        _("{reason}: {n}", reason=label(t, "dead letter reason", r), n=n)
        + (_(" ({n} not stored: sampled)", n=sampled[r]) if sampled.get(r) else "")
        for r, n in counts.items()) or _("none")
    click.echo(_("dead letters by reason: {summary}", summary=summary), err=True)


# -- storage, backup and restore -------------------------------------------------------------


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


@main.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def storage(ctx: Context, as_json: bool) -> None:
    """Disk use of the data directory and what the live store holds (see `retention:` in config.yaml)."""
    from citywatch.sinks.retention import disk_usage

    data_dir = ctx.settings.data_dir
    store = _store(ctx)
    summary = store.summary()
    store.close()
    report = {"data_dir": str(data_dir), "disk": disk_usage(data_dir), **summary}
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
        return
    disk = report["disk"]
    t = i18n.current()
    click.echo(_("data dir {dir}: {used} used, {free} free of {size}", dir=data_dir, used=_mb(disk["data_dir_total"]),
                 free=_mb(disk["fs_free"]), size=_mb(disk["fs_size"])))
    for key in ("state_db", "state_wal", "registry_db", "registry_wal", "archive", "influx_buffer", "influx_rejected"):
        click.echo(f"  {key:<16}{_mb(disk[key]):>12}")
    dead = summary["dead_letters"]
    click.echo(_("alerts: {open} open, {resolved} resolved, {archived} archived; transitions: {transitions}; "
                 "device states: {states}", open=summary["alerts"]["open"], resolved=summary["alerts"]["resolved"],
                 archived=summary["alerts_archived"], transitions=summary["transitions"],
                 states=summary["device_states"]))
    outbox = _(", ").join(f"{label(t, 'delivery status', k)} {v}" for k, v in summary["outbox"].items())
    click.echo(_("webhook outbox: {counts}", counts=outbox or _("empty")))
    click.echo(_("dead letters: {counted} counted, {stored} stored, {sampled} sampled out, {purged} purged",
                 counted=dead["counted"], stored=dead["stored"], sampled=dead["sampled_out"], purged=dead["purged"]))


@main.command("backup")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The backup file to write (tar.gz, mode 0600).")
@pass_ctx
def backup_command(ctx: Context, out: Path) -> None:
    """Back up registry.db and state.db (SQLite online backup: safe while `citywatch run` runs)."""
    from citywatch import progress
    from citywatch.backup import backup

    with progress.bar(_("backing up registry.db and state.db")):
        manifest = backup(ctx.settings.data_dir, out)
    sizes = ", ".join(f"{name} {_mb(f['bytes'])}" for name, f in manifest["files"].items())
    click.echo(_("backup written to {out} ({sizes}; {created})", out=out, sizes=sizes, created=manifest["created_at"]))


@main.command("restore")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data-dir", "target", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Restore into this directory (default: data_dir).")
@click.option("--force", is_flag=True, help="Replace the databases of a data directory that is not empty.")
@pass_ctx
def restore_command(ctx: Context, archive: Path, target: Path | None, force: bool) -> None:
    """Restore a backup's databases (refused while a runner holds the data directory)."""
    from citywatch import progress
    from citywatch.backup import restore

    data_dir = target or ctx.data_dir or ctx.settings.data_dir
    with progress.bar(_("checking and restoring {file}", file=archive.name)):
        manifest = restore(archive, data_dir, force=force)
    click.echo(_("restored {files} from {created} into {dir}", files=", ".join(manifest["files"]),
                 created=manifest["created_at"], dir=data_dir))


add_dispatch_commands(alerts)  # alerts assign / on-site / rectify / reject / close
localize_help(main)  # help in the configured language (last: after every eager command is added)


def entrypoint() -> None:
    try:
        main()
    except CitywatchError as exc:
        click.echo(_("error: {message}", message=exc), err=True)
        sys.exit(2)


if __name__ == "__main__":
    entrypoint()
