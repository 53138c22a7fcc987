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
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_app.core.clock import Clock, SystemClock
from edge_app.core.errors import ConfigError, StorageError
from edge_app.station.config import StationConfig
from edge_app.station.picture_wait import PictureWait
from edge_app.station.receiver import ExtraDecoder, LinkNote, Receiver

logger = logging.getLogger(__name__)

EventListener = Callable[[str, str, str, bool], None]
"""(unit, event id, link, new), called on the receiver's worker thread."""


class Station:
    """The station's parts, started and stopped in order (see the module docstring).

    Args:
        cfg: the checked ``station.toml``.
        clock: time for the receiver, the page and the notifications.
        listeners: more ``on_event`` listeners (tests).
        on_alert: called with each new alert event (the demo prints it).

    Raises:
        ConfigError: a file the config names is unusable (password, devices, notification
            targets, boundary, web secret).
    """

    def __init__(self, cfg: StationConfig, clock: Clock | None = None,
                 listeners: list[EventListener] | None = None,
                 on_alert: Callable[[dict[str, Any]], None] | None = None) -> None:
        from edge_app.core.mqtt_common import read_password_file
        from edge_app.station.lorawan import lorawan_sources

        self.cfg = cfg
        self.clock: Clock = clock or SystemClock()
        self.listeners: list[EventListener] = list(listeners or [])
        self.on_alert = on_alert
        self.units = fleet_units(cfg)
        self.notifier = _notifier(cfg, self.clock)
        self.pictures = PictureWait()
        self._pictures_lock = threading.Condition()
        self._stopping = threading.Event()
        self._timer: threading.Thread | None = None
        self.bus: Any = None
        if cfg.web.enabled:
            from edge_app.station.web.bus import EventBus

            self.bus = EventBus()
        m = cfg.mqtt
        password = (read_password_file("mqtt.password_file", str(m.password_file))
                    if m.password_file else None)
        extra: list[tuple[str, ExtraDecoder]] = []
        if m.lorawan:
            _decoder, extra = lorawan_sources(
                str(m.lorawan_devices) if m.lorawan_devices else None)
        self.notes: list[LinkNote] = []
        self.receiver = Receiver(
            m.host, m.port, m.prefix, m.client_id or None, self._on_alert, on_note=self._note,
            on_event=self._on_event, on_media=self._on_media,
            ca_file=str(m.ca_file) if m.ca_file else None,
            username=m.username or None, password=password, store_dir=cfg.store,
            receipts=m.receipts, include_keep=True, extra=extra, clock=self.clock,
            shared_group=m.shared_group)

    # -- the receiver's hooks (its worker thread) -------------------------------------------

    def _note(self, note: LinkNote) -> None:
        level = logging.INFO if note.kind == "connected" else logging.WARNING
        logger.log(level, "station: %s", note)
        self.notes.append(note)
        del self.notes[:-20]

    def _on_event(self, unit: str, event_id: str, link: str, new: bool) -> None:
        listeners = list(self.listeners)
        if self.bus is not None:
            listeners.insert(0, self.bus.publish)
        for listener in listeners:
            try:
                listener(unit, event_id, link, new)
            except Exception:  # one broken listener must not stop ingest or the others
                logger.exception("station: a listener failed on %s/%s", unit, event_id)

    def _on_alert(self, event: dict[str, Any]) -> None:
        """A new alert (once per unit and id, from whichever link came first)."""
        if self.on_alert is not None and event.get("outcome") == "alert":
            self.on_alert(event)
        if self.notifier is None or event.get("outcome") != "alert":
            return
        with self._pictures_lock:
            releases = self.pictures.alert(event, self.clock.monotonic())
            self._pictures_lock.notify_all()
        for r in releases:
            self._notify(r.event, r.picture)

    def _on_media(self, unit: str, media_id: str, path: Path) -> None:
        if self.bus is not None:
            self.bus.publish_media(unit, media_id)
        event_id, _sep, kind = media_id.rpartition("-")
        if self.notifier is None or kind != "thumb":
            return
        with self._pictures_lock:
            release = self.pictures.picture(unit, event_id, path)
        if release is not None:
            self._notify(release.event, release.picture)
            return
        store = self.receiver.store  # a late picture, or an alert that came over LoRa first
        event = store.event(unit, event_id) if store is not None else None
        if event is not None and event.get("outcome") == "alert":
            self._notify(event, path)  # the notifier sends it as a follow-up, or not at all

    def _notify(self, event: dict[str, Any], picture: Path | None) -> None:
        assert self.notifier is not None
        info = self.units.get(str(event.get("unit")))
        self.notifier.alert(event, site=info.site if info else None,
                            lat=info.lat if info else None, lon=info.lon if info else None,
                            picture=picture)

    def _picture_timer(self) -> None:
        """Alerts whose picture did not come in time go without it."""
        while not self._stopping.is_set():
            with self._pictures_lock:
                due_at = self.pictures.next_due()
                wait = 3600.0 if due_at is None else max(0.05, due_at - self.clock.monotonic())
                self._pictures_lock.wait(wait)
                releases = self.pictures.due(self.clock.monotonic())
            for r in releases:
                self._notify(r.event, r.picture)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store and connect; start the notifier.

        Raises:
            StorageError: the store cannot be opened.
        """
        if self.notifier is not None:
            self.notifier.start()
            self._timer = threading.Thread(target=self._picture_timer, name="pictures",
                                           daemon=True)
            self._timer.start()
        self.receiver.start()

    def stop(self) -> None:
        self.receiver.stop()
        self._stopping.set()
        with self._pictures_lock:
            self._pictures_lock.notify_all()
        if self._timer is not None:
            self._timer.join(5)
        if self.notifier is not None:
            self.notifier.stop()

    @property
    def failed(self) -> BaseException | None:
        return self.receiver.failed

    def web_server(self) -> Any:
        """The page's uvicorn server (``.run()`` blocks until SIGINT/SIGTERM)."""
        from edge_app.station.web.app import server
        from edge_app.station.web.context import WebContext

        w = self.cfg.web
        ctx = WebContext(
            store_dir=self.cfg.store, tz=self.cfg.tz, units=self.units, bus=self.bus,
            secret_key=web_secret(self.cfg), expected_interval_s=self.cfg.expected_interval_s,
            boundary=boundary(self.cfg), tile_url=w.tile_url or None, clock=self.clock,
            send_command=self.receiver.send_command,
            public_url=w.public_url or f"http://{w.host}:{w.port}",
            review=review_runner(self.cfg, self.clock))
        return server(ctx, w.host, w.port, log_level="warning")


def review_runner(cfg: StationConfig, clock: Clock) -> Any:
    """The review loop's jobs for the page, None without ``[review]``."""
    r = cfg.review
    if r is None:
        return None
    from edge_app.station.review_job import JobSettings
    from edge_app.station.review_runner import ReviewRunner

    return ReviewRunner(cfg.store, JobSettings(
        models=r.models_dir, key=r.key_file, cards=r.cards, broker=r.broker,
        prefix=cfg.mqtt.prefix, ca_file=r.ca_file, username=r.username or None,
        password_file=r.password_file, embedder=r.embedder), clock)


def fleet_units(cfg: StationConfig) -> dict[str, Any]:
    """Unit id → its site and position from the fleet file (empty without one)."""
    if cfg.fleet_file is None:
        return {}
    from edge_app.core.fleet import read_fleet
    from edge_app.station.web.context import UnitInfo

    return {u: UnitInfo(u, r.site_name, r.lat, r.lon)
            for u, r in read_fleet(cfg.fleet_file).items()}


def web_secret(cfg: StationConfig) -> bytes:
    """The key that signs session cookies: ``web.secret_file``, made (0600) at first start so
    rangers stay logged in across restarts; without the key set, one per run.

    Raises:
        ConfigError: the file is unreadable, too short or readable by others.
    """
    f = cfg.web.secret_file
    if f is None:
        return secrets.token_bytes(32)
    try:
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(32))
        if f.stat().st_mode & 0o077:
            raise ConfigError("web.secret_file", f"{f} is readable by other users: chmod 600")
        key = f.read_bytes()
    except OSError as e:
        raise ConfigError("web.secret_file", f"{f}: {e.strerror}") from e
    if len(key) < 32:
        raise ConfigError("web.secret_file", f"{f} holds fewer than 32 bytes")
    return key


def boundary(cfg: StationConfig) -> dict[str, Any] | None:
    """The park boundary (GeoJSON), checked once at start.

    Raises:
        ConfigError: the file is refused (too large, too deep, not a shape the map draws).
    """
    f = cfg.web.boundary_file
    if f is None:
        return None
    from edge_app.station.web.map_svg import load_boundary

    try:
        return load_boundary(f.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError("web.boundary_file", f"{f}: {e}") from e


def _notifier(cfg: StationConfig, clock: Clock) -> Any:
    if not cfg.notify:
        return None
    from edge_app.station.notify.config import parse
    from edge_app.station.notify.sender import Notifier

    return Notifier(parse(cfg.notify), clock)


def run_station(cfg: StationConfig, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop``); 1 if the store cannot be opened or a part
    stopped on a bug, 0 after a clean stop."""
    station = Station(cfg)
    try:
        station.start()
    except StorageError as e:
        logger.error("station: %s", e)
        return 1
    logger.info("station: storing into %s (shared group: %s)", cfg.store,
                cfg.mqtt.shared_group or "none")
    done = stop or threading.Event()
    if stop is None and threading.current_thread() is threading.main_thread():
        # Ours, also under uvicorn: it restores the handlers it found and raises the signal
        # again after its graceful stop, which with the default handler would kill us before
        # the receiver's last receipts and PUBACKs go out.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda _signum, _frame: done.set())
    rc = 0
    try:
        if cfg.web.enabled and stop is None:
            srv = station.web_server()

            def watch() -> None:  # a receiver that stopped on a bug ends the service
                while not srv.should_exit:
                    if station.failed is not None:
                        srv.handle_exit(signal.SIGTERM, None)  # also ends the live streams
                    time.sleep(0.5)

            threading.Thread(target=watch, name="watch", daemon=True).start()
            logger.info("station: the page is at http://%s:%d/ (%s)", cfg.web.host,
                        cfg.web.port, cfg.web.public_url or "no public_url set")
            srv.run()  # until SIGINT / SIGTERM (uvicorn's own handlers)
        else:
            while not done.wait(0.5):
                if station.failed is not None:
                    break
        if station.failed is not None:
            logger.critical("station: stopped on an internal error: %r", station.failed)
            rc = 1
    finally:
        station.stop()
        st = station.receiver.stats
        logger.info("station: stopped; this worker received %d event message(s), stored %d "
                    "new, %d duplicate(s), %d refused, %d receipt(s), %d media file(s)",
                    st.received, st.delivered + st.ignored, st.duplicates, st.malformed,
                    st.receipts, st.media_stored)
    return rc


def check(cfg: StationConfig) -> list[str]:
    """What ``camtrap station check`` reports beyond the file itself, as lines; every file the
    config names is read by the same code as a start, so it raises the same
    :class:`ConfigError` a start would (the password and devices files, the fleet file, the
    notification targets, the boundary, the web secret)."""
    from edge_app.core.mqtt_common import read_password_file
    from edge_app.station.lorawan import lorawan_sources

    lines = [f"store {cfg.store}", f"time zone {cfg.timezone}"]
    m = cfg.mqtt
    if m.password_file is not None:
        read_password_file("mqtt.password_file", str(m.password_file))
    if m.lorawan and m.lorawan_devices is not None:
        decoder, _extra = lorawan_sources(str(m.lorawan_devices))
        lines.append(f"LoRaWAN devices {m.lorawan_devices}: {len(decoder.devices)}")
    units = fleet_units(cfg)
    if cfg.fleet_file is not None:
        lines.append(f"fleet {cfg.fleet_file}: {len(units)} unit(s)")
    notifier = _notifier(cfg, SystemClock())
    if notifier is not None:
        c = notifier.config
        lines.append(f"notifications: {len(c.targets)} target(s), {len(c.rules)} rule(s)")
    if cfg.web.enabled:
        b = boundary(cfg)
        if b is not None:
            lines.append(f"boundary {cfg.web.boundary_file}")
        f = cfg.web.secret_file
        if f is not None and f.exists():
            web_secret(cfg)
        lines.append(f"page on http://{cfg.web.host}:{cfg.web.port}/")
    try:
        Path(cfg.store).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("station.store", f"cannot create {cfg.store}: {e.strerror}") from e
    return lines


__all__ = ["Station", "check", "run_station"]
