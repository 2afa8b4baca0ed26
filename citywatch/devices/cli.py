"""`citywatch devices ...`: the installers' commands for the device registry and broker accounts.

Thin wrappers: parse options, call registry / credentials / importer / commissioning, print.
Passwords are printed once (add, rotate, import) and never logged or stored in clear.
A running `citywatch run` picks up every registry change within about a second; with `kafka.registry:
topic`, each change is also published to Kafka for the workers (`devices publish` sends it all).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import msgspec

from citywatch import i18n
from citywatch.errors import CitywatchError
from citywatch.i18n import _, ngettext, pgettext
from citywatch.labels import label
from citywatch.model import KINDS, Device
from citywatch.terminal import for_terminal

RESETTABLE = ("district", "grid", "community", "city", "address", "location", "interval_s", "zone_class",
              "tenants", "max_stay_min", "no_parking", "thresholds")


def _settings() -> Any:
    """The settings of the top-level `citywatch` group's context."""
    return click.get_current_context().find_root().obj.settings


class _Tracked:
    """The registry's change hook: runs `hook` (the audit) and notes each changed device id, whose record
    `_registry` publishes once the command's commits are done (a password is no part of the record)."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook
        self.ids: dict[str, None] = {}  # in order, once each

    def __call__(self, conn: Any, verb: str, device_id: str, before: Any, after: Any) -> None:
        if verb != "rotate":
            self.ids[device_id] = None
        if self.hook is not None:
            self.hook(conn, verb, device_id, before, after)


@contextmanager
def _registry() -> Iterator[Any]:
    """The registry; every change is audited (the local admin, for this OS user: citywatch/people/audit.py)
    and, with kafka.registry: topic, published to Kafka after its commit (citywatch/devices/registry_topic.py)."""
    from citywatch.devices.registry import Registry, registry_path
    from citywatch.people.audit import Actor, device_hook, ensure_schema

    tracked = _Tracked(device_hook(Actor.cli()))
    registry = Registry(registry_path(_settings().data_dir), on_change=tracked)
    failed = True
    try:
        ensure_schema(registry.conn)
        yield registry
        failed = False
    finally:
        try:
            _publish_changes(registry, list(tracked.ids), failed)
        finally:
            registry.close()


def _publish_changes(registry: Any, ids: list[str], failed: bool) -> None:
    """Publish the changed devices as SQLite now has them (a removed one: a tombstone). When Kafka does not
    take them, the change stays in SQLite and the command fails saying how to catch up (never diverge
    silently); if the command failed anyway, that error stands and this one is only printed."""
    from citywatch.devices.registry_topic import PublishError, publish_devices, publish_timeout, run_publish

    kafka = _settings().kafka
    if not ids or kafka.registry != "topic":
        return
    try:
        run_publish(kafka, publish_devices(kafka, [(i, registry.get(i)) for i in ids]), publish_timeout(len(ids)))
    except PublishError as exc:
        message = _("the change is saved in the registry ({file}), but publishing it to Kafka failed: {error}; "
                    "workers reading the registry topic do not see it until you run `citywatch devices publish`",
                    file=registry.path, error=str(exc))
        if failed:
            click.echo(message, err=True)
            return
        raise click.ClickException(message) from None


def _friendly(fn: Callable[..., None]) -> Callable[..., None]:
    """Errors citywatch raises on purpose become a one-line message and exit code 1."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except CitywatchError as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


def _attribute_options(fn: Callable[..., None]) -> Callable[..., None]:
    """The device attributes add and update share; None means 'not given'."""
    options = [
        click.option("--district"), click.option("--grid"),
        click.option("--community", help="Community or street: the level between grid and district."),
        click.option("--city"), click.option("--address"),
        click.option("--lat", type=float), click.option("--lon", type=float),
        click.option("--interval", "interval_s", type=float, help="Expected reporting interval, s (default 60)."),
        click.option("--zone-class", help="Noise functional zone class (rules.noise.limits: 0, 1, 2, 3, 4a, 4b)."),
        click.option("--tenants", type=int, help="Registered tenants (locks)."),
        click.option("--max-stay-min", type=float, help="Maximum stay (parking), minutes."),
        click.option("--no-parking/--parking-allowed", default=None, help="Bay in a no-parking zone or fire lane."),
        click.option("--threshold", "thresholds", multiple=True, metavar="KEY=VALUE",
                     help="Per-device rule threshold, e.g. gas.level1_pct=20 (repeatable; KEY= removes on update)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _sync_options(fn: Callable[..., None]) -> Callable[..., None]:
    """Optionally rewrite the broker's files (and SIGHUP it) right after a change."""
    fn = click.option("--pid-file", type=click.Path(path_type=Path), envvar="CITYWATCH_MOSQUITTO_PID_FILE",
                      help="Mosquitto's pid file: send it SIGHUP after --auth-dir is rewritten.")(fn)
    return click.option("--auth-dir", type=click.Path(path_type=Path), envvar="CITYWATCH_MOSQUITTO_AUTH_DIR",
                        help="Rewrite the Mosquitto password/acl files in this directory after the change.")(fn)


def _sync(registry: Any, auth_dir: Path | None, pid_file: Path | None) -> None:
    if auth_dir is None:  # the command as printed works once DIR and FILE are filled in (tests/test_cli_guides.py)
        click.echo(_("broker accounts change once you run `citywatch devices mosquitto-auth --out DIR --reload "
                     "--pid-file FILE` (DIR: the directory of Mosquitto's password_file and acl_file; FILE: its "
                     "pid_file)"), err=True)
        return
    _write_auth(registry, auth_dir, None, reload=pid_file is not None, pid=None, pid_file=pid_file)


def _broker_option(fn: Callable[..., None]) -> Callable[..., None]:
    return click.option("--broker-url", help="Broker URL devices use (default: mqtt.url).")(fn)


def _show_config(device: Device, password: str, broker_url: str | None) -> None:
    from citywatch.devices.credentials import device_config

    s = _settings()
    click.echo(device_config(device, password, broker_url or s.mqtt.url, s.mqtt.topic_prefix), nl=False)


def _install() -> Any:
    """What devices are checked against (attributes.InstallRules from the settings)."""
    from citywatch.devices.attributes import InstallRules

    return InstallRules.from_settings(_settings())


def _csv_text(data: bytes, name: str) -> str:
    """The CSV as text: UTF-8 (a BOM, as spreadsheets write, is fine); else the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, byte = data[:exc.start].count(b"\n") + 1, format(data[exc.start], "02x")
        raise click.ClickException(_("{file}: line {line}: not UTF-8 (byte 0x{byte}); save the sheet as CSV UTF-8",
                                     file=name, line=line, byte=byte)) from None


@click.group()
def devices() -> None:
    """Register devices and manage their broker accounts."""


@devices.command("add")
@click.argument("device_id")
@click.option("--kind", type=click.Choice(KINDS), required=True)
@_attribute_options
@_broker_option
@_sync_options
@_friendly
def devices_add(device_id: str, kind: str, thresholds: tuple[str, ...], broker_url: str | None,
                auth_dir: Path | None, pid_file: Path | None, **attrs: Any) -> None:
    """Register a device; print its password once, in a ready-to-paste device config."""
    from citywatch.devices.attributes import check_install
    from citywatch.devices.credentials import generate_password, hash_password
    from citywatch.devices.importer import parse_thresholds

    given = {k: v for k, v in attrs.items() if v is not None}
    device = Device(id=device_id, kind=kind, thresholds=parse_thresholds(list(thresholds)), **given)
    check_install(device, _install())
    password = generate_password()
    with _registry() as registry:
        device = registry.add(device, hash_password(password))
        click.echo(_("added {device} ({kind})", device=device.id, kind=label(i18n.current(), "kind", device.kind)),
                   err=True)
        _show_config(device, password, broker_url)
        _sync(registry, auth_dir, pid_file)


@devices.command("import")
@click.argument("csv_file", type=click.File("rb"))
@click.option("--secrets-out", type=click.Path(path_type=Path, allow_dash=True),
              help="Where the new passwords go: a new file (CSV, mode 0600; never overwritten), or - for stdout.")
@click.option("--dry-run", is_flag=True, help="Only check the file.")
@click.option("--update", is_flag=True, help="Also change registered devices to their rows (a corrected sheet): "
              "new ids are added, registered ones get the row's attributes; all rows or none.")
@_broker_option
@_sync_options
@_friendly
def devices_import(csv_file: Any, secrets_out: Path | None, dry_run: bool, update: bool, broker_url: str | None,
                   auth_dir: Path | None, pid_file: Path | None) -> None:
    """Register every device in a CSV (all rows or none).

    Columns: id,kind (required), district, grid, address, lat, lon, interval_s, zone_class, tenants,
    max_stay_min, no_parking, thresholds (`key=value;key=value`), community, city (optional). Each
    device gets a password; --secrets-out is required so hundreds of passwords do not land in a
    terminal or a CI log. With --update, rows of registered ids replace those devices' attributes
    (an empty cell is the default; kind, status, password and registration time stay).
    """
    from citywatch import progress
    from citywatch.devices.importer import apply_import, plan_import

    text = _csv_text(csv_file.read(), csv_file.name)
    s = _settings()
    with _registry() as registry:
        with progress.bar(_("checking {file}", file=csv_file.name), total=text.count("\n") or None) as bar:
            plan = plan_import(registry, text, _install(), update, on_row=bar.advance)
        counts = _("{added} to add, {updated} to update, {unchanged} unchanged", added=len(plan.added),
                   updated=len(plan.updated), unchanged=len(plan.unchanged))
        if dry_run:
            found = len(plan.added) + len(plan.updated) + len(plan.unchanged)
            click.echo(ngettext("{n} device OK; nothing written (dry run)", "{n} devices OK; nothing written (dry run)",
                                found, n=found) + (f" ({counts})" if update else ""))
            return
        to_file = None if str(secrets_out) == "-" else secrets_out
        if secrets_out is None and (plan.added or not update):
            raise click.UsageError(_("give --secrets-out FILE (or - to print the passwords)"))
        from citywatch.people.audit import Actor, device_hook

        registry.on_change.hook = device_hook(Actor.cli(), {"add": "import"}, f"from {csv_file.name}")  # _Tracked
        with progress.bar(_("issuing passwords"), total=len(plan.added)) as issuing, \
                progress.bar(_("writing the registry"), total=len(plan.added) + len(plan.updated)) as writing:
            issued = apply_import(registry, plan, to_file, broker_url or s.mqtt.url, s.mqtt.topic_prefix,
                                  on_password=issuing.advance, on_write=writing.advance)
        if to_file is None and issued:
            click.echo("id,password")
            for device, password in issued:
                click.echo(f"{device.id},{password}")
        imported = ngettext("imported {n} device", "imported {n} devices", len(issued), n=len(issued))
        if update:
            imported += _("; updated {n}, {unchanged} unchanged", n=len(plan.updated), unchanged=len(plan.unchanged))
        click.echo(imported + (_("; passwords in {file}", file=to_file) if to_file and issued else ""), err=True)
        if issued:  # updates change no broker account (id, kind, status and password stay)
            _sync(registry, auth_dir, pid_file)


@devices.command("list")
@click.option("--kind", type=click.Choice(KINDS))
@click.option("--district")
@click.option("--grid")
@click.option("--community")
@click.option("--city")
@click.option("--status", type=click.Choice(["enabled", "disabled"]))
@click.option("--json", "as_json", is_flag=True)
def devices_list(kind: str | None, district: str | None, grid: str | None, community: str | None, city: str | None,
                 status: str | None, as_json: bool) -> None:
    """List registered devices (filters combine). Columns: id, kind, city, district, community, grid,
    zone class, status, address."""
    with _registry() as registry:
        found = registry.find(kind, district, grid, None if status is None else status == "enabled",
                              community=community, city=city)
    if as_json:
        click.echo(msgspec.json.encode(found).decode())
        return
    t = i18n.current()
    # the heading and the count go to stderr: stdout stays one tab-separated row per device
    click.echo("\t".join((pgettext("column", "id"), pgettext("column", "kind"), pgettext("column", "city"),
                          pgettext("column", "district"), pgettext("column", "community"), pgettext("column", "grid"),
                          pgettext("column", "zone class"), pgettext("column", "status"),
                          pgettext("column", "address"), pgettext("column", "registered"))), err=True)
    for d in found:
        state = label(t, "device status", "enabled" if d.enabled else "disabled")
        fields = (d.id, label(t, "kind", d.kind), d.city or "-", d.district, d.community or "-", d.grid,
                  d.zone_class or "-", state, d.address, i18n.local_time(d.created_at or None))
        click.echo("\t".join(for_terminal(f) for f in fields))
    click.echo(ngettext("{n} device", "{n} devices", len(found), n=len(found)), err=True)


@devices.command("show")
@click.argument("device_id")
@click.option("--json", "as_json", is_flag=True)
@_friendly
def devices_show(device_id: str, as_json: bool) -> None:
    """Every attribute of one device (whether it has a password, never the hash)."""
    with _registry() as registry:
        device = registry.require(device_id)
        info = {**msgspec.to_builtins(device), "password": registry.has_password(device_id)}
    if as_json:
        click.echo(msgspec.json.encode(info).decode())
        return
    t = i18n.current()
    for key, value in info.items():
        name = label(t, "device attribute", key)
        click.echo(_("{key}: {value}", key=name, value=_shown(t, key, value)))


def _shown(t: Any, key: str, value: Any) -> str:
    """One attribute for people: local time with offset (not an epoch), thresholds as key=value
    (not a Python dict), yes/no, labels for codes; device text escaped for the terminal."""
    if key == "created_at":
        return i18n.local_time(value or None, seconds=True)
    if key == "kind":
        return label(t, "kind", value)
    if key == "enabled":
        return label(t, "device status", "enabled" if value else "disabled")
    if key == "password":
        return _("set") if value else _("none (`citywatch devices rotate ID` gives one)")
    if key == "thresholds":
        return "; ".join(f"{k}={v:g}" for k, v in sorted(value.items())) if value else "-"
    if isinstance(value, bool):
        return _("yes") if value else _("no")
    if value is None or value == "":
        return "-"
    return for_terminal(format(value, "g") if isinstance(value, float) else str(value))


@devices.command("update")
@click.argument("device_id")
@_attribute_options
@click.option("--unset", "unset", multiple=True, type=click.Choice(RESETTABLE), help="Reset to the default.")
@_friendly
def devices_update(device_id: str, thresholds: tuple[str, ...], unset: tuple[str, ...], **attrs: Any) -> None:
    """Change attributes; the running pipeline uses them from its next registry refresh."""
    from citywatch.devices.attributes import check_install
    from citywatch.devices.importer import parse_thresholds

    defaults = Device(id="-", kind="gas")
    changes = {k: v for k, v in attrs.items() if v is not None}
    for name in unset:
        for field in ("lat", "lon") if name == "location" else (name,):
            changes[field] = getattr(defaults, field)
    with _registry() as registry:
        current = registry.require(device_id)
        if thresholds:
            merged = {} if "thresholds" in unset else dict(current.thresholds)
            removed = [t[:-1].strip() for t in thresholds if t.endswith("=")]
            merged.update(parse_thresholds([t for t in thresholds if not t.endswith("=")]))
            changes["thresholds"] = {k: v for k, v in merged.items() if k not in removed}
        if not changes:
            raise click.UsageError(_("nothing to change"))
        check_install(msgspec.structs.replace(current, **changes), _install(), new=False)
        device = registry.update(device_id, changes)
    click.echo(_("updated {device}: {changes}", device=device.id, changes=", ".join(sorted(changes))))


def _toggle(device_id: str, enabled: bool, auth_dir: Path | None, pid_file: Path | None) -> None:
    with _registry() as registry:
        registry.set_enabled(device_id, enabled)
        click.echo(_("enabled {device}", device=device_id) if enabled else _("disabled {device}", device=device_id))
        _sync(registry, auth_dir, pid_file)


@devices.command("disable")
@click.argument("device_id")
@_sync_options
@_friendly
def devices_disable(device_id: str, auth_dir: Path | None, pid_file: Path | None) -> None:
    """Stop processing its data (dead-lettered as device_disabled) and drop its broker account."""
    _toggle(device_id, False, auth_dir, pid_file)


@devices.command("enable")
@click.argument("device_id")
@_sync_options
@_friendly
def devices_enable(device_id: str, auth_dir: Path | None, pid_file: Path | None) -> None:
    """Process its data again and restore its broker account."""
    _toggle(device_id, True, auth_dir, pid_file)


@devices.command("rotate")
@click.argument("device_id")
@_broker_option
@_sync_options
@_friendly
def devices_rotate(device_id: str, broker_url: str | None, auth_dir: Path | None, pid_file: Path | None) -> None:
    """Give the device a new password (printed once); the old one stops working at the broker's reload."""
    from citywatch.devices.credentials import check_username, generate_password, hash_password

    password = generate_password()
    with _registry() as registry:
        device = registry.require(device_id)
        check_username(device.id)
        registry.set_password_hash(device_id, hash_password(password))
        click.echo(_("new password for {device}", device=device_id), err=True)
        _show_config(device, password, broker_url)
        _sync(registry, auth_dir, pid_file)


@devices.command("remove")
@click.argument("device_id")
@click.confirmation_option(prompt="Remove the device from the registry?")
@_sync_options
@_friendly
def devices_remove(device_id: str, auth_dir: Path | None, pid_file: Path | None) -> None:
    """Delete the device (its alerts and history stay in the alert store)."""
    with _registry() as registry:
        registry.remove(device_id)
        click.echo(_("removed {device}", device=device_id))
        _sync(registry, auth_dir, pid_file)


@devices.command("publish")
@_friendly
def devices_publish() -> None:
    """Send the whole registry to Kafka (kafka.registry_topic), for workers with kafka.registry: topic.

    Run it once before switching the workers to the topic, after restoring the registry from a backup, or
    when a command said a change could not be published: every device is sent, and a removal for each
    device the topic still has but the registry does not.
    """
    from citywatch.devices.registry_topic import PublishError, publish_timeout, republish, run_publish

    kafka = _settings().kafka
    with _registry() as registry:
        found = registry.all()
    try:
        n, gone = run_publish(kafka, republish(kafka, found), publish_timeout(2 * len(found)))  # read, then send
    except PublishError as exc:
        raise click.ClickException(_("publishing the registry to Kafka failed: {error}; check that Kafka runs and "
                                     "kafka.bootstrap (CITYWATCH_KAFKA__BOOTSTRAP), then run it again",
                                     error=str(exc))) from None
    click.echo(_("published the registry to {topic} at {bootstrap}: {n} devices, {gone} removed",
                 topic=kafka.registry_topic, bootstrap=kafka.bootstrap, n=n, gone=gone))


@devices.command("check")
@click.argument("device_id")
@click.option("--timeout", type=float, help="Seconds to wait (default: twice the device's interval + 5).")
@_friendly
def devices_check(device_id: str, timeout: float | None) -> None:
    """Commissioning test: wait for the device's next message and show what the pipeline makes of it.

    Exit code 0 accepted, 1 it would be dead-lettered, 3 nothing arrived (or the broker refused the check).
    """
    from citywatch.devices.commissioning import check_device, exit_code, render
    from citywatch.logs import mask_url_credentials

    s = _settings()
    if timeout is None:
        with _registry() as registry:
            timeout = registry.require(device_id).interval_s * 2 + 5
    click.echo(_("connecting to {url} ...", url=mask_url_credentials(s.mqtt.url)), err=True)
    wait = format(timeout, "g")
    listening = _("listening: waiting up to {timeout} s for the next message from {device} (trigger or power-cycle "
                  "it now)", timeout=wait, device=device_id)
    ready = functools.partial(click.echo, listening, err=True)
    result = check_device(s, device_id, timeout, on_ready=ready)
    click.echo(render(result))
    sys.exit(exit_code(result))


@devices.command("mosquitto-auth")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Directory for `passwd` and `acl` (point password_file and acl_file there).")
@click.option("--collector-password-file", type=click.Path(path_type=Path, dir_okay=False),
              help="The collector's password (default: mqtt.password, else one generated into data_dir).")
@click.option("--reload", is_flag=True, help="SIGHUP Mosquitto afterwards (needs --pid or --pid-file).")
@click.option("--pid", type=int, help="Mosquitto's pid, for --reload.")
@click.option("--pid-file", type=click.Path(path_type=Path), help="Mosquitto's pid file, for --reload.")
@_friendly
def devices_mosquitto_auth(out_dir: Path, collector_password_file: Path | None, reload: bool, pid: int | None,
                           pid_file: Path | None) -> None:
    """Write Mosquitto's password_file and acl_file from the registry.

    Each enabled device with a password may write only <prefix>/<kind>/<id>/#; the collector
    (mqtt.username, default citywatch-collector) may read <prefix>/#; anonymous clients get nothing.
    mosquitto.conf: `allow_anonymous false`, `password_file DIR/passwd`, `acl_file DIR/acl`.
    Files are replaced atomically, mode 0640, owned by user mosquitto when run as root.
    """
    if reload and pid is None and pid_file is None:
        from citywatch.cli_errors import UsageProblem

        raise UsageProblem(_("--reload needs Mosquitto's pid: add --pid-file FILE (pid_file in mosquitto.conf) "
                                 "or --pid N"))
    with _registry() as registry:
        _write_auth(registry, out_dir, collector_password_file, reload, pid, pid_file)


def _write_auth(registry: Any, out_dir: Path, collector_password_file: Path | None, reload: bool,
                pid: int | None, pid_file: Path | None) -> None:
    from citywatch.devices.credentials import broker_pid, collector_secret, reload_broker, write_mosquitto_auth

    s = _settings()
    if reload:
        pid = broker_pid(pid, pid_file)  # a bad pid is refused before any file is replaced
    from citywatch import progress

    collector = collector_secret(s, collector_password_file)
    with progress.bar(_("writing the broker's password and acl files")):
        files = write_mosquitto_auth(out_dir, registry.credentials(), collector.username, collector.password,
                                     s.mqtt.topic_prefix)
    click.echo(_("wrote {passwd} and {acl}: {n} device accounts + collector {collector}", passwd=files.password_file,
                 acl=files.acl_file, n=files.devices, collector=collector.username), err=True)
    if files.skipped:
        more = _(" and {n} more", n=len(files.skipped) - 10) if len(files.skipped) > 10 else ""
        click.echo(_("{n} enabled devices have no password yet (`devices rotate ID` gives one): {ids}{more}",
                     n=len(files.skipped), ids=", ".join(files.skipped[:10]), more=more), err=True)
    if collector.generated:
        click.echo(_("generated the collector's password into {file}; set mqtt.username: {user} and "
                     "mqtt.password_file: {file}", file=collector.generated, user=collector.username), err=True)
    if reload:
        click.echo(_("reloaded mosquitto (pid {pid})", pid=reload_broker(pid)), err=True)
