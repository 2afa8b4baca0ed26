"""The broker's files cannot be broken from the configuration or the registry: a topic prefix
with a newline once added `pattern readwrite #` for every account. Prefixes are checked at load,
every field of the files is checked when they are written, and with a real Mosquitto a device
still writes only its own topics. A device may not take the collector's account name."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from citywatch.cli import main
from citywatch.config import load_settings
from citywatch.devices.credentials import (
    CredentialError,
    hash_password,
    render_acl,
    render_password_file,
    write_mosquitto_auth,
)
from citywatch.devices.registry import Credential, Registry, registry_path
from citywatch.errors import ConfigError
from citywatch.model import Device
from tests.conftest import wait_until
from tests.servers.mosquitto import AuthMosquittoServer
from tests.test_mosquitto_auth import COLLECTOR, COLLECTOR_PASSWORD, Subscriber, publish, refusal, session

INJECTION = "citywatch/#\npattern readwrite #\n#"
HOSTILE_PREFIXES = [INJECTION, "city watch", "citywatch\x00", "citywatch/+", "citywatch/#", "#", "$SYS",
                    "/citywatch", "citywatch/", "city//watch", "citywatch\r", "x" * 129, ""]
GAS = Credential("gas-1", "gas", hash_password("a"), True)


@pytest.fixture
def auth_dir() -> Iterator[Path]:
    """Outside pytest's 0700 tmp tree: Mosquitto reads the files after dropping root to `mosquitto`."""
    path = Path(tempfile.mkdtemp(prefix="citywatch-acl-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("prefix", HOSTILE_PREFIXES)
def test_an_unsafe_topic_prefix_is_refused_at_load_naming_the_key(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.topic_prefix"):
        load_settings(None, {"mqtt": {"topic_prefix": prefix}})


@pytest.mark.parametrize("prefix", HOSTILE_PREFIXES)
def test_the_acl_is_never_rendered_with_an_unsafe_prefix(prefix: str) -> None:
    with pytest.raises(CredentialError, match="prefix"):
        render_acl([GAS], COLLECTOR, prefix)


@pytest.mark.parametrize("bad", [
    Credential("gas-1\npattern readwrite #", "gas", hash_password("a"), True),
    Credential("gas 1", "gas", hash_password("a"), True),
    Credential("gas-1", "gas\ntopic readwrite #", hash_password("a"), True),
    Credential("gas-1", "gas", hash_password("a") + "\nroot:" + hash_password("b"), True),
    Credential("gas-1", "gas", "$7$101$c2FsdA==$aGFz aA==", True),
])
def test_no_field_can_add_a_line_to_the_broker_files(bad: Credential) -> None:
    with pytest.raises(CredentialError):
        render_acl([bad], COLLECTOR, "citywatch")
        render_password_file([bad], COLLECTOR, hash_password("c"))
    with pytest.raises(CredentialError):
        render_password_file([bad], COLLECTOR, hash_password("c"))
        render_acl([bad], COLLECTOR, "citywatch")
    for collector in ("coll\nuser x", "coll x", "coll\x00"):
        with pytest.raises(CredentialError):
            render_acl([GAS], collector, "citywatch")
        with pytest.raises(CredentialError):
            render_password_file([GAS], collector, hash_password("c"))


def _config(tmp_path: Path, url: str = "mqtt://127.0.0.1:1", **mqtt: object) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "api": {"port": 0}, "mqtt": {
        "url": url, "username": COLLECTOR, "password": COLLECTOR_PASSWORD, "client_id": "cw-acl-test", **mqtt}}))
    return config


def _cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args])


def test_mosquitto_auth_with_an_injected_prefix_exits_2_and_writes_nothing(tmp_path: Path, auth_dir: Path) -> None:
    result = _cli(_config(tmp_path, topic_prefix=INJECTION), "devices", "mosquitto-auth", "--out", str(auth_dir))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "mqtt.topic_prefix" in result.output
    assert list(auth_dir.iterdir()) == []


def test_with_a_real_broker_a_device_writes_only_its_own_topics(tmp_path: Path, auth_dir: Path) -> None:
    server = AuthMosquittoServer(tmp_path / "mosquitto", auth_dir)
    config = _config(tmp_path, server.url, topic_prefix="jx/city")
    printed = {}
    for device_id, kind in (("gas-1", "gas"), ("water-1", "water")):
        result = _cli(config, "devices", "add", device_id, "--kind", kind)
        assert result.exit_code == 0, result.output
        printed[device_id] = yaml.safe_load(result.stdout)
    assert _cli(config, "devices", "mosquitto-auth", "--out", str(auth_dir)).exit_code == 0
    good_acl = (auth_dir / "acl").read_text()
    assert "pattern" not in good_acl

    # The hostile prefix cannot reach the files even past the configuration check.
    registry = Registry(registry_path(tmp_path / "data"))
    with pytest.raises(CredentialError):
        write_mosquitto_auth(auth_dir, registry.credentials(), COLLECTOR, COLLECTOR_PASSWORD, INJECTION)
    registry.close()
    assert (auth_dir / "acl").read_text() == good_acl

    server.start()
    sub = Subscriber(server.port)
    sub.client.subscribe("#", qos=1)  # whatever the collector may read, anywhere
    gas = printed["gas-1"]
    try:
        assert gas["telemetry_topic"] == "jx/city/gas/gas-1/telemetry"
        with session(server.port, "gas-1", gas["password"], client_id="gas-1") as device:
            for topic in (printed["water-1"]["telemetry_topic"], "jx/city/gas/gas-2/telemetry",
                          "citywatch/gas/gas-1/telemetry", "jx/city/gas", "jx/other/gas/gas-1/telemetry"):
                publish(device, topic, b'{"ts": 1700000000, "lel_pct": 99}')
            publish(device, gas["telemetry_topic"], b'{"ts": 1700000000, "lel_pct": 1}')
            wait_until(lambda: gas["telemetry_topic"] in sub.topics())
        assert sub.topics() == [gas["telemetry_topic"]]
        assert refusal(server.port, "water-1", printed["water-1"]["password"]) is None
    finally:
        sub.close()
        server.stop()


@pytest.mark.parametrize("mqtt,device_id", [({}, COLLECTOR), ({"username": "coll-x"}, "coll-x"),
                                            ({"client_id": "cw-main"}, "cw-main")])
def test_a_device_cannot_take_the_collectors_name(tmp_path: Path, mqtt: dict[str, str], device_id: str) -> None:
    config = _config(tmp_path, **mqtt)
    if "username" not in mqtt and "client_id" not in mqtt:
        settings = yaml.safe_load(config.read_text())
        settings["mqtt"]["username"] = None  # the default collector account name
        config.write_text(yaml.safe_dump(settings))
    result = _cli(config, "devices", "add", device_id, "--kind", "gas")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"id {device_id}" in result.output and "collector" in result.output
    csv = tmp_path / "street.csv"
    csv.write_text(f"id,kind\ngas-1,gas\n{device_id},gas\n")
    imported = _cli(config, "devices", "import", str(csv), "--secrets-out", str(tmp_path / "secrets.csv"))
    assert imported.exit_code == 1 and f"line 3: id {device_id}" in imported.output
    registry = Registry(registry_path(tmp_path / "data"))
    assert registry.all() == []
    registry.close()


def test_mosquitto_auth_says_what_to_do_about_an_older_device_with_the_collectors_name(
        tmp_path: Path, auth_dir: Path) -> None:
    config = _config(tmp_path)
    registry = Registry(registry_path(tmp_path / "data"))
    registry.add(Device(id=COLLECTOR, kind="gas"), hash_password("x"))  # registered before the check existed
    registry.close()
    result = _cli(config, "devices", "mosquitto-auth", "--out", str(auth_dir))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"devices remove {COLLECTOR}" in result.output and "mqtt.username" in result.output
    assert list(auth_dir.iterdir()) == []
