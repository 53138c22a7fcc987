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
import time
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
from edge_app.trap.detect.burst import slim_burst
from edge_app.trap.detect.pipeline import Pipeline
from edge_app.trap.detect.policy import decide
from edge_app.trap.hardware.factory import (
    make_camera,
    make_mcu,
    make_sim_world,
    make_time_source,
)
from edge_app.trap.hardware.ir import Lighting, make_lighting
from edge_app.trap.hardware.mcu import McuError
from edge_app.trap.hardware.trigger import PirTrigger, make_pin_factory
from edge_app.trap.health import Heart
from edge_app.trap.packs.on_start import PackTrial
from edge_app.trap.packs.remote import EXIT_RESTART, pack_state
from edge_app.trap.packs.remote import for_config as remote_packs
from edge_app.trap.power import PowerObservation, PowerPolicy
from edge_app.trap.power_stage import PowerStage
from edge_app.trap.settings import Settings
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.store.retention import Housekeeper
from edge_app.trap.supervisor import StageQueue, Supervisor, sd_notify
from edge_app.trap.uplink.mqtt import MqttLink
from edge_app.trap.watchdog import from_environment as watchdog_from_environment

if TYPE_CHECKING:
    from edge_app.sim.mcu import McuEmulator
    from edge_app.sim.world import SimWorld
    from edge_app.trap.uplink.router import LoraRouter

logger = logging.getLogger(__name__)

STORE_RETRY = Backoff(1.0, 60.0, jitter="none")
"""A store write that failed (card full or gone) is retried 1, 2, 4 … 60 s later."""

CAMERA_CYCLE_OFF_S = 10
"""A given-up camera: the MCU keeps the Pi off this long (the camera's rail discharged)."""

LINK_DEADLINE_S = 300.0
"""The uplink and LoRa loops wake at least every 60 s; five missed turns means stuck."""
PACK_BUSY_S = 120.0
"""A model pack that moved this recently keeps a gated Pi up (the sender's next round)."""

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
        # Every capture is bounded; a camera that stays hung through camera.max_reopens
        # reopenings is given up, and the supervisor MCU (if any) power-cycles the Pi.
        self.camera = make_camera(cfg.camera, cfg.hardware.backend, self.clock,
                                  on_give_up=self._camera_given_up)
        # Per event: what stamped it (gps / ntp / none for the Pi's clock; rtc comes with an
        # MCU trigger), and battery / temperature from the supervisor MCU when there is one.
        self.time_source = make_time_source(cfg.hardware.backend, self.clock)
        self.store = EventStore(cfg, self.clock, time_source=self.time_source,
                                readings=self._readings)
        # Model packs over MQTT (trap/packs/remote.py): after a switch the daemon exits with
        # EXIT_RESTART and systemd starts it again on the new pack, which is then on trial.
        self.models_dir = models_dir
        self.restart_requested = False
        self.link = (
            MqttLink(cfg, self.store.db_path, self.clock, stats_source=self.stats_extra,
                     settings=self.settings,
                     packs=remote_packs(cfg, models_dir, lambda _done: self._restart()))
            if cfg.mqtt.enabled else None
        )
        # LoRaWAN alerts (issue 5): its own stage, fed by the outbox's LoRa rows (the store
        # queues one per alert when lorawan.enabled); see uplink/router.py.
        self.lora: LoraRouter | None = self._make_lora() if cfg.lorawan.enabled else None
        self.triggers: StageQueue[TriggerEvent] = StageQueue("triggers", 8)
        # A live-path burst holds full-size arrays (~11 MB at 1280×720 with four frames):
        # two waiting bursts are what a 512 MB Pi Zero 2 W can afford; JPEG bursts are small.
        live = cfg.camera.source in ("picamera2", "picamera2-fake")
        self.bursts: StageQueue[Burst] = StageQueue("bursts", 2 if live else 4)
        self.decided: StageQueue[tuple[Burst, Verdict]] = StageQueue(
            "decided", 16, drain_on_stop=True)
        self.settings.subscribe(self.apply_config)
        self.trigger = (PirTrigger(cfg.trigger, self.clock, self._on_trigger, self.pin_factory)
                        if cfg.trigger.source == "gpio" else None)
        # The supervisor MCU (trigger.source = "mcu" or mcu.enabled): its driver is a stage;
        # with the sim backend the firmware itself runs behind a pty (edge_app/sim/mcu.py).
        self.mcu, self.mcu_sim = make_mcu(
            cfg, self.clock, self._on_trigger, emulator=mcu_sim, time_source=self.time_source,
            health=lambda: self.supervisor.health.healthy())
        # Day/night (edge_app/trap/daynight.py): IR-cut filter and an illuminator pulsed only
        # around night bursts; shed first when the MCU reports a low battery.
        self.lighting: Lighting | None = make_lighting(
            cfg.ir, cfg.unit.location, self.clock, self.pin_factory,
            battery_v=lambda: self._readings()[0])
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
        if self.link is not None:
            self.supervisor.add("uplink", self.link.run, self.link.wake, link_deadline)
            self.link.beat = self.supervisor.heart("uplink")
        if self.lora is not None:
            self.supervisor.add("lorawan", self.lora.run, self.lora.interrupt, link_deadline)
            self.lora.beat = self.supervisor.heart("lorawan")
        self.supervisor.add("store", self._store_loop, self.decided.wake, deadline)
        self.supervisor.add("detect", self._detect_loop, self.bursts.wake, deadline)
        self.supervisor.add("capture", self._capture_loop, self.triggers.wake, deadline)
        if self.mcu_sim is not None and mcu_sim is None:  # one the caller gave, it runs
            self.supervisor.add("mcu-sim", self.mcu_sim.run, self.mcu_sim.interrupt)
        if self.mcu is not None:
            self.supervisor.add("mcu", self.mcu.run, self.mcu.interrupt,
                                max(link_deadline, 3 * cfg.mcu.heartbeat_s))
            self.mcu.beat = self.supervisor.heart("mcu")
        self.watchdog = watchdog_from_environment(self.supervisor.health, self.clock, sd_notify)
        # Power modes (edge_app/trap/power.py): with the supervisor MCU, a stage hands it the
        # schedule and, in gated/hybrid mode, shuts the Pi down once its work is delivered.
        self.power: PowerStage | None = None
        self._last_trigger_mono: float | None = None
        self._born_mono = self.clock.monotonic()
        if self.mcu is not None:
            self.power = PowerStage(PowerPolicy(cfg.power, cfg.mcu.power_off_timeout_s),
                                    self.mcu, self.clock, self._power_observation,
                                    self._halt)
            self.supervisor.add("power", self.power.run, self.power.wake, link_deadline)
            self.power.beat = self.supervisor.heart("power")
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
        self._last_trigger_mono = ev.mono
        if not self.triggers.put_drop_oldest(ev):
            self.counters.triggers_dropped += 1
        if self.power is not None:
            self.power.wake()

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
            burst = slim_burst(burst, verdict)  # only the stored frame keeps its pixels
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
                if self.power is not None:
                    self.power.wake()
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
            battery_v, temp_c = self._readings()
            return codec.Status(
                battery_v=battery_v, temp_c=temp_c, time_synced=self.time_source() != "none",
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
        out: dict[str, Any] = {
            "since_start": self.counters.snapshot(),
            "last_24h": self.store.counts_since(now - 86400.0),
            "models": {"detector": self.cfg.detector.detector,
                       "classifier": self.cfg.detector.classifier or None,
                       "head": (self.pipeline.head.path.name  # the config's or the pack's
                                if self.pipeline.head is not None
                                and self.pipeline.head.path is not None else None),
                       "pack": pack_state(self.models_dir)},
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
        if self.lighting is not None:
            out["ir"] = self.lighting.stats()
        out["camera"] = self.camera.counters()
        if self.power is not None:
            out["power"] = {"mode": self.cfg.power.mode, **asdict(self.power.stats)}
        out["time_source"] = self.time_source()  # the Pi's clock now: gps / ntp / none
        if self.mcu is not None:
            out.update(self.mcu.stats())  # battery_v, solar_v, temp_c and "mcu"
        return out

    def _restart(self) -> None:
        """A new model pack is active: stop in order, and ``run`` exits with EXIT_RESTART."""
        self.restart_requested = True
        self.supervisor.request_stop()

    def _camera_given_up(self, reason: str) -> None:
        """The camera guard gave up (on the capture thread): ask the MCU for a power cycle.

        The MCU cuts power after ``mcu.power_off_timeout_s`` (the time a halt may take) or at
        the halt pin; meanwhile stages finish and systemd may restart us (a fresh open), but a
        camera wedged in the kernel needs the power cut."""
        if self.mcu is None:
            logger.error("camera given up (%s) and no supervisor MCU to power-cycle the Pi; "
                         "the watchdog will restart the service", reason)
            return
        try:
            self.mcu.power_cycle(self.cfg.mcu.power_off_timeout_s, CAMERA_CYCLE_OFF_S)
        except McuError as e:
            logger.error("camera given up and the MCU refused the power cycle: %s", e)

    def _power_observation(self) -> PowerObservation:
        """The trap as the power policy needs it (the power stage's thread)."""
        mono = self.clock.monotonic()
        if self.cfg.hardware.backend == "pi":
            uptime = time.clock_gettime(time.CLOCK_BOOTTIME)  # since the Pi was powered
        else:
            uptime = mono - self._born_mono  # a simulated Pi boots with the App
        try:
            links = (("mqtt",) if self.link is not None else ()) + (
                ("lorawan",) if self.lora is not None else ())
            depth = self.store.outbox_depth_by_link(links)
        except StorageError as e:  # unknown counts as "not delivered": stay up, the cap wins
            logger.warning("power: cannot read the outbox: %s", e)
            depth = {"outbox": 1}
        busy = set() if self.is_idle() else {"capture/detect/store"}
        packs_at = None if self.link is None else self.link.pack_activity_mono
        if packs_at is not None and mono - packs_at < PACK_BUSY_S:
            busy.add("model pack download")  # the uptime cap still bounds it
        return PowerObservation(
            mono=mono, wall=self.clock.wall(), uptime_s=uptime, battery_v=self._readings()[0],
            outbox_depth=depth, last_trigger_mono=self._last_trigger_mono,
            busy=frozenset(busy))

    def _halt(self) -> None:
        """The OS halt after POWER_OFF was acknowledged. On a Pi: ``systemctl poweroff``
        (allowed to the service user by deploy/systemd/camtrap-poweroff.rules); systemd then
        stops this service cleanly and the kernel raises the halt pin (gpio-poweroff). In
        simulation: the emulated board sees the halt pin and the App stops."""
        self.supervisor.request_stop()
        if self.cfg.hardware.backend == "pi":
            import subprocess

            try:
                subprocess.run(["systemctl", "poweroff"], check=True, timeout=30)
            except (OSError, subprocess.SubprocessError) as e:
                logger.error("power: cannot halt (%s); the MCU cuts power after its timeout",
                             e)
        elif self.mcu_sim is not None:
            self.mcu_sim.halt = True

    def _readings(self) -> tuple[float | None, float | None]:
        """(battery V, temperature °C) for events and the LoRa status: the supervisor MCU's
        latest STATUS, (None, None) without one."""
        return (None, None) if self.mcu is None else self.mcu.readings()


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
