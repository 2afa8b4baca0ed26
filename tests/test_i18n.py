"""Language and local time: the catalogs, the Translator, and every human-facing text using them."""

from __future__ import annotations

import time

import pytest

from citywatch import i18n
from citywatch.config import load_settings
from citywatch.errors import ConfigError
from citywatch.i18n import LANGUAGES, Translator, local_time, translator
from citywatch.i18n_catalog import fields, problems, read
from citywatch.labels import CONTEXTS, codes, label

# 2026-11-28 01:30:05 UTC = 09:30:05 in Shanghai
TS = 1795829405.0


# -- catalogs ---------------------------------------------------------------------------------------


def test_catalogs_complete_and_up_to_date_with_the_code() -> None:
    """Re-extracts every message from the code (pybabel, babel.cfg) and compares: no message missing
    from or stale in a catalog, none untranslated or fuzzy, no translation using a field its id lacks."""
    assert problems() == []


def test_every_message_id_translated_in_each_language() -> None:
    for language in LANGUAGES:
        catalog = read(language)
        ids = [m for m in catalog if m.id]
        assert len(ids) > 50
        for m in ids:
            strings = [m.string] if isinstance(m.string, str) else list(m.string)
            assert strings and all(s.strip() for s in strings), (language, m.id)


def test_chinese_catalog_is_a_translation_not_a_copy() -> None:
    """zh-CN is the full translation: its strings are not the English ids (a copy would pass the
    completeness test). Codes-as-words aside, each one has Chinese characters."""
    untranslated = [m.id for m in read("zh-CN") if m.id and not any("\u4e00" <= ch <= "\u9fff" for ch in
                                                                    (m.string if isinstance(m.string, str)
                                                                     else "".join(m.string)))]
    assert untranslated == []


def test_format_fields_of_a_message() -> None:
    assert fields("{n} alerts of {kind:<8} {{literal}}") == {"n", "kind"}


def test_catalog_loads_fast() -> None:
    """The .po is compiled in memory at first use: no build step, cheap enough for every CLI start."""
    translator.cache_clear()
    i18n.translator("en")  # babel imported once
    start = time.perf_counter()
    Translator("zh-CN")
    elapsed = time.perf_counter() - start
    assert elapsed < 0.25, elapsed


# -- Translator -------------------------------------------------------------------------------------


def test_gettext_formats_after_translation() -> None:
    zh, en = translator("zh-CN"), translator("en")
    assert en.pgettext("alert status", "open") == "open"
    assert zh.pgettext("alert status", "open") == "待处理"
    assert zh.pgettext("transition", "opened") != zh.pgettext("alert status", "open")
    assert en.gettext("not a message {x}", x=1) == "not a message 1"  # an unknown id falls back to itself


def test_every_code_has_a_label_in_each_language() -> None:
    zh = translator("zh-CN")
    for context in CONTEXTS:
        for code in codes(context):
            assert label(translator("en"), context, code) == code
            assert label(zh, context, code) != code, (context, code)
    assert label(zh, "rule", "a_custom_rule") == "a_custom_rule"
    assert label(zh, "severity", None) == "-"


def test_language_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CITYWATCH_LANGUAGE", raising=False)  # the suite's English (conftest) aside
    assert load_settings(None, {}).language == "zh-CN"
    assert load_settings(None, {"language": "en"}).language == "en"
    assert load_settings(None, {"language": "zh_CN"}).language == "zh-CN"
    with pytest.raises(ConfigError, match="language: unknown language 'fr': one of zh-CN, en"):
        load_settings(None, {"language": "fr"})


def test_local_time_in_the_city_zone_with_offset() -> None:
    assert local_time(TS, "Asia/Shanghai", "zh-CN") == "2026-11-28 09:30 (UTC+08:00)"
    assert local_time(TS, "Asia/Shanghai", "en", seconds=True) == "2026-11-28 09:30:05 (UTC+08:00)"
    assert local_time(TS, "America/St_Johns", "en") == "2026-11-27 22:00 (UTC-03:30)"
    assert local_time(None, "Asia/Shanghai", "en") == "-"


def test_numbers_dates_and_durations_per_locale() -> None:
    zh, en = translator("zh-CN"), translator("en")
    assert zh.format_duration(5400) == "1小时30分钟"
    assert en.format_duration(5400) == "1 hr, 30 min"
    assert en.format_duration(45) == "45 sec"
    assert zh.format_datetime(TS, "Asia/Shanghai") == "2026年11月28日 09:30:05"
    assert en.format_number(12345.678, 1) == "12,345.7"
    assert zh.format_percent(0.9123, 1) == "91.2%"


def test_module_level_convenience_follows_use() -> None:
    try:
        i18n.use("zh-CN", "Asia/Shanghai")
        assert i18n.pgettext("severity", "critical") == "紧急"
        assert i18n.local_time(TS) == "2026-11-28 09:30 (UTC+08:00)"
        i18n.use("en", "Europe/London")
        assert i18n.pgettext("severity", "critical") == "critical"
        assert i18n.local_time(TS) == "2026-11-28 01:30 (UTC+00:00)"
    finally:
        i18n.use(i18n.DEFAULT_LANGUAGE, i18n.DEFAULT_TIMEZONE)
