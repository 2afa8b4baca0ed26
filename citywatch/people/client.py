"""Which token a CLI command presents to the running owner's API (citywatch/actions.py,
citywatch/loop/silences_cli.py): `--token` (on `citywatch` itself), else $CITYWATCH_TOKEN, else the
bootstrap admin's (api.token, api.token_file, or <data_dir>/api-token, readable by whoever may read
the data dir). Without a runner the CLI works on the files directly as the local admin: no token."""

from __future__ import annotations

import os

import click

from citywatch.config import Settings

ENV = "CITYWATCH_TOKEN"


def cli_token(settings: Settings) -> str | None:
    ctx = click.get_current_context(silent=True)
    given = getattr(ctx.find_root().obj, "token", None) if ctx is not None else None
    if given:
        return str(given).strip()
    env = os.environ.get(ENV, "").strip()
    if env:
        return env
    from citywatch.apitoken import api_token

    return api_token(settings.api, settings.data_dir, create=False)


def refusal(status: int, message: str | None) -> str:
    """A person's line for the API's 401, 403 or 429 (else the API's own message)."""
    if status == 401:
        return (f"the running API refused our token (401): give yours with --token or ${ENV}; without them the "
                "bootstrap admin's is used (api.token, api.token_file or <data_dir>/api-token)")
    if status == 403:
        return f"the running API refused: {message or 'forbidden'} (403; the attempt is in the audit trail)"
    if status == 429:
        return f"the running API refused: {message or 'too many failed tokens from this address'} (429)"
    return message or f"the running API answered {status}"
