"""The dashboards in a language: titles, descriptions, legends and value texts, never the queries.

The panels are written in English (citywatch/dashboards/panels.py and friends); `localize` walks a
built dashboard's JSON and translates only what people read (`display_strings` says exactly which:
the dashboard's and each panel's title and description, map layer names, display names and value
mappings of field overrides, variable labels). Queries, field names, transformations, aliases and
variable names stay as built, so a translated dashboard runs the very same InfluxQL.

The message ids are the English texts of a fresh build: `extract` (babel.cfg) hands them to pybabel,
so a new or reworded panel appears in the catalogs (and fails tests/test_i18n.py until translated).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from citywatch.i18n import Translator

Visit = Callable[[dict[str, Any], str], None]  # (the dict holding a display string, its key)


def _mappings(mappings: Any, visit: Visit) -> None:
    for mapping in mappings if isinstance(mappings, list) else []:
        options = mapping.get("options") if isinstance(mapping, dict) else None
        if not isinstance(options, dict):
            continue
        for option in [*options.values(), options.get("result")]:
            if isinstance(option, dict) and isinstance(option.get("text"), str):
                visit(option, "text")


def _walk(dashboard: dict[str, Any], visit: Visit) -> None:
    """Call `visit` on every display string of a dashboard's JSON (and on nothing else)."""
    for key in ("title", "description"):
        if isinstance(dashboard.get(key), str):
            visit(dashboard, key)
    for variable in dashboard.get("templating", {}).get("list", []):
        if isinstance(variable.get("label"), str):
            visit(variable, "label")
    for panel in dashboard.get("panels", []):
        for key in ("title", "description"):
            if isinstance(panel.get(key), str):
                visit(panel, key)
        for layer in (panel.get("options") or {}).get("layers", []):
            if isinstance(layer.get("name"), str):
                visit(layer, "name")
        field_config = panel.get("fieldConfig") or {}
        _mappings((field_config.get("defaults") or {}).get("mappings"), visit)
        for override in field_config.get("overrides", []):
            for prop in override.get("properties", []):
                if prop.get("id") == "displayName" and isinstance(prop.get("value"), str):
                    visit(prop, "value")
                elif prop.get("id") == "mappings":
                    _mappings(prop.get("value"), visit)


def display_strings(dashboard: dict[str, Any]) -> Iterator[str]:
    """The texts people read on a dashboard (non-empty), in document order."""
    found: list[str] = []
    _walk(dashboard, lambda holder, key: found.append(holder[key]))
    yield from (text for text in found if text.strip())


def localize(dashboard: dict[str, Any], t: Translator) -> dict[str, Any]:
    """A copy of a built dashboard with its display strings in `t`'s language."""
    out = copy.deepcopy(dashboard)

    def translate(holder: dict[str, Any], key: str) -> None:
        if holder[key].strip():
            holder[key] = t.gettext(holder[key])

    _walk(out, translate)
    return out
