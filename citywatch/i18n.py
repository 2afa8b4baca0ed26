"""Language and local time for every human-facing text (CLI, report, console, notifications).

English is the message-id language; `zh-CN` (the default: a Chinese city) is the full translation.
Messages live in standard gettext catalogs, `citywatch/locale/<lang>/LC_MESSAGES/citywatch.po`,
maintained with Babel (`babel.cfg`; see `python -m citywatch.i18n_catalog --help`). The .po files are
the only source: they are compiled the first time a language is used (about 30 ms for the zh-CN
catalog, plus about 50 ms to import Babel's catalog modules once; bounded in tests/test_i18n.py), so no
build step and no binary .mo files in the repository. The compiled catalog is kept in the user's cache,
named by the .po's size and checksum: a later start reads it in about a millisecond.

Rule messages and transition reasons are stored in English and rendered in a language at presentation
time by citywatch.alert_text; the stable codes (statuses, severities, rules...) get their names from
citywatch.labels.

Usage::

    t = translator("zh-CN")
    t.gettext("{n} alerts", n=3)                         # str.format after translation
    t.ngettext("{n} alert", "{n} alerts", 3, n=3)
    t.pgettext("alert status", "open")                   # a code's label, in its context
    t.local_time(ts, "Asia/Shanghai")                    # "2026-11-28 09:30 (UTC+08:00)"

Code that has no translator at hand uses the module-level functions (`_`, `ngettext`, `local_time`)
for the configured language: `use(language, timezone)` sets it (the CLI does so when it loads the
settings; before that, CITYWATCH_LANGUAGE / CITYWATCH_TIMEZONE or the defaults). Mark strings for
extraction without translating them (module-level tables) with `N_`.

Machine payloads (webhooks, API JSON, InfluxDB) never go through here: they keep UTC RFC 3339 times
and stable English codes.
"""

from __future__ import annotations

import functools
import gettext as _gettext
import io
import os
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

LANGUAGES: tuple[str, ...] = ("zh-CN", "en")  # shipped; the first is the default
DEFAULT_LANGUAGE = "zh-CN"
DEFAULT_TIMEZONE = "Asia/Shanghai"
DOMAIN = "citywatch"
LOCALE_DIR = Path(__file__).parent / "locale"
# Babel/CLDR locale identifiers for our language tags.
_BABEL_LOCALES = {"zh-CN": "zh_Hans_CN", "en": "en"}
# gettext directory names (POSIX style) for our language tags.
_CATALOG_DIRS = {"zh-CN": "zh_CN", "en": "en"}


def N_(msgid: str) -> str:  # noqa: N802 (the gettext convention)
    """Mark a string for extraction without translating it now (tables built at import time)."""
    return msgid


def NP_(context: str, msgid: str) -> str:  # noqa: N802 (gettext convention; extracted as NP_:1c,2)
    """Mark (context, message id) for extraction; returns the id unchanged."""
    return msgid


def check_language(language: str) -> str:
    """The shipped language tag for `language`, or ValueError listing the choices (config validation)."""
    for known in LANGUAGES:
        if language.replace("_", "-").lower() == known.lower():
            return known
    raise ValueError(f"unknown language {language!r}: one of {', '.join(LANGUAGES)}")


def catalog_path(language: str) -> Path:
    """The .po file of a shipped language."""
    return LOCALE_DIR / _CATALOG_DIRS[check_language(language)] / "LC_MESSAGES" / f"{DOMAIN}.po"


def _compile(po_path: Path) -> _gettext.GNUTranslations:
    """Read a .po with Babel and compile it to .mo: standard gettext semantics (plural forms from the
    catalog's header). Fuzzy entries are not used. The .mo is cached under the .po's size and checksum:
    Babel's import and parse cost about 100 ms, most of a short command's run (`citywatch replay` on
    5,000 rows); a cache that cannot be read or written only costs that time again."""
    source = po_path.read_bytes()
    # named by size and CRC-32 (zlib: hashlib's import alone costs 4 ms of a 0.25 s command)
    cached = _cache_dir() / f"{po_path.parent.parent.name}-{len(source)}-{zlib.crc32(source):08x}.mo"
    try:
        return _gettext.GNUTranslations(io.BytesIO(cached.read_bytes()))
    except Exception:  # noqa: BLE001 (none yet, unreadable or damaged: compile it again)
        pass
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    catalog = read_po(io.BytesIO(source), domain=DOMAIN)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    try:  # written whole, then renamed: a concurrent start never reads half a file
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, cached)
    except OSError:
        pass
    buf.seek(0)
    return _gettext.GNUTranslations(buf)


def _cache_dir() -> Path:
    """$XDG_CACHE_HOME/citywatch (default ~/.cache/citywatch): compiled catalogs."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "citywatch"


class Translator:
    """Messages, labels, times and numbers in one language."""

    def __init__(self, language: str) -> None:
        self.language = check_language(language)
        self.babel_locale = _BABEL_LOCALES[self.language]
        self._t = _compile(catalog_path(self.language))

    def gettext(self, msgid: str, /, **fields: Any) -> str:
        """The translation of `msgid`, then `str.format(**fields)` when fields are given."""
        text = self._t.gettext(msgid)
        return text.format(**fields) if fields else text

    def ngettext(self, singular: str, plural: str, count: int, /, **fields: Any) -> str:
        """The form for `count` (the language's plural rule), formatted with `fields` (give the count
        as a field too when the message shows it: `ngettext("{n} alert", "{n} alerts", k, n=k)`)."""
        text = self._t.ngettext(singular, plural, count)
        return text.format(**fields) if fields else text

    def pgettext(self, context: str, msgid: str, /, **fields: Any) -> str:
        """A message in a context: the same English word may need different translations."""
        text = self._t.pgettext(context, msgid)
        return text.format(**fields) if fields else text

    _ = gettext

    def local_time(self, ts: float | None, timezone: str, *, seconds: bool = False) -> str:
        """A human time in the city's zone with its offset: "2026-11-28 09:30 (UTC+08:00)"."""
        return local_time(ts, timezone, self.language, seconds=seconds)

    def format_datetime(self, ts: float, timezone: str, format: str = "medium") -> str:
        """A date and time in the locale's own style (Babel/CLDR: "2026年11月28日 09:30:00")."""
        from babel.dates import format_datetime

        return format_datetime(datetime.fromtimestamp(ts, UTC), format, tzinfo=ZoneInfo(timezone),
                               locale=self.babel_locale)

    def format_date(self, ts: float, timezone: str, format: str = "medium") -> str:
        """A date in the locale's own style, in the city's zone."""
        from babel.dates import format_date

        return format_date(datetime.fromtimestamp(ts, ZoneInfo(timezone)).date(), format, locale=self.babel_locale)

    def format_number(self, value: float, digits: int | None = None) -> str:
        """A number with the locale's separators; `digits` fixes the decimals (else up to 3)."""
        from babel.numbers import format_decimal

        pattern = "#,##0" + ("." + "0" * digits if digits else "") if digits is not None else None
        return format_decimal(value, format=pattern, locale=self.babel_locale)

    def format_percent(self, share: float, digits: int = 0) -> str:
        """A share (0..1) as a percentage in the locale's style."""
        from babel.numbers import format_percent

        return format_percent(share, format="#,##0" + ("." + "0" * digits if digits else "") + "%",
                              locale=self.babel_locale)

    def format_duration(self, seconds: float) -> str:
        """A duration in the two largest whole units ("1 hr, 30 min", "1小时30分钟"); under a minute in s."""
        from babel.lists import format_list
        from babel.units import format_unit

        total = int(round(abs(seconds)))
        parts: list[tuple[int, str]] = []
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
            if total >= size or (size == 1 and not parts):
                parts.append((total // size, unit))
                total %= size
            if len(parts) == 2:
                break
        parts = [p for p in parts if p[0]] or parts[:1]
        units = [format_unit(n, f"duration-{unit}", length="short", locale=self.babel_locale) for n, unit in parts]
        joined = "".join(units) if self.language == "zh-CN" else None  # CLDR's zh list adds a comma
        text = joined or format_list(units, "unit-short", locale=self.babel_locale)
        return ("-" if seconds < 0 else "") + text


@functools.cache
def translator(language: str) -> Translator:
    """The Translator of a shipped language (built once per process; ValueError for an unknown one)."""
    return Translator(check_language(language))


def local_time(ts: float | None, timezone: str | None = None, language: str | None = None, *,
               seconds: bool = False) -> str:
    """A human time in `timezone` (default: the configured one) with the offset, as
    "2026-11-28 09:30 (UTC+08:00)" (`seconds`: "09:30:05"); "-" for no time. The same digits in every
    shipped language, so an operator can paste it; the offset says which zone it is."""
    if ts is None:
        return "-"
    when = datetime.fromtimestamp(ts, UTC).astimezone(ZoneInfo(timezone or configured_timezone()))
    offset = when.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    stamp = when.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{stamp} (UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d})"


# -- the configured language (module-level convenience) ---------------------------------------------

_configured: tuple[str, str] | None = None


def _from_environment() -> tuple[str, str]:
    """Before `use`: the environment's CITYWATCH_LANGUAGE / CITYWATCH_TIMEZONE (as the settings would
    read them), else the defaults."""
    language, timezone = os.environ.get("CITYWATCH_LANGUAGE", ""), os.environ.get("CITYWATCH_TIMEZONE", "")
    try:
        language = check_language(language) if language else DEFAULT_LANGUAGE
    except ValueError:
        language = DEFAULT_LANGUAGE
    try:
        ZoneInfo(timezone or DEFAULT_TIMEZONE)
    except (ValueError, OSError, KeyError):  # ZoneInfoNotFoundError is a KeyError: the settings report it
        timezone = ""
    return language, timezone or DEFAULT_TIMEZONE


def _current_pair() -> tuple[str, str]:
    return _configured or _from_environment()


def use(language: str, timezone: str = DEFAULT_TIMEZONE) -> Translator:
    """Make `language` and `timezone` the process's configured ones (the CLI calls this with the settings)."""
    global _configured
    ZoneInfo(timezone)  # fail here, not at the first time printed
    _configured = (check_language(language), timezone)
    return translator(_configured[0])


def use_settings(settings: Any) -> Translator:
    """`use` with a Settings' `language` and `timezone`."""
    return use(settings.language, settings.timezone)


def current() -> Translator:
    """The configured language's Translator."""
    return translator(_current_pair()[0])


def configured_timezone() -> str:
    return _current_pair()[1]


def _(msgid: str, /, **fields: Any) -> str:
    """`gettext` in the configured language."""
    return current().gettext(msgid, **fields)


def ngettext(singular: str, plural: str, count: int, /, **fields: Any) -> str:
    """`ngettext` in the configured language."""
    return current().ngettext(singular, plural, count, **fields)


def pgettext(context: str, msgid: str, /, **fields: Any) -> str:
    """`pgettext` in the configured language."""
    return current().pgettext(context, msgid, **fields)
