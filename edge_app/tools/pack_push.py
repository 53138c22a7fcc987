"""``camtrap models push PACK --unit U --broker HOST:PORT``: a signed model pack to a unit.

The operator's side of :mod:`edge_app.trap.packs.remote`. In rounds: ``models/offer`` (the
unit answers which chunks it lacks), up to ``--window`` of those chunks on
``<prefix>/<unit>/pack/<sha256>/<i>``, ``models/offer`` again — until nothing is missing, then
``models/install``, whose result says whether the unit switched to the pack (and is restarting
on it) or why it refused it.

Why rounds: each offer result is proof of what the unit holds on its card, so a link that
drops, a unit that powers down mid-transfer or a push that is cancelled all resume where they
stood — run the same command again and only the missing chunks go. The window bounds what waits
in the unit's memory (16 × 64 KiB by default) on a 512 MB Pi.

The rounds are :class:`Pusher`, written against two callables so they are tested without a
broker; :func:`main` puts them on an MQTT connection (:class:`edge_app.station.session.MqttSession`,
the receiver's, with a session that ends when the push does).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

CHUNK_BYTES = 64 * 1024
WINDOW = 16
STALL_ROUNDS = 3
"""Offers in a row that show no progress before the push gives up (the unit is taking no
chunks: another push, a full card)."""

Call = Callable[[str, dict[str, Any], float], "dict[str, Any] | None"]
"""Send a command, wait up to the timeout for its result (None: no answer)."""
SendChunk = Callable[[int, bytes], None]


class PushError(RuntimeError):
    """The push stopped; the message says why and what to do."""


@dataclass
class PushResult:
    """What a push did, for the summary line and ``--json``."""

    pack: str
    bytes: int
    of: int
    already: int = 0
    sent: int = 0
    rounds: int = 0
    install: dict[str, Any] = field(default_factory=dict)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class Pusher:
    """The rounds of one push (see the module docstring).

    Args:
        pack: the pack file.
        call: sends a command and returns its result.
        send_chunk: publishes one chunk (QoS 1).
        chunk_bytes: chunk size.
        window: chunks per round.
        answer_s: how long to wait for a unit's answer to an offer.
        install_s: how long to wait for the install (verify, self-test, switch).
        say: progress lines for a person.
    """

    def __init__(self, pack: Path, call: Call, send_chunk: SendChunk, *,
                 chunk_bytes: int = CHUNK_BYTES, window: int = WINDOW, answer_s: float = 60.0,
                 install_s: float = 300.0, say: Callable[[str], None] = lambda _s: None) -> None:
        self.pack, self.call, self.send_chunk = pack, call, send_chunk
        self.chunk_bytes, self.window = chunk_bytes, window
        self.answer_s, self.install_s, self.say = answer_s, install_s, say

    def run(self) -> PushResult:
        """Offer, send what is missing in rounds, install.

        Raises:
            PushError: the unit refused, stopped answering or stopped taking chunks.
        """
        size = self.pack.stat().st_size
        sha = sha256_of(self.pack)
        r = PushResult(sha, size, -(-size // self.chunk_bytes))
        best, stalled = r.of + 1, 0
        with open(self.pack, "rb") as f:
            while True:
                missing = self._offer(sha, size)
                if r.rounds == 0:
                    r.already = r.of - len(missing)
                    self.say(f"offered pack {sha[:12]}… ({size / 1e6:.1f} MB, {r.of} chunks of "
                             f"{self.chunk_bytes} bytes): the unit has {r.already}")
                r.rounds += 1
                if not missing:
                    break
                stalled = 0 if len(missing) < best else stalled + 1
                best = min(best, len(missing))
                if stalled >= STALL_ROUNDS:
                    raise PushError(f"the unit took no chunks in {STALL_ROUNDS} rounds "
                                    f"({len(missing)} still missing); see its log")
                for i in missing[: self.window]:
                    f.seek(i * self.chunk_bytes)
                    self.send_chunk(i, f.read(self.chunk_bytes))
                    r.sent += 1
                self.say(f"sent {min(len(missing), self.window)} chunk(s), "
                         f"{max(0, len(missing) - self.window)} to go")
        res = self.call("models/install", {"pack": sha}, self.install_s)
        if res is None:
            raise PushError(f"no answer to models/install in {self.install_s:.0f} s: the pack "
                            "is complete on the unit; run the push again to ask once more")
        if not res.get("ok"):
            raise PushError(f"the unit refused the pack: {res.get('error')}")
        r.install = res
        return r

    def _offer(self, sha: str, size: int) -> list[int]:
        res = self.call("models/offer", {"pack": sha, "bytes": size,
                                         "chunk_bytes": self.chunk_bytes}, self.answer_s)
        if res is None:
            raise PushError(f"no answer to models/offer in {self.answer_s:.0f} s (the unit is "
                            "asleep or offline; the offer waits for it at the broker): run the "
                            "same push again later to resume")
        if not res.get("ok"):
            raise PushError(f"the unit refused the offer: {res.get('error')}")
        missing = res.get("missing")
        if not isinstance(missing, list) or not all(isinstance(i, int) for i in missing):
            raise PushError("the unit's answer to models/offer has no list of missing chunks")
        return [int(i) for i in missing]


class _Results:
    """Command results by id, filled by the network thread and awaited by the pusher."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._got: dict[str, dict[str, Any]] = {}

    def put(self, payload: bytes) -> None:
        from edge_app.core.guard import Refused, parse_object

        try:
            body = parse_object(payload)
        except Refused:
            return
        if isinstance(body.get("id"), str):
            with self._cond:
                self._got[body["id"]] = body
                self._cond.notify_all()

    def wait(self, cmd_id: str, timeout_s: float) -> dict[str, Any] | None:
        with self._cond:
            self._cond.wait_for(lambda: cmd_id in self._got, timeout_s)
            return self._got.pop(cmd_id, None)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", metavar="PACK", help="pack file from 'camtrap models pack'")
    p.add_argument("--unit", required=True, help="the unit's id")
    p.add_argument("--broker", required=True, metavar="HOST:PORT")
    p.add_argument("--prefix", default="camtrap", help="topic prefix")
    p.add_argument("--ca-file", help="CA certificate of the broker (enables TLS)")
    p.add_argument("--username", help="MQTT user name (an operator account, not the one the "
                   "station runs under: the broker allows one connection per account)")
    p.add_argument("--password-file", help="file with the MQTT password (mode 0600)")
    p.add_argument("--chunk-bytes", type=int, default=CHUNK_BYTES)
    p.add_argument("--window", type=int, default=WINDOW, help="chunks per round")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the unit's answer to each offer")
    p.add_argument("--json", action="store_true", help="the outcome as one JSON object")


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from paho.mqtt.subscribeoptions import SubscribeOptions

    from edge_app.core.clock import SystemClock
    from edge_app.core.mqtt_common import read_password_file
    from edge_app.core.topics import cmd_result_topic, cmd_topic, pack_topic
    from edge_app.station.display import parse_broker
    from edge_app.station.session import LinkNote, MqttSession

    try:
        host, port = parse_broker(args.broker)
    except ValueError as e:
        print(f"camtrap: --broker: {e}", file=sys.stderr)
        return 2
    password = (read_password_file("--password-file", args.password_file)
                if args.password_file else None)
    results = _Results()
    result_filter = cmd_result_topic(args.prefix, args.unit, "models/+")
    notes: list[LinkNote] = []

    def on_message(msg: Any) -> None:
        results.put(bytes(msg.payload))
        session.ack(msg.mid, msg.qos)

    session = MqttSession(host, port, f"camtrap-push-{uuid.uuid4().hex[:8]}", SystemClock(),
                      on_message=on_message, on_note=notes.append, session_expiry_s=0,
                      subscriptions=lambda: [(result_filter, SubscribeOptions(qos=1))],
                      ca_file=args.ca_file, username=args.username, password=password)

    def call(name: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
        cmd_id = uuid.uuid4().hex[:12]
        session.publish(cmd_topic(args.prefix, args.unit, name),
                        json.dumps({"id": cmd_id, **body}).encode())
        return results.wait(cmd_id, timeout_s)

    def say(text: str) -> None:
        if not args.json:
            print(f"{args.unit}: {text}", file=out, flush=True)

    pack = Path(args.pack)
    sha_holder: list[str] = []

    def send_chunk(i: int, data: bytes) -> None:
        if not sha_holder:
            sha_holder.append(sha256_of(pack))
        session.publish(f"{pack_topic(args.prefix, args.unit, sha_holder[0])}/{i}", data)

    session.start()
    try:
        if not session.wait_connected(30):
            why = f" ({notes[-1]})" if notes else ""
            print(f"camtrap: cannot connect to {args.broker}{why}", file=sys.stderr)
            return 1
        pusher = Pusher(pack, call, send_chunk, chunk_bytes=args.chunk_bytes,
                        window=args.window, answer_s=args.timeout, say=say)
        try:
            r = pusher.run()
        except PushError as e:
            if args.json:
                print(json.dumps({"unit": args.unit, "ok": False, "error": str(e)}), file=out)
            else:
                print(f"camtrap: {args.unit}: {e}", file=sys.stderr)
            return 1
    finally:
        session.stop()
    if args.json:
        print(json.dumps({"unit": args.unit, "ok": True, "pack": r.pack, "bytes": r.bytes,
                          "chunks": r.of, "already_on_unit": r.already, "sent": r.sent,
                          "rounds": r.rounds, "version": r.install.get("version"),
                          "previous": r.install.get("previous")}), file=out)
    else:
        say(f"installed pack {r.install.get('version')} (previous "
            f"{r.install.get('previous') or 'none'}); the unit restarts on it and keeps it once "
            "it has run healthy for 2 min, else rolls back by itself")
    return 0
