"""What every `citywatch` command shares: the options of the group (config file, data dir, token) and
the settings loaded from them once, on first use. Its own module so that command groups defined
elsewhere (streams/faust_cli.py, loop/*_cli.py) take it without importing the whole CLI.

Cheap to import on purpose (no pydantic): `citywatch replay` without --kind needs only the language,
and building Settings (pydantic-settings) costs more than replaying 5,000 rows; `language` reads just
that key (tests/test_cli_imports.py keeps it so)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from citywatch import i18n
from citywatch.errors import CitywatchError

if TYPE_CHECKING:
    from citywatch.config import Settings


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
            from citywatch.config import load_settings

            overrides: dict[str, Any] = {"data_dir": self.data_dir} if self.data_dir else {}
            try:
                self._settings = load_settings(self.config, overrides)
            except CitywatchError as exc:
                raise ConfigProblem(str(exc)) from None
            i18n.use_settings(self._settings)  # human text in settings.language, times in settings.timezone
        return self._settings

    @property
    def language(self) -> str:
        """settings.language without building the settings when they are not loaded yet (see
        `configured_language`)."""
        if self._settings is not None:
            return self._settings.language
        return configured_language(self.config)


def configured_language(config: Path | None = None) -> str:
    """The language the settings would have, read cheaply: CITYWATCH_LANGUAGE (any case, as
    pydantic-settings matches it), else the config file's `language` (`config`, else
    CITYWATCH_CONFIG, else ./config.yaml), else the default. A config that cannot be read or names
    an unknown language gives the default: this is only for the wording of messages, and the
    commands that use the settings report such a config themselves."""
    for name, value in os.environ.items():
        if name.upper() == "CITYWATCH_LANGUAGE":
            return _known(value)
    if config is None:
        env = os.environ.get("CITYWATCH_CONFIG")
        config = Path(env) if env else Path("config.yaml") if Path("config.yaml").exists() else None
    if config is None:
        return i18n.DEFAULT_LANGUAGE
    import yaml  # only when there is a file (PyYAML's C loader: a few ms)

    try:
        loaded = yaml.load(config.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return i18n.DEFAULT_LANGUAGE
    language = loaded.get("language") if isinstance(loaded, dict) else None
    return _known(language) if isinstance(language, str) else i18n.DEFAULT_LANGUAGE


def _known(language: str) -> str:
    try:
        return i18n.check_language(language)
    except ValueError:
        return i18n.DEFAULT_LANGUAGE


pass_ctx = click.make_pass_decorator(Context)
