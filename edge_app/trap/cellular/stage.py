"""The cellular stage: the daemon's thread that runs :class:`~.link.CellularLink`.

Why a stage of its own: bringing the bearer up or down is a ModemManager call that can take a
minute (Simple.Connect on a weak signal), and the MQTT link must not wait on it; the stage
only reads what the MQTT link has to do (rows waiting for it, messages in flight, when it last
moved anything, the bytes its sockets carried) and tells it one thing back, through the
:attr:`CellularStage.on_route` hook: the bearer came up (connect now, not after the reconnect
backoff), went down (stop spending reconnect attempts), or there is no modem to say (the
link's ordinary backoff). The MQTT session survives the bearer going down
(``clean_start=False`` with a session expiry), so a command sent while the trap is offline
arrives when the bearer is next up.

Never a busy poll: after each step the stage sleeps until the policy's ``next_check_mono``
(capped by :data:`BEAT_S` so the watchdog hears it), or until ModemManager signals a change
(a property of the modem or bearer, a modem appearing) or :meth:`CellularStage.wake` is called
(the store queued an alert): whichever comes first.

The modem with ``hardware.backend = "sim"``: ModemManager on the **session** bus instead of
the system bus. No fake client of ours: the code that runs is the production D-Bus client,
and whoever runs the simulation (a test, a developer) serves ModemManager there with
python-dbusmock's ``modemmanager`` template; without one the modem is ``absent`` and the link
says so in stats, as a Pi without a modem would.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from edge_app.core.clock import Clock
from edge_app.core.config import Config

if TYPE_CHECKING:
    from edge_app.trap.cellular.link import CellularLink, LinkStep
    from edge_app.trap.store.pipeline import EventStore
    from edge_app.trap.uplink.mqtt import MqttLink

logger = logging.getLogger(__name__)

BEAT_S = 60.0
"""Longest sleep between two steps: the stage's watchdog beat (the policy's own backstop,
``policy.RESCAN_S``, is 300 s)."""
MIN_WAIT_S = 0.2
"""Shortest sleep between two steps, whatever a deadline says: a loop that cannot spin."""
STATE_FILE = "data_budget.json"


@dataclass(frozen=True)
class LinkWork:
    """What the MQTT link has to do, as the stage reads it before a step.

    Attributes:
        outbox_depth: rows waiting for the MQTT link (ready, in flight, awaiting a receipt),
            without the full images the data plan holds (they alone do not keep the bearer
            up; one the station asked for does).
        in_flight: messages published and not yet acknowledged.
        last_activity_mono: when the MQTT link last published, was acknowledged or received
            a message (None: not yet).
        images_waiting: full images among the rows waiting (held ones included).
        app_bytes: bytes the MQTT link's sockets carried since the last read (the data
            plan's fallback count where the modem gives no bearer counters).
    """

    outbox_depth: int = 0
    in_flight: int = 0
    last_activity_mono: float | None = None
    images_waiting: int = 0
    app_bytes: int = 0


@dataclass
class StageStats:
    """What the stage did, for the stats message."""

    steps: int = 0
    connects: int = 0
    disconnects: int = 0
    failed_actions: int = 0
    reason: str = ""
    want_up: bool = False


class CellularStage:
    """Steps the link and sleeps (module docstring).

    Args:
        link: the cellular link (policy, budget, ModemManager client).
        work: what the MQTT link has to do now (called on this stage's thread).
        clock: monotonic time for the waits.
    """

    def __init__(self, link: CellularLink, work: Callable[[], LinkWork], clock: Clock) -> None:
        self.link = link
        self._work = work
        self._clock = clock
        self.stats_ = StageStats()
        self.last_work = LinkWork()
        self.last_step: LinkStep | None = None
        self.beat: Callable[[], None] = lambda: None  # the watchdog's, set at wiring
        self.on_route: Callable[[bool | None], None] = lambda up: None
        """The MQTT link's ``route`` (set at wiring): True when the bearer came up, False
        when it went down, None when there is no modem to say. Called on changes only."""
        self._route: bool | None = None
        self._route_told = False

    def wake(self) -> None:
        """The outbox got work (or a stop): step now. Any thread; never blocks."""
        self.link.client.wake()

    def allows_image(self, size_bytes: int, wall: float) -> bool:
        """The data budget's word on one full image (the uplink's thread asks)."""
        return self.link.allows_image(size_bytes, wall)

    def images_fit(self) -> bool:
        """Whether the data plan would let full images go now (held ones are work again)."""
        return self.link.images_fit(self._clock.wall())

    def step(self) -> float:
        """One observe–decide–act turn; returns how long to sleep before the next."""
        try:
            work = self._work()
        except Exception as e:  # noqa: BLE001 - a locked database: assume work, look again
            logger.warning("cellular: cannot read the outbox (%s); assuming work waits", e)
            work = LinkWork(outbox_depth=1)
        self.last_work = work
        step = self.link.step(work.outbox_depth, work.in_flight, work.last_activity_mono,
                              work.app_bytes)
        self.last_step = step
        s, d = self.stats_, step.decision
        self._tell_route(step)
        s.steps += 1
        s.want_up = d.want_up
        if d.reason != s.reason:
            logger.info("cellular: %s", d.reason)
            s.reason = d.reason
        if d.action == "connect":
            s.connects += step.acted
        elif d.action == "disconnect":
            s.disconnects += step.acted
        if not step.acted:
            s.failed_actions += 1
        wait = d.next_check_mono - self._clock.monotonic()
        return min(BEAT_S, max(MIN_WAIT_S, wait))

    def _tell_route(self, step: LinkStep) -> None:
        """The MQTT link's hook, on a change: a successful connect counts as up at once
        (Simple.Connect returns once the bearer is up), a disconnect as down."""
        d, snap = step.decision, step.snapshot
        route: bool | None = None if snap.state == "absent" else snap.bearer_connected
        if step.acted and d.action == "connect":
            route = True
        elif step.acted and d.action == "disconnect":
            route = False
        if self._route_told and route == self._route:
            return
        self._route, self._route_told = route, True
        try:
            self.on_route(route)
        except Exception:  # a hook's bug must not stop the modem's stage
            logger.exception("cellular: the route hook failed")

    def run(self, stop: threading.Event) -> None:
        """Step, then sleep until the next check, a ModemManager change or a wake."""
        try:
            while not stop.is_set():
                self.beat()
                wait = self.step()
                if stop.is_set():
                    return
                self.link.client.wait_for_change(wait)
        finally:
            self.link.client.close()

    def lora_state(self) -> tuple[str | None, bool]:
        """The cellular state and low-signal bit for the LoRa status (any thread)."""
        return lora_state(self.stats(), self.link.policy.failures, self.link.last.state)

    def stats(self) -> dict[str, Any]:
        """For the stats message: signal, link state, the month's data (additive)."""
        out = self.link.stats()
        snap = self.link.last
        s = self.stats_
        state = ("up" if snap.state == "connected" else
                 "no modem" if snap.state == "absent" else
                 "no signal" if s.want_up and snap.state in ("searching", "enabled") else
                 "down" if not s.want_up else "connecting")
        out["link"] = {"state": state, "reason": s.reason, "mode": self.link.policy.cfg.mode,
                       "steps": s.steps, "connects": s.connects, "disconnects": s.disconnects,
                       "failed_actions": s.failed_actions,
                       "failed_connects": self.link.policy.failures}
        out["data"]["images_waiting"] = self.last_work.images_waiting
        return out


LOW_SIGNAL_PERCENT = 20
"""Signal quality under this is reported as low in the LoRa status."""


def lora_state(stats: dict[str, Any], failures: int, modem: str) -> tuple[str | None, bool]:
    """The LoRa status's cellular state (:data:`edge_app.core.lora_codec.CELL_STATES`) and
    low-signal bit, from the stage's stats."""
    link = stats.get("link", {}).get("state")
    quality = stats.get("signal", {}).get("quality")
    low = isinstance(quality, int) and quality < LOW_SIGNAL_PERCENT
    if modem in ("failed", "locked"):
        return "modem_error", low
    state = {"up": "up", "no modem": "no_modem", "no signal": "no_signal", "down": "idle",
             "connecting": "failing" if failures else "connecting"}.get(str(link))
    return state, low and state != "no_modem"


def make_cellular(cfg: Config, clock: Clock, work: Callable[[], LinkWork],
                  bus: str | None = None) -> CellularStage | None:
    """The stage ``[cellular]`` asks for (None when ``cellular.enabled`` is off).

    ``bus``: where ModemManager is (default: the system bus on a Pi, the session bus with the
    sim backend, see the module docstring). The budget's state lives in ``storage.root``.
    """
    c = cfg.cellular
    if not c.enabled:
        return None
    # Imported here: jeepney is only loaded on a trap that has a modem.
    from edge_app.trap.cellular.budget import DataBudget
    from edge_app.trap.cellular.link import CellularLink
    from edge_app.trap.cellular.modem import ModemManagerClient
    from edge_app.trap.cellular.policy import LinkPolicy

    if bus is None:
        bus = "SESSION" if cfg.hardware.backend == "sim" else "SYSTEM"
    state_path = Path(cfg.storage.root) / STATE_FILE
    budget = DataBudget(c.plan_mb, c.cycle_day, c.full_image_margin, ZoneInfo(c.timezone),
                        clock.wall(), DataBudget.load(state_path))
    client = ModemManagerClient(bus, connect_timeout_s=c.connect_timeout_s, clock=clock)
    link = CellularLink(LinkPolicy(c, clock.monotonic()), budget, client, clock, apn=c.apn,
                        signal_rate_s=c.signal_rate_s, state_path=state_path)
    return CellularStage(link, work, clock)


def mqtt_work(store: EventStore, link: MqttLink | None,
              images_fit: Callable[[], bool] | None = None) -> LinkWork:
    """What the MQTT link has to do, read on the stage's thread (its own short connection).

    Full images the plan holds are no reason to bring the bearer up, unless the station asked
    for one or the plan would let them go again (``images_fit``: after the month rolled over,
    nothing else may bring the link up to find out)."""
    from edge_app.trap.store.db import open_db
    from edge_app.trap.store.outbox import Link, Outbox

    conn = open_db(store.db_path)
    try:
        depth = Outbox(conn, store.clock, store.cfg.outbox).depth(Link.MQTT)
    finally:
        conn.close()
    if link is None:
        return LinkWork(outbox_depth=sum(depth.values()), images_waiting=depth["image"])
    total = sum(depth.values())
    if link.images_held() and not link.image_requests() and not (
            images_fit is not None and images_fit()):
        total -= depth["image"]  # held by the plan: no reason to keep the bearer up
    return LinkWork(total, link.in_flight(), link.activity_mono, depth["image"],
                    link.take_bytes())
