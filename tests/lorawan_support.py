"""Builders for the LoRaWAN tests: config, keys, catalogue rows, a step driver (real parts)."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_app.core import config
from edge_app.core.clock import Clock, FakeClock
from edge_app.sim.modems import PtyModem
from edge_app.trap.store.catalog import Catalog, EventRecord
from edge_app.trap.store.db import db_path, open_db, transaction
from edge_app.trap.store.outbox import Kind, Outbox
from edge_app.trap.uplink.lorawan import LoRaModem, LorawanKeys, Rak3172, Timings, WioE5
from edge_app.trap.uplink.router import LoraRouter

KEYS = LorawanKeys("70B3D57ED0061234", "0000000000000001", "2B7E151628AED2A6ABF7158809CF4F3C")
UNIT = "LL-042"
T0 = 1_790_000_000.0
#: Real-time limits for the driver against a fast emulator (the radio answers in ms).
FAST = Timings(command_s=1.0, join_extra_s=1.0, send_extra_s=1.0, boot_s=2.0)


def lora_cfg(root: Path, mqtt: bool = False, **lorawan: Any) -> config.Config:
    """A valid sim config with LoRaWAN on (``mode = always`` unless MQTT is on)."""
    lw: dict[str, Any] = {"enabled": True, "port": "pty", "status_every_h": 0,
                          "mode": "fallback" if mqtt else "always", "adr": False,
                          "data_rate": 0, "join_backoff_min_s": 30.0}
    lw.update(lorawan)
    return config.parse({
        "unit": {"id": UNIT}, "hardware": {"backend": "sim"}, "camera": {"source": "synthetic"},
        "storage": {"root": str(root)},
        "mqtt": {"enabled": mqtt, "host": "127.0.0.1", "port": 1883, "tls": False},
        "lorawan": lw,
    })


def write_secrets(path: Path, keys: LorawanKeys = KEYS, mode: int = 0o600) -> Path:
    path.write_text(f'dev_eui = "{keys.dev_eui}"\njoin_eui = "{keys.join_eui}"\n'
                    f'app_key = "{keys.app_key}"\n')
    path.chmod(mode)
    return path


def add_alert(cfg: config.Config, ts: float, *, label: str = "animal",
              species: str | None = "leopard", score: float = 0.91,
              mqtt_row: bool = False) -> str:
    """Catalogue an alert as the store does (and its MQTT outbox row when asked); its id."""
    conn = open_db(db_path(cfg.storage.root))
    try:
        cat = Catalog(conn)
        with transaction(conn):
            seq = cat.allocate_seq(cfg.unit.id)
            event_id = f"{cfg.unit.id}-{seq}"
            event = {"id": event_id, "unit": cfg.unit.id, "seq": seq, "outcome": "alert",
                     "label": label, "species": species, "score": score, "time_synced": True,
                     "detections": [{"category": label, "conf": 0.8, "species": species}],
                     "battery_v": 3.9}
            cat.insert(EventRecord(
                id=event_id, unit=cfg.unit.id, seq=seq, ts=ts, outcome="alert", label=label,
                species=species, score=score, audit=False, reason="test",
                event_json=json.dumps(event), image_path=None, thumb_path=None, created=ts))
            # As the store queues it: one row per link (the LoRa row if LoRa is on).
            box = Outbox(conn, FakeClock(start_wall=ts), cfg.outbox)
            for link in (["lorawan"] if cfg.lorawan.enabled else []) + (["mqtt"] if mqtt_row
                                                                        else []):
                box.enqueue(Kind.ALERT, link=link, payload=json.dumps(event).encode(),
                            event_id=event_id, now=ts)
        return event_id
    finally:
        conn.close()


def mark_mqtt_sent(cfg: config.Config, event_id: str) -> None:
    """What the MQTT link does when the broker confirmed the alert."""
    conn = open_db(db_path(cfg.storage.root))
    try:
        conn.execute("UPDATE outbox SET state = 'sent' WHERE event_id = ? AND kind = 'alert' "
                     "AND link = 'mqtt'", (event_id,))
    finally:
        conn.close()


def lora_rows(cfg: config.Config) -> dict[str, sqlite3.Row]:
    conn = open_db(db_path(cfg.storage.root))
    try:
        return {r["event_id"]: r for r in conn.execute(  # the LoRa rows of the outbox
            "SELECT o.*, e.ts AS event_ts FROM outbox o JOIN events e ON e.id = o.event_id "
            "WHERE o.link = 'lorawan'")}
    finally:
        conn.close()


def make_router(cfg: config.Config, emu: PtyModem, clock: Clock, **kw: Any) -> LoraRouter:
    """A router on the emulator's pty, with the driver that matches the emulator's dialect."""
    from edge_app.sim.modems import WioE5Modem

    timings = kw.pop("timings", FAST)

    def factory(wake: Callable[[], None]) -> LoRaModem:
        cls = WioE5 if isinstance(emu, WioE5Modem) else Rak3172
        return cls(emu.port, timings=timings, on_idle_line=wake)

    kw.setdefault("rng", random.Random(7))
    return LoraRouter(cfg, db_path(cfg.storage.root), clock, keys=KEYS, modem_factory=factory,
                      **kw)


def drive(router: LoraRouter, clock: FakeClock, until: float,
          events: list[tuple[float, Callable[[], None]]] | None = None,
          stop_when: Callable[[], bool] | None = None, max_steps: int = 100_000) -> int:
    """Run the router's steps on a fake clock, jumping to each wanted wake-up time and firing
    ``events`` (time, action) when their time comes; returns the number of steps."""
    pending = sorted(events or [], key=lambda e: e[0])
    steps = 0
    while clock.wall() < until:
        while pending and pending[0][0] <= clock.wall():
            pending.pop(0)[1]()
        if stop_when is not None and stop_when():
            break
        wake_at = router.step()
        steps += 1
        assert steps < max_steps, "the router does not settle"
        nxt = min([wake_at, until] + [t for t, _ in pending[:1]])
        if nxt > clock.wall():
            clock.advance(nxt - clock.wall())
    return steps
