"""What every `citywatch` command shares: the options of the group (config file, data dir, token) and
the settings loaded from them once, on first use. Its own module so that command groups defined
elsewhere (streams/faust_cli.py, loop/*_cli.py) take it without importing the whole CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from citywatch import i18n
from citywatch.config import Settings, load_settings
from citywatch.errors import CitywatchError


class ConfigProblem(click.ClickException):
    """Bad configuration: one line naming the key, exit code 2 (like a usage error), no traceback."""

    exit_code = 2


class Context:
    def __init__(self, config: Path | None, data_dir: Path | None, token: str | None = None) -> None:
        self.config = config
        self.data_dir = data_dir
        self.token = token  # for the running owner's API (citywatch/people/client.py)
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            overrides: dict[str, Any] = {"data_dir": self.data_dir} if self.data_dir else {}
            try:
                self._settings = load_settings(self.config, overrides)
            except CitywatchError as exc:
                raise ConfigProblem(str(exc)) from None
            i18n.use_settings(self._settings)  # human text in settings.language, times in settings.timezone
        return self._settings


pass_ctx = click.make_pass_decorator(Context)
