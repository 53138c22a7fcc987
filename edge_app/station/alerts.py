"""``camtrap alerts``: a receiver that prints one line per alert and says what it is doing.

Why it talks on stderr even without ``-v``: a ranger who starts it against a wrong address, or
while the base station's broker is down, otherwise sees an empty terminal and cannot tell
"no animals" from "not connected". So every connection change is one line on stderr —
``connected to HOST:PORT, waiting for alerts``, ``cannot reach HOST:PORT (reason), retrying in
N s`` — while stdout carries only alerts (pipes and ``--json`` stay clean).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_app.core.errors import ConfigError, StorageError
from edge_app.station.display import format_alert, parse_broker
from edge_app.station.lorawan import LorawanDecoder, lorawan_sources
from edge_app.station.receiver import ExtraDecoder, LinkNote, Receiver

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertsOptions:
    """Connection and storage options of ``camtrap alerts`` beyond the broker address.

    Attributes:
        ca_file: CA certificate of the broker (enables TLS).
        username: MQTT user name.
        password_file: file holding the MQTT password (must be mode 0600).
        store_dir: persist events and media there (and answer with receipts after storing).
        receipts: publish end-to-end receipts.
        include_keep: also print non-alert events.
        lorawan: also show alerts from ChirpStack v4 / TTN v3 uplinks (edge_app.station.lorawan).
        lorawan_devices: TOML file mapping DevEUI → unit: the fleet's devices. Uplinks of any
            other device are counted as unknown, never shown as a unit.
        tz: the time zone alert times are shown in (``local``: this machine's; ``UTC``;
            ``Asia/Vladivostok``; …).
        fleet_file: the fleet file (``camtrap provision``'s): site names next to unit ids.
    """

    ca_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    store_dir: str | None = None
    receipts: bool = True
    include_keep: bool = False
    lorawan: bool = True
    lorawan_devices: str | None = None
    tz: str = "local"
    fleet_file: str | None = None


def _zone(name: str) -> tzinfo:
    """``--tz``: a zone name, or ``local`` for this machine's zone.

    Raises:
        ConfigError: an unknown zone.
    """
    if name == "local":
        local = datetime.now().astimezone().tzinfo
        return local if local is not None else UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("--tz", f"unknown time zone {name[:60]!r} (e.g. Asia/Vladivostok, "
                          "UTC, local)") from None


def run_alerts(
    broker: str,
    as_json: bool,
    out: TextIO,
    stop: threading.Event | None = None,
    *,
    prefix: str = "camtrap",
    client_id: str | None = None,
    options: AlertsOptions | None = None,
    err: TextIO | None = None,
) -> int:
    """``camtrap alerts``: print one line per alert until ``stop`` is set or Ctrl-C.

    Args:
        broker: ``HOST:PORT``.
        as_json: print the event JSON (one line) instead of :func:`format_alert`.
        out: where the alert lines go (flushed per line, for pipes).
        stop: ends the run when set (None: run until SIGINT / SIGTERM).
        prefix: topic prefix of the traps.
        client_id: receiver client id (default: per host and user).
        options: TLS, credentials, store, receipts and LoRaWAN.
        err: where the connection lines go (default: stderr).

    Returns:
        0 after a stop; 1 if the store cannot be opened or the receiver failed; 2 if
        ``broker`` is not ``HOST:PORT`` or the password or devices file is unusable.
    """
    from edge_app.core.mqtt_common import read_password_file

    lock = threading.Lock()

    def say(text: str) -> None:
        with lock:
            print(f"camtrap alerts: {text}", file=err or sys.stderr, flush=True)

    opts = options or AlertsOptions()
    try:
        host, port = parse_broker(broker)
    except ValueError as e:
        say(f"--broker: {e}")
        return 2
    password = None
    extra: list[tuple[str, ExtraDecoder]] = []
    decoder: LorawanDecoder | None = None
    try:
        if opts.password_file:
            password = read_password_file("--password-file", opts.password_file)
        if opts.lorawan:
            decoder, extra = lorawan_sources(opts.lorawan_devices)
            if not decoder.devices:
                say("no --lorawan-devices: LoRaWAN uplinks will be counted as unknown "
                    "devices, not shown")
        tz = _zone(opts.tz)
        sites: dict[str, str] = {}
        if opts.fleet_file:
            from edge_app.core.fleet import read_fleet

            sites = {u: r.site_name for u, r in read_fleet(Path(opts.fleet_file)).items()}
    except ConfigError as e:
        say(str(e))
        return 2
    shown: set[str] = set()

    def on_alert(event: dict[str, Any]) -> None:
        line = (json.dumps(event, separators=(",", ":"), ensure_ascii=False) if as_json
                else format_alert(event, tz=tz, site=sites.get(str(event.get("unit")))))
        with lock:
            shown.add(str(event.get("id")))
            out.write(line + "\n")
            out.flush()

    def on_media(unit: str, media_id: str, path: Path) -> None:
        """The picture of an alert shown above, once it is stored (--store)."""
        event_id = media_id.rsplit("-", 1)[0]
        if as_json or event_id not in shown:
            return
        with lock:
            out.write(f"  {event_id} picture: {path}\n")
            out.flush()

    def on_note(note: LinkNote) -> None:
        say(str(note))

    receiver = Receiver(host, port, prefix, client_id, on_alert, on_note=on_note,
                        on_media=on_media,
                        ca_file=opts.ca_file, username=opts.username, password=password,
                        store_dir=opts.store_dir, receipts=opts.receipts,
                        include_keep=opts.include_keep, extra=extra)
    done = stop or threading.Event()
    if stop is None and threading.current_thread() is threading.main_thread():
        # Explicit handlers: a process started in the background by a shell inherits SIGINT
        # as *ignored*, and Python then installs no KeyboardInterrupt handler, so Ctrl-C /
        # `kill -INT` would never stop us. SIGTERM (systemd) stops cleanly too: the last
        # receipts and PUBACKs go out before we disconnect.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda _signum, _frame: done.set())
    try:
        receiver.start()
    except StorageError as e:
        say(str(e))
        return 1
    rc = 0
    try:
        while not done.wait(0.5):
            if receiver.failed is not None:
                say(f"stopped on an internal error: {receiver.failed!r}")
                rc = 1
                break
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
        s = receiver.stats
        logger.info("alerts: %d delivered, %d duplicate(s), %d refused %s, %d receipt(s), "
                    "%d media file(s)", s.delivered, s.duplicates, s.malformed,
                    receiver.refusals.snapshot(), s.receipts, s.media_stored)
        if decoder is not None and decoder.stats.uplinks:
            d = decoder.stats
            logger.info("alerts: LoRaWAN: %d uplink(s), %d alert(s), %d from unknown devices "
                        "%s, refused %s", d.uplinks, d.alerts, d.unknown, d.unknown_devices,
                        decoder.refusals.snapshot())
    return rc
