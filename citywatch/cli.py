"""The `citywatch` command: thin wrappers that parse arguments and call library functions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import msgspec

from citywatch.config import Settings, load_settings
from citywatch.errors import CitywatchError


def _ts(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class ConfigProblem(click.ClickException):
    """Bad configuration: one line naming the key, exit code 2 (like a usage error), no traceback."""

    exit_code = 2


class Context:
    def __init__(self, config: Path | None, data_dir: Path | None) -> None:
        self.config = config
        self.data_dir = data_dir
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            overrides: dict[str, Any] = {"data_dir": self.data_dir} if self.data_dir else {}
            try:
                self._settings = load_settings(self.config, overrides)
            except CitywatchError as exc:
                raise ConfigProblem(str(exc)) from None
        return self._settings


pass_ctx = click.make_pass_decorator(Context)


@click.group()
@click.option("--config", "config", type=click.Path(path_type=Path), envvar="CITYWATCH_CONFIG",
              help="config.yaml to use (default: ./config.yaml if present).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Override data_dir.")
@click.pass_context
def main(ctx: click.Context, config: Path | None, data_dir: Path | None) -> None:
    """citywatch: real-time IoT sensing and alerts for city governance."""
    ctx.obj = Context(config, data_dir)


# -- run --------------------------------------------------------------------------------------


@main.command()
@pass_ctx
def run(ctx: Context) -> None:
    """Run the pipeline: collect MQTT, detect, alert, deliver. Stops on SIGINT/SIGTERM.

    Exits non-zero on a fatal error (one line says why: a corrupt state.db, a crashed task, the data
    dir owned by another runner), so a supervisor restarts it."""
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
    from citywatch.devices.registry import Registry, registry_path
    from citywatch.ingest.publisher import publish_sync
    from citywatch.ingest.simulator import Simulator, make_devices

    settings = ctx.settings
    devices = make_devices(n_devices, seed=seed)
    if register:
        registry = Registry(registry_path(settings.data_dir))
        added = 0
        for device in devices:
            if registry.get(device.id) is None:
                registry.add(device)
                added += 1
        registry.close()
        click.echo(f"registered {added} devices")
    sim = Simulator(devices, seed=seed, start=time.time() - duration)
    messages = [(topic, payload) for topic, payload, _ in sim.messages(duration)]
    sent = publish_sync(url or settings.mqtt.url, messages, qos=1, rate=rate)
    click.echo(f"published {sent} messages from {len(devices)} devices")


@main.command()
def schema() -> None:
    """Print the device payload contract as JSON Schema."""
    from citywatch.ingest.schemas import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.command("config")
@pass_ctx
def show_config(ctx: Context) -> None:
    """Print the effective configuration (secrets masked, passwords in URLs too)."""
    from citywatch.logs import mask_url_credentials

    def masked(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: masked(v) for k, v in value.items()}
        if isinstance(value, list):
            return [masked(v) for v in value]
        return mask_url_credentials(value) if isinstance(value, str) else value

    click.echo(json.dumps(masked(ctx.settings.model_dump(mode="json")), indent=2))


# -- alerts and dead letters ------------------------------------------------------------------


def _store(ctx: Context) -> Any:
    from citywatch.sinks.store import AlertStore, store_path

    return AlertStore(store_path(ctx.settings.data_dir))


@main.group()
def alerts() -> None:
    """Show and handle alerts."""


@alerts.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include resolved alerts.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def alerts_list(ctx: Context, show_all: bool, as_json: bool) -> None:
    """Open alerts (newest first)."""
    store = _store(ctx)
    found = store.alerts(None if show_all else "open")
    store.close()
    if as_json:
        click.echo(msgspec.json.encode(found).decode())
        return
    for a in found:
        click.echo(f"{a.id}\t{a.status}\t{a.severity}\t{a.rule}\t{a.device_id}\t"
                   f"opened {_ts(a.opened_at)}\t{a.message}")
    click.echo(f"{len(found)} alerts", err=True)


def _act(ctx: Context, alert_id: str, action: str, by: str) -> None:
    from citywatch.actions import act

    try:
        result = act(ctx.settings, alert_id, action, by)
    except CitywatchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{result.get('transition', action)}: {alert_id}")


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
@click.option("--limit", default=50, show_default=True)
@click.option("--reason", default=None)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def deadletters(ctx: Context, limit: int, reason: str | None, as_json: bool) -> None:
    """Messages that could not be processed, with the reason (newest first)."""
    store = _store(ctx)
    found = store.dead_letters(limit, reason)
    counts = store.dead_letter_counts()
    store.close()
    if as_json:
        click.echo(json.dumps([{"topic": d.topic, "reason": d.reason, "detail": d.detail, "size": d.size,
                                "received_at": d.received_at,
                                "payload": d.payload.decode("utf-8", "replace")} for d in found]))
        return
    for d in found:
        payload = d.payload[:80].decode("utf-8", "replace").replace("\n", " ")
        click.echo(f"{_ts(d.received_at)}\t{d.reason}\t{d.topic}\t{payload}")
    summary = ", ".join(f"{r}: {n}" for r, n in counts.items()) or "none"
    click.echo(f"dead letters by reason: {summary}", err=True)


from citywatch.dashboards.cli import dashboards  # noqa: E402  (commands defined in their own modules)
from citywatch.devices.cli import devices  # noqa: E402
from citywatch.report import report_command  # noqa: E402
from citywatch.streams.faust_cli import bridge_command, worker_command  # noqa: E402
from citywatch.streams.replay import replay_command  # noqa: E402

main.add_command(devices)
main.add_command(dashboards)
main.add_command(report_command)
main.add_command(replay_command)
main.add_command(bridge_command)
main.add_command(worker_command)


def entrypoint() -> None:
    try:
        main()
    except CitywatchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    entrypoint()
