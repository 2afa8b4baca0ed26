"""What each role may do, and where: one table, read by `authorize(user, action, target)`.

Reach says where a granted action applies:

* ANY: anywhere (admins; views without a place, such as /stats);
* SCOPE: the target lies within the user's scope: for every key of the scope (city, district,
  community, grid) the target's values for that key are all among the allowed ones. A target
  without that key (no place known, or the whole city like /kpis) is outside any scope; an
  account without a scope has the whole city;
* ASSIGNED: the target is assigned to the user, or to one of the user's teams;
* SCOPE_OR_ASSIGNED: either.

A target spanning several places (an incident of many alerts, a silence of several grids) is within
a scope only when all of them are. Actions are stable English codes (they appear in the audit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from citywatch.people.users import ROLES, SCOPE_KEYS, User, scope_text


class Reach(Enum):
    ANY = "anywhere"
    SCOPE = "within their scope"
    ASSIGNED = "on what is assigned to them"
    SCOPE_OR_ASSIGNED = "within their scope or assigned to them"


ANY, SCOPE, ASSIGNED, EITHER = Reach.ANY, Reach.SCOPE, Reach.ASSIGNED, Reach.SCOPE_OR_ASSIGNED
_: Reach | None = None  # not granted

# action:            admin  operator  field     installer  dispatch        (columns in ROLES order)
TABLE: dict[str, tuple[Reach | None, ...]] = {
    "view_alert":     (ANY, SCOPE,    EITHER,   _,         SCOPE),
    "view_incident":  (ANY, SCOPE,    EITHER,   _,         SCOPE),
    "view_silence":   (ANY, ANY,      _,        _,         _),
    "view_kpis":      (ANY, SCOPE,    _,        _,         _),
    "view_stats":     (ANY, ANY,      _,        ANY,       _),
    "view_device":    (ANY, SCOPE,    SCOPE,    SCOPE,     _),
    "ack":            (ANY, SCOPE,    ASSIGNED, _,         _),
    "resolve":        (ANY, SCOPE,    _,        _,         _),
    "assign":         (ANY, SCOPE,    _,        _,         SCOPE),
    "on_site":        (ANY, SCOPE,    ASSIGNED, _,         SCOPE),
    "rectify":        (ANY, SCOPE,    ASSIGNED, _,         SCOPE),
    "reject":         (ANY, SCOPE,    ASSIGNED, _,         SCOPE),
    "close":          (ANY, SCOPE,    _,        _,         SCOPE),
    "comment":        (ANY, SCOPE,    ASSIGNED, _,         SCOPE),
    "silence":        (ANY, SCOPE,    _,        _,         _),
    "dispatch":       (ANY, _,        _,        _,         SCOPE),
    "manage_devices": (ANY, _,        _,        SCOPE,     _),
    "manage_users":   (ANY, _,        _,        _,         _),
    "view_audit":     (ANY, _,        _,        _,         _),
}
ACTIONS = tuple(TABLE)
GRANTS: dict[str, dict[str, Reach]] = {
    role: {action: reaches[i] for action, reaches in TABLE.items() if reaches[i] is not None}  # type: ignore[misc]
    for i, role in enumerate(ROLES)
}


@dataclass(frozen=True)
class Target:
    """What an action is on: its type and id, where it is (key -> every value it spans), and whom
    it is assigned to."""

    type: str
    id: str = ""
    location: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    assignees: tuple[str, ...] = ()

    def describe(self) -> str:
        where = " ".join(f"{k}={'|'.join(v) or '?'}" for k, v in self.location.items() if k in ("district", "grid"))
        return f"{self.type} {self.id}".strip() + (f" ({where})" if where else "")


CITY = Target("city")  # the whole city: e.g. the loop's figures over every district


class Decision(NamedTuple):
    """`reason` (for the audit) names the target's place; `code` (disabled, role, scope, assignment)
    lets an answer to the caller say why without it."""

    allowed: bool
    reason: str = ""
    code: str = ""

    def __bool__(self) -> bool:
        return self.allowed


def permitted(user: User, action: str) -> bool:
    """Whether the role may take `action` anywhere at all (before a target is known)."""
    return action in GRANTS.get(user.role, {})


def in_scope(user: User, target: Target) -> bool:
    for key, allowed in user.scope.items():
        values = target.location.get(key, ())
        if not values or any(v not in allowed for v in values):
            return False
    return True


def assigned(user: User, target: Target) -> bool:
    mine = {user.name, *user.teams}
    return any(a in mine for a in target.assignees)


def authorize(user: User, action: str, target: Target | None = None) -> Decision:
    """May `user` take `action` on `target`? The reason says why not (for the 403 and the audit)."""
    if action not in TABLE:
        raise ValueError(f"unknown action {action!r}")
    if user.disabled:
        return Decision(False, f"user {user.name} is disabled", "disabled")
    reach = GRANTS.get(user.role, {}).get(action)
    if reach is None:
        return Decision(False, f"role {user.role} may not {action}", "role")
    if reach is ANY:
        return Decision(True)
    target = target or CITY
    ok = {SCOPE: lambda: in_scope(user, target), ASSIGNED: lambda: assigned(user, target),
          EITHER: lambda: in_scope(user, target) or assigned(user, target)}[reach]()
    if ok:
        return Decision(True)
    if reach is ASSIGNED:
        whom = ", ".join(target.assignees) or "nobody"
        return Decision(False, f"{target.describe()} is assigned to {whom}, not to {user.name} or their teams",
                        "assignment")
    why = f"{target.describe()} is outside the scope {scope_text(user.scope)} of {user.name}"
    if reach is EITHER:
        why += " and not assigned to them"
    return Decision(False, why, "scope")


# -- targets ---------------------------------------------------------------------------------------


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)


def place(devices: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Every value of each scope key over device blocks (an empty value counts: unknown place)."""
    blocks = list(devices)
    if not blocks:
        return {}
    return {key: tuple(sorted({str(b.get(key) or "") for b in blocks})) for key in SCOPE_KEYS}


def alert_target(alert: Any) -> Target:
    """An Alert, or its JSON object (GET /alerts): its device block and assignee."""
    assignee = _get(alert, "assignee")
    return Target("alert", str(_get(alert, "id", "")), place([_get(alert, "device", {}) or {}]),
                  (assignee,) if assignee else ())


def incident_target(incident: Any) -> Target:
    """An Incident or its JSON object: where all its members are; its assignee."""
    members = _get(incident, "members", []) or []
    assignee = _get(incident, "assignee")
    return Target("incident", str(_get(incident, "id", "")), place(_get(m, "device", {}) or {} for m in members),
                  (assignee,) if assignee else ())


def device_target(device: Any) -> Target:
    block = {key: _get(device, key, "") for key in SCOPE_KEYS}
    return Target("device", str(_get(device, "id", "")), place([block]))


def silence_target(matchers: Mapping[str, Sequence[str]], silence_id: str = "",
                   devices: Sequence[Any] = ()) -> Target:
    """A silence covers what matches all its matchers: a place key it names bounds it to those
    values; device matchers bound the keys it does not name to those devices' places (`devices`:
    their registry entries, None for an unknown one)."""
    location: dict[str, tuple[str, ...]] = {}
    blocks = [{key: _get(d, key, "") for key in SCOPE_KEYS} if d is not None else {} for d in devices]
    known = place(blocks) if devices else {}
    for key in SCOPE_KEYS:
        given = matchers.get(key)
        if given:
            location[key] = tuple(sorted({str(v) for v in given}))
        elif key in known:
            location[key] = known[key]
    return Target("silence", silence_id, location)
