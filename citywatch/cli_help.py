"""`citywatch --help` in the configured language: command lists, command and option help, headings.

Click builds help from docstrings and `help=` texts fixed at import time, before any configuration
is read. `localize_help(main)` gives every command of the tree a help formatter that translates
them when help is printed; the language comes from the settings (`--config`, CITYWATCH_CONFIG,
./config.yaml, CITYWATCH_LANGUAGE), read quietly: a broken config still gets help, in the default
language. The message ids are the cleaned docstrings and help texts, extracted by
`citywatch.i18n_catalog.extract_click` (babel.cfg). Click's own few fixed phrases that we format
ourselves (Usage, Options, Commands, the help option) are translated here; the rest of click's
internal messages (a usage error's wording) stay English.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import click

from citywatch import i18n
from citywatch.i18n import Translator


def _help_translator(ctx: click.Context) -> Translator:
    """The configured language, for help printed before the command has loaded its settings (read
    once per invocation)."""
    root = ctx.find_root()
    settings = getattr(root.obj, "_settings", None)
    if settings is not None:
        return i18n.translator(settings.language)
    if "citywatch.help_language" not in root.meta:
        # only the language key (not the whole settings: every command's parsing comes here, for the
        # --help option's text); whatever is wrong with the config, help prints, in the default language
        from citywatch.cli_context import configured_language

        config = root.params.get("config")
        root.meta["citywatch.help_language"] = configured_language(Path(config) if config else None)
    return i18n.translator(root.meta["citywatch.help_language"])


def help_text(t: Translator, text: str | None) -> str:
    """A docstring or help= text in `t`'s language (cleaned as click shows it; up to a form feed)."""
    if not text:
        return ""
    return t.gettext(inspect.cleandoc(text).partition("\f")[0])


def _short(text: str, limit: int) -> str:
    """The first sentence, cut to `limit` (click's rule, with a Chinese full stop ending a sentence too)."""
    first = text.split("\n\n")[0].replace("\n", " ")
    for stop in ("。", ". "):
        if stop in first:
            first = first.split(stop)[0] + ("。" if stop == "。" else ".")
            break
    return first if len(first) <= limit else first[: max(limit - 3, 1)].rstrip() + "..."


class LocalizedHelp:
    """Mixed into a click Command or Group class: help in the configured language."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        t = _help_translator(ctx)
        pieces = self.collect_usage_pieces(ctx)  # type: ignore[attr-defined]
        formatter.write_usage(ctx.command_path, " ".join(pieces), prefix=t.gettext("Usage: "))

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        text = help_text(_help_translator(ctx), getattr(self, "help", None))
        if text:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(text)

    def get_short_help_str(self, limit: int = 45) -> str:
        ctx = click.get_current_context(silent=True)
        t = _help_translator(ctx) if ctx is not None else i18n.current()
        short = getattr(self, "short_help", None)
        return _short(help_text(t, short or getattr(self, "help", None)), limit if not short else 10_000)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        t = _help_translator(ctx)
        records = []
        for param in self.get_params(ctx):  # type: ignore[attr-defined]
            if isinstance(param, click.Option) and param.help:
                text = param.help
                param = copy.copy(param)
                param.help = t.gettext(text)
            record = param.get_help_record(ctx)
            if record is not None:
                records.append(record)
        if records:
            with formatter.section(t.gettext("Options")):
                formatter.write_dl(records)
        if isinstance(self, click.Group):
            self.format_commands(ctx, formatter)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        t = _help_translator(ctx)
        rows = []
        group: Any = self
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section(t.gettext("Commands")):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        option: click.Option | None = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:  # click caches it and relies on its identity: change it in place
            option.help = _help_translator(ctx).gettext("Show this message and exit.")
        return option


_CLASSES: dict[type, type] = {}


def localize_help(command: click.Command) -> None:
    """Give `command` and every command under it the translated help (their own classes kept)."""
    cls = type(command)
    if not issubclass(cls, LocalizedHelp):
        if cls not in _CLASSES:
            _CLASSES[cls] = type(f"Localized{cls.__name__}", (LocalizedHelp, cls), {})
        command.__class__ = _CLASSES[cls]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            localize_help(sub)
