"""Throw-away certificates for TLS tests, made with the openssl command line (Debian's openssl)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing we use: verification against it must fail


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.crt"
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-keyout", str(key), "-out", str(cert), cwd=d)
    return key, cert


def _leaf(d: Path, name: str, ca_key: Path, ca_cert: Path, san: str | None) -> tuple[Path, Path]:
    key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt"
    _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr),
         cwd=d)
    args = ["x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-out", str(cert)]
    if san:
        ext = d / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\n")
        args += ["-extfile", str(ext)]
    _run(*args, cwd=d)
    return key, cert


def make_certs(directory: Path) -> Certs:
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed: apt-get install -y openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca(directory, "test-ca")
    _, other_ca = _ca(directory, "other-ca")
    server_key, server_cert = _leaf(directory, "server", ca_key, ca_cert, "IP:127.0.0.1,DNS:localhost")
    client_key, client_cert = _leaf(directory, "client", ca_key, ca_cert, None)
    for path in directory.iterdir():
        path.chmod(0o644)  # mosquitto may drop root and must read them
    return Certs(ca_cert, server_cert, server_key, client_cert, client_key, other_ca)
