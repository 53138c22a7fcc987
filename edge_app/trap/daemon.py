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
import threading
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from edge_app import __version__
from edge_app.core.clock import Clock, SystemClock
from edge_app.core.config import Config
from edge_app.core.errors import ConfigError, ModelError
from edge_app.core.events import Burst, FrameResult, TriggerEvent, Verdict
from edge_app.trap.capture import capture_burst
from edge_app.trap.cellular.stage import CellularStage, make_cellular, mqtt_work
from edge_app.trap.daemon_stats import Counters, daemon_stats
from edge_app.trap.detect.background import BackgroundMemory
from edge_app.trap.detect.burst import slim_burst
from edge_app.trap.detect.pipeline import Pipeline
from edge_app.trap.detect.policy import decide
from edge_app.trap.field_unit import FieldUnit
from edge_app.trap.hardware.factory import make_camera, make_sim_world, make_time_source
from edge_app.trap.hardware.trigger import PirTrigger, make_pin_factory
from edge_app.trap.packs.on_start import PackTrial
from edge_app.trap.packs.remote import EXIT_RESTART
from edge_app.trap.packs.remote import for_config as remote_packs
from edge_app.trap.scene_learning import BACKGROUND_SHOT, SceneLearner
from edge_app.trap.settings import Settings
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.store.retention import Housekeeper
from edge_app.trap.store_retry import record_with_retry
from edge_app.trap.supervisor import StageQueue, Supervisor, sd_notify
from edge_app.trap.uplink.lora_factory import make_lora
from edge_app.trap.uplink.mqtt import MqttLink
from edge_app.trap.watchdog import from_environment as watchdog_from_environment

if TYPE_CHECKING:
    from edge_app.sim.mcu import McuEmulator
    from edge_app.sim.world import SimWorld
    from edge_app.trap.hardware.ir import Lighting
    from edge_app.trap.hardware.mcu import McuDriver
    from edge_app.trap.power_stage import PowerStage
    from edge_app.trap.uplink.router import LoraRouter

__all__ = ["App", "Counters", "run_daemon"]

logger = logging.getLogger(__name__)

LINK_DEADLINE_S = 300.0
"""The uplink and LoRa loops wake at least every 60 s; five missed turns means stuck."""


class App:
    """One trap: trigger → capture → detect → store → uplink, supervised.

    The field unit's parts (supervisor MCU, power stage, IR lighting) live in
    :class:`~edge_app.trap.field_unit.FieldUnit` (``self.field``; ``mcu``, ``mcu_sim``,
    ``power`` and ``lighting`` are its), background learning in
    :class:`~edge_app.trap.scene_learning.SceneLearner`, the stats message in
    :mod:`edge_app.trap.daemon_stats`.

    Args:
        cfg: validated configuration.
        models_dir: folder holding the model files named by the cards.
        clock: time source (tests inject a fake one for the pure parts).
        pin_factory: gpiozero pin factory; None picks by ``hardware.backend``.
        mcu_sim: an MCU emulator to talk to instead of making one, run by the caller
            (``sim`` backend tests that drive the MCU around the trap: a trigger while the
            Pi is off, the power-off handshake).
    """

    def __init__(
        self,
        cfg: Config,
        models_dir: Path,
        clock: Clock | None = None,
        pin_factory: Any = None,
        mcu_sim: McuEmulator | None = None,
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
        # MCU, power stage, lighting: made below; the camera and store call back into it.
        self.field = FieldUnit(self, self.clock)
        # Every capture is bounded; a camera that stays hung through camera.max_reopens
        # reopenings is given up, and the supervisor MCU (if any) power-cycles the Pi.
        self.camera = make_camera(cfg.camera, cfg.hardware.backend, self.clock,
                                  on_give_up=self.field.camera_given_up)
        # Per event: what stamped it (gps / ntp / none for the Pi's clock; rtc comes with an
        # MCU trigger), and battery / temperature from the supervisor MCU when there is one.
        self.time_source = make_time_source(cfg.hardware.backend, self.clock)
        self.store = EventStore(cfg, self.clock, time_source=self.time_source,
                                readings=self.field.readings)
        # Model packs over MQTT (trap/packs/remote.py): after a switch the daemon exits with
        # EXIT_RESTART and systemd starts it again on the new pack, which is then on trial.
        self.models_dir = models_dir
        self.restart_requested = False
        # The LTE modem (trap/cellular/stage.py): up when the MQTT link has work, within the
        # SIM's data plan, which the MQTT link asks before each full image.
        self.cellular: CellularStage | None = None
        self.cellular = make_cellular(cfg, self.clock, lambda: mqtt_work(
            self.store, self.link, self.cellular.images_fit if self.cellular else None))
        self.link: MqttLink | None = (
            MqttLink(cfg, self.store.db_path, self.clock, stats_source=self.stats_extra,
                     settings=self.settings,
                     packs=remote_packs(cfg, models_dir, lambda _done: self._restart()),
                     image_gate=self.cellular.allows_image if self.cellular else None)
            if cfg.mqtt.enabled else None
        )
        if self.cellular is not None and self.link is not None:
            # bearer up: MQTT connects at once; down: it stops spending reconnect attempts
            self.cellular.on_route = self.link.route
        # LoRaWAN alerts (issue 5): its own stage, fed by the outbox's LoRa rows (the store
        # queues one per alert when lorawan.enabled); see uplink/router.py.
        self.lora: LoraRouter | None = make_lora(
            lambda: self.cfg, self.clock, self.store.db_path, link=self.link,
            settings=self.settings, readings=self.field.readings,
            time_source=self.time_source, outbox_depth=self.outbox_depth,
            cellular=self.cellular.lora_state if self.cellular is not None else None,
        ) if cfg.lorawan.enabled else None
        self.triggers: StageQueue[TriggerEvent] = StageQueue("triggers", 8)
        # A live-path burst holds full-size arrays (~11 MB at 1280×720 with four frames):
        # two waiting bursts are what a 512 MB Pi Zero 2 W can afford; JPEG bursts are small.
        live = cfg.camera.source in ("picamera2", "picamera2-fake")
        self.bursts: StageQueue[Burst] = StageQueue("bursts", 2 if live else 4)
        self.decided: StageQueue[tuple[Burst, Verdict]] = StageQueue(
            "decided", 16, drain_on_stop=True)
        self.learner = SceneLearner(self.background, self.counters,
                                    lambda: self.cfg.background, self.triggers, self.clock)
        self.settings.subscribe(self.apply_config)
        self.trigger = (PirTrigger(cfg.trigger, self.clock, self._on_trigger, self.pin_factory)
                        if cfg.trigger.source == "gpio" else None)
        self.field.build(cfg, self._on_trigger, self.pin_factory, self.time_source, mcu_sim)
        self.world: SimWorld | None = None
        if cfg.hardware.backend == "sim":
            pins, pin = self.pin_factory, cfg.trigger.pin
            if self.mcu_sim is not None and cfg.trigger.source == "mcu":  # the PIR is the MCU's
                pins, pin = self.mcu_sim, self.mcu_sim.pir_pin
            self.world = make_sim_world(pins, pin, self.camera, self.clock)
        self.supervisor = Supervisor(self.clock)
        # Watched stages (edge_app/trap/health.py): the three on the data path beat per item
        # and while they wait for one; the links beat once per turn of their loops, which
        # wake at least every minute even when the server is unreachable (an outage is the
        # link working as designed; a link thread stuck in a call is not).
        deadline = cfg.watchdog.stage_deadline_s
        link_deadline = max(deadline, LINK_DEADLINE_S)
        self.supervisor.add("housekeeping", Housekeeper(cfg, self.clock).run)
        if self.cellular is not None:
            self.supervisor.add("cellular", self.cellular.run, self.cellular.wake, link_deadline)
            self.cellular.beat = self.supervisor.heart("cellular")
        if self.link is not None:
            self.supervisor.add("uplink", self.link.run, self.link.wake, link_deadline)
            self.link.beat = self.supervisor.heart("uplink")
        if self.lora is not None:
            self.supervisor.add("lorawan", self.lora.run, self.lora.interrupt, link_deadline)
            self.lora.beat = self.supervisor.heart("lorawan")
        self.supervisor.add("store", self._store_loop, self.decided.wake, deadline)
        self.supervisor.add("detect", self._detect_loop, self.bursts.wake, deadline)
        self.supervisor.add("capture", self._capture_loop, self.triggers.wake, deadline)
        # One emulator the caller gave, the caller runs; then the MCU and power stages.
        self.field.add_stages(self.supervisor, cfg, link_deadline, run_sim=mcu_sim is None)
        self.watchdog = watchdog_from_environment(self.supervisor.health, self.clock, sd_notify)
        bg = cfg.background
        if bg.enabled and bg.shot_every_s > 0 and (cfg.hardware.backend != "sim"
                                                   or bg.shots_in_sim):
            self.supervisor.add("background-shots", self.learner.shots_loop, None)
        if self.world is not None and cfg.trigger.sim_every_s > 0:
            world, every = self.world, cfg.trigger.sim_every_s
            # A passing animal holds the PIR high for a while, but never past the next visit.
            pulse = min(1.0, every / 2)
            self.supervisor.add("sim-world", lambda stop: world.run(stop, every, pulse_s=pulse))
        self._started = False

    # -- the field unit's parts (edge_app/trap/field_unit.py) ----------------------------

    @property
    def mcu(self) -> McuDriver | None:
        return self.field.mcu

    @property
    def mcu_sim(self) -> McuEmulator | None:
        return self.field.mcu_sim

    @property
    def power(self) -> PowerStage | None:
        return self.field.power

    @property
    def lighting(self) -> Lighting | None:
        return self.field.lighting

    # -- stages -------------------------------------------------------------------------

    def _on_trigger(self, ev: TriggerEvent) -> None:
        """Runs on gpiozero's thread: count and hand over, never block."""
        self.counters.triggers += 1
        self.field.last_trigger_mono = ev.mono
        if not self.triggers.put_drop_oldest(ev):
            self.counters.triggers_dropped += 1
        if self.power is not None:
            self.power.wake()

    def _capture_loop(self, stop: threading.Event) -> None:
        # A capture stage whose camera was given up does not count as healthy while it
        # waits: the pings stop and systemd restarts the service (a fresh open).
        guard = self.camera.policy
        beat = self.supervisor.health.heart("capture", gate=lambda: not guard.gave_up)
        while (ev := self.triggers.get(stop, beat)) is not None:
            cam = self.cfg.camera
            if ev.source == BACKGROUND_SHOT:  # one frame of the scene as it is
                cam = replace(cam, pre_trigger_frames=0, burst_frames=1)
            burst = capture_burst(self.camera, ev, cam, self.clock, stop, self.lighting)
            if burst.frames and not self.bursts.put_drop_oldest(burst):
                self.counters.triggers_dropped += 1

    def _detect_loop(self, stop: threading.Event) -> None:
        beat = self.supervisor.heart("detect")
        while (burst := self.bursts.get(stop, beat)) is not None:
            # Motion gate, detector and classifier per frame; unreadable frames come back
            # as None (logged by the pipeline) and never count as evidence of emptiness.
            results: list[FrameResult | None] = self.pipeline.analyse_burst(burst.frames)
            if burst.trigger.source == BACKGROUND_SHOT:
                self.learner.learn_shot(results)
                continue
            self.counters.frames += len(results)
            self.counters.frames_failed += sum(r is None for r in results)
            self.counters.frames_gated += sum(r is not None and r.gated for r in results)
            verdict = decide(results, self.cfg.policy)
            logger.info("trigger %d: %s %s %s (%.2f)%s", burst.trigger.number, verdict.outcome,
                        verdict.label, verdict.species or "", verdict.score,
                        f" kept by {', '.join(verdict.kept_by)}" if verdict.kept_by else "")
            if verdict.outcome == "discard":
                self.learner.learn_discard(results)
            burst = slim_burst(burst, verdict)  # only the stored frame keeps its pixels
            if not self.decided.put_wait((burst, verdict), stop):
                logger.warning("stopping: trigger %d decided but not stored",
                               burst.trigger.number)

    def _store_loop(self, stop: threading.Event) -> None:
        self.store.open()  # the store thread owns its SQLite connection
        beat = self.supervisor.heart("store")
        try:
            while (item := self.decided.get(stop, beat)) is not None:
                burst, verdict = item
                stored, ok = record_with_retry(self.store, self.clock, burst, verdict, stop, beat)
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
                if self.cellular is not None:
                    self.cellular.wake()
                if self.lora is not None and verdict.outcome == "alert":
                    self.lora.wake()
                if self.power is not None:
                    self.power.wake()
        finally:
            self.store.close()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start in dependency order: consumers before producers, the PIR last."""
        self.camera.start()
        if self.lighting is not None:
            self.lighting.start()  # claims its pins; the filter where the sun says
        self.supervisor.start()
        if self.trigger is not None:
            self.trigger.start()
        self._started = True
        logger.info("camtrap %s running as %s (%s backend)", __version__, self.cfg.unit.id,
                    self.cfg.hardware.backend)

    def stop(self, timeout_s: float = 5.0) -> list[str]:
        """Stop the PIR first, then the stages in reverse; returns stages that were late."""
        if self.trigger is not None:
            self.trigger.close()
        late = self.supervisor.stop(timeout_s)
        if self.lighting is not None:
            self.lighting.close()
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

    def stats_extra(self) -> dict[str, Any]:
        """The daemon's part of the stats message (uplink thread): see daemon_stats.py."""
        return daemon_stats(self)

    def _restart(self) -> None:
        """A new model pack is active: stop in order, and ``run`` exits with EXIT_RESTART."""
        self.restart_requested = True
        self.supervisor.request_stop()


def run_daemon(cfg: Config, models: str | None = None) -> int:
    """``camtrap run``: run until SIGTERM/SIGINT or a stage gives up.

    Everything the trap needs from the machine is checked first, by the same code as
    ``camtrap check-config`` (:mod:`edge_app.trap.preflight`), before ``App`` creates the
    storage folder or the database; if ``App`` still fails (the interpreter refuses a model
    its card describes wrongly), what it created in the storage folder is removed again. A
    start that fails leaves nothing behind.

    Returns:
        0 after a clean stop, 1 if a stage used up its restart budget, EXIT_RESTART (75)
        after a model pack came in over MQTT (systemd restarts us in both cases).

    Raises:
        ConfigError: a check failed (the CLI exits 2 naming the key).
    """
    from edge_app.trap.preflight import StartUndo, check, model_key

    trial = PackTrial.for_config(cfg, models)  # a newly installed model pack on trial
    if trial.count_start():
        return 1  # rolled back: systemd restarts us on the previous pack
    try:
        ready = check(cfg, models)
    except ConfigError as e:
        if e.key.startswith("detector.") and trial.failed(str(e)):
            return 1
        raise
    for note in ready.notes:
        logger.warning("%s", note)
    undo = StartUndo(Path(cfg.storage.root))
    try:
        app = App(cfg, ready.models_dir)
    except ModelError as e:  # only the interpreter sees it: after the store's mkdir
        undo.undo()
        if trial.failed(str(e)):
            return 1
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
    app.watchdog.on_tick = trial.watch(app.clock)  # healthy long enough: the pack is confirmed
    app.watchdog.run(app.supervisor.done)  # until a signal or a stage gives up
    sd_notify("STOPPING=1")
    late = app.stop(5.0)
    if late:
        logger.error("stages still running at exit: %s", ", ".join(late))
    logger.info("stopped: %s", app.counters.snapshot())
    if app.restart_requested and not app.supervisor.failed:
        logger.warning("exiting with %d: a new model pack is active; systemd starts camtrap "
                       "again on it", EXIT_RESTART)
        return EXIT_RESTART
    return 1 if app.supervisor.failed else 0
