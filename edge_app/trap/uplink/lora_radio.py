"""The LoRa modem as the router uses it: opened, provisioned, joined, and charged for airtime.

Why a class of its own: the router decides *what* to send (with the pure policy of
:mod:`edge_app.trap.uplink.lora_policy`); this adapter owns the serial modem's life — open and
provision it, notice a reset, back off when it does not answer, join with backoff, read the
data rate — and books every transmission in the duty-cycle ledger *before* it goes (refunded
when the modem says nothing went on the air), so a crash mid-send can only over-count airtime.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

from edge_app.trap.uplink.airtime import DutyCycleLedger, Tx, dr_to_sf, join_airtime_s
from edge_app.trap.uplink.lora_policy import LinkHealth, Reaction
from edge_app.trap.uplink.lorawan import LoRaModem, LorawanKeys, ModemError, SendStatus

logger = logging.getLogger(__name__)

ModemFactory = Callable[[Callable[[], None]], LoRaModem]


class _Transmitted(Protocol):
    @property
    def transmitted(self) -> bool: ...


R = TypeVar("R", bound=_Transmitted)


class RadioSetup(Protocol):
    """The ``lorawan`` settings the radio reads (``LorawanConfig``)."""

    @property
    def region(self) -> str: ...

    @property
    def adr(self) -> bool: ...

    @property
    def data_rate(self) -> int: ...


class LoraRadio:
    """One modem behind its factory.

    Args:
        factory: builds the driver, given the callback for unsolicited lines.
        keys: OTAA keys.
        setup: the current ``lorawan`` settings (read at each provisioning).
        health: the policy's failure bookkeeping (modem and join backoff).
        count: bumps the router's counters.
        on_joined: told whether the modem holds a session.
        wake: called on an unsolicited modem line (the router runs a step soon).
    """

    def __init__(self, factory: ModemFactory, keys: LorawanKeys,
                 setup: Callable[[], RadioSetup], health: LinkHealth,
                 count: Callable[..., None], on_joined: Callable[[bool], None],
                 wake: Callable[[], None]) -> None:
        self._factory, self.keys, self._setup = factory, keys, setup
        self.health, self._count, self._on_joined, self._wake = health, count, on_joined, wake
        self.modem: LoRaModem | None = None
        self.provisioned = self.stopping = self.rejoin = False
        self.retry_at = self.join_at = 0.0
        self._dr: int | None = None

    def ready(self, now: float) -> LoRaModem | None:
        """The modem, provisioned (after a reset too), or None while it is backing off."""
        modem = self._provisioned_modem(now)
        if modem is None:
            return None
        modem.poll()
        if modem.take_reset():
            self._count(modem_resets=1)
            self.provisioned = False
            return self._provisioned_modem(now)
        return modem

    def _provisioned_modem(self, now: float) -> LoRaModem | None:
        if self.provisioned and self.modem is not None:
            return self.modem
        if now < self.retry_at or self.stopping:
            return None
        lw = self._setup()
        try:
            if self.modem is None:
                self.modem = self._factory(self._wake)
                self.modem.open()
            self.modem.provision(self.keys, lw.region, adr=lw.adr, data_rate=lw.data_rate)
        except ModemError as e:
            self.failed(now, str(e))
            return None
        self.provisioned, self._dr = True, None
        self.health.modem_ok()
        logger.info("LoRa: %s on %s provisioned for %s (DevEUI %s)", self.modem.name,
                    self.modem.url, lw.region, self.keys.dev_eui)
        return self.modem

    def failed(self, now: float, why: str) -> None:
        """The modem did not answer or refused its set-up: close it and back off."""
        self._count(modem_errors=1)
        self.retry_at = self.health.modem_failed(now)
        # A stop closes the port under a waiting command: that is not worth a warning.
        quiet = self.health.modem_failures > 3 or self.stopping
        logger.log(logging.DEBUG if quiet else logging.WARNING,
                   "LoRa: modem unusable (%s); retrying in %.0f s", why, self.retry_at - now)
        self.close()

    def close(self) -> None:
        if self.modem is not None:
            self.modem.close()
            self.modem = None
        self.provisioned = False

    def interrupt(self) -> None:
        """Cut a modem wait short (any thread)."""
        self.stopping = True
        modem = self.modem
        if modem is not None:
            with contextlib.suppress(Exception):
                modem.close()

    def sf_bw(self) -> tuple[int, int]:
        """SF and bandwidth of the data rate last read from the modem (read it if unknown).

        Planning uses this cached rate, so a step that only waits does not talk to the
        modem; :meth:`rate_changed` re-reads it just before a transmission (ADR may have
        moved it), and the step re-plans if it did.
        """
        assert self.modem is not None
        if self._dr is None:
            self._dr = self.modem.data_rate()
        try:
            return dr_to_sf(self._dr)
        except ValueError:
            return 12, 125_000  # unknown rate: assume the slowest (charges the most airtime)

    def rate_changed(self) -> bool:
        """Re-read the data rate before transmitting; True if the plan used a stale one."""
        assert self.modem is not None
        before, self._dr = self._dr, self.modem.data_rate()
        if before != self._dr:
            logger.info("LoRa: data rate now DR%d (was DR%s)", self._dr, before)
            return True
        return False

    def transmit(self, ledger: DutyCycleLedger, now: float, airtime_s: float, kind: str,
                 send: Callable[[], R]) -> R:
        """Book airtime, send, refund it if the modem says nothing went on the air."""
        tx = Tx(now, ledger.plan.default_band.name, airtime_s, kind)
        row = ledger.record(tx)
        self._count(transmissions=1, airtime_s=airtime_s)
        result = send()
        if not result.transmitted:
            ledger.refund(tx, row)
            self._count(transmissions=-1, airtime_s=-airtime_s)
        return result

    def try_join(self, ledger: DutyCycleLedger, now: float) -> float:
        """Join when the backoff and the ledger allow; returns when to look again."""
        modem = self.modem
        assert modem is not None
        if now < self.join_at:
            return self.join_at
        airtime = join_airtime_s(*self.sf_bw())
        allowed = ledger.next_allowed(airtime, now)
        if allowed > now:
            return allowed
        if self.rate_changed():
            return now
        self._count(join_attempts=1)
        result = self.transmit(ledger, now, airtime, "join",
                               lambda: modem.join(airtime, force=self.rejoin))
        self._dr = None  # a join may set the data rate
        self._on_joined(result.joined)
        if result.joined:
            self.health.joined()
            self.rejoin = False
            logger.info("LoRa: joined (%s)", result.detail)
            return now
        self._count(join_failures=1)
        self.join_at = self.health.join_failed(now, result.retry_after_s)
        logger.warning("LoRa: join attempt %d failed (%s); next in %.0f s",
                       self.health.join_failures, result.detail, self.join_at - now)
        return self.join_at

    def react(self, reaction: Reaction, status: SendStatus, now: float) -> None:
        """Put the modem where a failed send leaves it (the policy's :class:`Reaction`)."""
        if reaction.counter:
            self._count(**{reaction.counter: 1})
        if status is SendStatus.RESET and self.modem is not None:
            self.modem.take_reset()
        if reaction.reprovision:
            self.provisioned = False  # probe and set the module up again before the retry
        if reaction.rejoin:
            if status is SendStatus.NO_ACK:
                logger.warning("LoRa: %d confirmed uplinks in a row without an ACK: the "
                               "session looks lost; joining again", self.health.no_ack_streak)
                self.rejoin = True
                self._count(rejoins=1)
            self.join_at = now
            self._on_joined(False)
