"""The container, read statically (no Docker engine here): the image compiles the hot path in a build
stage with a C compiler, runs as a non-root user owning /data, checks /health; `.dockerignore` keeps
the virtualenv, data, builds, compiled files, .git, secrets and tests out of the build context; and
docker-compose (resolved by Debian's docker-compose) offers Mosquitto on TLS 8883 and Kafka with SASL."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SECRET_ENV = ("CITYWATCH_MQTT__PASSWORD", "INFLUX_ADMIN_PASSWORD", "CITYWATCH_INFLUX__TOKEN",
              "CITYWATCH_WEBHOOKS__SECRET", "CITYWATCH_API__TOKEN", "GRAFANA_ADMIN_PASSWORD",
              "CITYWATCH_KAFKA__PASSWORD")


@dataclass
class Stage:
    base: str
    name: str | None
    args: dict[str, str] = field(default_factory=dict)
    lines: list[tuple[str, str]] = field(default_factory=list)  # (instruction, arguments), ARGs substituted

    def all(self, instruction: str) -> list[str]:
        return [rest for name, rest in self.lines if name == instruction]


def dockerfile_stages(text: str) -> list[Stage]:
    """The Dockerfile's stages: continuation lines joined, comments dropped, ${ARG} replaced by defaults."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = rest.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None))
            continue
        stage = stages[-1]
        if instruction == "ARG":
            key, _, default = rest.strip().partition("=")
            stage.args[key] = default
            continue
        for key, value in stage.args.items():
            rest = rest.replace(f"${{{key}}}", value).replace(f"${key}", value)
        stage.lines.append((instruction, rest.strip()))
    return stages


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path (or one of its parent directories) decides;
    `!` re-includes; `**` spans directories, `*` and `?` stay within one."""
    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                out += ".*"
                i += 2
                if pattern.startswith("/", i):  # "**/x" also matches "x" at the top
                    out += "(?:/|)"
                    i += 1
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        if any(regex(pattern).match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def ignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_a_build_stage_compiles_the_hot_path(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "a multi-stage build: a compiler in the build stage only"
    build, final = stages[0], stages[-1]
    installs = " ".join(build.all("RUN"))
    assert re.search(r"apt-get install[^&]*\bgcc\b", installs), "mypyc needs a C compiler in the build stage"
    copied = " ".join(build.all("COPY"))
    assert "setup.py" in copied.split() and "citywatch" in copied, "setup.py (the mypyc build) and the package"
    assert re.search(r"pip (wheel|install)\b.*\s\.(\s|$)", installs), "the build stage builds this project"
    assert "CITYWATCH_PURE" not in (ROOT / "Dockerfile").read_text().replace("# ", ""), "never the pure build"
    final_text = " ".join(rest for _, rest in final.lines)
    assert "gcc" not in final_text, "no compiler in the image that runs"
    assert any(f"--from={build.name}" in c for c in final.all("COPY")), "the runtime stage takes the built wheels"
    assert any("is_compiled()" in r for r in final.all("RUN")), "no image without the compiled hot path"


def test_the_image_runs_as_a_fixed_non_root_user_owning_data(stages: list[Stage]) -> None:
    final = stages[-1]
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER must be a fixed numeric non-root uid, not {user!r}"
    runs = " ".join(final.all("RUN"))
    assert re.search(rf"useradd\b[^&]*--uid {uid}\b", runs)
    assert re.search(rf"chown {uid}(:{gid or uid})? /data\b", runs), "the data dir belongs to the user"
    assert any("/data" in v for v in final.all("VOLUME"))
    last_user = max(i for i, (name, _) in enumerate(final.lines) if name == "USER")
    after = [name for name, _ in final.lines[last_user:]]
    assert not {"RUN", "COPY", "ADD"} & set(after), "USER comes after everything that needs root"
    assert not any("tests" in shlex.split(c)[0] for c in final.all("COPY") if not c.startswith("--from"))


def test_the_image_checks_its_health(stages: list[Stage]) -> None:
    (check,) = stages[-1].all("HEALTHCHECK")
    assert "CMD" in check and "/health" in check and "--interval=" in check


def test_dockerignore_keeps_the_host_out(ignore: list[str], stages: list[Stage]) -> None:
    for path in (".venv/bin/python", "data/state.db", "data/api-token", "data/collector-password", "build/lib/x.so",
                 "citywatch/streams/pipeline.cpython-311-x86_64-linux-gnu.so",
                 "citywatch/__pycache__/cli.cpython-311.pyc",
                 ".git/config", "deploy/mosquitto/passwd", "deploy/mosquitto/certs/server.key",
                 "deploy/mosquitto/certs/ca.crt", "server.pem", "citywatch/secret.key", "citywatch/api-token",
                 "tests/test_api.py", "tests/servers/certs.py", "benchmarks/core.py", ".env", "docker-compose.yml"):
        assert dockerignore_excludes(ignore, path), f"{path} would be sent to the Docker daemon"
    copied = [shlex.split(c)[:-1] for stage in stages for c in stage.all("COPY") if not c.startswith("--from")]
    needed = [Path(src) for sources in copied for src in sources]
    needed += [Path("citywatch/streams/pipeline.py"), Path("citywatch/locale/zh_CN/LC_MESSAGES/citywatch.po")]
    for needed_path in needed:
        assert (ROOT / needed_path).exists(), needed_path
        assert not dockerignore_excludes(ignore, str(needed_path)), f"the build needs {needed_path}"
    assert not dockerignore_excludes(ignore, "citywatch/dashboards/build.py")


def test_the_matcher_follows_docker_rules() -> None:
    assert dockerignore_excludes(["**", "!citywatch", "**/*.so"], "citywatch/a/b.so")
    assert not dockerignore_excludes(["**", "!citywatch", "**/*.so"], "citywatch/a/b.py")
    assert dockerignore_excludes(["data"], "data/x/y")  # a directory pattern takes what is inside
    assert not dockerignore_excludes(["*.key"], "a/b.key")  # * stays at the top level
    assert dockerignore_excludes(["**/*.key"], "a/b.key")


def resolved_compose() -> dict[str, Any]:
    """docker-compose.yml as Debian's docker-compose resolves it (anchors, defaults, variables)."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is not installed: apt-get install -y docker-compose (.ci/run does this)")
    env = {"PATH": os.environ.get("PATH", ""), **{name: f"placeholder-{name.lower()}" for name in SECRET_ENV}}
    done = subprocess.run([tool, "-f", str(ROOT / "docker-compose.yml"), "config"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = yaml.safe_load(done.stdout)
    return data


def test_compose_offers_mqtt_over_tls_with_mounted_certificates() -> None:
    mosquitto = resolved_compose()["services"]["mosquitto"]
    published = {str(p.get("target") if isinstance(p, dict) else p.split(":")[-1]) for p in mosquitto["ports"]}
    assert "8883" in published
    mounts = {(v["source"] if isinstance(v, dict) else v.split(":")[0]): v for v in mosquitto["volumes"]}
    certs = next(v for s, v in mounts.items() if str(s).rstrip("/").endswith("deploy/mosquitto/certs"))
    assert (certs.get("target") if isinstance(certs, dict) else certs.split(":")[1]) == "/mosquitto/certs"
    assert (ROOT / "deploy" / "mosquitto" / "certs" / "README.md").read_text().count("openssl") >= 3
    assert mosquitto["user"] == "1883:1883"
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    tls = conf[conf.index("listener 8883"):]
    tls = tls[:tls.index("\n\n")]
    for line in ("certfile /mosquitto/certs/server.crt", "keyfile /mosquitto/certs/server.key",
                 "cafile /mosquitto/certs/ca.crt"):
        assert line in tls


def test_compose_runs_kafka_with_sasl() -> None:
    services = resolved_compose()["services"]
    bootstrap = yaml.safe_load((ROOT / "deploy" / "redpanda" / "bootstrap.yaml").read_text())
    assert bootstrap["enable_sasl"] is True
    user, password, mechanism = services["redpanda"]["environment"]["RP_BOOTSTRAP_USER"].split(":")
    assert password == "placeholder-citywatch_kafka__password" and user in bootstrap["superusers"]
    for name in ("citywatch-bridge", "citywatch-worker", "citywatch-sink"):
        env = services[name]["environment"]
        assert env["CITYWATCH_KAFKA__SECURITY_PROTOCOL"] in ("SASL_PLAINTEXT", "SASL_SSL"), name
        assert (env["CITYWATCH_KAFKA__USERNAME"], env["CITYWATCH_KAFKA__PASSWORD"]) == (user, password), name
        assert env["CITYWATCH_KAFKA__SASL_MECHANISM"] == mechanism, name
    from citywatch.config import load_settings

    settings = load_settings(None, {"kafka": {k.removeprefix("CITYWATCH_KAFKA__").lower(): v for k, v in
                                              services["citywatch-sink"]["environment"].items()
                                              if k.startswith("CITYWATCH_KAFKA__")}})
    assert settings.kafka.security_protocol.startswith("SASL_")  # the variables are valid citywatch settings
