"""`citywatch devices ...`: the installers' commands for the device registry."""

from __future__ import annotations

from typing import Any

import click
import msgspec

from citywatch.errors import CitywatchError
from citywatch.model import KINDS, Device


def _context() -> Any:
    """The CLI context (settings) created by the top-level `citywatch` group."""
    return click.get_current_context().find_root().obj


@click.group()
def devices() -> None:
    """Register and list devices."""


def _registry() -> Any:
    from citywatch.devices.registry import Registry, registry_path

    return Registry(registry_path(_context().settings.data_dir))


@devices.command("add")
@click.argument("device_id")
@click.option("--kind", type=click.Choice(KINDS), required=True)
@click.option("--district", default="")
@click.option("--grid", default="")
@click.option("--zone-class", default=None, help="Noise functional zone class: 0, 1, 2, 3, 4a, 4b.")
@click.option("--lat", type=float, default=None)
@click.option("--lon", type=float, default=None)
@click.option("--address", default="")
@click.option("--interval", "interval_s", type=float, default=60.0, show_default=True,
              help="Expected reporting interval, seconds.")
@click.option("--tenants", type=int, default=None, help="Registered tenants (locks).")
@click.option("--max-stay-min", type=float, default=None, help="Maximum stay (parking), minutes.")
@click.option("--no-parking", is_flag=True, help="Bay in a no-parking zone or fire lane.")
def devices_add(device_id: str, kind: str, **attrs: Any) -> None:
    """Register a device."""
    registry = _registry()
    try:
        device = registry.add(Device(id=device_id, kind=kind, **attrs))
    except CitywatchError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        registry.close()
    click.echo(f"added {device.id} ({device.kind})")


@devices.command("list")
@click.option("--kind", type=click.Choice(KINDS), default=None)
@click.option("--json", "as_json", is_flag=True)
def devices_list(kind: str | None, as_json: bool) -> None:
    """List registered devices."""
    registry = _registry()
    found = [d for d in registry.all() if kind is None or d.kind == kind]
    registry.close()
    if as_json:
        click.echo(msgspec.json.encode(found).decode())
        return
    for d in found:
        state = "enabled" if d.enabled else "disabled"
        click.echo(f"{d.id}\t{d.kind}\t{d.district}\t{d.grid}\t{d.zone_class or '-'}\t{state}\t{d.address}")
    click.echo(f"{len(found)} devices", err=True)


