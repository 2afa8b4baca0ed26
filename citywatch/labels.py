"""Human names for the stable English codes (statuses, severities, kinds, rules, reasons, transitions).

Codes stay codes in machine payloads; people see `label(t, "status", "open")` ("待处理" in zh-CN).
Each table marks its entries for extraction (`NP_`: context, message id); the context keeps the same
English word apart where it means different things ("open" as a status, "opened" as a transition).
An unknown code (a rule added later, a custom one) is shown as itself.
"""

from __future__ import annotations

import functools

from citywatch.i18n import NP_ as NP_  # re-exported: the marker the tables here use
from citywatch.i18n import Translator

_TABLES: dict[str, frozenset[str]] = {}


def _table(context: str, *codes: str) -> None:
    _TABLES[context] = frozenset(codes)


_table("alert status",
       NP_("alert status", "open"), NP_("alert status", "acknowledged"), NP_("alert status", "assigned"),
       NP_("alert status", "on_site"), NP_("alert status", "rectified"), NP_("alert status", "verifying"),
       NP_("alert status", "verification_overdue"), NP_("alert status", "resolved"),
       NP_("alert status", "closed"))
_table("severity", NP_("severity", "info"), NP_("severity", "warning"), NP_("severity", "critical"))
_table("kind")  # each kind names itself (KindSpec.label)
_table("transition",
       NP_("transition", "opened"), NP_("transition", "updated"), NP_("transition", "flapping"),
       NP_("transition", "acknowledged"), NP_("transition", "escalated"), NP_("transition", "resolved"),
       NP_("transition", "assigned"), NP_("transition", "on_site"), NP_("transition", "rectified"),
       NP_("transition", "rejected"), NP_("transition", "verifying"), NP_("transition", "reopened"),
       NP_("transition", "verification_overdue"), NP_("transition", "closed"))
# The rules every kind has; each kind adds its own (KindSpec.rule_labels).
_table("rule",
       NP_("rule", "battery_low"), NP_("rule", "device_offline"), NP_("rule", "device_flooding"),
       NP_("rule", "sensor_jump"), NP_("rule", "sensor_stuck"), NP_("rule", "reporting_interval"),
       NP_("rule", "battery_drain"), NP_("rule", "generic_anomaly"))
_table("dead letter reason",
       NP_("dead letter reason", "malformed_json"), NP_("dead letter reason", "not_an_object"),
       NP_("dead letter reason", "missing_field"), NP_("dead letter reason", "wrong_type"),
       NP_("dead letter reason", "not_finite"), NP_("dead letter reason", "out_of_range"),
       NP_("dead letter reason", "bad_value"), NP_("dead letter reason", "bad_timestamp"),
       NP_("dead letter reason", "payload_too_large"), NP_("dead letter reason", "bad_topic"),
       NP_("dead letter reason", "unknown_kind"), NP_("dead letter reason", "topic_mismatch"),
       NP_("dead letter reason", "future_timestamp"), NP_("dead letter reason", "unknown_device"),
       NP_("dead letter reason", "device_disabled"), NP_("dead letter reason", "kind_mismatch"),
       NP_("dead letter reason", "duplicate"), NP_("dead letter reason", "out_of_order"),
       NP_("dead letter reason", "bad_status"), NP_("dead letter reason", "too_deep"),
       NP_("dead letter reason", "internal_error"))
_table("device status", NP_("device status", "enabled"), NP_("device status", "disabled"))
_table("delivery status",
       NP_("delivery status", "pending"), NP_("delivery status", "held"), NP_("delivery status", "delivered"),
       NP_("delivery status", "dead"), NP_("delivery status", "suppressed"))
_table("escalation level", NP_("escalation level", "grid"), NP_("escalation level", "community"),
       NP_("escalation level", "district"), NP_("escalation level", "city"))

_table("device attribute",
       NP_("device attribute", "id"), NP_("device attribute", "kind"), NP_("device attribute", "district"),
       NP_("device attribute", "grid"), NP_("device attribute", "community"), NP_("device attribute", "city"),
       NP_("device attribute", "address"), NP_("device attribute", "lat"), NP_("device attribute", "lon"),
       NP_("device attribute", "zone_class"), NP_("device attribute", "interval_s"),
       NP_("device attribute", "tenants"), NP_("device attribute", "max_stay_min"),
       NP_("device attribute", "no_parking"), NP_("device attribute", "thresholds"),
       NP_("device attribute", "enabled"), NP_("device attribute", "created_at"),
       NP_("device attribute", "password"))

_table("silence state", NP_("silence state", "active"), NP_("silence state", "scheduled"),
       NP_("silence state", "ended"), NP_("silence state", "expired"))
_table("hazard group", NP_("hazard group", "device_health"))  # and each kind's (KindSpec.hazard_group)
_table("incident status", NP_("incident status", "open"), NP_("incident status", "assigned"),
       NP_("incident status", "on_site"), NP_("incident status", "rectified"), NP_("incident status", "closed"))

CONTEXTS: tuple[str, ...] = tuple(_TABLES)


@functools.cache
def _tables() -> dict[str, frozenset[str]]:
    """The tables with each kind's own entries (read at first use: the kinds' modules mark their
    names with NP_ from here)."""
    from citywatch.kinds import specs

    kinds = specs().values()
    return {**_TABLES, "kind": frozenset(k.label for k in kinds),
            "rule": _TABLES["rule"] | {rule for k in kinds for rule in k.rule_labels},
            "hazard group": _TABLES["hazard group"] | {k.hazard_group[0] for k in kinds if k.hazard_group[0]}}


def label(t: Translator, context: str, code: str | None) -> str:
    """The human name of `code` in `context` (one of CONTEXTS); an unknown code as itself, None as "-"."""
    if code is None or code == "":
        return "-"
    if code in _tables().get(context, ()):
        return t.pgettext(context, code)
    return code


def codes(context: str) -> frozenset[str]:
    """The codes a context knows (tests: every one has a label)."""
    return _tables()[context]
