"""`citywatch dashboards build|push`: Grafana dashboards as code."""

from __future__ import annotations

from pathlib import Path

import click

from citywatch.dashboards import DEFAULT_OUT, FOLDER


@click.group()
def dashboards() -> None:
    """Grafana dashboards as code: generate the files, upload them."""


@dashboards.command("build")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="Where deploy/grafana lives (dashboards/ and provisioning/ under it).")
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if the files differ from a fresh build.")
def build_command(out_dir: Path, check: bool) -> None:
    """Regenerate the dashboards JSON and Grafana provisioning files (deterministic)."""
    from citywatch.dashboards.build import stale, write

    if check:
        problems = stale(out_dir)
        for rel in problems:
            click.echo(f"stale: {out_dir / rel}", err=True)
        if problems:
            raise click.exceptions.Exit(1)
        click.echo(f"{out_dir}: up to date")
        return
    changed = write(out_dir)
    for path in changed:
        click.echo(f"wrote {path}")
    click.echo(f"{out_dir}: {len(changed)} file(s) changed")


@dashboards.command("push")
@click.option("--url", required=True, envvar="GRAFANA_URL", help="Grafana base URL, e.g. http://localhost:3000.")
@click.option("--token", envvar="GRAFANA_TOKEN", default=None,
              help="Service account token (or env GRAFANA_TOKEN); or put user:password in the URL.")
@click.option("--folder", default=FOLDER, show_default=True, help="Folder uid (and title) to put them in.")
@click.option("--from", "source", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Push the JSON files in this directory instead of a fresh build.")
def push_command(url: str, token: str | None, folder: str, source: Path | None) -> None:
    """Upload the dashboards to a running Grafana (create or overwrite)."""
    from citywatch.dashboards.push import PushError, load_dashboards, push

    try:
        pushed = push(url, token, load_dashboards(source), folder=folder)
    except PushError as exc:
        raise click.ClickException(str(exc)) from None
    for p in pushed:
        click.echo(f"pushed {p.uid} (version {p.version}): {p.url or p.title}")
