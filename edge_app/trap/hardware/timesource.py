"""Where the Pi's wall clock comes from right now: ``gps``, ``ntp`` or ``none``.

An event's timestamp is only as good as the clock that stamped it, and a trap has three: the
Pi's system clock (synchronised over the network, from a GPS receiver, or not at all — a Pi
has no RTC battery and boots at the last time ``fake-hwclock`` saved), and the supervisor
MCU's DS3231 (``rtc``, reported per trigger by the MCU driver). Each event records its source
next to ``time_synced`` so that a ranger can tell a 03:12 photo from a "03:12 since boot".

How "synchronised" is detected: ``adjtimex(2)`` with no modes set (read-only, no privilege)
returns the kernel's clock state; ``TIME_ERROR`` (``STA_UNSYNC`` set) means no time daemon
has disciplined the clock. This is the same kernel flag ``timedatectl``'s ``NTPSynchronized``
reads, without a D-Bus round trip or a subprocess per event. Which daemon and which source
synced it is only visible in the daemon: when ``chronyc`` is installed and reports a
reference clock named like a GPS (``GPS``, ``PPS``, ``NMEA``, ``SHM*``), the source is
``gps``; otherwise a synchronised clock is ``ntp``.

Both probes are injectable (``synced``, ``refclock``), so the rule is tested without root,
chrony or a GPS, and both are cached: the store asks once per event and the MCU driver once
per minute at most.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import shutil
import subprocess
import threading
from collections.abc import Callable
from typing import Literal

from edge_app.core.clock import Clock, SystemClock

logger = logging.getLogger(__name__)

PiTimeSource = Literal["gps", "ntp", "none"]
TIME_ERROR = 5
"""adjtimex(2)'s return value for an unsynchronised clock."""
GPS_REFIDS = ("GPS", "PPS", "NMEA", "SHM")
CACHE_S = 60.0


class _Timex(ctypes.Structure):
    """``struct timex`` (Linux, both LP64 and ILP32: every field is a long or an int), with
    room to spare at the end so a larger kernel layout can never write past the buffer."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long), ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_pad", ctypes.c_byte * 128),
    ]


def kernel_clock_synced() -> bool | None:
    """The kernel's view (adjtimex); None where it cannot be asked (not Linux, no libc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        tx = _Timex()
        state = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR


def chrony_refclock() -> str | None:
    """The name of chrony's current reference (``GPS``, an NTP server's address), or None
    when chrony is not installed or not answering."""
    exe = shutil.which("chronyc")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-n", "-c", "tracking"], capture_output=True, text=True,
                             timeout=2.0, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    fields = out.stdout.strip().split(",")
    return fields[1] if len(fields) > 1 and fields[1] else None


def classify(synced: bool | None, refclock: str | None) -> PiTimeSource:
    """The rule: not synced (or unknown) → ``none``; a GPS-like reference → ``gps``;
    any other synced clock → ``ntp``."""
    if not synced:
        return "none"
    if refclock is not None and refclock.upper().startswith(GPS_REFIDS):
        return "gps"
    return "ntp"


class TimeSourceProbe:
    """The Pi clock's source, cached for ``cache_s``; thread-safe.

    Args:
        clock: for the cache's age.
        synced: the kernel probe (default :func:`kernel_clock_synced`).
        refclock: the daemon probe (default :func:`chrony_refclock`).
        cache_s: how long an answer is reused.
    """

    def __init__(self, clock: Clock | None = None,
                 synced: Callable[[], bool | None] = kernel_clock_synced,
                 refclock: Callable[[], str | None] = chrony_refclock,
                 cache_s: float = CACHE_S) -> None:
        self._clock: Clock = clock or SystemClock()
        self._synced = synced
        self._refclock = refclock
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._value: PiTimeSource = "none"
        self._at: float | None = None

    def __call__(self) -> PiTimeSource:
        now = self._clock.monotonic()
        with self._lock:
            if self._at is not None and now - self._at < self._cache_s:
                return self._value
        synced = self._synced()
        ref = None
        if synced:
            with contextlib.suppress(Exception):  # a probe must never stop an event
                ref = self._refclock()
        value = classify(synced, ref)
        with self._lock:
            if value != self._value or self._at is None:
                logger.info("Pi clock source: %s", value)
            self._value, self._at = value, now
        return value


def fixed(source: PiTimeSource) -> Callable[[], PiTimeSource]:
    """A provider that always answers ``source`` (the simulator runs on the host's clock,
    taken as synchronised, so its events do not depend on the CI machine's time daemon)."""
    return lambda: source
