"""Settings: config.yaml overlaid by CITYWATCH_* environment variables, validated once at the edge.

Precedence (highest first): explicit overrides, environment (`CITYWATCH_<SECTION>__<KEY>`),
the YAML file, the defaults below (which config.yaml documents one by one).
Secrets are SecretStr: they never print. Each secret can also come from a file (`*_file`).
"""

from __future__ import annotations

import copy
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core.core_schema import ValidationInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from citywatch.detectors.settings import LearnedRules, LearnedType
from citywatch.errors import ConfigError
from citywatch.ingest.topics import TOPIC_PREFIX_PATTERN, valid_topic_prefix
from citywatch.kinds import specs
from citywatch.section import Section, SectionGroup, below

# Life-safety rules (fail safe): a reading at the level opens the alert at once; nothing holds it back.
SAFETY_RULES: frozenset[str] = frozenset().union(*(kind.safety_rules for kind in specs().values()))

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class MqttSettings(Section):
    url: str = "mqtt://127.0.0.1:1883"
    embedded: bool = False
    client_id: str = "citywatch-collector"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    topic_prefix: str = "citywatch"
    qos: int = Field(1, ge=0, le=2)
    keepalive_s: int = Field(30, ge=5)
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0)
    receive_maximum: int = Field(1000, ge=1, le=65535)
    queue_size: int = Field(5000, ge=10)
    queue_bytes: int = Field(64 * 2**20, ge=2**16)  # the hand-off's byte bound (with queue_size, whichever first)
    # MQTT 5 Maximum Packet Size sent in CONNECT; None: ingest.max_payload_bytes + 4096; 0: not sent
    max_packet_bytes: int | None = Field(None, ge=0)
    collector_process: bool = True  # run paho in a child process (another core); false: a thread
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, url: str) -> str:
        if not url.startswith(("mqtt://", "mqtts://")):
            raise ValueError("must start with mqtt:// or mqtts://")
        return url

    @field_validator("topic_prefix")
    @classmethod
    def _safe_prefix(cls, prefix: str) -> str:
        """Written into Mosquitto's acl_file: a newline there would add rules for every account."""
        if not valid_topic_prefix(prefix):
            raise ValueError(f"{prefix!r} must match {TOPIC_PREFIX_PATTERN} (at most 128 characters): "
                             "no wildcards (+ #), no leading $ or /, no spaces or control characters")
        return prefix


class IngestSettings(Section):
    max_payload_bytes: int = Field(16384, ge=256)
    max_future_skew_s: float = Field(300.0, ge=0)
    # A reading stamped ahead of our clock by more than this (up to max_future_skew_s) is a device
    # clock running fast: it is processed at its arrival time, so one bad stamp cannot make the
    # device's later readings look late.
    clock_lead_tolerance_s: float = Field(5.0, ge=0)
    # A registered device sending more unusable messages than this within a minute is flooding: a
    # device_flooding health alert (one per episode), cleared after a quiet minute.
    flood_dead_letters_per_min: int = Field(60, ge=1)
    batch_size: int = Field(1000, ge=1)
    state_checkpoint_s: float = Field(0.0, ge=0)
    # At a stop, devices' learning not yet checkpointed is written oldest first for at most this long
    # (then the rest is forgotten, as after a crash): keep it below the supervisor's stop timeout.
    stop_flush_s: float = Field(20.0, ge=0)
    # Readings stamped earlier are dead-lettered (bad_timestamp): InfluxDB's time starts in 1677.
    min_timestamp: datetime = datetime(2000, 1, 1, tzinfo=UTC)

    @field_validator("min_timestamp")
    @classmethod
    def _floor(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2000-01-01T00:00:00Z")
        if not datetime(1678, 1, 1, tzinfo=UTC) <= value <= datetime.now(UTC):
            raise ValueError("must be between 1678-01-01T00:00:00Z (InfluxDB's earliest time) and now")
        return value


def _http_url(url: str) -> str:
    """An absolute http(s) URL with a host and no whitespace: refused at start, not at the first send."""
    from urllib.parse import urlsplit

    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return url


def _iana_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as Asia/Shanghai") from None
    return name


WEBHOOK_STREAMS = ("alerts", "incidents")


def _receive_streams(streams: list[str]) -> list[str]:
    """What a webhook route receives: `alerts` (alert transitions), `incidents` (incident transitions)."""
    unknown = [s for s in streams if s not in WEBHOOK_STREAMS]
    if unknown or not streams or len(set(streams)) != len(streams):
        raise ValueError(f"must be a non-empty list of distinct values from {list(WEBHOOK_STREAMS)}, got {streams}")
    return streams


class WebhookRoute(Section):
    """Send matching alert transitions to `url` (a system: signed JSON webhooks) or, with `apprise`
    instead, to people (notifications through Apprise: citywatch/sinks/notify.py). Empty lists match
    everything."""

    name: str
    url: str | None = None
    # Notifications to people: Apprise URLs (mailto://, wecombot://, dingtalk://, feishu://, json://...),
    # secrets like any token; each one its own outbox endpoint `<name>#<n>` (n from 1, in list order)
    apprise: list[SecretStr] = []
    apprise_file: Path | None = None  # or/and one Apprise URL per line of this file ('#' starts a comment)
    language: str | None = None  # the notifications' language (zh-CN | en); null: the city's `language`
    timezone: str | None = None  # their times' zone; null: the city's `timezone`
    assignees: list[str] = []  # only alerts (incidents) assigned to one of these people (Alert.assignee)
    kinds: list[str] = []
    districts: list[str] = []
    grids: list[str] = []
    rules: list[str] = []
    min_severity: str = Field("info", pattern="^(info|warning|critical)$")
    secret: SecretStr | None = None  # defaults to webhooks.secret
    receive: list[str] = ["alerts"]  # alert transitions, incident transitions (citywatch/loop/incidents.py), or both
    # Escalation up the grid hierarchy: with a level (one of alerts.escalation.levels), the route gets the
    # transitions of alerts at that level (from the `escalated` that took them there); None: any level.
    level: str | None = None
    communities: list[str] = []
    cities: list[str] = []

    _receive = field_validator("receive")(_receive_streams)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else _http_url(url)

    @field_validator("language")
    @classmethod
    def _language(cls, language: str | None) -> str | None:
        if language is None:
            return None
        from citywatch.i18n import check_language

        return check_language(language)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, name: str | None) -> str | None:
        return None if name is None else _iana_zone(name)

    @model_validator(mode="after")
    def _one_kind(self) -> WebhookRoute:
        people = bool(self.apprise) or self.apprise_file is not None
        if (self.url is None) == (not people):
            raise ValueError(f"route {self.name!r}: give either url (a system's webhook) or apprise / apprise_file "
                             "(notifications to people), not both or neither")
        if people and self.secret is not None:
            raise ValueError(f"route {self.name!r}: secret signs webhooks; an apprise route has none "
                             "(its credentials are in its Apprise URLs)")
        return self

    @property
    def notifies(self) -> bool:
        """A route to people (Apprise), not to a system."""
        return self.url is None


class WebhookSettings(Section):
    url: str | None = None  # the default route: gets every transition no other route claims
    routes: list[WebhookRoute] = []
    secret: SecretStr | None = None
    secret_file: Path | None = None
    timeout_s: float = Field(10.0, gt=0)
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)
    concurrency: int = Field(4, ge=1)
    client_error_attempts: int = Field(5, ge=1)  # a 4xx refusal (not 408/409/425/429) is dead after this many
    public_url: str = "http://127.0.0.1:8087"
    receive: list[str] = ["alerts"]  # what the default route (`url`) receives: alerts, incidents or both

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else _http_url(url)

    _receive = field_validator("receive")(_receive_streams)


class DispatchSettings(Section):
    """The dispatch system's messages to us (POST /dispatch/events), signed per Standard Webhooks with
    the dispatch side's own secret (never webhooks.secret: a leaked outbound key must not let anyone
    close cases). Several space-separated whsec_ secrets are all accepted (key rotation)."""

    secret: SecretStr | None = None  # null: the endpoint answers 503 (not configured)
    secret_file: Path | None = None
    tolerance_s: float = Field(300.0, gt=0, le=3600)  # webhook-timestamp this far from our clock, either way
    receipts_days: float = Field(7.0, gt=0)  # message ids remembered this long (repeats: the first answer)

    @model_validator(mode="after")
    def _remember_beyond_tolerance(self) -> DispatchSettings:
        if self.receipts_days * 86400 <= self.tolerance_s:
            raise ValueError("receipts_days must outlast tolerance_s, or a repeat could be applied twice")
        return self


class InfluxSettings(Section):
    url: str | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    org: str = "citywatch"
    bucket: str = "citywatch"
    batch_size: int = Field(5000, ge=1)
    flush_interval_ms: int = Field(1000, ge=10)
    timeout_ms: int = Field(10000, ge=100)
    buffer_max_mb: int = Field(512, ge=1)  # on-disk buffer while InfluxDB is unreachable

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else _http_url(url)
    rejected_max_mb: int = Field(64, ge=1)  # lines InfluxDB refused, kept in influx-rejected/ for replay


class ApiSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8087, ge=0, le=65535)
    token: SecretStr | None = None
    token_file: Path | None = None
    header_timeout_s: float = Field(10.0, gt=0)  # connect (or last response) to complete request headers
    request_timeout_s: float = Field(30.0, gt=0)  # request headers to response, body included
    max_connections: int = Field(256, ge=1)  # open HTTP connections; idle ones are closed first when full
    # failed bearer tokens from one address (citywatch/people/throttle.py): after auth_failures within
    # auth_window_s it gets 429 for auth_block_s, doubling per block up to auth_block_max_s
    auth_failures: int = Field(5, ge=1)
    auth_window_s: float = Field(60.0, gt=0)
    auth_block_s: float = Field(10.0, gt=0)
    auth_block_max_s: float = Field(900.0, gt=0)
    auth_addresses: int = Field(4096, ge=16)  # addresses tracked (least recently seen forgotten first)
    metrics_auth: bool = False  # GET /metrics needs a bearer token too (false: open like /health; no secrets in it)


class MetricsSettings(Section):
    """Prometheus /metrics of the processes that serve no API: `citywatch bridge` and `citywatch worker
    --role process` (the runner and the sink serve it on their API port)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9187, ge=0, le=65535)  # 0: any free port


class LoggingSettings(Section):
    format: str = Field("text", pattern="^(text|json)$")  # json: one JSON object per line


class Deadlines(Section):
    review_h: float = Field(gt=0)
    response_h: float = Field(gt=0)


class RulePolicy(Section):
    """How long a condition must hold before an alert opens, and clear before it resolves.

    `safety: true` makes a rule life-safety (fail safe): its alert opens at the first reading at
    the level, whatever the hold settings, and a suspected sensor fault only annotates it. The
    built-in safety rules (SAFETY_RULES, from each kind's declaration) cannot be demoted."""

    hold_readings: int = Field(1, ge=1)
    hold_s: float = Field(0.0, ge=0)
    clear_readings: int = Field(1, ge=1)
    safety: bool | None = None


class KafkaSettings(Section):
    """The `kafka:` section: where the Faust runner's topics live and how its workers behave."""

    bootstrap: str = "127.0.0.1:9092"  # host:port[,host:port...]
    telemetry_topic: str = "citywatch-telemetry"
    transitions_topic: str = "citywatch-transitions"
    deadletters_topic: str = "citywatch-deadletters"
    partitions: int = Field(12, ge=1)  # the most workers that can share the processing
    replication: int = Field(1, ge=1)
    app_id: str = "citywatch"  # workers' consumer group and Table changelog prefix; sinks use <app_id>-sink
    bridge_group: str = "citywatch-bridge"  # MQTT shared-subscription group of the bridges
    idempotence: bool = True  # ask for an idempotent producer; falls back when the broker refuses
    linger_ms: int = Field(5, ge=0)
    session_timeout_s: float = Field(10.0, gt=0)  # a dead worker's partitions move after about this
    heartbeat_s: float = Field(3.0, gt=0)
    commit_interval_s: float = Field(1.0, gt=0)
    batch_size: int = Field(500, ge=1)  # telemetry events a worker takes at once: one Table write per device per batch
    batch_within_s: float = Field(0.05, gt=0)  # ... or what arrived within this (a quiet stream waits no longer)
    standby_replicas: int = Field(1, ge=0)  # warm copies of each Table partition on other workers
    # bytes a worker fetches per partition at once (Faust's default 1 MiB: 14.1k msg/s in the worker benchmark,
    # 8 MiB: 15.7k; the worker waited on fetches); memory: up to this per owned partition
    fetch_partition_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024)
    # Each bridge produces a watermark to every telemetry partition this often: workers judge device silence
    # only up to what the bridges have forwarded (streams/watermark.py); a gap of 5 periods restarts offline timers
    watermark_s: float = Field(1.0, gt=0)
    # Where a worker keeps the `devices` Table: rocksdict (RocksDB through PyPI rocksdict) or python-rocksdb
    # (PyPI faust-streaming-rocksdb) persist it under <data_dir>/workers/<worker id>/, so a restarted worker
    # reads only the changelog's tail; memory rebuilds it from the whole changelog at every start.
    table_store: str = Field("rocksdict", pattern="^(memory|rocksdict|python-rocksdb)$")
    # false for a broker whose high watermark can trail its last record (tansu 0.6: the last batch's base
    # offset + 1): Faust's check "stored offset <= high watermark" then fails a sound worker, so skip it
    exact_high_watermark: bool = True
    # Where workers read the device registry: `file` opens <data_dir>/registry.db (one host, or a shared volume);
    # `topic` reads `registry_topic` (compacted, key = device id), which `citywatch devices` commands publish to
    # after each change (citywatch/devices/registry_topic.py), so workers need no registry file
    registry: str = Field("file", pattern="^(file|topic)$")
    registry_topic: str = "citywatch-devices"
    # Authentication and encryption towards the brokers (citywatch/streams/kafka_auth.py)
    security_protocol: str = Field("PLAINTEXT", pattern="^(PLAINTEXT|SASL_PLAINTEXT|SASL_SSL|SSL)$")
    sasl_mechanism: str = Field("SCRAM-SHA-512", pattern="^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$")
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    ca_file: Path | None = None  # SSL, SASL_SSL: the CA of the brokers' certificates (default: the system's)


class VerificationSettings(Section):
    """Follow up and close: after `rectified`, the device's own readings must stay clear this long
    (minutes, per rule) before the alert closes as verified."""

    default_min: float = Field(30.0, gt=0)
    rules: dict[str, float] = {"gas_level": 30.0, "water_depth": 120.0, "noise_limit": 1440.0,
                               "noise_night_burst": 1440.0, "device_offline": 30.0}

    def window_s(self, rule: str) -> float:
        return self.rules.get(rule, self.default_min) * 60.0


class EscalationSettings(Section):
    """Up the grid hierarchy: each missed deadline (review, response, then every `repeat_h` without
    closure) moves an alert one level up; routes with `level:` receive the alerts at their level."""

    levels: list[str] = Field(["grid", "community", "district", "city"], min_length=1)
    repeat_h: float = Field(6.0, gt=0)


class AlertSettings(Section):
    review_deadline_h: float = Field(6.0, gt=0)
    response_deadline_h: float = Field(15.0, gt=0)
    # Deadlines by "<kind>", "<severity>" or "<kind>.<severity>" (most specific wins).
    deadlines: dict[str, Deadlines] = {}
    hold_readings: int = Field(1, ge=1)
    hold_s: float = Field(0.0, ge=0)
    clear_readings: int = Field(1, ge=1)
    # Per rule name, e.g. noise_limit: {hold_readings: 3}.
    rules: dict[str, RulePolicy] = {"noise_limit": RulePolicy(hold_readings=2)}
    flap_max_cycles: int = Field(3, ge=1)
    flap_window_min: float = Field(30.0, gt=0)
    flap_quiet_min: float = Field(30.0, gt=0)
    tick_s: float = Field(1.0, gt=0)
    verification: VerificationSettings = VerificationSettings()
    escalation: EscalationSettings = EscalationSettings()

    @model_validator(mode="after")
    def _safety_never_waits(self) -> AlertSettings:
        for rule, policy in self.rules.items():
            if rule in SAFETY_RULES and policy.safety is False:
                raise ValueError(f"rules.{rule}.safety: {rule} is a life-safety rule and cannot be demoted")
            if (rule in SAFETY_RULES or policy.safety) and (policy.hold_readings > 1 or policy.hold_s > 0):
                raise ValueError(f"rules.{rule}: a life-safety rule opens at the first reading at the level "
                                 "(fail safe); hold_readings must be 1 and hold_s 0")
        return self

    @property
    def safety_rules(self) -> frozenset[str]:
        """The built-in life-safety rules and those the city marked `safety: true`."""
        return SAFETY_RULES | {rule for rule, policy in self.rules.items() if policy.safety}


INCIDENT_KEY_FIELDS = ("group", "kind", "rule", "device_id", "grid", "community", "district", "city")


class IncidentSettings(Section):
    """Unified classification: related alerts grouped into one incident (citywatch/loop/incidents.py).

    An alert joins the open incident with the same key (its fields from INCIDENT_KEY_FIELDS: the
    hazard group, the alert's kind, rule or device, or a level of its device's place) if that
    incident opened or last grew within `window_min` of the alert's opening (event time) and, with
    `radius_m`, its first located member lies within that many metres; else it opens a new one."""

    enabled: bool = True
    key: list[str] = ["group", "grid"]
    window_min: float = Field(60.0, gt=0)
    radius_m: float | None = Field(None, gt=0)
    # hazard group -> rule names or fnmatch patterns; an exact name beats a pattern, then the first
    # group listing a matching pattern wins; a rule no group names is a group of its own (its name)
    groups: dict[str, list[str]] = {
        **{kind.hazard_group[0]: list(kind.hazard_group[1]) for kind in specs().values() if kind.hazard_group[0]},
        "device_health": ["device_offline", "device_flooding", "battery_*", "sensor_*", "reporting_interval"],
    }

    @field_validator("key")
    @classmethod
    def _known_fields(cls, key: list[str]) -> list[str]:
        unknown = [f for f in key if f not in INCIDENT_KEY_FIELDS]
        if unknown or not key or len(set(key)) != len(key):
            raise ValueError(f"must be a non-empty list of distinct fields from {list(INCIDENT_KEY_FIELDS)}, "
                             f"got {key}")
        return key

    @field_validator("groups")
    @classmethod
    def _patterns(cls, groups: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, patterns in groups.items():
            if not name.strip() or not patterns or any(not p.strip() for p in patterns):
                raise ValueError(f"{name!r}: a group needs a name and at least one non-empty rule or pattern")
        return groups


class SilenceSettings(Section):
    """Silences and maintenance windows (citywatch/loop/silences.py): the longest allowed."""

    max_safety_h: float = Field(24.0, gt=0)  # a life-safety rule: per device only, at most this long
    max_days: float = Field(90.0, gt=0)  # any silence


class ConsoleSettings(Section):
    """The operator console at /console on the API's address (citywatch/console): sessions, live
    streams, the readings kept for its charts and the map's size."""

    enabled: bool = True
    session_idle_min: float = Field(30.0, gt=0)  # a session unused this long ends
    session_max_h: float = Field(12.0, gt=0)  # every session ends this long after its sign-in
    max_sessions: int = Field(1000, ge=1)  # sessions at once; beyond, the one unused longest ends
    streams: int = Field(64, ge=1)  # live-update streams (server-sent events) open at once, 4 per session
    readings_per_device: int = Field(200, ge=0)  # recent readings kept per device for its chart (0: none)
    readings_devices: int = Field(5000, ge=0)  # devices whose readings are kept (least recently reporting dropped)
    map_points: int = Field(5000, ge=100)  # devices without an open alert drawn on the map at most (sampled)


class HealthRules(Section):
    battery_low_pct: float = Field(15.0, ge=0, le=100)
    battery_clear_pct: float = Field(20.0, ge=0, le=100, validate_default=True)  # checked against the field above
    offline_intervals: float = Field(3.0, ge=1)

    @field_validator("battery_clear_pct")
    @classmethod
    def _clears_above_low(cls, value: float, info: ValidationInfo) -> float:
        below("rules.health", "battery_low_pct", info, "battery_clear_pct", value)
        return value


class PlausibilityRules(Section):
    """How fast each measured quantity can really change. A faster step is a suspected sensor fault
    (`sensor_jump`), reported beside any alarm on the same reading and never instead of it. A kind
    without a limit (noise: a pile driver starts within a second) has no jump fault."""

    # default: each kind's declared limit (citywatch/kinds/<kind>.py, Measure.max_step_per_min)
    max_step_per_min: dict[str, float] = Field(default_factory=lambda: {
        name: kind.measure.max_step_per_min for name, kind in specs().items()
        if kind.measure is not None and kind.measure.max_step_per_min is not None})
    min_elapsed_s: float = Field(60.0, gt=0)  # a step is judged over at least this long (sensor response)
    jump_clear_after: int = Field(10, ge=1)  # plausible readings in a row that clear a sensor_jump alert

    @field_validator("max_step_per_min")
    @classmethod
    def _positive(cls, steps: dict[str, float]) -> dict[str, float]:
        for kind, step in steps.items():
            if not step > 0:
                raise ValueError(f"{kind}: must be > 0 (leave the kind out for no limit)")
        return steps


class DeadLetterRetention(Section):
    """Dead letters kept for inspection: sampled per source, bounded by age, rows and size.
    Every dead letter is counted per reason (counters are kept forever), stored or not."""

    max_age_days: float = Field(7.0, gt=0)
    max_rows: int = Field(100_000, ge=10)
    max_mb: float = Field(64.0, gt=0)  # payload + topic + detail bytes of the stored rows
    sample_burst: int = Field(5, ge=1)  # per (device or topic, reason): this many stored at once ...
    sample_every_s: float = Field(10.0, gt=0)  # ... then one per this many seconds; the rest only counted
    total_per_s: float = Field(20.0, gt=0)  # all sources together: at most this many stored a second ...
    total_burst: int = Field(200, ge=1)  # ... after a burst of this many
    sources: int = Field(10_000, ge=10)  # sources whose rate is tracked (least recently seen forgotten)


class OutboxRetention(Section):
    delivered_days: float = Field(3.0, gt=0)  # delivered webhook rows (the audit trail) kept this long
    dead_days: float = Field(30.0, gt=0)  # dead (refused, not resent) and suppressed (silenced) rows kept this long


class AlertRetention(Section):
    archive_after_days: float = Field(30.0, gt=0)  # resolved alerts move to data_dir/archive/ after this


class AuditRetention(Section):
    archive_after_days: float = Field(365.0, gt=0)  # state.db audit records move to data_dir/archive/ after this


class RetentionSettings(Section):
    """What the runner keeps, for how long, and how much work each pass may do."""

    interval_s: float = Field(30.0, gt=0)
    batch_rows: int = Field(5000, ge=10)  # rows deleted per kind per pass (and alerts archived)
    vacuum_pages: int = Field(4096, ge=0)  # free pages handed back to the file system per pass
    wal_max_mb: int = Field(64, ge=1)  # the -wal file is truncated to this after a checkpoint
    dead_letters: DeadLetterRetention = DeadLetterRetention()
    outbox: OutboxRetention = OutboxRetention()
    alerts: AlertRetention = AlertRetention()
    audit: AuditRetention = AuditRetention()


class RuleSettingsBase(SectionGroup):
    """`rules`: the sections every kind shares; RuleSettings adds one `rules.<kind>` section per kind
    that declares settings (citywatch/kinds/<kind>.py)."""

    learned: LearnedType = LearnedRules()
    plausibility: PlausibilityRules = PlausibilityRules()
    health: HealthRules = HealthRules()

    what = "rules section"


RuleSettings: type[RuleSettingsBase] = create_model(  # type: ignore[call-overload]
    "RuleSettings", __base__=RuleSettingsBase, __module__=__name__,
    **{name: (kind.settings, kind.settings()) for name, kind in specs().items() if kind.settings is not None})
if TYPE_CHECKING:
    RulesType = RuleSettingsBase
else:
    RulesType = RuleSettings


class Settings(BaseSettings):
    """Everything citywatch can be told; built once by `load_settings` and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="CITYWATCH_", env_nested_delimiter="__", extra="forbid", frozen=True,
        case_sensitive=False,
    )

    data_dir: Path = Path("./data")
    timezone: str = "Asia/Shanghai"
    language: str = "zh-CN"  # human-facing text (CLI, report, console, notifications): zh-CN or en
    log_level: str = "INFO"
    mqtt: MqttSettings = MqttSettings()
    ingest: IngestSettings = IngestSettings()
    webhooks: WebhookSettings = WebhookSettings()
    dispatch: DispatchSettings = DispatchSettings()
    influx: InfluxSettings = InfluxSettings()
    api: ApiSettings = ApiSettings()
    alerts: AlertSettings = AlertSettings()
    rules: RulesType = RuleSettings()
    kafka: KafkaSettings = KafkaSettings()
    retention: RetentionSettings = RetentionSettings()
    incidents: IncidentSettings = IncidentSettings()
    silences: SilenceSettings = SilenceSettings()
    console: ConsoleSettings = ConsoleSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()

    @model_validator(mode="after")
    def _route_levels(self) -> Settings:
        levels = self.alerts.escalation.levels
        for route in self.webhooks.routes:
            if route.level is not None and route.level not in levels:
                raise ConfigError(f"invalid configuration: webhooks.routes[{route.name}].level: {route.level!r} "
                                  f"is not one of alerts.escalation.levels {levels}")
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r}: use an IANA name such as Asia/Shanghai") from None
        return name

    @field_validator("language")
    @classmethod
    def _known_language(cls, language: str) -> str:
        from citywatch.i18n import check_language

        return check_language(language)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        if level.upper() not in LOG_LEVELS:
            raise ValueError(f"unknown log level {level!r}: one of {', '.join(LOG_LEVELS)}")
        return level.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Overrides (init kwargs) beat the environment, which beats the YAML file.
        return (init_settings, env_settings, _YamlData(settings_cls, getattr(cls, "yaml_data", {})))


class _YamlData(PydanticBaseSettingsSource):
    """The config file's contents as `load_settings` parsed them (once, with the C loader)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)


_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_parsed: dict[tuple[str, int, int], Any] = {}  # (path, mtime_ns, size) -> contents: tests load it thousands of times


def _read_yaml(path: Path) -> Any:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _parsed:
        if len(_parsed) > 16:
            _parsed.clear()
        _parsed[key] = yaml.load(path.read_text(), Loader=_YAML_LOADER)  # a safe loader
    return copy.deepcopy(_parsed[key])


def _read_secret(value: SecretStr | None, path: Path | None, key: str) -> SecretStr | None:
    if value is not None or path is None:
        return value
    try:
        return SecretStr(path.read_text().strip())
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read secret file {path}: {exc.strerror}") from exc


def default_config_path() -> Path | None:
    env = os.environ.get("CITYWATCH_CONFIG")
    if env:
        return Path(env)
    local = Path("config.yaml")
    return local if local.exists() else None


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build validated settings; raises ConfigError naming the offending key."""
    path = path if path is not None else default_config_path()
    loaded: Any = None
    if path is not None:
        try:
            loaded = _read_yaml(Path(path))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")

    class _FromFile(Settings):
        yaml_data: ClassVar[dict[str, Any]] = loaded or {}

    try:
        settings: Settings = _FromFile(**(overrides or {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
    return _resolve_notify_routes(_resolve_secrets(settings))


def _resolve_secrets(s: Settings) -> Settings:
    mqtt = s.mqtt.model_copy(update={"password": _read_secret(s.mqtt.password, s.mqtt.password_file,
                                                               "mqtt.password_file")})
    hooks = s.webhooks.model_copy(update={"secret": _read_secret(s.webhooks.secret, s.webhooks.secret_file,
                                                                  "webhooks.secret_file")})
    influx = s.influx.model_copy(update={"token": _read_secret(s.influx.token, s.influx.token_file,
                                                                "influx.token_file")})
    api = s.api.model_copy(update={"token": _read_secret(s.api.token, s.api.token_file, "api.token_file")})
    kafka = s.kafka.model_copy(update={"password": _read_secret(s.kafka.password, s.kafka.password_file,
                                                                "kafka.password_file")})
    if kafka.security_protocol.startswith("SASL_") and (not kafka.username or kafka.password is None):
        raise ConfigError(f"kafka.username and kafka.password (or password_file): required with "
                          f"security_protocol {kafka.security_protocol}")
    dispatch = s.dispatch.model_copy(update={"secret": _read_secret(s.dispatch.secret, s.dispatch.secret_file,
                                                                    "dispatch.secret_file")})
    _own_dispatch_secret(dispatch, hooks)
    return s.model_copy(update={"mqtt": mqtt, "webhooks": hooks, "influx": influx, "api": api, "dispatch": dispatch,
                                "kafka": kafka})


def _read_apprise_file(path: Path, key: str) -> list[SecretStr]:
    """One Apprise URL per line; blank lines and lines starting with '#' are skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc
    return [SecretStr(line.strip()) for line in lines if line.strip() and not line.strip().startswith("#")]


def _resolve_notify_routes(s: Settings) -> Settings:
    """Routes to people (Apprise): their URLs from `apprise_file` too, the city's language and zone where
    the route names none, and every URL checked now (an unusable one stops the start, naming the key)."""
    if not any(route.notifies for route in s.webhooks.routes):
        return s
    from citywatch.sinks.apprise_urls import check_apprise_url

    routes = []
    for route in s.webhooks.routes:
        if route.notifies:
            key = f"webhooks.routes[{route.name}]"
            urls = list(route.apprise)
            if route.apprise_file is not None:
                urls += _read_apprise_file(route.apprise_file, f"{key}.apprise_file")
            if not urls:
                raise ConfigError(f"{key}: no Apprise URL (apprise is empty and apprise_file has none)")
            for n, url in enumerate(urls, 1):
                problem = check_apprise_url(url.get_secret_value())
                if problem:
                    raise ConfigError(f"{key}.apprise #{n}: {problem}")
            route = route.model_copy(update={"apprise": urls, "language": route.language or s.language,
                                             "timezone": route.timezone or s.timezone})
        routes.append(route)
    return s.model_copy(update={"webhooks": s.webhooks.model_copy(update={"routes": routes})})


def _own_dispatch_secret(dispatch: DispatchSettings, hooks: WebhookSettings) -> None:
    """The inbound secret must be the dispatch side's own: sharing one with an outbound route would let
    whoever receives our webhooks forge dispatch messages."""
    if dispatch.secret is None:
        return
    inbound = _secret_values(dispatch.secret)
    for secret in [hooks.secret, *(route.secret for route in hooks.routes)]:
        if secret is not None and inbound & _secret_values(secret):
            raise ConfigError("dispatch.secret: must be the dispatch system's own secret, not one of webhooks' "
                              "(secret or a route's secret)")


def _secret_values(secret: SecretStr) -> set[str]:
    """The keys in a secret: several space-separated whsec_ values (a rotation), else the whole string."""
    value = secret.get_secret_value()
    parts = value.split()
    return set(parts) if len(parts) > 1 and all(p.startswith("whsec_") for p in parts) else {value}
