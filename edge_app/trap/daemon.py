"""The composition root: builds every part from the config and runs them under the supervisor.

Data path and thread ownership::

    gpiozero thread ──on_trigger──► [triggers] ─► capture ─► [bursts] ─► detect ─► [decided]
                                     drop oldest              drop oldest          blocking
                                                                                      │
                               uplink (MQTT, own DB connection) ◄──wake── store ◄────┘

Why these queue policies: the PIR callback must never block (a missed edge is a missed
animal), so a full trigger or burst queue drops the *oldest* unprocessed item and counts it —
when the detector falls behind, the newest trigger is the most useful one. A decided event is
never dropped: the detect stage waits for the store instead.
"""

from __future__ import annotations

import logging
import signal
import statistics
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from edge_app import __version__
from edge_app.core.backoff import Backoff
from edge_app.core.clock import Clock, SystemClock
from edge_app.core.config import Config
from edge_app.core.errors import ConfigError, ModelError, StorageError
from edge_app.core.events import Burst, FrameResult, TriggerEvent, Verdict
from edge_app.trap.capture import capture_burst
from edge_app.trap.detect.background import BackgroundMemory
from edge_app.trap.detect.pipeline import Pipeline
from edge_app.trap.detect.policy import decide
from edge_app.trap.hardware.factory import make_camera, make_sim_world
from edge_app.trap.hardware.trigger import PirTrigger, make_pin_factory
from edge_app.trap.health import Heart
from edge_app.trap.settings import Settings
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.store.retention import Housekeeper
from edge_app.trap.supervisor import StageQueue, Supervisor, sd_notify
from edge_app.trap.uplink.mqtt import MqttLink
from edge_app.trap.watchdog import from_environment as watchdog_from_environment

if TYPE_CHECKING:
    from edge_app.sim.world import SimWorld
    from edge_app.trap.uplink.router import LoraRouter

logger = logging.getLogger(__name__)

STORE_RETRY = Backoff(1.0, 60.0, jitter="none")
"""A store write that failed (card full or gone) is retried 1, 2, 4 … 60 s later."""

LINK_DEADLINE_S = 300.0
"""The uplink and LoRa loops wake at least every 60 s; five missed turns means stuck."""

BACKGROUND_SHOT = "background"
"""``TriggerEvent.source`` of a scheduled background shot (not a PIR trigger: learnt, never
decided or stored)."""


@dataclass
class Counters:
    """What the trap did, for the demo summary and the stats message.

    Written by one stage each (noted per field), read by anyone; ints are atomic enough.
    """

    triggers: int = 0  # gpiozero thread
    triggers_dropped: int = 0  # gpiozero thread / capture
    frames: int = 0  # detect
    frames_failed: int = 0  # detect
    frames_gated: int = 0  # detect: motion gate skipped inference (no change)
    empty: int = 0  # store: discarded triggers
    kept: int = 0  # store: stored triggers (alert + keep)
    alerts: int = 0  # store: alerts queued
    audits: int = 0  # store: discarded but kept locally as an audit sample
    background_shots: int = 0  # detect: scheduled background shots analysed
    background_learnt: int = 0  # detect: new scenes added to the background set
    latencies_ms: list[float] = field(default_factory=list)  # store: trigger → queued

    def snapshot(self) -> dict[str, Any]:
        d = asdict(self)
        lat = d.pop("latencies_ms")
        d["queue_latency_ms_p50"] = round(statistics.median(lat), 1) if lat else None
        return d


class App:
    """One trap: trigger → capture → detect → store → uplink, supervised.

    Args:
        cfg: validated configuration.
        models_dir: folder holding the model files named by the cards.
        clock: time source (tests inject a fake one for the pure parts).
        pin_factory: gpiozero pin factory; None picks by ``hardware.backend``.
    """

    def __init__(
        self,
        cfg: Config,
        models_dir: Path,
        clock: Clock | None = None,
        pin_factory: Any = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.counters = Counters()
        Path(cfg.storage.root).mkdir(parents=True, exist_ok=True)
        # One owner of the settings: the file plus what was changed remotely in earlier runs.
        self.settings = Settings(cfg, self.clock)
        cfg = self.settings.load()
        self.cfg = cfg
        # Load the models first: a wrong or missing file must stop start-up, not a thread.
        self.pipeline = Pipeline(cfg.detector, models_dir, embed=cfg.background.enabled)
        self.background: BackgroundMemory | None = None
        if cfg.background.enabled:
            emb = self.pipeline.embedder
            assert emb is not None  # embed=True loads it
            self.background = BackgroundMemory(Path(cfg.storage.root), emb.dims, emb.sha256,
                                               cfg.background, self.clock)
            self.background.open()  # a card that cannot hold it must stop start-up too
            self.pipeline.background = self.background
        self.pin_factory = (
            pin_factory if pin_factory is not None else make_pin_factory(cfg.hardware.backend)
        )
        self.camera = make_camera(cfg.camera, cfg.hardware.backend, self.clock)
        self.store = EventStore(cfg, self.clock)
        self.link = (
            MqttLink(cfg, self.store.db_path, self.clock, stats_source=self.stats_extra,
                     settings=self.settings)
            if cfg.mqtt.enabled else None
        )
        # LoRaWAN alerts (issue 5): its own stage, fed by the outbox's LoRa rows (the store
        # queues one per alert when lorawan.enabled); see uplink/router.py.
        self.lora: LoraRouter | None = self._make_lora() if cfg.lorawan.enabled else None
        self.triggers: StageQueue[TriggerEvent] = StageQueue("triggers", 8)
        self.bursts: StageQueue[Burst] = StageQueue("bursts", 4)
        self.decided: StageQueue[tuple[Burst, Verdict]] = StageQueue(
            "decided", 16, drain_on_stop=True)
        self.settings.subscribe(self.apply_config)
        self.trigger = PirTrigger(cfg.trigger, self.clock, self._on_trigger, self.pin_factory)
        self.world: SimWorld | None = None
        if cfg.hardware.backend == "sim":
            self.world = make_sim_world(self.pin_factory, cfg.trigger.pin, self.camera, self.clock)
        self.supervisor = Supervisor(self.clock)
        # Watched stages (edge_app/trap/health.py): the three on the data path beat per item
        # and while they wait for one; the links beat once per turn of their loops, which
        # wake at least every minute even when the server is unreachable (an outage is the
        # link working as designed; a link thread stuck in a call is not).
        deadline = cfg.watchdog.stage_deadline_s
        link_deadline = max(deadline, LINK_DEADLINE_S)
        self.supervisor.add("housekeeping", Housekeeper(cfg, self.clock).run)
        if self.link is not None:
            self.supervisor.add("uplink", self.link.run, self.link.wake, link_deadline)
            self.link.beat = self.supervisor.heart("uplink")
        if self.lora is not None:
            self.supervisor.add("lorawan", self.lora.run, self.lora.interrupt, link_deadline)
            self.lora.beat = self.supervisor.heart("lorawan")
        self.supervisor.add("store", self._store_loop, self.decided.wake, deadline)
        self.supervisor.add("detect", self._detect_loop, self.bursts.wake, deadline)
        self.supervisor.add("capture", self._capture_loop, self.triggers.wake, deadline)
        self.watchdog = watchdog_from_environment(self.supervisor.health, self.clock, sd_notify)
        bg = cfg.background
        if bg.enabled and bg.shot_every_s > 0 and (cfg.hardware.backend != "sim"
                                                   or bg.shots_in_sim):
            self.supervisor.add("background-shots", self._shots_loop, None)
        if self.world is not None and cfg.trigger.sim_every_s > 0:
            world, every = self.world, cfg.trigger.sim_every_s
            # A passing animal holds the PIR high for a while, but never past the next visit.
            pulse = min(1.0, every / 2)
            self.supervisor.add("sim-world", lambda stop: world.run(stop, every, pulse_s=pulse))
        self._started = False

    # -- stages -------------------------------------------------------------------------

    def _on_trigger(self, ev: TriggerEvent) -> None:
        """Runs on gpiozero's thread: count and hand over, never block."""
        self.counters.triggers += 1
        if not self.triggers.put_drop_oldest(ev):
            self.counters.triggers_dropped += 1

    def _shots_loop(self, stop: threading.Event) -> None:
        """Scheduled background shots: every ``background.shot_every_s``, a frame without a
        trigger, so the background learns night, dawn and the new season from the scene
        itself (a trap cannot learn a scene from its discards while the background keeps
        vetoing it). The shot goes through the capture stage (the camera's only user) and
        the detect stage (the pipeline's only user), and only when no real trigger waits."""
        every = self.cfg.background.shot_every_s
        while not self.clock.wait(stop, every):
            if self.triggers.qsize() == 0:
                self.triggers.put_drop_oldest(TriggerEvent(
                    0, self.clock.monotonic(), self.clock.wall(), BACKGROUND_SHOT))

    def _capture_loop(self, stop: threading.Event) -> None:
        beat = self.supervisor.heart("capture")
        while (ev := self.triggers.get(stop, beat)) is not None:
            cam = self.cfg.camera
            if ev.source == BACKGROUND_SHOT:  # one frame of the scene as it is
                cam = replace(cam, pre_trigger_frames=0, burst_frames=1)
            burst = capture_burst(self.camera, ev, cam, self.clock, stop)
            if burst.frames and not self.bursts.put_drop_oldest(burst):
                self.counters.triggers_dropped += 1

    def _detect_loop(self, stop: threading.Event) -> None:
        beat = self.supervisor.heart("detect")
        while (burst := self.bursts.get(stop, beat)) is not None:
            # Motion gate, detector and classifier per frame; unreadable frames come back
            # as None (logged by the pipeline) and never count as evidence of emptiness.
            results: list[FrameResult | None] = self.pipeline.analyse_burst(burst.frames)
            if burst.trigger.source == BACKGROUND_SHOT:
                self._learn_shot(results)
                continue
            self.counters.frames += len(results)
            self.counters.frames_failed += sum(r is None for r in results)
            self.counters.frames_gated += sum(r is not None and r.gated for r in results)
            verdict = decide(results, self.cfg.policy)
            logger.info("trigger %d: %s %s %s (%.2f)%s", burst.trigger.number, verdict.outcome,
                        verdict.label, verdict.species or "", verdict.score,
                        f" kept by {', '.join(verdict.kept_by)}" if verdict.kept_by else "")
            if verdict.outcome == "discard":
                self._learn_discard(results)
            if not self.decided.put_wait((burst, verdict), stop):
                logger.warning("stopping: trigger %d decided but not stored",
                               burst.trigger.number)

    def _learn(self, vecs: list[Any], kind: str) -> None:
        """Add embeddings to the background set; a write failure is logged, not fatal (the
        set is an aid: losing one scene must not stop detection)."""
        bg = self.background
        if bg is None:
            return
        for vec in vecs:
            try:
                if bg.add(vec, kind):
                    self.counters.background_learnt += 1
            except StorageError as e:
                logger.warning("background: scene not learnt: %s", e)
                return

    def _learn_discard(self, results: list[FrameResult | None]) -> None:
        """A discarded trigger is learnt only with a margin: every detector and classifier
        score of every frame below ``background.learn_below`` (a frame the fusion discarded
        at 0.14 may still hide an animal; the set must not learn it as "empty")."""
        below = self.cfg.background.learn_below
        frames = [r for r in results if r is not None]
        if not frames or any(max(r.max_scores.values(), default=1.0) >= below
                             for r in frames):
            return
        self._learn([r.embedding for r in frames if r.embedding is not None and not r.gated],
                    "empty")

    def _learn_shot(self, results: list[FrameResult | None]) -> None:
        """A scheduled shot is learnt unless something was detected in it (an animal that
        happened to stand there is not background)."""
        self.counters.background_shots += 1
        self._learn([r.embedding for r in results if r is not None and r.label == "empty"
                     and r.embedding is not None], "shot")

    def _store_loop(self, stop: threading.Event) -> None:
        self.store.open()  # the store thread owns its SQLite connection
        beat = self.supervisor.heart("store")
        try:
            while (item := self.decided.get(stop, beat)) is not None:
                burst, verdict = item
                stored, ok = self._record(burst, verdict, stop, beat)
                if not ok:
                    return
                if verdict.outcome == "discard":
                    self.counters.empty += 1
                    if stored is not None:
                        self.counters.audits += 1
                    continue
                self.counters.kept += 1
                if verdict.outcome == "alert":
                    self.counters.alerts += 1
                self.counters.latencies_ms.append(
                    (self.clock.monotonic() - burst.trigger.mono) * 1000.0)
                if self.link is not None:
                    self.link.wake()
                if self.lora is not None and verdict.outcome == "alert":
                    self.lora.wake()
        finally:
            self.store.close()

    def _record(
        self, burst: Burst, verdict: Verdict, stop: threading.Event, beat: Heart
    ) -> tuple[object | None, bool]:
        """Store one decided trigger, retrying while the card is full or read-only.

        A decided event must not be dropped because the disk hiccuped, so the store stage
        holds on to it and retries with backoff (which also stalls detect behind it, by design:
        back-pressure rather than loss). Waiting for the card is working as designed, so the
        stage keeps beating meanwhile. Returns (stored record or None, False if stopping).
        """
        failures = 0
        while True:
            beat()
            try:
                return self.store.record(burst, verdict), True
            except StorageError as e:
                failures += 1
                delay = STORE_RETRY.delay(failures)
                logger.error("cannot store trigger %d (%s): retrying in %.0f s",
                             burst.trigger.number, e, delay)
            if self.clock.wait(stop, delay):
                logger.error("stopping with trigger %d decided (%s) but not stored",
                             burst.trigger.number, verdict.outcome)
                return None, False

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start in dependency order: consumers before producers, the PIR last."""
        self.camera.start()
        self.supervisor.start()
        self.trigger.start()
        self._started = True
        logger.info("camtrap %s running as %s (%s backend)", __version__, self.cfg.unit.id,
                    self.cfg.hardware.backend)

    def stop(self, timeout_s: float = 5.0) -> list[str]:
        """Stop the PIR first, then the stages in reverse; returns stages that were late."""
        self.trigger.close()
        late = self.supervisor.stop(timeout_s)
        self.camera.close()
        self.pipeline.close()
        if self.background is not None:
            self.background.close()
        self._started = False
        return late

    def stop_visits(self) -> None:
        """Sim backend: no more simulated animals (the demo then lets the pipeline drain)."""
        for w in self.supervisor.workers:
            if w.name == "sim-world":
                w.stop_event.set()

    def is_idle(self) -> bool:
        """True when every accepted trigger has been decided and stored (or dropped)."""
        c = self.counters
        return c.triggers <= c.empty + c.kept + c.triggers_dropped

    def outbox_depth(self) -> int:
        return self.store.outbox_depth()

    def apply_config(self, cfg: Config) -> None:
        """A remote settings change was accepted (by the settings service, on the changer's
        thread: uplink or LoRa): the next trigger uses it.

        Stages read ``self.cfg`` (and the pipeline its ``cfg``) once per trigger, so swapping
        the frozen objects is enough; nothing is half-applied within one burst.
        """
        self.cfg = cfg
        self.store.cfg = cfg
        self.pipeline.apply(cfg.detector)

    def _make_lora(self) -> LoraRouter:
        """The LoRaWAN router (imported only when enabled); keys are checked here, so a loose
        secrets file stops start-up with exit 2 instead of a stage restart loop."""
        import shutil

        from edge_app.core import lora_codec as codec
        from edge_app.trap.uplink.mqtt import LinkState
        from edge_app.trap.uplink.router import LoraRouter

        started = self.clock.monotonic()
        link = self.link

        def status() -> codec.Status:
            free_mb = shutil.disk_usage(self.cfg.storage.root).free / 1e6
            return codec.Status(
                disk_free_gb=free_mb / 1000, outbox_depth=self.outbox_depth(),
                uptime_min=int((self.clock.monotonic() - started) / 60),
                disk_low=free_mb < self.cfg.storage.min_free_mb)

        return LoraRouter(
            self.cfg, self.store.db_path, self.clock,
            mqtt_connected=None if link is None else lambda: link.state is LinkState.CONNECTED,
            status_source=status, settings=self.settings)  # set_threshold: settings.apply

    def stats_extra(self) -> dict[str, Any]:
        """The daemon's part of the stats message (uplink thread): counters, last 24 h, models."""
        now = self.clock.wall()
        out = {
            "since_start": self.counters.snapshot(),
            "last_24h": self.store.counts_since(now - 86400.0),
            "models": {"detector": self.cfg.detector.detector,
                       "classifier": self.cfg.detector.classifier or None,
                       "head": self.cfg.detector.head or None},
            "stages": {"crashes": self.supervisor.crash_counts(),
                       "health": self.supervisor.health.snapshot()},
            "watchdog": {"pings": self.watchdog.stats.pings,
                         "withheld": self.watchdog.stats.withheld,
                         "late": list(self.watchdog.stats.late_now)},
        }
        if self.background is not None:
            # Read from the uplink thread while detect may add: a torn read of two ints is
            # harmless in a stats message.
            out["background"] = self.background.stats()
        if self.lora is not None:
            out["lorawan"] = self.lora.stats()  # counters and the airtime budget
        return out


def run_daemon(cfg: Config, models: str | None = None) -> int:
    """``camtrap run``: run until SIGTERM/SIGINT or a stage gives up.

    Everything the trap needs from the machine is checked first, by the same code as
    ``camtrap check-config`` (:mod:`edge_app.trap.preflight`), before ``App`` creates the
    storage folder or the database; if ``App`` still fails (the interpreter refuses a model
    its card describes wrongly), what it created in the storage folder is removed again. A
    start that fails leaves nothing behind.

    Returns:
        0 after a clean stop, 1 if a stage used up its restart budget (systemd restarts us).

    Raises:
        ConfigError: a check failed (the CLI exits 2 naming the key).
    """
    from edge_app.trap.preflight import StartUndo, check, model_key

    ready = check(cfg, models)
    for note in ready.notes:
        logger.warning("%s", note)
    undo = StartUndo(Path(cfg.storage.root))
    try:
        app = App(cfg, ready.models_dir)
    except ModelError as e:  # only the interpreter sees it: after the store's mkdir
        undo.undo()
        raise ConfigError(model_key(cfg, ready.models_dir, e), str(e)) from None
    except BaseException:
        undo.undo()
        raise

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        app.supervisor.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.start()
    sd_notify("READY=1")
    app.watchdog.run(app.supervisor.done)  # until a signal or a stage gives up
    sd_notify("STOPPING=1")
    late = app.stop(5.0)
    if late:
        logger.error("stages still running at exit: %s", ", ".join(late))
    logger.info("stopped: %s", app.counters.snapshot())
    return 1 if app.supervisor.failed else 0
