"""`citywatch bridge` and `citywatch worker`: the Kafka runner's commands (thin, as cli.py).

Registered in citywatch/cli.py with `main.add_command(bridge_command)` and
`main.add_command(worker_command)`. Also runnable on their own, with a `health` check for
container health checks: `python -m citywatch.streams.faust_cli {bridge,worker,health} ...`.

Kafka options default to the `kafka:` configuration section and can be given on the command
line or as CITYWATCH_KAFKA__* environment variables.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click

from citywatch.config import Settings
from citywatch.errors import CitywatchError
from citywatch.i18n import _

_KAFKA_OPTIONS = (
    click.option("--bootstrap", envvar="CITYWATCH_KAFKA__BOOTSTRAP", default=None,
                 help="Kafka bootstrap servers, host:port[,host:port] (default: kafka.bootstrap)."),
    click.option("--partitions", envvar="CITYWATCH_KAFKA__PARTITIONS", type=int, default=None,
                 help="Partitions of the citywatch topics (default: kafka.partitions)."),
    click.option("--app-id", envvar="CITYWATCH_KAFKA__APP_ID", default=None,
                 help="Consumer group / Table prefix of the workers (default: kafka.app_id)."),
)


def _kafka_options(fun: Any) -> Any:
    for option in reversed(_KAFKA_OPTIONS):
        fun = option(fun)
    return fun


def _settings(ctx: click.Context) -> Settings:
    from citywatch.cli_context import Context

    obj = ctx.find_object(Context)
    if obj is None:
        obj = Context(None, None)
    return obj.settings


def _kafka(settings: Settings, bootstrap: str | None, partitions: int | None, app_id: str | None) -> Any:
    from citywatch.config import KafkaSettings

    kafka = settings.kafka
    update = {k: v for k, v in (("bootstrap", bootstrap), ("partitions", partitions), ("app_id", app_id))
              if v is not None}
    return KafkaSettings.model_validate({**kafka.model_dump(), **update}) if update else kafka


def check_kafka(kafka: Any) -> None:
    """Reach Kafka and create the topics before a worker starts: a broker that is down or refuses us
    is one line saying what to do (exit 1), not aiokafka's log line and a traceback."""
    from aiokafka.errors import KafkaError

    from citywatch.streams.bridge import ensure_topics

    quiet = logging.getLogger("aiokafka")  # its own "Unable connect to ..." line: the error below says it
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        asyncio.run(ensure_topics(kafka))
    except (KafkaError, OSError) as exc:
        raise click.ClickException(_(
            "cannot reach Kafka at {bootstrap} ({error}): start it, or give its address with --bootstrap "
            "(kafka.bootstrap, CITYWATCH_KAFKA__BOOTSTRAP); for SASL/TLS check kafka.security_protocol and the "
            "login", bootstrap=kafka.bootstrap, error=str(exc) or type(exc).__name__)) from None
    finally:
        quiet.setLevel(level)


def heartbeat_path(data_dir: Path, what: str, name: str) -> Path:
    return data_dir / "heartbeats" / f"{what}-{name}.json"


@click.command("bridge")
@click.option("--group", envvar="CITYWATCH_KAFKA__BRIDGE_GROUP", default=None,
              help="MQTT shared-subscription group (default: kafka.bridge_group).")
@click.option("--client-id", envvar="CITYWATCH_BRIDGE_CLIENT_ID", default=None,
              help="MQTT client id; give each bridge a stable one (default: <mqtt.client_id>-bridge-<host>).")
@_kafka_options
@click.pass_context
def bridge_command(ctx: click.Context, group: str | None, client_id: str | None, bootstrap: str | None,
                   partitions: int | None, app_id: str | None) -> None:
    """Move MQTT telemetry into Kafka (shared subscription; ack MQTT after Kafka acked)."""
    from citywatch.logs import setup_logging
    from citywatch.streams.bridge import Bridge

    settings = _settings(ctx)
    setup_logging(settings)
    kafka = _kafka(settings, bootstrap, partitions, app_id)
    if group:
        kafka = kafka.model_copy(update={"bridge_group": group})
    client_id = client_id or f"{settings.mqtt.client_id}-bridge-{socket.gethostname()}"
    bridge = Bridge(settings, kafka, client_id, heartbeat=heartbeat_path(settings.data_dir, "bridge", client_id))

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await bridge.run(stop)

    try:
        asyncio.run(_main())
    except CitywatchError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("worker")
@click.option("--role", type=click.Choice(["all", "process", "sink"]), default="all", show_default=True,
              help="process: the pipeline agents (scale these); sink: store, webhooks, InfluxDB (one); all: both.")
@click.option("--worker-id", envvar="CITYWATCH_WORKER_ID", default=None,
              help="Names this worker's heartbeat and work directory (default: the host name).")
@click.option("--loglevel", default="info", show_default=True)
@_kafka_options
@click.pass_context
def worker_command(ctx: click.Context, role: str, worker_id: str | None, loglevel: str, bootstrap: str | None,
                   partitions: int | None, app_id: str | None) -> None:
    """Run a Faust worker of the Kafka pipeline until SIGINT/SIGTERM."""
    from citywatch.streams.faust_app import run_worker

    settings = _settings(ctx)
    kafka = _kafka(settings, bootstrap, partitions, app_id)
    try:
        check_kafka(kafka)
        run_worker(settings, kafka, role, worker_id, loglevel)
    except CitywatchError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("health")
@click.argument("what", type=click.Choice(["worker", "bridge"]))
@click.option("--name", default=None, help="Worker id or bridge client id (default: as the command's default).")
@click.option("--max-age", default=30.0, show_default=True, help="Seconds a heartbeat stays fresh.")
@click.pass_context
def health_command(ctx: click.Context, what: str, name: str | None, max_age: float) -> None:
    """Exit 0 if this host's worker (or bridge) wrote a heartbeat within --max-age seconds."""
    settings = _settings(ctx)
    if name is None:
        host = socket.gethostname()
        name = host if what == "worker" else f"{settings.mqtt.client_id}-bridge-{host}"
    path = heartbeat_path(settings.data_dir, what, name)
    try:
        beat = json.loads(path.read_text())
    except (OSError, ValueError):
        click.echo(f"no heartbeat at {path}", err=True)
        sys.exit(1)
    age = time.time() - float(beat.get("at", 0))
    if age > max_age or (what == "bridge" and not beat.get("connected")):
        click.echo(f"stale or disconnected: {age:.0f} s old, {beat}", err=True)
        sys.exit(1)
    click.echo(json.dumps(beat))


@click.group()
@click.option("--config", "config", type=click.Path(path_type=Path), envvar="CITYWATCH_CONFIG")
@click.option("--data-dir", type=click.Path(path_type=Path))
@click.pass_context
def standalone(ctx: click.Context, config: Path | None, data_dir: Path | None) -> None:
    """citywatch's Kafka runner commands (also available as `citywatch bridge|worker`)."""
    from citywatch.cli_context import Context

    ctx.obj = Context(config, data_dir)


standalone.add_command(bridge_command)
standalone.add_command(worker_command)
standalone.add_command(health_command)

if __name__ == "__main__":
    standalone()
