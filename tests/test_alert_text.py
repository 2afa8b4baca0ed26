"""Alert messages rendered in the reader's language from the stored alert (citywatch/alert_text.py)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from citywatch.alert_text import (
    REASONS,
    TEMPLATES,
    alert_message,
    localize,
    message_key,
    reason_key,
    render,
    transition_reason,
)
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


# -- transition reasons -----------------------------------------------------------------------------

_REASON_ARG = {"_transition": 3, "_close": 3, "_finish": 3, "mirror": 4}


def reasons_in_code() -> dict[str, str]:
    """Every literal reason the alert engine and the incident book write (skeletons, from the source):
    the reason argument of their transition calls, the escalation steps and the mirrored dispatch wording."""
    found: dict[str, str] = {}
    for path in (PACKAGE / "detectors" / "lifecycle.py", PACKAGE / "loop" / "incidents.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            candidates: list[ast.expr] = []
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", None)
                if name in _REASON_ARG and len(node.args) > _REASON_ARG[name]:
                    candidates.append(node.args[_REASON_ARG[name]])
            elif isinstance(node, ast.FunctionDef) and node.name == "_due_escalation":
                candidates += [r.value.elts[1] for r in ast.walk(node)
                               if isinstance(r, ast.Return) and isinstance(r.value, ast.Tuple)]
            elif (isinstance(node, ast.Dict) and {getattr(k, "value", None) for k in node.keys} >= {"on_site",
                                                                                                  "rejected"}
                  and any(isinstance(v, ast.JoinedStr) for v in node.values)):  # the wording, not a status map
                candidates += node.values
            for arg in candidates:
                skeleton = _skeleton(arg)
                if skeleton is not None and skeleton:
                    found[skeleton] = f"{path.name}:{arg.lineno}"
    return found


def test_every_reason_the_engine_writes_has_a_template() -> None:
    code = reasons_in_code()
    assert len(code) >= 20
    templates = {re.sub(r"\{[a-z_]+\}", "{}", t) for t in REASONS.values()}
    assert {s: where for s, where in code.items() if s not in templates} == {}


def test_reasons_of_a_whole_case_render_in_chinese() -> None:
    """A gas alarm worked through the real engine (acknowledge, assign, on site, rectify, a reading that
    brings the condition back, escalation): every reason it wrote renders in Chinese, nested parts too."""
    gas = Device(id="g1", kind="gas", district="Nanhu", grid="G1")
    pipeline = make_pipeline(gas)
    engine = pipeline.alerts
    out = feed(pipeline, gas, T0, lel_pct=30)
    alert_id = out.transitions[0].alert_id
    reasons = [engine.acknowledge(alert_id, "li", T0 + 60).reason,
               engine.dispatch(alert_id, "assigned", "dispatch", T0 + 120, assignee="team-3").reason,
               engine.dispatch(alert_id, "on_site", "dispatch", T0 + 180).reason,
               engine.dispatch(alert_id, "rectified", "dispatch", T0 + 240).reason]
    reasons += [t.reason for t in feed(pipeline, gas, T0 + 300, lel_pct=31).transitions]  # back during verification
    reasons += [t.reason for t in engine.tick(T0 + 30 * 86400)]  # deadlines long missed: escalated
    assert any("escalated" in r for r in reasons) and any("verification" in r for r in reasons)
    zh, en = translator("zh-CN"), translator("en")
    for reason in reasons:
        assert transition_reason(en, reason) == reason
        shown = transition_reason(zh, reason)
        assert re.search("[\\u4e00-\\u9fff]", shown) and not re.search("[a-z]{4,} [a-z]{4,}", shown), (reason, shown)
    reopened = next(r for r in reasons if r.startswith("condition returned"))
    assert "31% LEL" in transition_reason(zh, reopened) and "可燃气体" in transition_reason(zh, reopened)


def test_incident_reasons_pick_the_most_specific_wording() -> None:
    zh = translator("zh-CN")
    assert reason_key("assigned to team-3 by li (2 of 3 member alerts)") == (
        "incident_dispatch", {"reason": "assigned to team-3", "by": "li", "count": "2", "total": "3"})
    shown = transition_reason(zh, "assigned to team-3 by li (2 of 3 member alerts)")
    assert "team-3" in shown and "li" in shown and "2" in shown and "3" in shown
    assert transition_reason(zh, "something a future version says") == "something a future version says"
