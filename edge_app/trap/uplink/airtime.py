"""Time on air of a LoRa frame, the regional band plans, and the duty-cycle ledger.

Why a host-side ledger when the modem enforces the duty cycle itself: the modem's answer to a
send that would break it is ``AT_BUSY_ERROR`` (RUI3) or ``No band in N ms`` (Wio-E5) — it
cannot tell us *when* we may send, it forgets everything at a reset, and it knows nothing of
TTN's fair-use budget. The ledger lets the router schedule (wait exactly as long as needed,
let a higher-priority alert jump the line), and survives restarts because it lives in SQLite:
a trap in a crash loop must not be able to re-spend the budget at every start.

The ledger enforces, per sub-band (the regulation is per sub-band):

* **time-off** after each transmission: ``ToA × (1/dc − 1)`` — the rule LoRaMac-node based
  firmware (RUI3, Wio-E5) applies, so a host that follows it never gets a busy error;
* **a rolling hour** of at most ``dc × 3600`` s of airtime — the legal definition (ETSI
  EN 300 220 observation window); implied by time-off, kept explicit because it is the
  figure an inspector would check;

and across all bands, when TTN fair use is on, **30 s of uplink airtime per rolling 24 h** and
a count of downlinks (every confirmed-uplink ACK is one; TTN allows 10 per day).

The modules do not tell the host which channel they used, so a transmission is charged to the
sub-band of the region's default channels (RU864: 868.9/869.1 MHz, both in 868.7–869.2; EU868:
868.1/.3/.5, sub-band M), or to the sub-band of a known frequency. Times are wall-clock
seconds because the rows outlive the process; a wall clock that stepped back (a Pi without an
RTC before NTP) would leave rows in the future, and those are pulled back to "now" so they
count as recent instead of blocking the band for days.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from collections import deque
from dataclasses import dataclass

from edge_app.trap.store.db import airtime_table

logger = logging.getLogger(__name__)

LORAWAN_OVERHEAD = 13  # MHDR 1 + FHDR 7 (no FOpts) + FPort 1 + MIC 4
JOIN_REQUEST_BYTES = 23  # MHDR 1 + JoinEUI 8 + DevEUI 8 + DevNonce 2 + MIC 4
HOUR_S = 3600.0
DAY_S = 86400.0
FAIR_USE_AIRTIME_S = 30.0
FAIR_USE_DOWNLINKS = 10
#: Added to every time-off: the ledger books a transmission when the command is written, the
#: module starts its own time-off when the radio actually transmits (a few ms to ~100 ms
#: later). Without a margin the host's next send would land just inside the module's block
#: and be refused as busy.
TIME_OFF_GUARD_S = 1.0


def time_on_air_s(
    phy_bytes: int,
    sf: int,
    bw_hz: int = 125_000,
    *,
    cr: int = 1,
    preamble: int = 8,
    explicit_header: bool = True,
    crc: bool = True,
    low_dr_optimize: bool | None = None,
) -> float:
    """Semtech's LoRa time-on-air formula (AN1200.13), in seconds.

    Args:
        phy_bytes: PHY payload length (a LoRaWAN uplink is the app payload + 13 bytes).
        sf: spreading factor 7..12.
        bw_hz: bandwidth.
        cr: coding rate 1..4 for 4/5..4/8.
        preamble: preamble symbols (8 in LoRaWAN).
        explicit_header: LoRaWAN uplinks use an explicit header.
        crc: LoRaWAN uplinks carry a CRC.
        low_dr_optimize: None picks it as the radios do (symbol time ≥ 16 ms: SF11/12 at 125 kHz).
    """
    if not 5 <= sf <= 12:
        raise ValueError(f"spreading factor {sf} out of range")
    t_sym = (1 << sf) / bw_hz
    de = (t_sym >= 0.016) if low_dr_optimize is None else low_dr_optimize
    h = 0 if explicit_header else 1
    num = 8 * phy_bytes - 4 * sf + 28 + (16 if crc else 0) - 20 * h
    den = 4 * (sf - (2 if de else 0))
    n_payload = 8 + max(math.ceil(num / den) * (cr + 4), 0)
    return (preamble + 4.25) * t_sym + n_payload * t_sym


def uplink_airtime_s(app_bytes: int, sf: int, bw_hz: int = 125_000) -> float:
    """Time on air of a LoRaWAN uplink with ``app_bytes`` of FRMPayload and no FOpts."""
    return time_on_air_s(app_bytes + LORAWAN_OVERHEAD, sf, bw_hz)


def join_airtime_s(sf: int, bw_hz: int = 125_000) -> float:
    """Time on air of a JoinRequest."""
    return time_on_air_s(JOIN_REQUEST_BYTES, sf, bw_hz)


def dr_to_sf(dr: int) -> tuple[int, int]:
    """EU868/RU864 data rate → (spreading factor, bandwidth). DR6 is SF7 at 250 kHz."""
    if 0 <= dr <= 5:
        return 12 - dr, 125_000
    if dr == 6:
        return 7, 250_000
    raise ValueError(f"data rate DR{dr} is not a LoRa rate in EU868/RU864")


# -- band plans -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubBand:
    """A regulatory sub-band: frequencies [lo, hi] MHz and its duty cycle (a fraction)."""

    name: str
    lo_mhz: float
    hi_mhz: float
    duty_cycle: float

    def holds(self, mhz: float) -> bool:
        return self.lo_mhz <= mhz <= self.hi_mhz


@dataclass(frozen=True, slots=True)
class BandPlan:
    """A region: its sub-bands and the default channels (which all lie in one sub-band)."""

    region: str
    bands: tuple[SubBand, ...]
    default_channels_mhz: tuple[float, ...]

    def band_of(self, mhz: float | None) -> SubBand:
        """The sub-band of a frequency; the default channels' sub-band when unknown."""
        target = self.default_channels_mhz[0] if mhz is None else mhz
        for b in self.bands:
            if b.holds(target):
                return b
        return self.band_of(None) if mhz is not None else self.bands[0]

    @property
    def default_band(self) -> SubBand:
        return self.band_of(None)


def band_plan(region: str, duty_cycle: float = 0.01) -> BandPlan:
    """The plan of ``region`` with ``duty_cycle`` on the default channels' sub-band.

    RU864: LoRaMac-node treats the whole band as one 1 % band and the default channels 868.9
    and 869.1 MHz lie in 868.7–869.2 MHz (Russian rules allow 10 % there, but every stack
    enforces 1 %, so 1 % is the default). EU868: ETSI sub-bands as TTN quotes them.
    """
    if region == "RU864":
        return BandPlan("RU864", (
            SubBand("RU864 864-865", 864.0, 865.0, 0.001),
            SubBand("RU864 866-868", 866.0, 868.0, 0.01),
            SubBand("RU864 868.7-869.2", 868.7, 869.2, duty_cycle),
        ), (868.9, 869.1))
    if region == "EU868":
        return BandPlan("EU868", (
            SubBand("K 863-865", 863.0, 865.0, 0.001),
            SubBand("L 865-868", 865.0, 868.0, 0.01),
            SubBand("M 868-868.6", 868.0, 868.6, duty_cycle),
            SubBand("N 868.7-869.2", 868.7, 869.2, 0.001),
            SubBand("P 869.4-869.65", 869.4, 869.65, 0.1),
            SubBand("Q 869.7-870", 869.7, 870.0, 0.01),
        ), (868.1, 868.3, 868.5))
    raise ValueError(f"unknown region {region!r}")


# -- the ledger -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tx:
    """One transmission (or, with ``airtime_s`` 0 and ``downlink``, one received downlink)."""

    ts: float
    band: str
    airtime_s: float
    kind: str
    downlink: bool = False


class DutyCycleLedger:
    """Airtime spent per sub-band, persisted; answers "when may I send ``airtime_s``?".

    Args:
        plan: the region's band plan.
        conn: a database connection to persist to (None: memory only, for the bench). Its
            table ``lora_airtime`` is part of the store's schema (:mod:`edge_app.trap.store.db`),
            pruned by the store's housekeeping after two days.
        fair_use: also enforce TTN's 30 s/24 h and count downlinks against 10/24 h.
        fair_use_airtime_s: the fair-use airtime per 24 h.
        fair_use_downlinks: the fair-use downlinks per 24 h.
        guard_s: margin added to each time-off (see :data:`TIME_OFF_GUARD_S`).

    Thread-safety: one owner thread (the router); readers of :meth:`summary` may call from
    elsewhere, guarded by a lock.
    """

    def __init__(
        self,
        plan: BandPlan,
        conn: sqlite3.Connection | None = None,
        *,
        fair_use: bool = False,
        fair_use_airtime_s: float = FAIR_USE_AIRTIME_S,
        fair_use_downlinks: int = FAIR_USE_DOWNLINKS,
        guard_s: float = TIME_OFF_GUARD_S,
    ) -> None:
        self.plan = plan
        self._conn = conn
        self.fair_use = fair_use
        self.fair_use_airtime_s = fair_use_airtime_s
        self.fair_use_downlinks = fair_use_downlinks
        self.guard_s = guard_s
        self._bands = {b.name: b for b in plan.bands}
        self._txs: deque[Tx] = deque()  # the last 24 h, oldest first
        self._lock = threading.Lock()
        if conn is not None:
            airtime_table(conn)  # the store's schema; a no-op on the trap database

    def load(self, now: float) -> None:
        """Read the last 24 h from the database (at start); rows from the future are pulled
        back to ``now`` (see the module docstring)."""
        if self._conn is None:
            return
        self._conn.execute("UPDATE lora_airtime SET ts = ? WHERE ts > ?", (now, now))
        self._conn.execute("DELETE FROM lora_airtime WHERE ts < ?", (now - 2 * DAY_S,))
        rows = self._conn.execute(
            "SELECT ts, band, airtime_s, kind, downlink FROM lora_airtime WHERE ts >= ? "
            "ORDER BY ts, id", (now - DAY_S,)).fetchall()
        with self._lock:
            self._txs = deque(Tx(float(r[0]), str(r[1]), float(r[2]), str(r[3]), bool(r[4]))
                              for r in rows)

    def record(self, tx: Tx) -> int | None:
        """Add a transmission (or a downlink) and persist it; returns its row id (None when
        the ledger is memory only), for :meth:`refund`."""
        row_id: int | None = None
        if self._conn is not None:
            cur = self._conn.execute(
                "INSERT INTO lora_airtime (ts, band, airtime_s, kind, downlink) "
                "VALUES (?, ?, ?, ?, ?)",
                (tx.ts, tx.band, tx.airtime_s, tx.kind, int(tx.downlink)))
            row_id = cur.lastrowid
        with self._lock:
            self._txs.append(tx)
        return row_id

    def refund(self, tx: Tx, row_id: int | None) -> None:
        """Undo :meth:`record` of a transmission the modem says never went on the air."""
        if self._conn is not None and row_id is not None:
            self._conn.execute("DELETE FROM lora_airtime WHERE id = ?", (row_id,))
        with self._lock:
            for i in range(len(self._txs) - 1, -1, -1):
                if self._txs[i] == tx:
                    del self._txs[i]
                    break

    def _trim(self, now: float) -> None:
        while self._txs and self._txs[0].ts < now - DAY_S:
            self._txs.popleft()

    def next_allowed(self, airtime_s: float, now: float, band: str | None = None) -> float:
        """The earliest wall time ≥ ``now`` at which ``airtime_s`` may start on ``band``."""
        b = self._bands[band] if band else self.plan.default_band
        with self._lock:
            self._trim(now)
            txs = [t for t in self._txs if t.airtime_s > 0]
        on_band = [t for t in txs if t.band == b.name]
        t_ok = now
        if on_band:
            last = on_band[-1]
            t_ok = max(t_ok, min(last.ts, now) + last.airtime_s / b.duty_cycle + self.guard_s)
        t_ok = max(t_ok, _window_ok(on_band, airtime_s, b.duty_cycle * HOUR_S, HOUR_S, now))
        if self.fair_use:
            t_ok = max(t_ok, _window_ok(txs, airtime_s, self.fair_use_airtime_s, DAY_S, now))
        return t_ok

    def downlinks_left(self, now: float) -> int:
        """Fair-use downlinks left in the rolling 24 h (a large number when fair use is off)."""
        if not self.fair_use:
            return 1 << 30
        with self._lock:
            self._trim(now)
            used = sum(1 for t in self._txs if t.downlink)
        return max(0, self.fair_use_downlinks - used)

    def used_s(self, now: float, window_s: float, band: str | None = None) -> float:
        """Airtime spent in the last ``window_s`` (on ``band``, or on all bands if None)."""
        with self._lock:
            self._trim(now)
            return sum(t.airtime_s for t in self._txs
                       if t.ts > now - window_s and (band is None or t.band == band))

    def headroom_s(self, now: float) -> float:
        """Fair-use airtime left in the rolling day — what a status report may spend without
        starving alerts. Infinite when fair use is off: the duty cycle's time-off already
        spaces every message, so a status then costs one slot like an alert, no more."""
        if not self.fair_use:
            return math.inf
        return self.fair_use_airtime_s - self.used_s(now, DAY_S)

    def summary(self, now: float) -> dict[str, float | int]:
        """Figures for stats and the bench."""
        b = self.plan.default_band
        return {
            "hour_used_s": round(self.used_s(now, HOUR_S, b.name), 3),
            "hour_limit_s": round(b.duty_cycle * HOUR_S, 3),
            "day_used_s": round(self.used_s(now, DAY_S), 3),
            "downlinks_left": self.downlinks_left(now) if self.fair_use else -1,
        }


def _window_ok(txs: list[Tx], airtime_s: float, limit_s: float, window_s: float,
               now: float) -> float:
    """Earliest time ≥ now when the rolling ``window_s`` has room for ``airtime_s``.

    Rows are oldest first; dropping them one by one from the front, the window has room once
    the sum of the rest plus ``airtime_s`` fits — at the moment the dropped row leaves it.
    """
    recent = [t for t in txs if min(t.ts, now) > now - window_s]
    used = sum(t.airtime_s for t in recent)
    if used + airtime_s <= limit_s + 1e-9:
        return now
    for t in recent:
        used -= t.airtime_s
        if used + airtime_s <= limit_s + 1e-9:
            return min(t.ts, now) + window_s
    return now + window_s  # airtime_s alone exceeds the limit: never fits; retry after a window
