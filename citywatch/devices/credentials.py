"""Per-device MQTT credentials and the Mosquitto files that enforce them.

Passwords are random, shown once, and stored only as the hash Mosquitto 2.0 itself reads
(`$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>`, what `mosquitto_passwd` writes), so
the broker's password_file can be regenerated from the registry without knowing any password.
The acl_file lets each device write only under `<prefix>/<kind>/<id>/#` and the collector read all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import secrets
import signal
import tempfile
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import yaml

from citywatch.config import Settings
from citywatch.devices.registry import Credential
from citywatch.errors import DeviceError
from citywatch.ingest.topics import (
    TOPIC_PREFIX_PATTERN,
    device_topic_filter,
    status_topic,
    telemetry_topic,
    valid_device_id,
    valid_topic_prefix,
)
from citywatch.model import KINDS, Device

# mosquitto_passwd's defaults. 101 iterations is cheap per login (thousands of devices reconnect
# at once after an outage); the passwords are 192-bit random, so brute force is not the threat.
HASH_ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64
DEFAULT_COLLECTOR = "citywatch-collector"
COLLECTOR_SECRET = "mqtt-collector.password"  # under data_dir, mode 0600, when generated
PASSWORD_FILE = "passwd"
ACL_FILE = "acl"
BROKER_USER = "mosquitto"


class CredentialError(DeviceError):
    """Credentials or broker files could not be made (bad username, unreadable secret, no pid)."""


def generate_password() -> str:
    """32 URL-safe characters (192 bits): safe to paste into any device config format."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, salt: bytes | None = None, iterations: int = HASH_ITERATIONS) -> str:
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        _, algo, iterations, salt, digest = encoded.split("$")
        if algo != "7":
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt, validate=True),
                                     int(iterations), len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def check_username(name: str) -> str:
    """Mosquitto splits password_file lines at ':' and ACL lines at whitespace."""
    if not name or ":" in name or any(c.isspace() or not c.isprintable() for c in name):
        raise CredentialError(f"username {name!r}: must be non-empty, without ':', whitespace or control characters")
    return name


# Every field below goes into a line-oriented file: one newline in any of them adds a rule of its own.


def _check_prefix(prefix: str) -> str:
    if not valid_topic_prefix(prefix):
        raise CredentialError(f"topic prefix {prefix!r}: must match {TOPIC_PREFIX_PATTERN}")
    return prefix


def _check_account(c: Credential) -> None:
    check_username(c.id)
    if not valid_device_id(c.id):
        raise CredentialError(f"device id {c.id!r}: not a valid device id")
    if c.kind not in KINDS:
        raise CredentialError(f"device {c.id}: kind {c.kind!r} is not one of {', '.join(KINDS)}")
    if c.password_hash is not None:
        _check_hash(c.password_hash, f"device {c.id}")


def _check_hash(encoded: str, whose: str) -> str:
    if ":" in encoded or any(ch.isspace() or not ch.isprintable() for ch in encoded):
        raise CredentialError(f"{whose}: the stored password hash is damaged (':', whitespace or a control "
                              "character); give a new password with `citywatch devices rotate`")
    return encoded


# -- the broker's files -------------------------------------------------------------------------


class AuthFiles(NamedTuple):
    password_file: Path
    acl_file: Path
    devices: int  # device accounts written (enabled, with a password)
    skipped: list[str]  # enabled devices without a password yet (run `devices rotate ID`)


def broker_accounts(credentials: list[Credential], collector: str) -> tuple[list[Credential], list[str]]:
    """The devices that get an account: enabled, with a hash; a disabled device simply cannot log in."""
    accounts = [c for c in credentials if c.enabled and c.password_hash]
    for c in accounts:
        _check_account(c)
        if c.id == collector:
            raise CredentialError(
                f"device {c.id} has the collector's MQTT username (mqtt.username, default {DEFAULT_COLLECTOR}): "
                f"the broker would have one account with two passwords. Remove it (`citywatch devices remove "
                f"{c.id}`) and register the device under another id; nothing was written")
    return accounts, [c.id for c in credentials if c.enabled and not c.password_hash]


def render_password_file(accounts: list[Credential], collector: str, collector_hash: str) -> str:
    lines = [f"{check_username(collector)}:{_check_hash(collector_hash, 'the collector')}"]
    for c in accounts:
        _check_account(c)
        lines.append(f"{c.id}:{c.password_hash}")
    return "\n".join(lines) + "\n"


def render_acl(accounts: list[Credential], collector: str, prefix: str) -> str:
    """No rules before the first `user` line: anonymous clients get nothing."""
    for c in accounts:
        _check_account(c)
    parts = ["# Generated by `citywatch devices mosquitto-auth` from the device registry; do not edit.\n",
             f"user {check_username(collector)}\ntopic read {_check_prefix(prefix)}/#\n"]
    parts += [f"user {c.id}\ntopic write {device_topic_filter(c.kind, c.id, prefix)}\n" for c in accounts]
    return "\n".join(parts)


def write_atomic(path: Path, text: str, mode: int = 0o640, owner: str | None = BROKER_USER) -> None:
    """Temp file + rename, so a broker reloading mid-write never reads half a file. As root, the
    file goes to `owner` (Mosquitto reads it after dropping root to that user)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            if owner and os.geteuid() == 0:
                try:
                    user = pwd.getpwnam(owner)
                    os.fchown(f.fileno(), user.pw_uid, user.pw_gid)
                except KeyError:
                    pass  # no such user here: root keeps it
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_mosquitto_auth(out_dir: Path, credentials: list[Credential], collector: str, collector_password: str,
                         prefix: str) -> AuthFiles:
    accounts, skipped = broker_accounts(credentials, collector)
    password_file, acl_file = out_dir / PASSWORD_FILE, out_dir / ACL_FILE
    acl = render_acl(accounts, collector, prefix)  # both checked before either file is touched
    passwd = render_password_file(accounts, collector, hash_password(collector_password))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(acl_file, acl)
        write_atomic(password_file, passwd)
    except OSError as exc:
        raise CredentialError(f"cannot write the broker files in {out_dir}: {exc.strerror or exc}") from None
    return AuthFiles(password_file, acl_file, len(accounts), skipped)


# -- the collector's account ----------------------------------------------------------------------


class CollectorSecret(NamedTuple):
    username: str
    password: str
    generated: Path | None  # set when this call created the secret file


def collector_secret(settings: Settings, password_file: Path | None = None) -> CollectorSecret:
    """The collector's login: `password_file`, else mqtt.password, else one generated once into data_dir."""
    username = check_username(settings.mqtt.username or DEFAULT_COLLECTOR)
    if password_file is not None:
        return CollectorSecret(username, _read_secret(password_file), None)
    if settings.mqtt.password is not None:
        return CollectorSecret(username, settings.mqtt.password.get_secret_value(), None)
    path = settings.data_dir / COLLECTOR_SECRET
    if path.exists():
        return CollectorSecret(username, _read_secret(path), None)
    password = generate_password()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
    except OSError as exc:
        raise CredentialError(f"cannot create the collector's password file {path}: {exc.strerror or exc}") from None
    return CollectorSecret(username, password, path)


def _read_secret(path: Path) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise CredentialError(f"cannot read {path}: {exc.strerror}") from None
    if not value:
        raise CredentialError(f"{path} is empty")
    return value


def broker_pid(pid: int | None = None, pid_file: Path | None = None) -> int:
    """The pid to SIGHUP, checked: kill(0) signals our whole process group and kill(-1) every
    process we may signal (as root: the whole machine), so only one real process (> 1) qualifies,
    and where /proc tells, it must be a mosquitto."""
    source = "--pid"
    if pid is None:
        if pid_file is None:
            raise CredentialError("--reload needs --pid or --pid-file")
        source = str(pid_file)
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise CredentialError(f"cannot read a pid from {pid_file}: {exc}") from None
    if pid <= 1:
        raise CredentialError(f"{source}: pid {pid} is not one broker process (a pid must be above 1)")
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            raise CredentialError(f"{source}: no process with pid {pid}") from None
        return pid  # no /proc here: kill() itself will say whether it exists
    except OSError:
        return pid
    if "mosquitto" not in name:
        raise CredentialError(f"{source}: pid {pid} is {name!r}, not mosquitto; not signalled")
    return pid


def reload_broker(pid: int | None = None, pid_file: Path | None = None) -> int:
    """SIGHUP makes Mosquitto re-read password_file and acl_file; returns the pid signalled."""
    pid = broker_pid(pid, pid_file)
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise CredentialError(f"cannot signal pid {pid}: {exc.strerror}") from None
    return pid


# -- what the installer pastes into the device ------------------------------------------------------


def device_broker_url(url: str) -> str:
    """The broker URL without any user:password@ in it: mqtt.url may carry the collector's own
    login, which must never reach a device config or a provisioning file."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def device_config(device: Device, password: str, broker_url: str, prefix: str) -> str:
    """YAML the installer pastes into the device: broker, identity, topics, last will."""
    status = status_topic(device.kind, device.id, prefix)
    config = {
        "broker_url": device_broker_url(broker_url),
        "client_id": device.id,
        "username": device.id,
        "password": password,
        "telemetry_topic": telemetry_topic(device.kind, device.id, prefix),
        "telemetry_qos": 1,
        "status_topic": status,
        "online_message": {"payload": "online", "retain": True, "qos": 1},
        "last_will": {"topic": status, "payload": "offline", "retain": True, "qos": 1},
        "interval_s": device.interval_s,
    }
    head = f"# citywatch device {device.id}: the password is shown only now and stored only as a hash\n"
    return head + str(yaml.safe_dump(config, sort_keys=False))
