"""`citywatch dashboards build|push`: Grafana dashboards as code."""

from __future__ import annotations

from pathlib import Path

import click

from citywatch.dashboards import DEFAULT_OUT, FOLDER
from citywatch.i18n import LANGUAGES, Translator


def _languages(given: str | None) -> tuple[str, Translator]:
    """(the dashboards' language: --language, else settings.language; the translator of this
    command's own messages: settings.language). Settings: the top-level command's, else the config's."""
    from citywatch.config import load_settings
    from citywatch.i18n import translator

    root = click.get_current_context().find_root().obj
    try:
        settings = root.settings if root is not None and hasattr(root, "settings") else load_settings()
    except Exception as exc:  # noqa: BLE001 (a broken config: say so, as every command does)
        raise click.ClickException(str(exc)) from None
    return given or settings.language, translator(settings.language)


_language_option = click.option("--language", type=click.Choice(LANGUAGES), default=None,
                                help="Language of titles and descriptions (default: language in config.yaml).")


@click.group()
def dashboards() -> None:
    """Grafana dashboards as code: generate the files, upload them."""


@dashboards.command("build")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="Where deploy/grafana lives (dashboards/ and provisioning/ under it).")
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if the files differ from a fresh build.")
@_language_option
def build_command(out_dir: Path, check: bool, language: str | None) -> None:
    """Regenerate the dashboards JSON and Grafana provisioning files (deterministic)."""
    from citywatch.dashboards.build import stale, write

    built, t = _languages(language)
    _ = t.gettext
    if check:
        problems = stale(out_dir, built)
        for rel in problems:
            click.echo(_("stale: {path}", path=out_dir / rel), err=True)
        if problems:
            raise click.exceptions.Exit(1)
        click.echo(_("{dir}: up to date", dir=out_dir))
        return
    changed = write(out_dir, built)
    for path in changed:
        click.echo(_("wrote {path}", path=path))
    click.echo(_("{dir}: {n} file(s) changed", dir=out_dir, n=len(changed)))


@dashboards.command("push")
@click.option("--url", required=True, envvar="GRAFANA_URL", help="Grafana base URL, e.g. http://localhost:3000.")
@click.option("--token", envvar="GRAFANA_TOKEN", default=None,
              help="Service account token (or env GRAFANA_TOKEN); or put user:password in the URL.")
@click.option("--folder", default=FOLDER, show_default=True, help="Folder uid (and title) to put them in.")
@click.option("--from", "source", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Push the JSON files in this directory instead of a fresh build.")
@_language_option
def push_command(url: str, token: str | None, folder: str, source: Path | None, language: str | None) -> None:
    """Upload the dashboards to a running Grafana (create or overwrite)."""
    from citywatch import progress
    from citywatch.dashboards.push import PushError, load_dashboards, push

    built, t = _languages(language)
    try:
        found = load_dashboards(source, built)
        with progress.bar(t.gettext("pushing dashboards to {url}", url=url), total=len(found)) as bar:
            pushed = push(url, token, found, folder=folder, on_each=bar.advance)
    except PushError as exc:
        raise click.ClickException(str(exc)) from None
    for p in pushed:
        click.echo(t.gettext("pushed {uid} (version {version}): {where}", uid=p.uid, version=p.version,
                             where=p.url or p.title))
