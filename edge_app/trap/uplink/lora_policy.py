"""What the LoRa link sends next, and what a failure means: pure, clock-driven decisions.

Why pure: the router (:mod:`edge_app.trap.uplink.router`) talks to a serial modem, a database
and a duty-cycle ledger; the rules of *what* to send *when* are easy to get wrong and must be
testable by themselves, at any time of day, in microseconds (the ``TriggerFilter`` pattern of
``trap/hardware/trigger.py``). Nothing here reads a clock, a port or a file: every method takes
``now`` and the facts it needs, and answers.

The rules:

* **Order**: an overdue status first (a backlogged trap must still say it is alive and
  backlogged), then alerts by ``lorawan.priority`` (species, else label; unlisted last),
  oldest trigger first within a class; then a due status. A waiting alert does not hold the
  airtime: the router sleeps until the ledger allows, then asks again, so a higher priority
  that arrived meanwhile goes first.
* **Stale alerts** (older than ``lorawan.max_age_s``): stale news costs airtime others need, so
  a stale alert that another link carries (an MQTT row) leaves the LoRa queue. An alert only
  LoRa carries is never dropped: it waits behind every fresh alert (most important, then
  newest first) and goes when the airtime is free.
* **Fallback mode**: while MQTT looks up, an alert waits ``fallback_after_s`` for MQTT to
  deliver it before it may use airtime.
* **Failures**: a lost ACK costs one attempt and is retried after the duty cycle's time-off
  plus a little jitter (traps whose uplinks collided must not collide again); busy/duty-cycle
  refusals cost none; a timeout or a reset re-provisions the modem; "not joined" joins again;
  ``REJOIN_AFTER_NO_ACKS`` lost ACKs in a row mean the network forgot the session. After
  ``lorawan.max_attempts`` transmissions an alert another link carries is given up on LoRa; a
  LoRa-only one keeps trying, on a slow backoff so it cannot hog the airtime.
* **Backoff** everywhere is :class:`edge_app.core.backoff.Backoff` with equal jitter (a join
  or a modem probe too early costs airtime or a stuck port, never nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from edge_app.core.backoff import Backoff, Uniform
from edge_app.trap.store.lora_rows import Waiting
from edge_app.trap.uplink.lorawan import SendStatus

RESCAN_S = 60.0
"""Backstop: look for new alerts and fallback deadlines at least this often."""
BUSY_RETRY_S = 3.0
NO_ACK_JITTER_S = 5.0
STATUS_RECHECK_S = 600.0
REJOIN_AFTER_NO_ACKS = 4
"""Confirmed uplinks in a row without an ACK after which the session is presumed lost (the
network server forgot the device, the gateway moved): join again rather than keep shouting
into a session nobody holds."""
MODEM_RETRY = Backoff(10.0, 600.0, "equal")
LORA_ONLY_RETRY = Backoff(300.0, 6 * 3600.0, "equal")
"""Retries of an alert only LoRa carries once it has used ``max_attempts``."""


class LedgerView(Protocol):
    """What the policy asks of the duty-cycle ledger (``airtime.DutyCycleLedger``)."""

    def next_allowed(self, airtime_s: float, now: float) -> float: ...

    def headroom_s(self, now: float) -> float: ...


@dataclass(frozen=True, slots=True)
class Triage:
    """The waiting alerts sorted for service (see the module docstring).

    Attributes:
        queue: what may be sent, in order: fresh alerts, then stale LoRa-only ones.
        drop: stale alerts another link carries: leave the LoRa queue.
    """

    queue: list[Waiting]
    drop: list[Waiting]


class AlertOrder:
    """Order of service of waiting alerts.

    Args:
        priority: ``lorawan.priority``: species or labels, most urgent first.
        max_age_s: alerts older than this are stale.
        fallback_after_s: fallback mode: how long MQTT gets to deliver first.
    """

    def __init__(self, priority: Sequence[str], max_age_s: float,
                 fallback_after_s: float) -> None:
        self.priority = list(priority)
        self.max_age_s = max_age_s
        self.fallback_after_s = fallback_after_s

    def rank(self, label: str, species: str | None) -> int:
        """Index in ``priority`` of the species, else the label; unlisted go last."""
        for name in (species, label):
            if name is not None and name in self.priority:
                return self.priority.index(name)
        return len(self.priority)

    def triage(self, waiting: Sequence[Waiting], now: float) -> Triage:
        """Split stale from fresh and sort both (module docstring)."""
        cutoff = now - self.max_age_s
        fresh = [w for w in waiting if w.event_ts >= cutoff]
        stale = [w for w in waiting if w.event_ts < cutoff]
        fresh.sort(key=lambda w: (self.rank(w.label, w.species), w.event_ts, w.row_id))
        keep = sorted((w for w in stale if not w.elsewhere),
                      key=lambda w: (self.rank(w.label, w.species), -w.event_ts, w.row_id))
        return Triage(fresh + keep, [w for w in stale if w.elsewhere])

    def first_eligible(self, queue: Sequence[Waiting], now: float,
                       hold_for_mqtt: bool) -> tuple[Waiting | None, float]:
        """The first alert that may go now, and when the next of the others may.

        Args:
            queue: from :meth:`triage`, in order.
            now: wall time.
            hold_for_mqtt: fallback mode with MQTT up: each alert waits its fallback delay.

        Returns:
            (the alert or None, the earliest time another becomes eligible; ``inf`` if none).
        """
        wake = math.inf
        for w in queue:
            at = w.next_attempt_at
            if hold_for_mqtt:
                at = max(at, w.created + self.fallback_after_s)
            if at <= now:
                return w, wake
            wake = min(wake, at)
        return None, wake


@dataclass
class StatusSchedule:
    """When the periodic status report (fPort 11) is due.

    Attributes:
        every_s: the interval (0: never, unless asked for by a downlink).
        last_at: when the last one went (see :meth:`LoraRouter` for the first).
        requested: a downlink asked for one now.
        retry_at: a send failed: not before this (so a failing status never blocks alerts).
    """

    every_s: float
    last_at: float
    requested: bool = False
    retry_at: float = 0.0

    def overdue(self, now: float) -> bool:
        """Asked for, or a whole interval late (alerts kept the airtime busy)."""
        if now < self.retry_at:
            return False
        return self.requested or (self.every_s > 0 and now >= self.last_at + 2 * self.every_s)

    def due_at(self, now: float) -> float:
        """When the next one is due (``inf`` if never)."""
        if self.requested:
            return max(now, self.retry_at)
        if self.every_s <= 0:
            return math.inf
        return max(self.last_at + self.every_s, self.retry_at)

    def sent(self, now: float) -> None:
        self.requested = False
        self.last_at = now
        self.retry_at = 0.0

    def failed(self, now: float) -> None:
        self.retry_at = now + BUSY_RETRY_S


@dataclass(frozen=True, slots=True)
class Plan:
    """One step's decision: send this alert, send a status, or wait until ``wake_at``."""

    action: Literal["alert", "status", "wait"]
    wake_at: float
    alert: Waiting | None = None


def plan_step(
    now: float,
    alert: Waiting | None,
    alert_wake: float,
    status: StatusSchedule,
    ledger: LedgerView,
    alert_airtime_s: float,
    status_airtime_s: float,
    status_reserve: int,
) -> Plan:
    """What to do now, given the first eligible alert and the status schedule.

    A status is only sent when the airtime budget still leaves room for ``status_reserve``
    alerts (the fair-use day), and only when the ledger allows it now.
    """
    wake = min(now + RESCAN_S, alert_wake)

    def status_ok() -> tuple[bool, float]:
        due = status.due_at(now)
        if due > now:
            return False, due
        if ledger.headroom_s(now) - status_airtime_s < status_reserve * alert_airtime_s:
            return False, now + STATUS_RECHECK_S  # keep the airtime for alerts
        allowed = ledger.next_allowed(status_airtime_s, now)
        return allowed <= now, allowed

    overdue = status.overdue(now)
    if overdue:
        ok, at = status_ok()
        if ok:
            return Plan("status", now)
        wake = min(wake, at)
    if alert is not None:
        allowed = ledger.next_allowed(alert_airtime_s, now)
        if allowed > now:
            return Plan("wait", min(wake, allowed))  # a higher priority may take the slot
        return Plan("alert", now, alert)
    if overdue:
        return Plan("wait", wake)
    ok, at = status_ok()
    return Plan("status", now) if ok else Plan("wait", min(wake, at))


@dataclass(frozen=True, slots=True)
class Reaction:
    """What a failed send means for the modem and for the message.

    Attributes:
        retry_at: when the message may be tried again.
        reprovision: set the modem up again before the next send (timeout, reset).
        rejoin: join again first (not joined, reset, or a run of lost ACKs).
        counter: the stats counter this failure bumps (``no_ack``, ``busy``...), or "".
    """

    retry_at: float
    reprovision: bool = False
    rejoin: bool = False
    counter: str = ""


class LinkHealth:
    """Failure reactions, the lost-ACK streak and the join/modem backoff of one router.

    Args:
        join_backoff: waits between failed joins (``lorawan.join_backoff_*``).
        rng: jitter source.
    """

    def __init__(self, join_backoff: Backoff, rng: Uniform) -> None:
        self.join_backoff = join_backoff
        self.rng = rng
        self.no_ack_streak = 0
        self.join_failures = 0
        self.modem_failures = 0

    def after_failure(self, status: SendStatus, retry_after_s: float | None,
                      now: float) -> Reaction:
        """React to a send that did not deliver (module docstring)."""
        if status in (SendStatus.NOT_JOINED, SendStatus.RESET):
            return Reaction(now, reprovision=True, rejoin=True,
                            counter="modem_resets" if status is SendStatus.RESET else "")
        if status is SendStatus.TIMEOUT:
            return Reaction(now, reprovision=True, counter="timeouts")
        if status in (SendStatus.BUSY, SendStatus.DUTY_CYCLE):
            return Reaction(now + (retry_after_s or BUSY_RETRY_S), counter="busy")
        if status is SendStatus.NO_ACK:
            # The ledger spaces the retry by the time-off anyway; the jitter de-synchronises
            # traps whose uplinks collided.
            self.no_ack_streak += 1
            rejoin = self.no_ack_streak >= REJOIN_AFTER_NO_ACKS
            return Reaction(now + self.rng.uniform(0.0, NO_ACK_JITTER_S), rejoin=rejoin,
                            counter="no_ack")
        return Reaction(now + BUSY_RETRY_S)  # REJECTED: a bug or a DR too slow; try later

    def acked(self) -> None:
        self.no_ack_streak = 0

    def joined(self) -> None:
        self.join_failures = 0
        self.no_ack_streak = 0

    def join_failed(self, now: float, retry_after_s: float | None) -> float:
        """When to try joining again after a failure."""
        self.join_failures += 1
        delay = self.join_backoff.delay(self.join_failures, self.rng)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return now + delay

    def modem_failed(self, now: float) -> float:
        """When to try the modem again after it failed to answer or set up."""
        self.modem_failures += 1
        return now + MODEM_RETRY.delay(self.modem_failures, self.rng)

    def modem_ok(self) -> None:
        self.modem_failures = 0


def after_attempts(w: Waiting, attempts: int, max_attempts: int, retry_at: float,
                   now: float, rng: Uniform) -> float | None:
    """Whether a failed alert goes on: None gives it up on LoRa, else the retry time.

    Only an alert another link carries is given up after ``max_attempts`` transmissions; a
    LoRa-only alert is the only copy, so it goes on, on :data:`LORA_ONLY_RETRY`.
    """
    if attempts < max_attempts:
        return retry_at
    if w.elsewhere:
        return None
    return max(retry_at, now + LORA_ONLY_RETRY.delay(attempts - max_attempts + 1, rng))
