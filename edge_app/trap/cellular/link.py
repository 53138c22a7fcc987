"""One step of the cellular link: read the modem, count the bytes, decide, act.

Why a separate step: the policy (:mod:`.policy`) and the budget (:mod:`.budget`) are pure,
the client (:mod:`.modem`) only talks D-Bus; this is the few lines that join them, so the
daemon's worker is a loop of ``step()`` then "sleep until the decision's ``next_check_mono``
or a ModemManager signal or an outbox change". The bearer's counters are sampled on every
step and once more right before a disconnect, so the bytes of the last upload are counted
before the bearer (and its counters) go away.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_app.core.clock import Clock
from edge_app.trap.cellular.budget import DataBudget
from edge_app.trap.cellular.modem import ModemManagerClient, ModemSnapshot
from edge_app.trap.cellular.policy import LinkDecision, LinkObservation, LinkPolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkStep:
    """What one step saw and did."""

    snapshot: ModemSnapshot
    decision: LinkDecision
    acted: bool


class CellularLink:
    """Policy + budget + ModemManager client (module docstring).

    Args:
        policy: the link policy.
        budget: the data budget (its state is saved to ``state_path`` after counting).
        client: the ModemManager client.
        clock: monotonic time for the policy, wall time for the budget.
        apn: for Simple.Connect ('' = the modem's default).
        signal_rate_s: Signal.Setup rate once a modem is seen (0 = not asked).
        state_path: where the budget's JSON state lives (None = not saved).
    """

    def __init__(self, policy: LinkPolicy, budget: DataBudget, client: ModemManagerClient,
                 clock: Clock, apn: str = "", signal_rate_s: int = 0,
                 state_path: Path | None = None) -> None:
        self.policy = policy
        self.budget = budget
        self.client = client
        self.clock = clock
        self.apn = apn
        self.signal_rate_s = signal_rate_s
        self.state_path = state_path
        self.last: ModemSnapshot = ModemSnapshot("absent")
        self._signal_asked_for: str | None = None
        # the budget is counted here (the stage's thread) and asked by the uplink's thread
        self._budget_lock = threading.Lock()

    def step(self, outbox_depth: int = 0, in_flight: int = 0,
             last_activity_mono: float | None = None, app_bytes: int = 0) -> LinkStep:
        """Observe, count, decide and take the one action decided; ``app_bytes`` are the
        bytes the MQTT link counted itself since the last step (the budget's fallback)."""
        if app_bytes > 0:
            with self._budget_lock:
                self.budget.count_app(app_bytes, self.clock.wall())
                self._save()
        snap = self.client.snapshot()
        fresh = snap.path is not None and snap.path != self._signal_asked_for
        if fresh and self.signal_rate_s and self.client.setup_signal(self.signal_rate_s):
            self._signal_asked_for = snap.path
            snap = self.client.snapshot()
        self._count(snap)
        self.last = snap
        decision = self.policy.decide(LinkObservation(
            mono=self.clock.monotonic(), wall=self.clock.wall(), outbox_depth=outbox_depth,
            in_flight=in_flight, last_activity_mono=last_activity_mono, modem=snap.state,
            signal_percent=snap.signal_percent))
        acted = self._act(decision)
        return LinkStep(snap, decision, acted)

    def _count(self, snap: ModemSnapshot) -> None:
        if snap.bearer is None or snap.rx_bytes is None or snap.tx_bytes is None:
            return
        with self._budget_lock:
            if self.budget.observe_bearer(snap.bearer, snap.rx_bytes, snap.tx_bytes,
                                          self.clock.wall()):
                self._save()

    def _save(self) -> None:
        if self.state_path is None:
            return
        try:
            self.budget.save(self.state_path)
        except OSError as e:
            logger.warning("data budget state not saved: %s", e)

    def allows_image(self, size_bytes: int, wall: float) -> bool:
        """Whether a full image of ``size_bytes`` may go now (any thread: the uplink asks)."""
        with self._budget_lock:
            ok = self.budget.allows("full_image", size_bytes, wall)
            if not ok:
                self._save()  # the held count survives a reboot too
            return ok

    def images_fit(self, wall: float) -> bool:
        """Whether full images would go now (any thread; counts nothing)."""
        with self._budget_lock:
            return self.budget.fits("full_image", 0, wall)

    def _act(self, d: LinkDecision) -> bool:
        if d.action == "none":
            return True
        logger.info("cellular: %s (%s)", d.action, d.reason)
        if d.action == "enable-modem":
            ok = self.client.enable(True)
            if not ok:
                self.policy.connect_failed(self.clock.monotonic(), "enable")
            return ok
        if d.action == "disable-modem":
            return self.client.enable(False)
        if d.action == "connect":
            if self.client.connect(self.apn) is None:
                self.policy.connect_failed(self.clock.monotonic(), "connect")
                return False
            return True
        self._count(self.client.snapshot())  # the last bytes, before the counters go
        return self.client.disconnect()

    def stats(self) -> dict[str, Any]:
        """For the stats message: signal and link health, the month's data."""
        with self._budget_lock:
            usage = self.budget.usage(self.clock.wall())
        return {"signal": self.last.to_json(), "data": usage.to_json(),
                "errors": dict(self.client.errors)}
