"""``camtrap walktest``: aim the camera and check the PIR, with a phone in hand.

The technician walks in front of the trap; each PIR trigger blinks an LED on the unit (so the
PIR's cone can be checked without looking at a screen), prints one line (time, trigger number,
what the detector saw) and saves the frame with its detection boxes as
``OUT/walktest-latest.jpg`` plus a numbered copy. A phone refreshing that file over HTTP or SMB
shows where the camera looks and whether a person at that spot is found.

The latest file is replaced atomically (written beside it, flushed, then renamed over it), so
a phone that refreshes mid-write gets the previous picture or the new one, never half a file.

PIR warm-up: an HC-SR501 needs about a minute after power-on and gives 0-3 spurious triggers
meanwhile (formats-and-field §8.2). Triggers in the first ``trigger.warmup_s`` seconds of the
walk test (``--warmup`` overrides it; 0 when the PIR has long been powered) are counted and
ignored, with a countdown line, so a technician does not aim by a false trigger. The walk test
cannot know when the PIR was powered, so it counts from its own start (at worst one minute
too long).

Pure parts, testable without hardware: :class:`WarmupGate` (clock-driven) and
:func:`draw_boxes`. :class:`Walktest` wires them to the trap's own PIR, camera and detector.
The trap's service must be stopped first (the camera and the pin have one owner).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import queue
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from edge_app.core.clock import Clock
    from edge_app.core.config import Config
    from edge_app.core.events import Detection, FrameResult, TriggerEvent

LATEST = "walktest-latest.jpg"
THUMB_PX = 960
"""Longest side of the saved picture: enough to judge aim on a phone, a few tens of kB."""
COUNTDOWN_EVERY_S = 10.0
QUEUE_MAX = 16
COLOURS = {"person": (255, 64, 64), "vehicle": (64, 160, 255), "animal": (255, 210, 0)}


class WarmupGate:
    """Which triggers count: none before ``start + warmup_s``; the rest do.

    Args:
        start: monotonic time the warm-up is counted from.
        warmup_s: its length.
        every_s: how often the countdown is said.
    """

    def __init__(self, start: float, warmup_s: float, every_s: float = COUNTDOWN_EVERY_S
                 ) -> None:
        self.end = start + warmup_s
        self.every_s = every_s
        self.ignored = 0
        self._next_tick = start

    def remaining(self, now: float) -> float:
        return max(0.0, self.end - now)

    def admit(self, mono: float) -> bool:
        """True for a trigger after the warm-up; one during it is counted and refused."""
        if mono < self.end:
            self.ignored += 1
            return False
        return True

    def countdown(self, now: float) -> str | None:
        """The countdown line due now, if any (each ``every_s``, then once "ready")."""
        if now < self._next_tick:
            return None
        left = self.remaining(now)
        if left <= 0:
            self._next_tick = math.inf
            return f"PIR ready ({self.ignored} trigger(s) ignored during warm-up): walk in " \
                   "front of the trap"
        self._next_tick = min(now + self.every_s, self.end)
        return f"PIR warming up: {math.ceil(left)} s left (triggers ignored meanwhile)"

    def next_tick(self) -> float:
        return self._next_tick


def draw_boxes(im: Image.Image, detections: Sequence[Detection], px: int = THUMB_PX
               ) -> Image.Image:
    """A copy of ``im`` shrunk to ``px`` with each detection's box and label drawn
    (boxes are normalised ``[x, y, w, h]`` of the upright image)."""
    from PIL import ImageDraw

    out = im.convert("RGB")
    out.thumbnail((px, px))
    draw = ImageDraw.Draw(out)
    w, h = out.size
    line = max(2, round(min(w, h) / 160))
    for d in detections:
        x, y, bw, bh = d.bbox
        box = (x * w, y * h, (x + bw) * w, (y + bh) * h)
        colour = COLOURS.get(d.category, (255, 255, 255))
        draw.rectangle(box, outline=colour, width=line)
        text = f"{d.species or d.category} {d.species_conf or d.conf:.2f}"
        draw.text((box[0] + line + 1, max(0.0, box[1] - 12)), text, fill=colour)
    return out


def save_atomic(im: Image.Image, path: Path, quality: int = 80) -> None:
    """Write a JPEG so that a reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            im.save(f, "JPEG", quality=quality)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def describe(result: FrameResult) -> str:
    """What the detector saw, for the trigger's line."""
    if not result.detections:
        return "nothing detected"
    best = ", ".join(f"{d.species or d.category} {d.species_conf or d.conf:.2f}"
                     for d in result.detections[:3])
    more = len(result.detections) - 3
    return best + (f" (+{more} more)" if more > 0 else "")


class Walktest:
    """The trap's PIR, camera and detector, wired for aiming (see the module docstring).

    Args:
        cfg: the unit's config.
        out: where the pictures go (created).
        models_dir: the models folder.
        clock: waits and the warm-up (a real clock: the PIR's worker waits on it).
        pin_factory: gpiozero pin factory (None: the one ``hardware.backend`` asks for).
        led_pin: BCM pin of the LED to blink per trigger (None: no LED).
        warmup_s: overrides ``trigger.warmup_s``.
        say: where the lines go.
    """

    def __init__(self, cfg: Config, out: Path, models_dir: Path, clock: Clock, *,
                 pin_factory: object | None = None, led_pin: int | None = None,
                 warmup_s: float | None = None, say: Callable[[str], None] = print) -> None:
        from edge_app.trap.hardware.factory import make_camera
        from edge_app.trap.hardware.trigger import make_pin_factory

        self.cfg, self.out, self.clock, self.say = cfg, out, clock, say
        self.models_dir = models_dir
        self.pin_factory = pin_factory or make_pin_factory(cfg.hardware.backend)
        self.led_pin = led_pin
        self.warmup_s = cfg.trigger.warmup_s if warmup_s is None else warmup_s
        self.camera = make_camera(cfg.camera, cfg.hardware.backend, clock)
        self.triggers = 0
        self.dropped = 0
        self._events: queue.Queue[TriggerEvent] = queue.Queue(QUEUE_MAX)
        self._wake = threading.Event()
        self._stop = threading.Event()

    def stop(self) -> None:
        """End :meth:`run` (any thread)."""
        self._stop.set()
        self._wake.set()

    def _on_trigger(self, ev: TriggerEvent) -> None:
        try:
            self._events.put_nowait(ev)
        except queue.Full:
            self.dropped += 1
        self._wake.set()

    def run(self, seconds: float = 0.0) -> int:
        """Until :meth:`stop` or ``seconds`` have passed (0: until stopped); returns the
        number of triggers shown. Sleeps between triggers and countdown lines."""
        from gpiozero import LED

        from edge_app.trap.detect.pipeline import Pipeline
        from edge_app.trap.hardware.trigger import PirTrigger

        self.out.mkdir(parents=True, exist_ok=True)
        pipeline = Pipeline(self.cfg.detector, self.models_dir)
        led: Any = None
        pir = PirTrigger(self.cfg.trigger, self.clock, self._on_trigger, self.pin_factory)
        try:
            if self.led_pin is not None:
                led = LED(self.led_pin, pin_factory=self.pin_factory)
            self.camera.start()
            start = self.clock.monotonic()
            gate = WarmupGate(start, self.warmup_s)
            pir.start()
            self.say(f"walk test: PIR on BCM {self.cfg.trigger.pin}, LED "
                     f"{'BCM ' + str(self.led_pin) if led else 'none (--led-pin P)'}, pictures "
                     f"in {self.out / LATEST}")
            end = start + seconds if seconds > 0 else math.inf
            while not self._stop.is_set():
                now = self.clock.monotonic()
                if now >= end:
                    break
                if (line := gate.countdown(now)) is not None:
                    self.say(line)
                while True:
                    try:
                        ev = self._events.get_nowait()
                    except queue.Empty:
                        break
                    if gate.admit(ev.mono):
                        self._show(ev, pipeline, led)
                self._wake.clear()
                if self._events.empty():
                    wait = min(end, gate.next_tick()) - self.clock.monotonic()
                    self.clock.wait(self._wake, max(0.0, wait) if math.isfinite(wait)
                                    else None)
        finally:
            pir.close()
            if led is not None:
                led.close()
            self.camera.close()
            pipeline.close()
        self.say(f"walk test over: {self.triggers} trigger(s) shown, {gate.ignored} ignored "
                 "during warm-up" + (f", {self.dropped} dropped (too many at once)"
                                     if self.dropped else ""))
        return self.triggers

    def _show(self, ev: TriggerEvent, pipeline: Any, led: Any) -> None:
        """One trigger: blink, capture, detect, print, save."""
        from PIL import Image, ImageOps

        self.triggers += 1
        n = self.triggers
        if led is not None:
            led.blink(on_time=0.3, off_time=0.1, n=1, background=True)
        from edge_app.core.errors import HardwareUnavailable, ImageError

        try:
            frame = self.camera.capture(0)
            result = pipeline.analyse(frame)
        except (HardwareUnavailable, ImageError) as e:
            self.say(f"#{n}  the camera gave no usable frame: {e}")
            return
        if frame.pixels is not None:
            im = Image.fromarray(frame.pixels[..., :3])
        else:
            import io

            with Image.open(io.BytesIO(frame.jpeg)) as raw:
                im = ImageOps.exif_transpose(raw)
                im.load()
        pic = draw_boxes(im, result.detections)
        numbered = self.out / f"walktest-{n:04d}.jpg"
        save_atomic(pic, numbered)
        save_atomic(pic, self.out / LATEST)
        at = datetime.fromtimestamp(ev.wall).strftime("%H:%M:%S")
        self.say(f"{at}  #{n}  {describe(result)}  -> {numbered.name}")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--config", default="/etc/camtrap/camtrap.toml", help="the unit's config")
    ap.add_argument("--models", default=None, help="models folder (default: the config's)")
    ap.add_argument("--seconds", type=float, default=0.0, metavar="N",
                    help="stop after N seconds (default: run until Ctrl-C)")
    ap.add_argument("--led-pin", type=int, default=None, metavar="P",
                    help="BCM pin of an LED to blink on each trigger (default: none)")
    ap.add_argument("--warmup", type=float, default=None, metavar="S",
                    help="PIR warm-up to wait (default: trigger.warmup_s; 0 when the PIR "
                    "has been powered for a minute already)")
    ap.add_argument("--out", default=".", metavar="DIR",
                    help=f"where {LATEST} and the numbered pictures go (default: here)")


def main(args: argparse.Namespace) -> int:
    """Exit 0 after the walk test, 2 for a bad config or bad arguments."""
    from edge_app.core import config
    from edge_app.core.clock import SystemClock
    from edge_app.trap.preflight import check_camera, check_hardware, check_models

    if args.seconds < 0 or (args.warmup is not None and not 0 <= args.warmup <= 600) or (
            args.led_pin is not None and not 0 <= args.led_pin <= 27):
        print("walktest: --seconds ≥ 0, --warmup in [0, 600], --led-pin in [0, 27]")
        return 2
    cfg = config.load(args.config)
    check_hardware(cfg)
    check_camera(cfg)
    models_dir = check_models(cfg, args.models)
    from edge_app.trap.hardware.factory import make_sim_world
    from edge_app.trap.hardware.trigger import make_pin_factory

    clock = SystemClock()
    pins = make_pin_factory(cfg.hardware.backend)
    wt = Walktest(cfg, Path(args.out), models_dir, clock, pin_factory=pins,
                  led_pin=args.led_pin, warmup_s=args.warmup)
    stop = threading.Event()
    walker: threading.Thread | None = None
    if cfg.hardware.backend == "sim" and cfg.trigger.sim_every_s > 0:  # someone to walk past
        world = make_sim_world(pins, cfg.trigger.pin, wt.camera, clock)
        walker = threading.Thread(target=world.run, args=(stop, cfg.trigger.sim_every_s),
                                  name="sim-world", daemon=True)
        walker.start()
    try:
        wt.run(args.seconds)
    except KeyboardInterrupt:
        print("walk test stopped")
    finally:
        stop.set()
        if walker is not None:
            walker.join(5)
    return 0
