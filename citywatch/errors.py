"""Typed errors under one root, each carrying the reason code used in dead letters."""

from __future__ import annotations


class CitywatchError(Exception):
    """Root of every error citywatch raises on purpose."""


class ConfigError(CitywatchError):
    """The configuration is invalid; the message names the bad key."""


class InvalidMessage(CitywatchError):
    """A message that cannot be processed; `reason` is a stable code for dead letters.

    Reasons: bad_topic, unknown_kind, payload_too_large, malformed_json, not_an_object,
    schema, not_finite, out_of_range, topic_mismatch, future_timestamp, unknown_device, too_deep,
    device_disabled, kind_mismatch, duplicate, bad_status.
    """

    def __init__(self, reason: str, detail: str = "", field: str | None = None) -> None:
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
