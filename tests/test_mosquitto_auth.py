"""Per-device credentials and topic ACLs, enforced by a real Mosquitto reading the files we write."""

from __future__ import annotations

import base64
import os
import pwd
import queue
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from click.testing import CliRunner, Result
from paho.mqtt.enums import CallbackAPIVersion

from citywatch.cli import main
from citywatch.devices.credentials import (
    CredentialError,
    broker_accounts,
    collector_secret,
    hash_password,
    reload_broker,
    render_acl,
    render_password_file,
    verify_password,
    write_mosquitto_auth,
)
from citywatch.devices.registry import Credential
from tests.conftest import make_settings, wait_until
from tests.servers.mosquitto import AuthMosquittoServer

COLLECTOR = "citywatch-collector"
COLLECTOR_PASSWORD = "collector-" + "x7Qm2" * 5


# -- MQTT clients for the tests -------------------------------------------------------------------


class Refused(Exception):
    pass


@contextmanager
def session(port: int, username: str | None, password: str | None, will: dict[str, Any] | None = None,
            client_id: str | None = None) -> Iterator[mqtt.Client]:
    """A connected MQTT v5 client; raises Refused(reason) when the broker says no."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{secrets.token_hex(4)}",
                         protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    if will:
        client.will_set(will["topic"], will["payload"], qos=will["qos"], retain=will["retain"])
    answer: queue.Queue[Any] = queue.Queue()
    client.on_connect = lambda c, u, flags, reason, props: answer.put(reason)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        reason = answer.get(timeout=10)
        if reason.is_failure:
            raise Refused(str(reason))
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def refusal(port: int, username: str | None, password: str | None) -> str | None:
    """The broker's reason for refusing this login, or None when it accepts it."""
    try:
        with session(port, username, password):
            return None
    except Refused as exc:
        return str(exc)


class Subscriber:
    """The collector's view: everything under citywatch/# in arrival order."""

    def __init__(self, port: int, username: str = COLLECTOR, password: str = COLLECTOR_PASSWORD) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        self._session = session(port, username, password)
        self.client = self._session.__enter__()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.subscribe("citywatch/#", qos=1)
        assert self._subscribed.wait(10)

    def topics(self) -> list[str]:
        return [t for t, _ in self.messages]

    def close(self) -> None:
        self._session.__exit__(None, None, None)


def publish(client: mqtt.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    info = client.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(10)
    assert info.is_published()


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def auth_dir() -> Iterator[Path]:
    """Outside pytest's 0700 tmp tree: Mosquitto reads the files after dropping root to `mosquitto`."""
    path = Path(tempfile.mkdtemp(prefix="citywatch-auth-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def write_config(tmp_path: Path, url: str, **mqtt_extra: Any) -> Path:
    config = tmp_path / "config.yaml"
    mqtt_section = {"url": url, "username": COLLECTOR, "password": COLLECTOR_PASSWORD,
                    "client_id": f"cw-{tmp_path.name}"[:60], **mqtt_extra}
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "mqtt": mqtt_section,
                                      "api": {"port": 0}}))
    return config


def cli(config: Path, *args: str) -> Result:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def added(config: Path, device_id: str, kind: str, *more: str) -> dict[str, Any]:
    """`devices add` and the device config it prints once."""
    result = cli(config, "devices", "add", device_id, "--kind", kind, *more)
    return dict(yaml.safe_load(result.stdout))


# -- the password hash ------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed")
def test_hash_is_exactly_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "dev-1", "s3cret-pass"], check=True,
                   capture_output=True)
    user, encoded = passwd.read_text().strip().split(":", 1)
    assert user == "dev-1" and encoded.startswith("$7$101$")
    assert verify_password("s3cret-pass", encoded)
    assert not verify_password("s3cret-pasS", encoded)
    _, _, iterations, salt, _ = encoded.split("$")
    assert hash_password("s3cret-pass", base64.b64decode(salt), int(iterations)) == encoded


def test_hashes_are_salted_and_garbage_never_verifies() -> None:
    a, b = hash_password("same"), hash_password("same")
    assert a != b and verify_password("same", a) and verify_password("same", b)
    for bad in ("", "plain", "$6$101$c2FsdA==$aGFzaA==", "$7$x$c2FsdA==$aGFzaA==", "$7$101$!!$??"):
        assert not verify_password("same", bad)


# -- the files --------------------------------------------------------------------------------------


CREDS = [
    Credential("gas-1", "gas", hash_password("a"), True),
    Credential("water-1", "water", hash_password("b"), False),  # disabled: no account
    Credential("lock-1", "lock", None, True),  # registered without a password: no account yet
]


def test_only_enabled_devices_with_a_password_get_an_account() -> None:
    accounts, skipped = broker_accounts(CREDS, COLLECTOR)
    assert [c.id for c in accounts] == ["gas-1"] and skipped == ["lock-1"]
    passwd = render_password_file(accounts, COLLECTOR, hash_password("c"))
    assert [line.split(":")[0] for line in passwd.splitlines()] == [COLLECTOR, "gas-1"]
    acl = render_acl(accounts, COLLECTOR, "citywatch")
    rules = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert rules == [f"user {COLLECTOR}", "topic read citywatch/#", "user gas-1", "topic write citywatch/gas/gas-1/#"]


def test_usernames_mosquitto_cannot_parse_or_that_clash_are_refused() -> None:
    with pytest.raises(CredentialError, match="':'"):
        broker_accounts([Credential("gas:1", "gas", hash_password("a"), True)], COLLECTOR)
    with pytest.raises(CredentialError, match="collector"):
        broker_accounts([Credential(COLLECTOR, "gas", hash_password("a"), True)], COLLECTOR)


def test_files_are_replaced_atomically_readable_by_the_broker_user_only(tmp_path: Path) -> None:
    out = tmp_path / "auth"
    password = "collector!pw"  # '!' is outside base64: it can be in the file only as the password itself
    files = write_mosquitto_auth(out, CREDS, COLLECTOR, password, "citywatch")
    files = write_mosquitto_auth(out, CREDS, COLLECTOR, password, "citywatch")  # again: replaces
    assert sorted(p.name for p in out.iterdir()) == ["acl", "passwd"]  # no temp files left
    assert files.devices == 1 and files.skipped == ["lock-1"]
    for path in (files.password_file, files.acl_file):
        st = path.stat()
        assert st.st_mode & 0o777 == 0o640
        if os.geteuid() == 0:
            assert st.st_uid == pwd.getpwnam("mosquitto").pw_uid
    assert password not in files.password_file.read_text() and "!" not in files.password_file.read_text()


def test_collector_password_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    first = collector_secret(settings)
    assert first.username == COLLECTOR and first.generated is not None
    assert first.generated.stat().st_mode & 0o777 == 0o600
    again = collector_secret(settings)
    assert again.password == first.password and again.generated is None
    given = tmp_path / "given"
    given.write_text("from-a-file\n")
    assert collector_secret(settings, given).password == "from-a-file"
    configured = make_settings(tmp_path / "data", mqtt={"username": "coll", "password": "pw"})
    assert collector_secret(configured)[:2] == ("coll", "pw")


def test_reload_needs_a_readable_pid(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="--pid"):
        reload_broker()
    with pytest.raises(CredentialError, match="cannot read a pid"):
        reload_broker(pid_file=tmp_path / "missing.pid")


# -- the real broker ----------------------------------------------------------------------------------


def test_broker_enforces_device_accounts_and_topic_acls(tmp_path: Path, auth_dir: Path) -> None:
    server = AuthMosquittoServer(tmp_path / "mosquitto", auth_dir)
    config = write_config(tmp_path, server.url)
    gas = added(config, "gas-1", "gas", "--district", "Nanhu")
    water = added(config, "water-1", "water")
    assert gas["username"] == "gas-1" and gas["broker_url"] == server.url
    cli(config, "devices", "mosquitto-auth", "--out", str(auth_dir))
    server.start()
    sub = Subscriber(server.port)
    try:
        # Own topic accepted; another device's topic dropped. One connection publishes in order,
        # so once the later allowed message has arrived, the forbidden one never will.
        with session(server.port, "gas-1", gas["password"], client_id="gas-1") as device:
            publish(device, water["telemetry_topic"], b'{"ts": 1, "depth_cm": 99}')
            publish(device, "citywatch/gas/gas-2/telemetry", b'{"ts": 1, "lel_pct": 1}')
            publish(device, gas["telemetry_topic"], b'{"ts": 1, "lel_pct": 1}')
            publish(device, gas["status_topic"], b"online", retain=True)
            wait_until(lambda: gas["status_topic"] in sub.topics())
        assert sub.topics() == [gas["telemetry_topic"], gas["status_topic"]]

        # Wrong password, unknown user, no login: refused.
        assert refusal(server.port, "gas-1", gas["password"] + "x") is not None
        assert refusal(server.port, "gas-9", gas["password"]) is not None
        assert refusal(server.port, None, None) is not None
        assert refusal(server.port, "water-1", water["password"]) is None

        # The last will from the printed config is allowed by the ACL: a dropped device is announced offline.
        will = gas["last_will"]
        with session(server.port, "gas-1", gas["password"], will=will) as device:
            device.loop_stop()
            device.socket().close()  # no DISCONNECT: the broker publishes the will
        wait_until(lambda: (will["topic"], b"offline") in sub.messages)
    finally:
        sub.close()
        server.stop()


def test_disable_and_rotate_lock_out_the_old_credentials(tmp_path: Path, auth_dir: Path) -> None:
    server = AuthMosquittoServer(tmp_path / "mosquitto", auth_dir)
    config = write_config(tmp_path, server.url)
    gas = added(config, "gas-1", "gas")
    water = added(config, "water-1", "water")
    cli(config, "devices", "mosquitto-auth", "--out", str(auth_dir))
    server.start()
    try:
        assert refusal(server.port, "water-1", water["password"]) is None
        cli(config, "devices", "disable", "water-1")
        cli(config, "devices", "mosquitto-auth", "--out", str(auth_dir), "--reload", "--pid", str(server.pid))
        wait_until(lambda: refusal(server.port, "water-1", water["password"]) is not None)
        assert refusal(server.port, "gas-1", gas["password"]) is None  # the others are untouched

        # rotate, rewriting the files and reloading in the same command (--auth-dir / --pid-file)
        pid_file = tmp_path / "mosquitto.pid"
        pid_file.write_text(f"{server.pid}\n")
        result = cli(config, "devices", "rotate", "gas-1", "--auth-dir", str(auth_dir), "--pid-file", str(pid_file))
        new_password = yaml.safe_load(result.stdout)["password"]
        assert new_password != gas["password"]
        wait_until(lambda: refusal(server.port, "gas-1", gas["password"]) is not None)
        assert refusal(server.port, "gas-1", new_password) is None

        cli(config, "devices", "enable", "water-1", "--auth-dir", str(auth_dir), "--pid-file", str(pid_file))
        wait_until(lambda: refusal(server.port, "water-1", water["password"]) is None)
    finally:
        server.stop()
