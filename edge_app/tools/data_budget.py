"""``camtrap data-budget``: the MB a month of alerts, thumbnails, images and link upkeep costs.

Why a model with measured figures: the SIM's plan is a few hundred MB; alerts and thumbnails
are small, but what a link *costs to keep* — a TLS handshake per connect, a keepalive ping
every minute, stats every five — depends on the link policy and dominates a quiet month. The
overheads come from :mod:`edge_app.tools.data_budget_figures`, measured against mosquitto over
TLS with ``camtrap data-budget --measure`` (below): the client talks to the broker through a
counting relay that reads the kernel's own TCP counters (``TCP_INFO``: bytes and segments),
so the figures are what crosses the wire, not what the app thinks it sent.

Per policy, a month (``DAYS_PER_MONTH``):

* ``always``: one connect a day (a NAT or cell change drops the rest), keepalives all day,
  stats every ``stats_interval_s``.
* ``on-demand``: one connect per kept event (worst case: none share a connection) and one
  per ``status_every_s``; each stays ``idle_disconnect_s`` (keepalives meanwhile), carries a
  status message, then disconnects.
* ``windows``: one connect a day for ``window_h`` hours, keepalives and stats inside.

Every message pays its measured MQTT + TLS overhead; every TCP segment its IP + TCP header
(:data:`~edge_app.tools.data_budget_figures.IP_TCP_HEADER`); bulk data is cut into LTE-sized
segments with a delayed ACK every second one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import socket
import ssl
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from edge_app.tools import data_budget_figures as df
from edge_app.tools.cli_args import finite

DAYS_PER_MONTH = 30.4
POLICIES = ("always", "on-demand", "windows")
MB = 1_000_000


@dataclass(frozen=True)
class Inputs:
    """What a month looks like (the CLI's options)."""

    triggers_per_day: float = 20.0
    kept_fraction: float = 0.5
    thumb_kb: float = 12.0
    image_kb: float = 350.0
    keepalive_s: float = 60.0
    plan_mb: float = 500.0
    status_every_s: float = 1800.0
    idle_disconnect_s: float = 120.0
    stats_interval_s: float = 300.0
    window_h: float = 4.0
    margin: float = 0.1


def message_bytes(payload: int, small: bool) -> float:
    """Bytes on the IP link for one QoS 1 publish of ``payload`` bytes (its PUBACK too)."""
    if small:
        wire = payload + df.PUBLISH_SMALL.value
        segs = df.PUBLISH_SMALL_SEGMENTS.value
    else:
        records = math.ceil(payload / df.TLS_RECORD_PAYLOAD.value)
        wire = payload + df.PUBLISH_LARGE.value + (records - df.PUBLISH_LARGE_RECORDS.value) \
            * df.TLS_RECORD_OVERHEAD.value
        data_segs = math.ceil(wire / df.LTE_MSS.value)
        segs = data_segs + math.ceil(data_segs / 2) + 1  # delayed ACKs, the PUBACK
    return wire + segs * df.IP_TCP_HEADER.value


def _connect_cost() -> float:
    return (df.CONNECT.value + df.DISCONNECT.value
            + (df.CONNECT_SEGMENTS.value + df.DISCONNECT_SEGMENTS.value)
            * df.IP_TCP_HEADER.value)


def _ping_cost() -> float:
    return df.KEEPALIVE.value + df.KEEPALIVE_SEGMENTS.value * df.IP_TCP_HEADER.value


def policy_month(policy: str, inp: Inputs) -> dict[str, Any]:
    """The month's bytes for one policy, by part, in MB."""
    day = 86400.0
    kept = inp.triggers_per_day * inp.kept_fraction
    status = message_bytes(int(df.STATUS_PAYLOAD.value), True)
    stats = message_bytes(int(df.STATS_PAYLOAD.value), True)
    alerts = kept * (message_bytes(int(df.ALERT_PAYLOAD.value), True)
                     + message_bytes(int(inp.thumb_kb * 1000), False))
    images = kept * message_bytes(int(inp.image_kb * 1000), False)
    if policy == "always":
        connects = 1.0
        up_s = day
        upkeep = day / inp.stats_interval_s * stats
    elif policy == "on-demand":
        scheduled = day / inp.status_every_s if inp.status_every_s > 0 else 0.0
        connects = kept + scheduled
        up_s = connects * inp.idle_disconnect_s
        upkeep = connects * status
    elif policy == "windows":
        connects = 1.0
        up_s = inp.window_h * 3600.0
        upkeep = up_s / inp.stats_interval_s * stats + status
    else:
        raise ValueError(f"unknown policy {policy!r}")
    handshakes = connects * _connect_cost()
    keepalive = up_s / inp.keepalive_s * _ping_cost()
    parts = {"alerts_thumbnails": alerts, "full_images": images, "handshakes": handshakes,
             "keepalive": keepalive, "status_stats": upkeep}
    total = sum(parts.values()) * DAYS_PER_MONTH
    without_images = total - images * DAYS_PER_MONTH
    limit = inp.plan_mb * MB * (1 - inp.margin)
    per_image = message_bytes(int(inp.image_kb * 1000), False)
    fit = max(0, int((limit - without_images) // per_image)) if per_image > 0 else 0
    return {
        "policy": policy,
        "mb_per_month": round(total / MB, 2),
        "within_plan": inp.plan_mb == 0 or total <= limit,
        "mb_without_full_images": round(without_images / MB, 2),
        "full_images_per_month": round(kept * DAYS_PER_MONTH, 1),
        "full_images_that_fit": fit,
        "connects_per_day": round(connects, 2),
        "link_up_h_per_day": round(up_s / 3600.0, 2),
        "parts_mb": {k: round(v * DAYS_PER_MONTH / MB, 3) for k, v in parts.items()},
    }


def budget(inp: Inputs, policies: tuple[str, ...] = POLICIES) -> dict[str, Any]:
    """The ``--json`` object."""
    return {"inputs": asdict(inp), "policies": [policy_month(p, inp) for p in policies],
            "figures": {name: {"value": f.value, "unit": f.unit, "source": f.source,
                               "estimate": f.estimate}
                        for name, f in df.all_figures().items()}}


def render_text(result: dict[str, Any]) -> str:
    inp = result["inputs"]
    lines = [f"Data per month: {inp['triggers_per_day']:g} triggers/day, "
             f"{inp['kept_fraction']:g} kept, thumbnail {inp['thumb_kb']:g} kB, image "
             f"{inp['image_kb']:g} kB, keepalive {inp['keepalive_s']:g} s, plan "
             f"{inp['plan_mb']:g} MB", "",
             f"{'policy':<10} {'MB/month':>9} {'no images':>9} {'fits':>5} {'images fit':>10}"
             f" {'connects/d':>10}"]
    lines.extend(f"{p['policy']:<10} {p['mb_per_month']:>9.1f} "
                 f"{p['mb_without_full_images']:>9.1f} "
                 f"{'yes' if p['within_plan'] else 'no':>5} "
                 f"{p['full_images_that_fit']:>10} {p['connects_per_day']:>10.1f}"
                 for p in result["policies"])
    lines += ["", "Sources:"]
    for name, f in result["figures"].items():
        mark = " (estimate)" if f["estimate"] else ""
        lines.append(f"  {name} = {f['value']:g} {f['unit']}{mark}: {f['source']}")
    return "\n".join(lines) + "\n"


def render_markdown(result: dict[str, Any]) -> str:
    """The README table: MB a month per policy, then the measured overheads and sources."""
    inp = result["inputs"]
    lines = [f"{inp['triggers_per_day']:g} triggers/day, {inp['kept_fraction']:g} kept "
             f"(alert + {inp['thumb_kb']:g} kB thumbnail + {inp['image_kb']:g} kB image), "
             f"keepalive {inp['keepalive_s']:g} s, plan {inp['plan_mb']:g} MB:", "",
             "| policy | MB/month | without full images | within plan | full images that "
             "fit | connects/day |", "|---|---:|---:|:---:|---:|---:|"]
    lines.extend(f"| {p['policy']} | {p['mb_per_month']:.1f} | "
                 f"{p['mb_without_full_images']:.1f} | "
                 f"{'yes' if p['within_plan'] else 'no'} | {p['full_images_that_fit']} | "
                 f"{p['connects_per_day']:.1f} |" for p in result["policies"])
    lines += ["", "| figure | value | source |", "|---|---:|---|"]
    lines.extend(f"| {name} | {f['value']:g} {f['unit']} | "
                 f"{'estimate: ' if f['estimate'] else ''}{f['source']} |"
                 for name, f in result["figures"].items())
    return "\n".join(lines) + "\n"


# -- measuring the overheads against a real broker (--measure) ---------------------------

_TCP_INFO_LEN = 232
_SEGS_OFFSET = 136  # struct tcp_info: tcpi_segs_out, tcpi_segs_in (Linux ≥ 4.2)


def _segments(sock: socket.socket) -> int:
    """Segments in + out on ``sock`` so far, from the kernel's TCP_INFO."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    out, inn = struct.unpack_from("II", raw, _SEGS_OFFSET)
    return int(out) + int(inn)


class CountingRelay:
    """A one-connection TCP relay in front of the broker that counts bytes both ways.

    The client connects to the relay; the relay's accepted socket sees exactly the client's
    segments, so ``TCP_INFO`` on it counts the wire, and its byte counters are the TLS
    records (TCP payload) the client sent and received.
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.bytes = 0
        self.down: socket.socket | None = None
        self.final_segments: int | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        down, _ = self.listener.accept()
        self.down = down
        up = socket.create_connection(self.upstream)
        pumps = [threading.Thread(target=self._pump, args=(down, up), daemon=True),
                 threading.Thread(target=self._pump, args=(up, down), daemon=True)]
        for p in pumps:
            p.start()
        for p in pumps:
            p.join()
        self.final_segments = _segments(down)
        down.close()
        up.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            with self._lock:
                self.bytes += len(data)
            dst.sendall(data)

    def reading(self) -> tuple[int, int]:
        """(bytes, segments) so far, after the link has been quiet for a moment."""
        last = -1
        while True:
            with self._lock:
                now = self.bytes
            if now == last:
                break
            last = now
            time.sleep(0.3)
        assert self.down is not None
        return now, _segments(self.down)

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)


def measure(host: str, port: int, ca_file: str, user: str, password: str,
            keepalive_s: int = 5, pings: int = 3) -> dict[str, Any]:
    """Bytes and segments of each phase of the trap's MQTT session over TLS, on the wire."""
    import paho.mqtt.client as mqtt  # the tool's only paho use: keep --help fast
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes

    from edge_app.core.mqtt_common import new_properties

    relay = CountingRelay(host, port)
    acked: set[int] = set()
    marks: list[tuple[int, int]] = []  # (bytes, segments) at each PINGRESP
    ready = threading.Event()
    cond = threading.Condition()

    def on_log(c: Any, u: Any, level: int, text: str) -> None:
        # the relay forwarded the PINGRESP before paho logs it: the bytes between two
        # PINGRESPs are exactly one ping exchange, whatever the timing
        if "PINGRESP" in text and relay.down is not None:
            mark = (relay.bytes, _segments(relay.down))
            with cond:
                marks.append(mark)
                cond.notify_all()

    def on_publish(c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        with cond:
            acked.add(mid)
            cond.notify_all()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.tls_set(ca_certs=ca_file)
    client.on_log = on_log
    client.on_publish = on_publish
    client.on_subscribe = lambda *a: ready.set()
    props = new_properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 7 * 86400

    def wait(pred: Any, what: str) -> None:
        with cond:
            if not cond.wait_for(pred, timeout=keepalive_s * (pings + 4)):
                raise TimeoutError(f"measure: no {what}")

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        # what the trap does on every connect (mqtt_session._on_connect)
        c.publish(f"camtrap/{user}/status", b'{"state":"online"}' + b" " * 60, qos=1,
                  retain=True)
        c.subscribe([(f"camtrap/{user}/ack", 1), (f"camtrap/{user}/cmd/#", 1)])

    client.on_connect = on_connect
    client.connect("127.0.0.1", relay.port, keepalive=keepalive_s, clean_start=False,
                   properties=props)
    client.loop_start()
    if not ready.wait(20):
        raise TimeoutError("measure: no SUBACK")
    sock = client.socket()
    tls, cipher = "?", "?"
    if isinstance(sock, ssl.SSLSocket):
        tls = sock.version() or "?"
        suite = sock.cipher()
        cipher = suite[0] if suite else "?"
    b0, s0 = relay.reading()
    wait(lambda: len(marks) >= pings + 1, "PINGRESP")
    b1, s1 = relay.reading()
    first, last = marks[0], marks[pings]
    out: dict[str, Any] = {"tls": tls, "cipher": cipher, "keepalive_s": keepalive_s,
                           "connect": {"bytes": b0, "segments": s0},
                           "keepalive": {"bytes": (last[0] - first[0]) / pings,
                                         "segments": (last[1] - first[1]) / pings}}
    prev_b, prev_s = b1, s1
    for name, size in (("publish_small", 600), ("publish_large", 30_000)):
        info = client.publish(f"camtrap/{user}/event", b"x" * size, qos=1)
        wait(lambda info=info: info.mid in acked, "PUBACK")
        bb, ss = relay.reading()
        out[name] = {"payload": size, "overhead_bytes": bb - prev_b - size,
                     "segments": ss - prev_s}
        prev_b, prev_s = bb, ss
    client.disconnect()
    client.loop_stop()
    relay.join(10)
    end_b = relay.bytes
    end_s = relay.final_segments if relay.final_segments is not None else prev_s
    out["disconnect"] = {"bytes": end_b - prev_b, "segments": end_s - prev_s + 2}
    relay.listener.close()
    return out


# -- CLI ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Inputs()
    parser.add_argument("--triggers-per-day", type=finite(0, 1e5), default=d.triggers_per_day)
    parser.add_argument("--kept-fraction", type=finite(0, 1), default=d.kept_fraction,
                        help="share of triggers that become events (alert + thumbnail + image)")
    parser.add_argument("--thumb-kb", type=finite(0, 1e4), default=d.thumb_kb)
    parser.add_argument("--image-kb", type=finite(0, 1e5), default=d.image_kb)
    parser.add_argument("--keepalive-s", type=finite(5, 65535), default=d.keepalive_s)
    parser.add_argument("--policy", choices=["all", *POLICIES], default="all")
    parser.add_argument("--plan-mb", type=finite(0, 1e7), default=d.plan_mb,
                        help="the SIM's monthly plan (0 = none)")
    parser.add_argument("--status-every-s", type=finite(0, 7 * 86400),
                        default=d.status_every_s, help="on-demand: scheduled connect interval")
    parser.add_argument("--idle-disconnect-s", type=finite(5, 86400),
                        default=d.idle_disconnect_s)
    parser.add_argument("--window-h", type=finite(0, 24), default=d.window_h,
                        help="windows: hours a day inside the windows")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object")
    out.add_argument("--markdown", action="store_true", help="the README table")
    parser.add_argument("--measure", metavar="HOST:PORT", default=None,
                        help="measure the overheads against this MQTT-over-TLS broker instead "
                        "(with --ca-file, --user, --password-file); prints JSON")
    parser.add_argument("--ca-file", default=None)
    parser.add_argument("--user", default=None)
    parser.add_argument("--password-file", default=None)


def main(args: argparse.Namespace) -> int:
    if args.measure:
        host, _, port = args.measure.rpartition(":")
        if not (host and port.isdigit() and args.ca_file and args.user and args.password_file):
            print("camtrap data-budget: --measure HOST:PORT needs --ca-file, --user and "
                  "--password-file", file=sys.stderr)
            return 2
        with open(args.password_file, encoding="utf-8") as f:
            password = f.readline().strip()
        print(json.dumps(measure(host, int(port), args.ca_file, args.user, password)))
        return 0
    inp = Inputs(triggers_per_day=args.triggers_per_day, kept_fraction=args.kept_fraction,
                 thumb_kb=args.thumb_kb, image_kb=args.image_kb, keepalive_s=args.keepalive_s,
                 plan_mb=args.plan_mb, status_every_s=args.status_every_s,
                 idle_disconnect_s=args.idle_disconnect_s, window_h=args.window_h)
    policies = POLICIES if args.policy == "all" else (args.policy,)
    result = budget(inp, policies)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif args.markdown:
        sys.stdout.write(render_markdown(result))
    else:
        sys.stdout.write(render_text(result))
    return 0
