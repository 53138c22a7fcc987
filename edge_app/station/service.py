"""``camtrap station``: the base station as one service — receiver, store, page, notifications.

Composition only; every part is its own module and tested on its own:

* :class:`~edge_app.station.receiver.Receiver` subscribes (MQTT 5, shared subscriptions when
  ``mqtt.shared_group`` is set, so several workers split the load), stores every event once under
  the unit the broker authenticated, completes LoRa alerts in place, confirms, reassembles media;
* the web page (:mod:`edge_app.station.web`) reads the same store and is told of every stored
  event through its bus (server-sent events to the open pages);
* notifications (:mod:`edge_app.station.notify`) get each new alert and each picture.

The receiver's worker thread calls the hooks; each hook only hands over (the bus queues per page,
the notifier has its own bounded queue and thread), so a slow page or SMTP server never stalls
ingest. A bug that stops the receiver ends the service with exit 1 (systemd restarts it).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from edge_app.core.clock import Clock, SystemClock
from edge_app.core.errors import ConfigError, StorageError
from edge_app.station.config import StationConfig
from edge_app.station.receiver import ExtraDecoder, LinkNote, Receiver

logger = logging.getLogger(__name__)

EventListener = Callable[[str, str, str, bool], None]
"""(unit, event id, link, new), called on the receiver's worker thread."""


class Station:
    """The station's parts, started and stopped in order (see the module docstring).

    Args:
        cfg: the checked ``station.toml``.
        clock: time for the receiver and the page.
        listeners: more ``on_event`` listeners (the web bus, tests).
    """

    def __init__(self, cfg: StationConfig, clock: Clock | None = None,
                 listeners: list[EventListener] | None = None) -> None:
        from edge_app.core.mqtt_common import read_password_file
        from edge_app.station.lorawan import lorawan_sources

        self.cfg = cfg
        self.clock: Clock = clock or SystemClock()
        self.listeners: list[EventListener] = list(listeners or [])
        m = cfg.mqtt
        password = (read_password_file("mqtt.password_file", str(m.password_file))
                    if m.password_file else None)
        extra: list[tuple[str, ExtraDecoder]] = []
        if m.lorawan:
            _decoder, extra = lorawan_sources(
                str(m.lorawan_devices) if m.lorawan_devices else None)
        self.notes: list[LinkNote] = []
        self.receiver = Receiver(
            m.host, m.port, m.prefix, m.client_id or None, None, on_note=self._note,
            on_event=self._on_event, ca_file=str(m.ca_file) if m.ca_file else None,
            username=m.username or None, password=password, store_dir=cfg.store,
            receipts=m.receipts, include_keep=True, extra=extra, clock=self.clock,
            shared_group=m.shared_group)

    def _note(self, note: LinkNote) -> None:
        level = logging.INFO if note.kind == "connected" else logging.WARNING
        logger.log(level, "station: %s", note)
        self.notes.append(note)
        del self.notes[:-20]

    def _on_event(self, unit: str, event_id: str, link: str, new: bool) -> None:
        for listener in self.listeners:
            try:
                listener(unit, event_id, link, new)
            except Exception:  # one broken listener must not stop ingest or the others
                logger.exception("station: a listener failed on %s/%s", unit, event_id)

    def start(self) -> None:
        """Open the store and connect.

        Raises:
            StorageError: the store cannot be opened.
        """
        self.receiver.start()

    def stop(self) -> None:
        self.receiver.stop()

    @property
    def failed(self) -> BaseException | None:
        return self.receiver.failed


def run_station(cfg: StationConfig, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop``); 1 if the store cannot be opened or a part
    stopped on a bug, 0 after a clean stop."""
    done = stop or threading.Event()
    if stop is None and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda _signum, _frame: done.set())
    station = Station(cfg)
    try:
        station.start()
    except StorageError as e:
        logger.error("station: %s", e)
        return 1
    logger.info("station: storing into %s (shared group: %s)", cfg.store,
                cfg.mqtt.shared_group or "none")
    rc = 0
    try:
        while not done.wait(0.5):
            if station.failed is not None:
                logger.critical("station: stopped on an internal error: %r", station.failed)
                rc = 1
                break
    finally:
        station.stop()
        st = station.receiver.stats
        logger.info("station: stopped; this worker received %d event message(s), stored %d "
                    "new, %d duplicate(s), %d refused, %d receipt(s), %d media file(s)",
                    st.received, st.delivered + st.ignored, st.duplicates, st.malformed,
                    st.receipts, st.media_stored)
    return rc


def check(cfg: StationConfig) -> list[str]:
    """What ``camtrap station check`` reports beyond the file itself (the store folder and
    the fleet file), as lines; raises the same :class:`ConfigError` as a start would."""
    from edge_app.core.fleet import read_fleet

    lines = [f"store {cfg.store}", f"time zone {cfg.timezone}"]
    if cfg.fleet_file is not None:
        units = read_fleet(cfg.fleet_file)
        lines.append(f"fleet {cfg.fleet_file}: {len(units)} unit(s)")
    try:
        Path(cfg.store).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("station.store", f"cannot create {cfg.store}: {e.strerror}") from e
    return lines


__all__ = ["Station", "check", "run_station"]
