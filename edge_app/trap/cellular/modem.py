"""ModemManager over D-Bus: the modem's state, signal, operator and bearer counters; on/off.

Why ModemManager and not AT commands: on a Pi the OS owns the modem's ports (ModemManager
probes them, NetworkManager or MM's own bearer brings the link up); a second writer on the AT
port races them. Everything goes through ``org.freedesktop.ModemManager1`` on the system bus.

Why **jeepney** (PyPI ``jeepney``, in Debian/Raspberry Pi OS as ``python3-jeepney``): pure
Python with no compiled parts and no dependencies, so it installs the same on every Pi model
and Python version (no wheel to build on an armv6 Zero); maintained (it is the transport of
``secretstorage``/``keyring``); and it has a plain *blocking* API, which fits the trap's
threads and :class:`~edge_app.core.clock.Clock` waits. ``dbus-fast`` is asyncio-first and its
speed comes from optional Cython extensions we do not need for a few calls a minute;
``dbus-python`` needs libdbus and a C build.

Never raises into the caller: the modem may be absent, appear late (hot-plug, ModemManager
still probing at boot), vanish, or ModemManager itself may not run. Every read returns a
:class:`ModemSnapshot` (``state="absent"`` when there is no modem), every action returns
True/False, and failures are counted in :attr:`ModemManagerClient.errors` by kind. A modem
that appears or changes wakes :meth:`ModemManagerClient.wait_for_change` through the
ObjectManager's ``InterfacesAdded`` and the ``PropertiesChanged`` signals, so the link's
worker sleeps instead of polling.

Not thread-safe: one worker thread owns the client (jeepney's blocking connection is single-
threaded by design).
"""

from __future__ import annotations

import contextlib
import logging
import math
import selectors
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from jeepney import (  # type: ignore[import-untyped]
    DBusAddress,
    DBusErrorResponse,
    MatchRule,
    message_bus,
    new_method_call,
)
from jeepney.io.blocking import (  # type: ignore[import-untyped]
    DBusConnection,
    Proxy,
    open_dbus_connection,
)
from jeepney.low_level import HeaderFields, Message  # type: ignore[import-untyped]
from jeepney.wrappers import unwrap_msg  # type: ignore[import-untyped]

from edge_app.core.clock import Clock, SystemClock
from edge_app.trap.cellular.policy import ModemState

logger = logging.getLogger(__name__)

BUS_NAME = "org.freedesktop.ModemManager1"
ROOT = "/org/freedesktop/ModemManager1"
MODEM = "org.freedesktop.ModemManager1.Modem"
SIMPLE = "org.freedesktop.ModemManager1.Modem.Simple"
SIGNAL = "org.freedesktop.ModemManager1.Modem.Signal"
GPP = "org.freedesktop.ModemManager1.Modem.Modem3gpp"
BEARER = "org.freedesktop.ModemManager1.Bearer"
PROPS = "org.freedesktop.DBus.Properties"
OBJMGR = "org.freedesktop.DBus.ObjectManager"

#: MMModemState → our names (ModemManager-Flags-and-Enumerations, MMModemState).
STATES: dict[int, ModemState] = {
    -1: "failed", 0: "unknown", 1: "initializing", 2: "locked", 3: "disabled",
    4: "disabling", 5: "enabling", 6: "enabled", 7: "searching", 8: "registered",
    9: "disconnecting", 10: "connecting", 11: "connected"}
#: MMModemAccessTechnology bits worth naming on a trap.
TECHNOLOGIES: dict[int, str] = {
    1 << 1: "gsm", 1 << 3: "gprs", 1 << 4: "edge", 1 << 5: "umts", 1 << 6: "hsdpa",
    1 << 7: "hsupa", 1 << 8: "hspa", 1 << 9: "hspa+", 1 << 14: "lte", 1 << 15: "5gnr",
    1 << 16: "lte-cat-m", 1 << 17: "lte-nb-iot"}
#: MMModem3gppRegistrationState.
REGISTRATION: dict[int, str] = {
    0: "idle", 1: "home", 2: "searching", 3: "denied", 4: "unknown", 5: "roaming"}
#: Signal interface properties, best first, and the measurements read from each.
SIGNAL_TECHS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Nr5g", ("rsrp", "rsrq", "sinr")),
    ("Lte", ("rssi", "rsrp", "rsrq", "snr")),
    ("Umts", ("rssi", "rscp", "ecio")),
    ("Gsm", ("rssi",)),
)


@dataclass(frozen=True)
class ModemSnapshot:
    """One reading of the modem, for the link policy, the budget and stats.

    Attributes:
        state: the modem's state; ``absent`` without a modem (or without ModemManager).
        path: its D-Bus object path, None when absent.
        technologies: access technologies in use (``["lte"]``).
        signal_percent: SignalQuality 0–100 (None when unknown); ``signal_recent`` False
            means ModemManager's value is stale.
        signal: RSSI/RSRP/RSRQ/SINR (dBm, dB) from the Signal interface where reported,
            with ``tech`` naming the radio they came from.
        registration: 3GPP registration state (``home``, ``roaming``, ``searching``…).
        operator_name, operator_code: the network (MCC+MNC).
        bearer: the data bearer's path (the connected one, else the first), None if none.
        bearer_connected: whether that bearer is up.
        rx_bytes, tx_bytes: its counters (since it connected), None when not reported.
    """

    state: ModemState
    path: str | None = None
    technologies: tuple[str, ...] = ()
    signal_percent: int | None = None
    signal_recent: bool = False
    signal: dict[str, float | str] = field(default_factory=dict)
    registration: str | None = None
    operator_name: str | None = None
    operator_code: str | None = None
    bearer: str | None = None
    bearer_connected: bool = False
    rx_bytes: int | None = None
    tx_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        """For stats (``signal`` there is this whole object)."""
        return {"state": self.state, "technology": ",".join(self.technologies) or None,
                "quality": self.signal_percent, **self.signal,
                "registration": self.registration, "operator": self.operator_name,
                "bearer_up": self.bearer_connected}


def _unvariant(props: dict[str, Any]) -> dict[str, Any]:
    """An ``a{sv}`` as jeepney gives it (values are ``(signature, value)``) → plain values;
    nested ``a{sv}`` (Bearer.Stats, Signal.Lte) too."""
    out: dict[str, Any] = {}
    for k, (sig, value) in props.items():
        out[k] = _unvariant(value) if sig == "a{sv}" else value
    return out


class ModemManagerClient:
    """The adapter (module docstring).

    Args:
        bus: ``SYSTEM`` (a Pi), ``SESSION`` or a D-Bus address (tests: a private bus).
        timeout_s: bound of an ordinary call.
        connect_timeout_s: bound of Simple.Connect (registration and PDP context can take
            a minute on a weak signal).
    """

    def __init__(self, bus: str = "SYSTEM", timeout_s: float = 10.0,
                 connect_timeout_s: float = 90.0, clock: Clock | None = None) -> None:
        self.bus = bus
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.interrupt = threading.Event()
        """Set by another thread to end a :meth:`wait_for_change` made without a bus."""
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.errors: Counter[str] = Counter()
        self.last_error: str | None = None
        self._conn: DBusConnection | None = None
        self._changes: deque[Message] = deque(maxlen=64)
        self._modem: str | None = None
        self._signal_rate: int | None = None
        # wake(): another thread ends a wait_for_change at once (the outbox got work); a
        # socket pair because the wait is a select on the bus socket, not an Event
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def wake(self) -> None:
        """End a :meth:`wait_for_change` now (any thread; cheap, never blocks)."""
        self.interrupt.set()
        with contextlib.suppress(OSError):  # full or closed: a wake is already pending
            self._wake_w.send(b"w")

    def _drain_wake(self) -> bool:
        woken = False
        with contextlib.suppress(OSError):
            while self._wake_r.recv(64):
                woken = True
        self.interrupt.clear()
        return woken

    # -- connection ---------------------------------------------------------------------

    def _connection(self) -> DBusConnection | None:
        if self._conn is not None:
            return self._conn
        try:
            conn = open_dbus_connection(self.bus)
            rule = MatchRule(type="signal", path_namespace=ROOT)
            Proxy(message_bus, conn, timeout=self.timeout_s).AddMatch(rule)
            conn.filter(rule, queue=self._changes)
        except Exception as e:  # noqa: BLE001 - jeepney raises OSError, KeyError, its own
            self._fail("bus", f"cannot reach the D-Bus {self.bus}: {e}")
            return None
        self._conn = conn
        return conn

    def close(self, final: bool = False) -> None:
        """Drop the bus connection (the next call opens it again); ``final`` also closes
        the wake sockets (the client is done)."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None
        if final:
            self._wake_r.close()
            self._wake_w.close()

    def _fail(self, kind: str, text: str) -> None:
        self.errors[kind] += 1
        if text != self.last_error:
            logger.warning("modem: %s", text)
        self.last_error = text

    def _call(self, path: str, iface: str, method: str, sig: str = "",
              args: tuple[Any, ...] = (), timeout_s: float | None = None,
              kind: str = "call") -> tuple[Any, ...] | None:
        """One method call; None (counted under ``kind``) on any failure."""
        conn = self._connection()
        if conn is None:
            return None
        msg = new_method_call(DBusAddress(path, bus_name=BUS_NAME, interface=iface), method,
                              sig, args)
        try:
            reply = conn.send_and_get_reply(msg, timeout=timeout_s or self.timeout_s)
            body: tuple[Any, ...] = unwrap_msg(reply)
            return body
        except DBusErrorResponse as e:
            if e.name in ("org.freedesktop.DBus.Error.UnknownObject",
                          "org.freedesktop.DBus.Error.UnknownMethod") and path != ROOT:
                self._modem = None  # the modem went away
            self._fail(kind, f"{iface.rsplit('.', 1)[-1]}.{method}: {e.name} {e.data!r}")
        except TimeoutError:
            self._fail(kind, f"{method}: no answer within {timeout_s or self.timeout_s} s")
        except (OSError, ValueError) as e:
            self._fail("bus", f"{method}: connection lost ({e})")
            self.close()
        return None

    def _props(self, path: str, iface: str) -> dict[str, Any] | None:
        body = self._call(path, PROPS, "GetAll", "s", (iface,), kind="read")
        if body is None:
            return None
        try:
            return _unvariant(body[0])
        except (TypeError, ValueError, AttributeError):
            self._fail("read", f"{iface}: properties not an a{{sv}}")
            return None

    # -- reading ------------------------------------------------------------------------

    def find_modem(self) -> str | None:
        """The first modem ModemManager manages (ObjectManager.GetManagedObjects)."""
        body = self._call(ROOT, OBJMGR, "GetManagedObjects", kind="no-modemmanager")
        if body is None:
            return None
        for path in sorted(body[0]):
            if MODEM in body[0][path]:
                self._modem = str(path)
                return self._modem
        self._modem = None
        return None

    def snapshot(self) -> ModemSnapshot:
        """Read everything the link needs; ``state="absent"`` when there is no modem."""
        path = self._modem or self.find_modem()
        if path is None:
            return ModemSnapshot("absent")
        modem = self._props(path, MODEM)
        if modem is None:
            self._modem = None
            return ModemSnapshot("absent")
        state = STATES.get(int(modem.get("State", 0)), "unknown")
        bits = int(modem.get("AccessTechnologies", 0))
        techs = tuple(name for bit, name in TECHNOLOGIES.items() if bits & bit)
        quality = modem.get("SignalQuality")
        percent, recent = (int(quality[0]), bool(quality[1])) if quality else (None, False)
        gpp = self._props(path, GPP)
        bearer = self._bearer(modem.get("Bearers", []))
        stats = bearer[2] if bearer else {}
        return ModemSnapshot(
            state=state, path=path, technologies=techs, signal_percent=percent,
            signal_recent=recent, signal=self._signal(path),
            registration=REGISTRATION.get(int(gpp["RegistrationState"]))
            if gpp and "RegistrationState" in gpp else None,
            operator_name=str(gpp["OperatorName"]) if gpp and "OperatorName" in gpp else None,
            operator_code=str(gpp["OperatorCode"]) if gpp and "OperatorCode" in gpp else None,
            bearer=bearer[0] if bearer else None,
            bearer_connected=bearer[1] if bearer else False,
            rx_bytes=_count(stats.get("rx-bytes")), tx_bytes=_count(stats.get("tx-bytes")))

    def _bearer(self, paths: list[str]) -> tuple[str, bool, dict[str, Any]] | None:
        first: tuple[str, bool, dict[str, Any]] | None = None
        for p in paths:
            props = self._props(p, BEARER)
            if props is None:
                continue
            entry = (p, bool(props.get("Connected", False)), dict(props.get("Stats", {})))
            if entry[1]:
                return entry
            first = first or entry
        return first

    def _signal(self, path: str) -> dict[str, float | str]:
        """RSSI/RSRP/… from the Signal interface, once ``setup_signal`` asked for them."""
        if not self._signal_rate:
            return {}
        props = self._props(path, SIGNAL)
        if not props:
            return {}
        for tech, keys in SIGNAL_TECHS:
            values = props.get(tech) or {}
            out: dict[str, float | str] = {}
            for k in keys:
                v = values.get(k)
                if isinstance(v, int | float) and math.isfinite(v):
                    out["sinr" if k == "snr" else k] = float(v)
            if out:
                return {"tech": tech.lower(), **out}
        return {}

    # -- acting -------------------------------------------------------------------------

    def setup_signal(self, rate_s: int) -> bool:
        """Ask the modem to report RSSI/RSRP/SINR every ``rate_s`` (Signal.Setup)."""
        path = self._modem or self.find_modem()
        if path is None:
            return False
        ok = self._call(path, SIGNAL, "Setup", "u", (rate_s,), kind="signal") is not None
        self._signal_rate = rate_s if ok else None
        return ok

    def enable(self, on: bool) -> bool:
        """Modem.Enable(on): radio on (enabled, registers) or off (low power)."""
        path = self._modem or self.find_modem()
        if path is None:
            self._fail("absent", "no modem to enable/disable")
            return False
        return self._call(path, MODEM, "Enable", "b", (on,), kind="enable") is not None

    def connect(self, apn: str = "") -> str | None:
        """Simple.Connect: the bearer's path, or None (counted) when it failed."""
        path = self._modem or self.find_modem()
        if path is None:
            self._fail("absent", "no modem to connect")
            return None
        props: dict[str, tuple[str, Any]] = {"apn": ("s", apn)} if apn else {}
        body = self._call(path, SIMPLE, "Connect", "a{sv}", (props,),
                          timeout_s=self.connect_timeout_s, kind="connect")
        return None if body is None else str(body[0])

    def disconnect(self, bearer: str | None = None) -> bool:
        """Simple.Disconnect: one bearer, or all of them (``/``) by default."""
        path = self._modem or self.find_modem()
        if path is None:
            return False
        return self._call(path, SIMPLE, "Disconnect", "o", (bearer or "/",),
                          kind="disconnect") is not None

    def wait_for_change(self, timeout_s: float) -> bool:
        """Block until ModemManager signals a change (a modem added or removed, a property
        changed), :meth:`wake` is called, or ``timeout_s`` passes; True on a change. Other
        signals on the path (ModemManager's own, a mock's) are read and ignored. Without a
        bus it waits the timeout on the clock (or until woken) and tries the bus again on
        the next call, so a loop around it never spins."""
        conn = self._connection()
        if conn is None:  # no bus: wait out the timeout (or a wake), never spin
            self.clock.wait(self.interrupt, timeout_s)
            self._drain_wake()
            return False
        deadline = time.monotonic() + max(0.0, timeout_s)
        with selectors.DefaultSelector() as sel:
            sel.register(conn.sock, selectors.EVENT_READ, "bus")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            while True:
                if self._drain():
                    return True
                try:  # what is buffered or readable now, without blocking
                    conn.recv_messages(timeout=0)
                    continue
                except TimeoutError:
                    pass
                except (OSError, ValueError) as e:
                    self._fail("bus", f"connection lost while waiting ({e})")
                    self.close()
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                ready = {key.data for key, _ in sel.select(left)}
                if "wake" in ready and self._drain_wake():
                    return self._drain()

    def _drain(self) -> bool:
        """Empty the signal queue; True if any was a change we care about."""
        changed = False
        while self._changes:
            msg = self._changes.popleft()
            fields = msg.header.fields
            iface = fields.get(HeaderFields.interface)
            if iface == OBJMGR:
                self._modem = None  # a modem came or went: look again on the next read
                changed = True
            elif iface == PROPS:
                changed = True
        return changed


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None
