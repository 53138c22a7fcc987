"""Helpers of the notification tests: events, local times, and a recording HTTP endpoint.

The endpoint is a real ``ThreadingHTTPServer`` on 127.0.0.1: Apprise's ``json://`` and
``form://`` plugins post to it over a real socket, so the test sees exactly the bytes a
webhook (or ntfy, or a Telegram bridge) would.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from edge_app.core.clock import rfc3339

VLAD = ZoneInfo("Asia/Vladivostok")


def vlad(day: int, hour: int, minute: int = 0) -> float:
    """Unix time of ``hour:minute`` on 2026-12-``day`` in Vladivostok (UTC+10, no DST)."""
    return datetime(2026, 12, day, hour, minute, tzinfo=VLAD).timestamp()


def event(unit: str, seq: int, ts: float, **over: Any) -> dict[str, Any]:
    """An alert event as the station's ingest hands it over (MQTT shape unless overridden)."""
    body: dict[str, Any] = {
        "id": f"{unit}-{seq}", "unit": unit, "seq": seq, "ts": rfc3339(ts), "outcome": "alert",
        "label": "animal", "species": "leopard", "score": 0.87, "source": "mqtt"}
    body.update(over)
    return body


def lora(unit: str, seq: int, ts: float, **over: Any) -> dict[str, Any]:
    """The same alert as it arrives over LoRaWAN (``source: lorawan``, no media)."""
    return event(unit, seq, ts, source="lorawan", seq16=seq & 0xFFFF, **over)


def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0, what: str = "it") -> None:
    """Poll ``cond`` until true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


@dataclass
class Received:
    """One request as the endpoint saw it."""

    path: str
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, tuple[str | None, bytes]]:
        """The form's fields: name → (filename or None, bytes).

        Apprise's ``form://`` posts ``multipart/form-data`` when there are attachments and
        ``application/x-www-form-urlencoded`` when there are none.
        """
        if self.content_type.startswith("application/x-www-form-urlencoded"):
            fields = urllib.parse.parse_qs(self.body.decode(), keep_blank_values=True)
            return {k: (None, v[0].encode()) for k, v in fields.items()}
        head = f"Content-Type: {self.content_type}\r\n\r\n".encode()
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + self.body)
        out: dict[str, tuple[str | None, bytes]] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            out[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
        return out


class Recorder:
    """A local HTTP endpoint that records every POST and answers 200.

    ``gate``: while cleared, requests wait (up to 5 s) before being answered, which stands in
    for a slow notification service.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(n)
                recorder.entered.set()
                recorder.gate.wait(5.0)
                recorder.received.append(
                    Received(self.path, self.headers.get("Content-Type", ""), data))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, scheme: str, path: str = "hook") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{path}"

    def wait(self, n: int, timeout_s: float = 10.0) -> list[Received]:
        wait_until(lambda: len(self.received) >= n, timeout_s, f"{n} request(s)")
        return list(self.received)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
