"""Building the LoRaWAN router for the daemon, with the unit status it reports.

Separate from :mod:`edge_app.trap.uplink.router` because the status report (fPort 11) is made
of facts the router does not own (disk, battery, clock sync, outbox, uptime): the daemon
hands them in as callables, and this factory turns them into a :class:`~edge_app.core.
lora_codec.Status` source. The router and the codec are imported only when LoRa is enabled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edge_app.core.clock import Clock
from edge_app.core.config import Config
from edge_app.trap.settings import Settings
from edge_app.trap.uplink.mqtt import LinkState, MqttLink

if TYPE_CHECKING:
    from edge_app.trap.uplink.router import LoraRouter


def make_lora(
    cfg: Callable[[], Config],
    clock: Clock,
    db: str | Path,
    *,
    link: MqttLink | None,
    settings: Settings,
    readings: Callable[[], tuple[float | None, float | None]],
    time_source: Callable[[], str],
    outbox_depth: Callable[[], int],
    cellular: Callable[[], tuple[str | None, bool]] | None = None,
) -> LoraRouter:
    """The LoRaWAN router; keys are checked here, so a loose secrets file stops start-up with
    exit 2 instead of a stage restart loop.

    Args:
        cfg: the configuration as it is now (remote changes apply to the status report).
        clock: the router's time; uptime counts from this call.
        db: the trap's database (the outbox's LoRa rows).
        link: the MQTT link (fallback mode asks whether it is connected), or None.
        settings: where a downlink's settings change is applied.
        readings: (battery V, temperature °C) from the supervisor MCU, or (None, None).
        time_source: what the Pi's clock comes from now (``none``: not synchronised).
        outbox_depth: rows not yet delivered.
        cellular: the LTE link's state and low-signal bit for the status report (the
            cellular stage's ``lora_state``; None without cellular): the station learns why
            MQTT went silent.
    """
    import shutil

    from edge_app.core import lora_codec as codec
    from edge_app.trap.uplink.router import LoraRouter

    started = clock.monotonic()

    def status() -> codec.Status:
        now = cfg()
        free_mb = shutil.disk_usage(now.storage.root).free / 1e6
        battery_v, temp_c = readings()
        cell, low = cellular() if cellular is not None else (None, False)
        return codec.Status(
            battery_v=battery_v, temp_c=temp_c, time_synced=time_source() != "none",
            disk_free_gb=free_mb / 1000, outbox_depth=outbox_depth(),
            uptime_min=int((clock.monotonic() - started) / 60),
            disk_low=free_mb < now.storage.min_free_mb, cellular=cell, cell_signal_low=low)

    return LoraRouter(
        cfg(), db, clock,
        mqtt_connected=None if link is None else lambda: link.state is LinkState.CONNECTED,
        status_source=status, settings=settings)  # set_threshold: settings.apply
