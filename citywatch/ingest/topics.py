"""The topic contract: `<prefix>/<kind>/<device_id>/telemetry` and `.../status`.

The prefix may have several levels (`jx/city`); it is written into Mosquitto's ACL file, so
only names without wildcards, whitespace or control characters are allowed (TOPIC_PREFIX_PATTERN).
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from citywatch.errors import InvalidMessage
from citywatch.model import KINDS

DEVICE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
_KINDS: Final = frozenset(KINDS)
MAX_TOPIC_LENGTH: Final = 256
TOPIC_PREFIX_PATTERN = r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*"
_TOPIC_PREFIX = re.compile(TOPIC_PREFIX_PATTERN)
MAX_PREFIX_LENGTH = 128


class Topic(NamedTuple):
    kind: str
    device_id: str
    channel: str  # telemetry | status


def valid_device_id(device_id: str) -> bool:
    return _DEVICE_ID.fullmatch(device_id) is not None


def valid_topic_prefix(prefix: str) -> bool:
    """Letters, digits, `_`, `-` in one or more `/`-separated levels: no `+`/`#` wildcards, no
    `$` (broker-internal topics), no empty level, whitespace or control character."""
    return len(prefix) <= MAX_PREFIX_LENGTH and _TOPIC_PREFIX.fullmatch(prefix) is not None


def parse_topic(topic: str, prefix: str = "citywatch") -> Topic:
    """Split a topic into (kind, device_id, channel) or raise InvalidMessage."""
    kind, device_id, channel = split_topic(topic, prefix)
    check_device_id(device_id)
    return Topic(kind, device_id, channel)


def split_topic(topic: str, prefix: str = "citywatch") -> tuple[str, str, str]:
    """(kind, device_id, channel) of a topic, or InvalidMessage; the device id is not checked
    against DEVICE_ID_PATTERN (`check_device_id`): the hot path skips that for registered ids,
    which were checked when they were registered."""
    if len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidMessage("bad_topic", f"topic longer than {MAX_TOPIC_LENGTH} characters")
    parts = topic.rsplit("/", 3)  # the prefix may have levels of its own
    if len(parts) != 4 or parts[0] != prefix or parts[3] not in ("telemetry", "status"):
        raise InvalidMessage("bad_topic", f"expected {prefix}/<kind>/<device_id>/telemetry|status")
    kind = parts[1]
    if kind not in _KINDS:
        raise InvalidMessage("unknown_kind", f"kind {kind[:32]!r} is not one of {', '.join(KINDS)}", "kind")
    return kind, parts[2], parts[3]


def check_device_id(device_id: str) -> None:
    if _DEVICE_ID.fullmatch(device_id) is None:
        raise InvalidMessage("bad_topic", "device id must match " + DEVICE_ID_PATTERN, "device_id")


def telemetry_topic(kind: str, device_id: str, prefix: str = "citywatch") -> str:
    return f"{prefix}/{kind}/{device_id}/telemetry"


def status_topic(kind: str, device_id: str, prefix: str = "citywatch") -> str:
    return f"{prefix}/{kind}/{device_id}/status"


def device_topic_filter(kind: str, device_id: str, prefix: str = "citywatch") -> str:
    """What one device may publish to (its ACL pattern)."""
    return f"{prefix}/{kind}/{device_id}/#"
