"""Alert messages rendered in the reader's language from the stored alert (citywatch/alert_text.py)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from citywatch.alert_text import TEMPLATES, alert_message, localize, message_key, render
from citywatch.i18n import translator
from citywatch.model import Device
from citywatch.sinks.store import AlertStore, store_path
from tests.helpers import T0, feed, make_pipeline

PACKAGE = Path(__file__).resolve().parent.parent / "citywatch"
# Calls that carry a rule's English message, and which positional argument it is.
_MESSAGE_ARG = {"Finding": (5, "message"), "LockEventAlarm": (3, "message"), "offline_finding": (1, "reason")}


def _skeleton(node: ast.expr) -> str | None:
    """A message expression with every interpolated value as `{}` (None: not a literal message)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def messages_in_code() -> dict[str, str]:
    """Every English message a rule can build, from the source: skeleton -> where."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in _MESSAGE_ARG:
                continue
            index, keyword = _MESSAGE_ARG[name]
            arg = node.args[index] if len(node.args) > index else next(
                (k.value for k in node.keywords if k.arg == keyword), None)
            skeleton = None if arg is None else _skeleton(arg)
            if skeleton is not None:
                found[skeleton] = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
    return found


def test_every_message_the_rules_build_has_a_template() -> None:
    """A rule's new or reworded message fails here until alert_text.TEMPLATES (and the catalogs) have it."""
    code = messages_in_code()
    assert len(code) >= 30  # the scan sees the rules (not an empty walk)
    templates = {re.sub(r"\{[a-z_]+\}", "{}", t) for t in TEMPLATES.values()}
    missing = {s: where for s, where in code.items() if s not in templates}
    assert missing == {}


def _sample(key: str) -> dict[str, str]:
    words = {"period": "night", "level": "moderate", "state": "occupied", "field": "depth_cm"}
    names = re.findall(r"\{([a-z_]+)\}", TEMPLATES[key])
    return {n: words.get(n, str(10 + i)) for i, n in enumerate(dict.fromkeys(names))}


@pytest.mark.parametrize("key", sorted(TEMPLATES))
def test_each_template_round_trips_and_translates(key: str) -> None:
    """English renders back exactly the stored message; zh-CN renders a translation with the same numbers."""
    fields = _sample(key)
    english = TEMPLATES[key].format(**fields)
    assert message_key(english, key.split(".")[0]) == (key, fields)
    assert localize(translator("en"), english, key.split(".")[0]) == english
    chinese = render(translator("zh-CN"), key, fields)
    assert chinese != english and re.search("[\u4e00-\u9fff]", chinese)
    assert all(v in chinese for v in fields.values() if v.isdigit())


def test_word_fields_are_translated() -> None:
    zh = translator("zh-CN")
    text = localize(zh, "LAeq 62 dB(A) over the night limit 45 dB(A)", "noise_limit")
    assert "夜间" in text and "night" not in text and "62" in text and "45" in text
    assert "中度" in localize(zh, "moderate waterlogging: 12 cm (from 10 cm)", "water_depth")


def test_unknown_shape_is_shown_as_stored() -> None:
    assert localize(translator("zh-CN"), "a message from a future rule", "new_rule") == "a message from a future rule"
    assert localize(translator("zh-CN"), "", "gas_level") == ""


def test_rule_alert_renders_in_both_languages_from_the_same_stored_alert(tmp_path: Path) -> None:
    """A real gas alarm through the pipeline core into the SQLite store, read back once, rendered twice:
    the stored message stays the English one the rule built."""
    gas = Device(id="g1", kind="gas")
    pipeline = make_pipeline(gas)
    out = feed(pipeline, gas, T0, lel_pct=55.5)
    store = AlertStore(store_path(tmp_path))
    store.commit(out, [t.alert for t in out.transitions], {})
    (alert,) = store.alerts("open")
    store.close()
    assert alert.message == "combustible gas at 55.5% LEL (level-2 alarm at 50%)"
    assert alert_message(translator("en"), alert) == alert.message
    zh = alert_message(translator("zh-CN"), alert)
    assert zh == "可燃气体浓度 55.5% LEL（2级报警值 50%）"
    # the API's JSON form of the same alert renders the same
    as_json = json.loads(json.dumps({"rule": alert.rule, "message": alert.message}))
    assert alert_message(translator("zh-CN"), as_json) == zh
