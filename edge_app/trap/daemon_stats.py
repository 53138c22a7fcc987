"""What the daemon adds to the unit's stats message, and the counters behind it.

Separate from :mod:`edge_app.trap.daemon` because the stats message reads across every part
the App wires (stages, models, watchdog, field unit) without belonging to any of them: its
shape is a contract with the station, so it is kept in one place instead of grown inside the
composition root.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from edge_app.trap.packs.remote import pack_state

if TYPE_CHECKING:
    from edge_app.trap.daemon import App


@dataclass
class Counters:
    """What the trap did, for the demo summary and the stats message.

    Written by one stage each (noted per field), read by anyone; ints are atomic enough.
    """

    triggers: int = 0  # gpiozero thread
    triggers_dropped: int = 0  # gpiozero thread / capture
    frames: int = 0  # detect
    frames_failed: int = 0  # detect
    frames_gated: int = 0  # detect: motion gate skipped inference (no change)
    empty: int = 0  # store: discarded triggers
    kept: int = 0  # store: stored triggers (alert + keep)
    alerts: int = 0  # store: alerts queued
    audits: int = 0  # store: discarded but kept locally as an audit sample
    background_shots: int = 0  # detect: scheduled background shots analysed
    background_learnt: int = 0  # detect: new scenes added to the background set
    latencies_ms: list[float] = field(default_factory=list)  # store: trigger → queued

    def snapshot(self) -> dict[str, Any]:
        d = asdict(self)
        lat = d.pop("latencies_ms")
        d["queue_latency_ms_p50"] = round(statistics.median(lat), 1) if lat else None
        return d


def daemon_stats(app: App) -> dict[str, Any]:
    """The daemon's part of the stats message (uplink thread): counters, last 24 h, models."""
    now = app.clock.wall()
    out: dict[str, Any] = {
        "since_start": app.counters.snapshot(),
        "last_24h": app.store.counts_since(now - 86400.0),
        "models": {"detector": app.cfg.detector.detector,
                   "classifier": app.cfg.detector.classifier or None,
                   "head": (app.pipeline.head.path.name  # the config's or the pack's
                            if app.pipeline.head is not None
                            and app.pipeline.head.path is not None else None),
                   "pack": pack_state(app.models_dir)},
        "stages": {"crashes": app.supervisor.crash_counts(),
                   "health": app.supervisor.health.snapshot()},
        "watchdog": {"pings": app.watchdog.stats.pings,
                     "withheld": app.watchdog.stats.withheld,
                     "late": list(app.watchdog.stats.late_now)},
    }
    if app.background is not None:
        # Read from the uplink thread while detect may add: a torn read of two ints is
        # harmless in a stats message.
        out["background"] = app.background.stats()
    if app.lora is not None:
        out["lorawan"] = app.lora.stats()  # counters and the airtime budget
    if app.lighting is not None:
        out["ir"] = app.lighting.stats()
    if app.cellular is not None:
        out["cellular"] = app.cellular.stats()  # signal, link state, the month's data
    out["camera"] = app.camera.counters()
    if app.power is not None:
        out["power"] = {"mode": app.cfg.power.mode, **asdict(app.power.stats)}
    out["time_source"] = app.time_source()  # the Pi's clock now: gps / ntp / none
    if app.mcu is not None:
        out.update(app.mcu.stats())  # battery_v, solar_v, temp_c and "mcu"
    return out
