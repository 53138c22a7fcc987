"""Phone notifications through Apprise, off the ingest thread.

Why a worker thread and a bounded queue: a notification service is a remote server on a rural
uplink (an SMTP relay that answers in 30 s, a Telegram API behind a flaky link). Ingest must
store the next event and confirm it to the trap whatever that server does, so
:meth:`Notifier.alert` only decides (the pure :class:`NotifyPolicy`, microseconds, under a
lock) and queues; one worker sends. A full queue drops the message and counts it rather than
block ingest: the alert is still stored and shown on the station's page.

Why never raise: a notification is a courtesy on top of the station's record. A failure is
counted (``failed``) and logged, and the event stays in the store for the web page.

Digests and held alerts are released by the same worker, which waits on its queue with a
timeout equal to the next due time (capped at :data:`MAX_WAIT_S`, so a wall clock that steps
forward is noticed), never polling. With a :class:`~edge_app.core.clock.FakeClock`, which does
not move by itself, call :meth:`Notifier.tick` after advancing it.

Apprise picks the transport from the URL (``tgram://``, ``mailtos://``, ``ntfy://``,
``json://``…). One Apprise object per target keeps the targets independent: one failing
target neither fails nor delays the accounting of another.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apprise
from apprise.attachment.file import AttachFile

from edge_app.core.clock import Clock
from edge_app.core.errors import ConfigError
from edge_app.station.notify.config import SECTION, NotifyConfig, target_urls
from edge_app.station.notify.message import Message, render
from edge_app.station.notify.policy import Alert, NotifyPolicy, Outgoing

logger = logging.getLogger(__name__)

QUEUE_SIZE = 256
"""Messages waiting for the worker; beyond it new ones are dropped (and counted)."""
MAX_WAIT_S = 60.0
"""Longest idle wait of the worker, so a wall-clock step cannot strand a due digest."""
MAX_PICTURE_BYTES = 10 * 1024 * 1024
"""Larger pictures go as text only: Telegram refuses photos over 10 MB, mail relays similar."""

SendFn = Callable[[str, Message], bool]
"""Send ``Message`` to the named target; True on success. Must not raise."""


@dataclass(frozen=True)
class NotifyStats:
    """Counters for the station's stats page.

    Attributes:
        sent: messages delivered (alerts, follow-ups and digests).
        failed: messages the service refused or could not be reached for.
        held: alerts held for a target (quiet hours, rate limit), once per target.
        digests: digest messages among ``sent`` + ``failed``.
        followups: picture follow-ups among ``sent`` + ``failed``.
        duplicates: second copies of an event (LoRa then MQTT, resends).
        unmatched: events no rule matched.
        refused: events without unit/id or with a bad score.
        dropped: messages lost to a full queue, the held-list bound, or a stop.
        pending: alerts held now.
    """

    sent: int = 0
    failed: int = 0
    held: int = 0
    digests: int = 0
    followups: int = 0
    duplicates: int = 0
    unmatched: int = 0
    refused: int = 0
    dropped: int = 0
    pending: int = 0


class AppriseSender:
    """The Apprise adapter: one ``apprise.Apprise`` per target.

    Args:
        urls: target name → Apprise URL (:func:`target_urls` reads ``url_file`` secrets).
        config: for the dotted keys of errors.

    Raises:
        ConfigError: Apprise does not understand a target's URL (the message names the key and
            the scheme, never the URL, which may hold a token).
    """

    def __init__(self, urls: Mapping[str, str], config: NotifyConfig) -> None:
        asset = apprise.AppriseAsset(storage_mode="memory")  # keep nothing on the station's disk
        self._targets: dict[str, apprise.Apprise] = {}
        for i, t in enumerate(config.targets):
            url = urls[t.name]
            ap = apprise.Apprise(asset=asset)
            if not ap.add(url):
                key = f"{SECTION}.targets[{i}].{'url' if t.url is not None else 'url_file'}"
                scheme = url.split("://", 1)[0]
                raise ConfigError(key, f"Apprise cannot use this URL (scheme {scheme!r}; see "
                                  "https://github.com/caronc/apprise/wiki)")
            self._targets[t.name] = ap

    def __call__(self, target: str, message: Message) -> bool:
        attach: Any = None
        if message.picture is not None:
            attach = _attachment(Path(message.picture))
        try:
            result = self._targets[target].notify(
                body=message.body, title=message.title, body_format=apprise.NotifyFormat.TEXT,
                attach=attach)
        except Exception:  # a plugin bug must not kill the worker
            logger.exception("notify: Apprise raised while sending to %s", target)
            return False
        return bool(result)


def _attachment(path: Path) -> Any:
    """The picture as an Apprise attachment, or None (text only) if it cannot be sent."""
    try:
        size = path.stat().st_size
    except OSError as e:
        logger.warning("notify: picture %s unreadable (%s): sending text only", path, e.strerror)
        return None
    if size > MAX_PICTURE_BYTES:
        logger.warning("notify: picture %s is %d bytes: sending text only", path, size)
        return None
    return AttachFile(str(path), name=path.name)  # type: ignore[no-untyped-call]


_STOP = object()
_WAKE = object()


class Notifier:
    """Decide on the caller's thread, send on one worker (see the module docstring).

    Args:
        config: the validated ``[notify]`` section.
        clock: wall time for decisions, quiet hours and "5 min ago".
        send: how a message leaves (default: :class:`AppriseSender` over the config's targets).
        queue_size: messages waiting for the worker.

    Raises:
        ConfigError: a ``url_file`` is unusable or Apprise does not understand a URL.
    """

    def __init__(self, config: NotifyConfig, clock: Clock, *, send: SendFn | None = None,
                 queue_size: int = QUEUE_SIZE) -> None:
        self.config = config
        self._clock = clock
        self._send = send or AppriseSender(target_urls(config), config)
        self._policy = NotifyPolicy(config)
        self._lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._counts = NotifyStats()

    # --- the caller's side -----------------------------------------------------------------

    def alert(self, event: dict[str, Any], *, site: str | None = None, lat: float | None = None,
              lon: float | None = None, picture: Path | None = None) -> None:
        """An alert arrived (from LoRa or MQTT); never blocks on the network, never raises.

        Args:
            event: the event JSON as stored (``id``, ``unit``, ``label``, ``species``,
                ``score``, ``ts``, ``source``, ``outcome``…). Events whose ``outcome`` is not
                ``alert`` are ignored: the trap decides what is worth an alert.
            site, lat, lon: the unit's site name and position, when the station knows them.
            picture: a stored image or thumbnail of the event to attach, or None.
        """
        if event.get("outcome", "alert") != "alert":
            return
        now = self._clock.wall()
        try:
            a = Alert.from_event(event, now, site=site, lat=lat, lon=lon,
                                 picture=None if picture is None else str(picture))
        except ValueError as e:
            self._count(refused=1)
            logger.warning("notify: event refused: %s", e)
            return
        with self._lock:
            d = self._policy.offer(a, now)
            overflow = self._policy.overflow
            self._policy.overflow = 0
        self._count(held=len(d.held), duplicates=int(d.duplicate),
                    unmatched=int(not d.matched), dropped=overflow)
        for out in d.send:
            self._put(out)
        if d.held:
            self._put(_WAKE)  # the next due time may have moved closer

    def tick(self) -> None:
        """Wake the worker to release what is due (needed only when the clock is a fake)."""
        self._put(_WAKE)

    @property
    def stats(self) -> NotifyStats:
        """A snapshot of the counters."""
        with self._lock:
            pending = self._policy.held_count
            c = self._counts
        return NotifyStats(**{**c.__dict__, "pending": pending})

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Send what is queued, then end the worker (waiting at most ``timeout_s``).

        Alerts still held (quiet hours, rate limit) are not sent — that would break the quiet
        the rangers asked for — and are counted as ``dropped``; they remain in the station's
        store and on its alert page.
        """
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            logger.warning("notify: queue still full at stop; abandoning the worker")
        thread.join(timeout_s)
        if thread.is_alive():
            logger.warning("notify: a send is still running after %.0f s; not waiting", timeout_s)
        with self._lock:
            lost = self._policy.held_count
        if lost:
            self._count(dropped=lost)
            logger.warning("notify: %d held alert(s) not sent at stop (still in the store)", lost)

    # --- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                next_due = self._policy.next_due()
            wait = MAX_WAIT_S if next_due is None else next_due - self._clock.wall()
            item: object = _WAKE
            if wait > 0:
                try:
                    item = self._queue.get(timeout=min(wait, MAX_WAIT_S))
                except queue.Empty:
                    item = _WAKE
            if item is _STOP:
                return
            if isinstance(item, Outgoing):
                self._deliver(item)
            with self._lock:
                ready = self._policy.due(self._clock.wall())
            for out in ready:
                self._deliver(out)

    def _deliver(self, out: Outgoing) -> None:
        try:
            message = render(out, self.config, self._clock.wall())
            ok = self._send(out.target, message)
        except Exception:  # an injected sender's bug must not end the worker either
            logger.exception("notify: %s to %s failed", out.kind, out.target)
            self._count(failed=1)
            return
        kind = {"digests": int(out.kind == "digest"), "followups": int(out.kind == "followup")}
        if ok:
            self._count(sent=1, **kind)
            logger.info("notify: %s to %s: %s", out.kind, out.target, message.title)
        else:
            self._count(failed=1, **kind)
            logger.warning("notify: %s to %s failed: %s", out.kind, out.target, message.title)

    def _put(self, item: object) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if isinstance(item, Outgoing):
                self._count(dropped=1)
                logger.warning("notify: queue full, %s to %s dropped", item.kind, item.target)

    def _count(self, **delta: int) -> None:
        with self._lock:
            c = self._counts.__dict__
            self._counts = NotifyStats(**{k: v + delta.get(k, 0) for k, v in c.items()})
