"""Real receivers for notifications to people: an SMTP server (aiosmtpd, with AUTH) and an HTTP server
for Apprise's json:// target. Both stop and start again on the same port (a receiver outage)."""

from __future__ import annotations

import email
import email.policy
import json
import re
import threading
from collections import Counter
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, Session

from tests.servers.mosquitto import free_port

REF = re.compile(r"(?:Ref: |编号：)(\S+)")


class SmtpSink:
    """An SMTP server on 127.0.0.1 that takes mail only from `user`:`password` (AUTH without TLS)."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()
        self.port = free_port()
        self.lock = threading.Lock()
        self.messages: list[EmailMessage] = []
        self.refused_logins = 0
        self.controller: Controller | None = None

    def url(self, to: str = "ops@example.org") -> str:
        """The Apprise mailto:// URL to this server, credentials included, no TLS."""
        return (f"mailto://{self.user.decode()}:{self.password.decode()}@127.0.0.1:{self.port}"
                f"?smtp=127.0.0.1&mode=insecure&from=citywatch@example.org&to={to}")

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:  # noqa: N802
        if not session.authenticated:
            return "530 Authentication required"
        content = envelope.content or b""
        raw = content.encode() if isinstance(content, str) else bytes(content)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        with self.lock:
            self.messages.append(message)  # type: ignore[arg-type]
        return "250 OK"

    def _authenticate(self, server: Any, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = auth_data.login == self.user and auth_data.password == self.password
        if not ok:
            self.refused_logins += 1
        return AuthResult(success=ok)

    def start(self) -> SmtpSink:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, authenticator=self._authenticate,
                                     auth_require_tls=False)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def received(self) -> list[tuple[str, str]]:
        """(subject, plain-text body) of each message, in arrival order."""
        with self.lock:
            messages = list(self.messages)
        out = []
        for m in messages:
            part = m.get_body(preferencelist=("plain",))
            text = part.get_content() if part is not None else ""
            out.append((str(m["Subject"]), text.replace("\r\n", "\n")))
        return out

    def refs(self) -> Counter[str]:
        return Counter(r for _, body in self.received() for r in REF.findall(body))


class JsonSink:
    """An HTTP server for Apprise's json:// target: records each POST (path, headers, JSON body).
    `status` is what it answers; `hold` (an Event) makes it keep requests waiting until set."""

    def __init__(self) -> None:
        self.port = free_port()
        self.lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.status = 200
        self.hold: threading.Event | None = None
        self.arrived = threading.Event()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> JsonSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with sink.lock:
                    sink.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()},
                                          json.loads(body)))
                sink.arrived.set()
                if sink.hold is not None:
                    sink.hold.wait(30)
                self.send_response(sink.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for _, _, body in self.requests]

    def refs(self) -> Counter[str]:
        return Counter(r for body in self.bodies() for r in REF.findall(str(body.get("message", ""))))
