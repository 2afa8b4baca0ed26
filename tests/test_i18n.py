"""Language and local time: the catalogs, the Translator, and every human-facing text using them."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from citywatch import i18n
from citywatch.cli import main
from citywatch.config import load_settings
from citywatch.errors import ConfigError
from citywatch.i18n import LANGUAGES, Translator, local_time, translator
from citywatch.i18n_catalog import fields, problems, read
from citywatch.labels import CONTEXTS, codes, label
from citywatch.model import Device
from tests.helpers import feed, make_pipeline


@pytest.fixture(autouse=True)
def _own_configured_language(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI makes its settings' language the process's (i18n.use): put it back after each test, so a
    zh-CN run here does not leak into other tests of the same process."""
    monkeypatch.setattr(i18n, "_configured", None)


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
    """zh-CN is the full translation, not a copy of the English ids (which would pass the completeness
    test): every message with English words in it has Chinese characters in its translation."""
    def words(text: str) -> str:
        return re.sub(r"\{[^{}]*\}", "", text)

    untranslated = []
    for m in read("zh-CN"):
        english = m.id if isinstance(m.id, str) else m.id[0]
        chinese = m.string if isinstance(m.string, str) else "".join(m.string)
        if english and re.search("[A-Za-z]{2,}", words(english)) and not re.search("[\u4e00-\u9fff]", chinese):
            untranslated.append(english)
    assert untranslated == []


def test_no_message_is_hidden_in_an_f_string() -> None:
    """pybabel cannot see a gettext call inside an f-string's braces (Python 3.11): such a message would
    never reach the catalogs, and the completeness test would not notice. None may be written so."""
    import ast

    package = Path(__file__).resolve().parent.parent / "citywatch"
    hidden = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                hidden += [f"{path.name}:{call.lineno}" for call in ast.walk(node) if isinstance(call, ast.Call)
                           and (getattr(call.func, "id", None) or getattr(call.func, "attr", None))
                           in {"_", "gettext", "ngettext", "pgettext", "N_", "NP_"}]
    assert hidden == []


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


def test_module_level_convenience_follows_use_else_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYWATCH_LANGUAGE", "en")
    monkeypatch.setenv("CITYWATCH_TIMEZONE", "America/New_York")
    assert i18n.pgettext("severity", "critical") == "critical"  # nothing configured yet: the environment
    assert i18n.local_time(TS) == "2026-11-27 20:30 (UTC-05:00)"
    monkeypatch.delenv("CITYWATCH_LANGUAGE")
    monkeypatch.delenv("CITYWATCH_TIMEZONE")
    assert i18n.pgettext("severity", "critical") == "紧急"  # the defaults
    i18n.use("zh-CN", "Asia/Shanghai")
    assert i18n.pgettext("severity", "critical") == "紧急"
    assert i18n.local_time(TS) == "2026-11-28 09:30 (UTC+08:00)"
    i18n.use("en", "Europe/London")
    assert i18n.pgettext("severity", "critical") == "critical"
    assert i18n.local_time(TS) == "2026-11-28 01:30 (UTC+00:00)"


# -- the CLI in both languages ----------------------------------------------------------------------


def _cli(data_dir: Path, language: str, *args: str) -> Result:
    runner = CliRunner(env={"CITYWATCH_LANGUAGE": language, "CITYWATCH_TIMEZONE": "Asia/Shanghai",
                            "CITYWATCH_CONFIG": None})
    result = runner.invoke(main, ["--data-dir", str(data_dir), *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture
def city(tmp_path: Path) -> Path:
    """A data dir with a registered gas detector, its level-2 alarm and a dead letter, all at TS
    (09:30:05 in Shanghai, 01:30:05 UTC) through the real pipeline core and SQLite store."""
    from citywatch.devices.registry import Registry, registry_path
    from citywatch.sinks.store import AlertStore, store_path

    registry = Registry(registry_path(tmp_path))
    registry.add(Device(id="gas-1", kind="gas", district="南湖区", grid="G1", address="中山路 12 号"))
    registry.conn.execute("UPDATE devices SET created_at = ?", (TS,))
    registry.conn.commit()
    registry.close()
    gas = Device(id="gas-1", kind="gas")
    pipeline = make_pipeline(gas, started_at=TS)
    out = feed(pipeline, gas, TS, lel_pct=55.5)
    pipeline.process("citywatch/gas/gas-1/telemetry", b"{not json", TS, out)
    store = AlertStore(store_path(tmp_path))
    store.commit(out, [t.alert for t in out.transitions], {})
    store.close()
    return tmp_path


def test_alerts_list_in_chinese_with_local_times(city: Path) -> None:
    result = _cli(city, "zh-CN", "alerts", "list")
    (row,) = result.stdout.splitlines()
    fields = row.split("\t")
    assert fields[1:5] == ["待处理", "紧急", "可燃气体浓度超限", "gas-1"]
    assert fields[5] == "发生于 2026-11-28 09:30:05 (UTC+08:00)"
    assert fields[6] == "可燃气体浓度 55.5% LEL（2级报警值 50%）"
    assert result.stderr.splitlines() == ["编号\t状态\t级别\t规则\t设备\t发生时间\t内容", "1 条告警"]


def test_alerts_list_in_english_with_local_times(city: Path) -> None:
    result = _cli(city, "en", "alerts", "list")
    fields = result.stdout.splitlines()[0].split("\t")
    assert fields[1:6] == ["open", "critical", "gas_level", "gas-1", "opened 2026-11-28 09:30:05 (UTC+08:00)"]
    assert fields[6] == "combustible gas at 55.5% LEL (level-2 alarm at 50%)"
    assert result.stderr.splitlines() == ["id\tstatus\tseverity\trule\tdevice\topened\tmessage", "1 alert"]


def test_times_follow_the_configured_zone(city: Path) -> None:
    runner = CliRunner(env={"CITYWATCH_LANGUAGE": "en", "CITYWATCH_TIMEZONE": "Europe/Berlin",
                            "CITYWATCH_CONFIG": None})
    result = runner.invoke(main, ["--data-dir", str(city), "alerts", "list"])
    assert "opened 2026-11-28 02:30:05 (UTC+01:00)" in result.stdout


def test_devices_list_and_show_in_both_languages(city: Path) -> None:
    zh = _cli(city, "zh-CN", "devices", "list")
    assert zh.stdout.splitlines() == ["gas-1\t燃气\t-\t南湖区\t-\tG1\t-\t启用\t中山路 12 号\t"
                                      "2026-11-28 09:30 (UTC+08:00)"]
    assert zh.stderr.splitlines() == ["编号\t类型\t市\t区\t社区\t网格\t声环境功能区\t状态\t地址\t登记时间", "1 台设备"]
    en = _cli(city, "en", "devices", "list")
    assert en.stdout.splitlines()[0].split("\t")[:2] == ["gas-1", "gas"]
    assert en.stdout.splitlines()[0].endswith("\tenabled\t中山路 12 号\t2026-11-28 09:30 (UTC+08:00)")
    assert en.stderr.splitlines()[-1] == "1 device"
    shown = _cli(city, "zh-CN", "devices", "show", "gas-1").stdout.splitlines()
    assert "类型：燃气" in shown and "登记时间：2026-11-28 09:30:05 (UTC+08:00)" in shown
    assert "created_at: 2026-11-28 09:30:05 (UTC+08:00)" in _cli(city, "en", "devices", "show", "gas-1").stdout


def test_deadletters_in_both_languages(city: Path) -> None:
    zh = _cli(city, "zh-CN", "deadletters")
    (row,) = zh.stdout.splitlines()
    assert row.startswith("2026-11-28 09:30:05 (UTC+08:00)\tJSON 格式错误\tcitywatch/gas/gas-1/telemetry\t")
    assert zh.stderr.splitlines() == ["接收时间\t原因\t主题\t消息内容", "死信按原因：JSON 格式错误：1"]
    en = _cli(city, "en", "deadletters")
    assert en.stdout.startswith("2026-11-28 09:30:05 (UTC+08:00)\tmalformed_json\t")
    assert en.stderr.splitlines()[-1] == "dead letters by reason: malformed_json: 1"
    # --json stays machine output: epoch seconds and the English code
    assert json.loads(_cli(city, "zh-CN", "deadletters", "--json").stdout)[0]["reason"] == "malformed_json"


def test_help_lists_commands_in_the_configured_language() -> None:
    for language, usage, listed in (("zh-CN", "用法：", "查看和处理告警。"),
                                    ("en", "Usage: ", "Show and handle alerts.")):
        result = CliRunner(env={"CITYWATCH_LANGUAGE": language, "CITYWATCH_CONFIG": None}).invoke(main, ["--help"])
        assert result.exit_code == 0
        assert result.output.startswith(usage) and listed in result.output
    zh = CliRunner(env={"CITYWATCH_LANGUAGE": "zh-CN", "CITYWATCH_CONFIG": None}).invoke(
        main, ["alerts", "ack", "--help"])
    assert "确认告警（停止审核时限升级）。" in zh.output and "确认人。" in zh.output
    assert "显示本帮助并退出。" in zh.output


def test_help_prints_despite_a_broken_config(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("language: fr\n")
    result = CliRunner(env={"CITYWATCH_LANGUAGE": None}).invoke(main, ["--config", str(bad), "--help"])
    assert result.exit_code == 0 and "alerts" in result.output


# -- the situation report ---------------------------------------------------------------------------


def test_report_in_chinese_with_local_times(city: Path) -> None:
    from citywatch.report import collect, render_html

    settings = load_settings(None, {"data_dir": city, "language": "zh-CN", "timezone": "Asia/Shanghai"})
    data = collect(settings, 86400, now=TS + 3600, use_influx=False)
    page = render_html(data, settings)
    assert '<html lang="zh-CN">' in page
    for heading in ("<h1>城市态势报告</h1>", "<h2>城市地图</h2>", "<h2>未结束告警与时限</h2>", "<h2>闭环处置</h2>",
                    "<h2>闭环处置指标</h2>", "<h2>设备健康</h2>", "<h3>离线设备</h3>"):
        assert heading in page, heading
    assert "<span>未结束告警</span>" in page and "<span>未结束的紧急告警</span>" in page  # KPI tiles
    assert "2026-11-27 10:30 (UTC+08:00) 至 2026-11-28 10:30 (UTC+08:00)" in page  # [TS - 23 h, TS + 1 h] local
    assert "可燃气体浓度 55.5% LEL（2级报警值 50%）" in page and "可燃气体浓度超限" in page
    assert '<span class="sev-critical">紧急</span>' in page
    assert "未使用 InfluxDB（--no-influx）：省略传感器图表。" in page
    english = render_html(data, load_settings(None, {"data_dir": city, "language": "en"}))
    assert "<h1>City situation report</h1>" in english and "combustible gas at 55.5% LEL" in english
    stripped = re.sub(r"中山路 12 号|南湖区", "", english)  # the device's own address and district
    assert [stripped[m.start() - 60:m.end()] for m in re.finditer("[\u4e00-\u9fff]+", stripped)] == []


# -- the dashboards ---------------------------------------------------------------------------------


def test_dashboards_in_chinese_run_the_same_queries() -> None:
    """Built in zh-CN, every title, description, legend and value text people read is Chinese; with the
    display strings blanked, the zh-CN and English JSON are identical (queries, fields, variables)."""
    from citywatch.dashboards.build import build_files, dashboard
    from citywatch.dashboards.language import display_strings, localize
    from citywatch.dashboards.panels import all_dashboards

    zh = translator("zh-CN")

    class Blank:  # every display string becomes "#": what is left must not differ
        def gettext(self, msgid: str, /, **fields: object) -> str:
            return "#"

    def blank(d: dict[str, object]) -> str:
        return json.dumps(localize(d, Blank()), sort_keys=True)  # type: ignore[arg-type]

    for spec in all_dashboards():
        english = dashboard(spec)
        chinese = localize(english, zh)
        shown = list(display_strings(chinese))
        assert len(shown) == len(list(display_strings(english))) > 10
        assert [s for s in shown if not re.search("[\u4e00-\u9fff]", s)] == []
        assert blank(chinese) == blank(english)
        assert [v["name"] for v in chinese["templating"]["list"]] == ["district", "grid", "kind"]
    city = json.loads(build_files(language="zh-CN")["dashboards/citywatch-city.json"])
    assert city["title"] == "citywatch：城市运行"
    assert {p["title"] for p in city["panels"]} >= {"未结束告警", "城市地图", "静默和维护窗口"}
    assert json.loads(build_files(language="en")["dashboards/citywatch-city.json"])["title"] == \
        "citywatch: city operations"


def test_dashboards_build_language_option(tmp_path: Path) -> None:
    from citywatch.dashboards.cli import dashboards

    runner = CliRunner(env={"CITYWATCH_LANGUAGE": "en"})
    assert runner.invoke(dashboards, ["build", "--out", str(tmp_path), "--language", "zh-CN"]).exit_code == 0
    assert "城市运行" in (tmp_path / "dashboards" / "citywatch-city.json").read_text()
    checked = runner.invoke(dashboards, ["build", "--out", str(tmp_path), "--check"])  # config: en
    assert checked.exit_code == 1 and "stale" in checked.output
    assert runner.invoke(dashboards, ["build", "--out", str(tmp_path), "--check", "--language", "zh-CN"]).exit_code == 0


def test_commissioning_report_in_chinese() -> None:
    """`devices check` output: labels, the rule's message and times in the reader's language and zone."""
    from citywatch.devices.commissioning import CheckResult, Heard, render

    gas = Device(id="gas-1", kind="gas", district="南湖区", grid="G1")
    out = feed(make_pipeline(gas), gas, TS, lel_pct=30)
    result = CheckResult(device=gas, outcome="accepted", message=Heard("citywatch/gas/gas-1/telemetry",
                                                                      b'{"lel_pct": 30}', False, TS),
                         reading=out.accepted[0][0], would_transitions=list(out.transitions),
                         last_seen_before=TS - 60)
    i18n.use("zh-CN", "Asia/Shanghai")
    text = render(result)
    assert "设备 gas-1（燃气，启用）南湖区 G1" in text
    assert "检查前最近在线：2026-11-28 09:29:05 (UTC+08:00)" in text
    assert "将会：可燃气体浓度超限告警产生（警告）：可燃气体浓度 30% LEL（1级报警值 25%）" in text
    assert "pipeline: ACCEPTED" in render(result, translator("en"))
