"""Typed errors under one root, each carrying the reason code used in dead letters."""

from __future__ import annotations

from typing import Literal, get_args

# Every reason a message can be dead-lettered for: stable English codes (machine payloads, metrics'
# labels, `citywatch deadletters --reason`). The README's list and the labels' translations are
# checked against this (tests/test_dead_letter_reasons.py); mypy checks every raise against it.
DeadLetterReason = Literal[
    "malformed_json", "not_an_object", "missing_field", "wrong_type", "not_finite", "out_of_range",
    "bad_value", "bad_timestamp", "payload_too_large", "bad_topic", "unknown_kind", "topic_mismatch",
    "future_timestamp", "unknown_device", "device_disabled", "kind_mismatch", "duplicate", "out_of_order",
    "bad_status", "too_deep", "internal_error",
]
DEAD_LETTER_REASONS: tuple[DeadLetterReason, ...] = get_args(DeadLetterReason)


class CitywatchError(Exception):
    """Root of every error citywatch raises on purpose."""


class ConfigError(CitywatchError):
    """The configuration is invalid; the message names the bad key."""


class InvalidMessage(CitywatchError):
    """A message that cannot be processed: `reason` is its dead letter's code (DEAD_LETTER_REASONS),
    `field` the payload field at fault when one is (kept in the dead letter)."""

    def __init__(self, reason: DeadLetterReason, detail: str = "", field: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.field = field
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DeviceError(CitywatchError):
    """A registry operation failed (unknown id, duplicate id, bad attribute)."""


class AlertError(CitywatchError):
    """An alert operation failed (unknown id, already resolved)."""


class StorageError(CitywatchError):
    """A database file cannot be used (corrupt, read-only, not a database); the message names the
    file and what to do. Fatal: retrying does not help, a person must act."""
