"""``camtrap bench lorawan``: what the LoRaWAN link costs and how fast an alert arrives.

Figures:

* ``alert_bytes``: size of an encoded alert (fPort 10);
* ``airtime_ms``: its time on air per SF (125 kHz, CR 4/5, LoRaWAN overhead 13 bytes);
* ``alerts_per_hour``: alerts the duty cycle allows per SF (1 %: one every ToA/dc seconds),
  and ``alerts_per_day_fair_use`` under TTN's 30 s/day;
* ``latency_ms_p50``: trigger to decoded alert, end to end through the real parts: the event
  is stored by the store (SQLite), the router picks it up, the RAK3172 emulator on a pty
  "transmits" it with the SF's real airtime, the emulated ChirpStack publishes it to a real
  mosquitto, and the ranger receiver decodes it. Measured with airtime available (the ledger
  is emptied between alerts): waiting for the duty cycle is what ``alerts_per_hour`` shows.
  ``latency_ms_p50`` is at the slowest SF measured (the far-ridge case); every SF measured is
  in ``latency_ms_p50_by_sf``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_app.trap.uplink.lorawan import LoRaModem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--alerts", type=int, default=3, help="alerts per SF for the latency")
    parser.add_argument("--sf", default="7,12", help="spreading factors for the latency")
    parser.add_argument("--no-latency", action="store_true",
                        help="skip the end-to-end run (no mosquitto needed)")


def figures(duty_cycle: float = 0.01) -> dict[str, Any]:
    """The static figures: size, airtime, alerts per hour and per fair-use day."""
    from edge_app.core import lora_codec as codec
    from edge_app.trap.uplink.airtime import FAIR_USE_AIRTIME_S, uplink_airtime_s

    sample = codec.Alert(label="animal", species="leopard", confidence=0.91,
                         time=1_790_000_000, seq=17, count=1, battery_v=3.9)
    n = len(codec.encode_alert(sample))
    airtime = {f"SF{sf}": uplink_airtime_s(n, sf) for sf in range(7, 13)}
    return {
        "alert_bytes": n,
        "status_bytes": len(codec.encode_status(codec.Status())),
        "airtime_ms": {k: round(v * 1000, 1) for k, v in airtime.items()},
        "alerts_per_hour": {k: math.floor(3600 * duty_cycle / v) for k, v in airtime.items()},
        "alerts_per_day_fair_use": {k: math.floor(FAIR_USE_AIRTIME_S / v)
                                    for k, v in airtime.items()},
        "duty_cycle": duty_cycle,
    }


def measure_latency(sfs: list[int], n: int) -> dict[str, list[float]]:
    """End-to-end latency per SF in ms (see the module docstring). Needs mosquitto.

    Raises:
        OSError: mosquitto is missing or does not start.
    """
    from edge_app.sim.broker import PrivateBroker, find_mosquitto

    exe = find_mosquitto()
    if exe is None:
        raise OSError("mosquitto is not installed")
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="camtrap-bench-lorawan-") as tmp:
        root = Path(tmp)
        (root / "broker").mkdir()
        broker = PrivateBroker(exe, root / "broker")
        broker.start()
        try:
            for sf in sfs:
                out[f"SF{sf}"] = _latency_at(sf, n, broker.port, root / f"trap-sf{sf}")
        finally:
            broker.stop()
    return out


def _latency_at(sf: int, n: int, broker_port: int, root: Path) -> list[float]:
    """Store ``n`` alerts one after the other; ms from ``record`` to the ranger's hook."""
    import io

    from PIL import Image

    from edge_app.core import config
    from edge_app.core.events import Burst, Detection, Frame, FrameResult, TriggerEvent, Verdict
    from edge_app.sim.modems import Rui3Modem
    from edge_app.sim.netserver import NetworkServer
    from edge_app.station.lorawan import LorawanDecoder
    from edge_app.station.receiver import Receiver
    from edge_app.trap.store.pipeline import EventStore
    from edge_app.trap.uplink.airtime import TIME_OFF_GUARD_S
    from edge_app.trap.uplink.lorawan import LorawanKeys, Rak3172
    from edge_app.trap.uplink.router import LoraRouter

    keys = LorawanKeys("70B3D57ED0061234", "0000000000000001", "2B7E151628AED2A6ABF7158809CF4F3C")
    parsed = config.parse({
        "unit": {"id": "LL-042"}, "hardware": {"backend": "sim"},
        "camera": {"source": "synthetic"}, "storage": {"root": str(root)},
        "mqtt": {"enabled": False},
        "lorawan": {"enabled": True, "mode": "always", "port": "unused", "status_every_h": 0,
                    "adr": False, "data_rate": 12 - sf},
    })
    # Latency with airtime available: the duty cycle is lifted for this run (alerts_per_hour
    # is the figure for waiting on it).
    cfg = replace(parsed, lorawan=replace(parsed.lorawan, duty_cycle=1.0))
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (40, 120, 60)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    got: dict[int, float] = {}
    cond = threading.Condition()

    def on_alert(event: dict[str, Any]) -> None:
        with cond:
            got.setdefault(int(event["seq"]), time.monotonic())
            cond.notify_all()

    ns = NetworkServer("127.0.0.1", broker_port, "chirpstack").start()
    ns.register(keys.dev_eui, keys.join_eui, keys.app_key, "LL-042")
    emu = Rui3Modem(ns, time_factor=0.01, enforce_duty_cycle=False).start()
    rx = Receiver("127.0.0.1", broker_port, client_id=f"bench-lorawan-sf{sf}", on_alert=on_alert,
                  extra=LorawanDecoder({keys.dev_eui: "LL-042"}).sources(), receipts=False)
    rx.start()
    store = EventStore(cfg)
    store.open()

    def factory(wake: Callable[[], None]) -> LoRaModem:
        return Rak3172(emu.port, on_idle_line=wake)

    router = LoraRouter(cfg, store.db_path, keys=keys, modem_factory=factory)
    stop = threading.Event()
    thread = threading.Thread(target=router.run, args=(stop,), name="lorawan", daemon=True)
    thread.start()
    lat: list[float] = []
    try:
        rx.wait_connected(10)
        _wait(lambda: bool(router.stats()["joined"]), 30)
        emu.time_factor = 1.0  # joined quickly; from here the radio runs in real time
        time.sleep(TIME_OFF_GUARD_S + 0.2)  # let the join's time-off pass: measure alerts only
        for i in range(n):
            trig = TriggerEvent(i + 1, time.monotonic(), time.time(), "bench")
            det = Detection("animal", 0.8, (0.4, 0.3, 0.2, 0.2), "cat", "leopard", 0.91)
            verdict = Verdict("alert", "animal", "leopard", 0.91, 0,
                              (FrameResult("animal", "leopard", 0.91, (det,)),), "bench")
            t0 = time.monotonic()
            rec = store.record(Burst(trig, (Frame(jpeg, trig.mono, trig.wall, 0, False),)),
                               verdict)
            router.wake()
            assert rec is not None
            seq = int(rec.event["seq"])
            with cond:
                if cond.wait_for(lambda seq=seq: seq in got, 30):  # type: ignore[misc]
                    lat.append((got[seq] - t0) * 1000)
            # The next alert only once this one's RX windows are over (ACK received).
            _wait(lambda i=i: int(router.stats()["alerts_sent"]) > i, 30)  # type: ignore[misc]
    finally:
        stop.set()
        router.interrupt()
        thread.join(10)
        store.close()
        rx.stop()
        emu.stop()
        ns.stop()
    return lat


def _wait(cond: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def main(args: argparse.Namespace) -> int:
    result = figures()
    if not args.no_latency:
        sfs = [int(s) for s in str(args.sf).split(",") if s.strip()]
        try:
            lat = measure_latency(sfs, max(1, args.alerts))
        except OSError as e:
            print(f"camtrap bench lorawan: {e}", file=sys.stderr)
            return 1
        by_sf = {k: round(statistics.median(v), 1) if v else None for k, v in lat.items()}
        result["latency_ms_p50_by_sf"] = by_sf
        result["latency_ms_p50"] = by_sf.get(f"SF{max(sfs)}")
        result["latency_samples"] = {k: len(v) for k, v in lat.items()}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"alert: {result['alert_bytes']} bytes (status {result['status_bytes']}); duty cycle "
          f"{result['duty_cycle'] * 100:g} %")
    print(f"{'SF':>4} {'airtime ms':>11} {'alerts/h':>9} {'per day (TTN FUP)':>18} "
          f"{'latency p50 ms':>15}")
    for sf in range(7, 13):
        k = f"SF{sf}"
        latv = result.get("latency_ms_p50_by_sf", {}).get(k)
        print(f"{sf:>4} {result['airtime_ms'][k]:>11.1f} {result['alerts_per_hour'][k]:>9} "
              f"{result['alerts_per_day_fair_use'][k]:>18} "
              f"{'' if latv is None else f'{latv:.0f}':>15}")
    return 0
