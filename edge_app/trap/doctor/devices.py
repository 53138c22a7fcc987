"""Checks that open a device: the camera, the PIR pin, the supervisor MCU, the LoRa modem.

Each opens the device the way the trap does (through :mod:`edge_app.trap.hardware.factory`,
so ``hardware.backend = 'sim'`` gets its simulators exactly as ``camtrap run`` does) and
closes it again. The trap's service must be stopped first: a camera, a pin or a serial port
has one owner, and the line then says "busy".
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Mapping

from edge_app.core.events import Frame
from edge_app.trap.doctor.context import Ctx
from edge_app.trap.doctor.report import Check

STOP_SERVICE = "stop the trap first (sudo systemctl stop camtrap) and run the doctor again"
SATURATED = 250.0
"""Mean brightness (0-255) above which a frame is blown out: sun on the lens, or the IR-cut
filter stuck open by day."""
BLACK = 3.0
"""Mean brightness below which a frame is black: lens cap, or no IR light at night."""
EXPOSURE_KEYS = ("Lux", "ExposureTime", "AnalogueGain")


def mean_brightness(frame: Frame) -> float | None:
    """Mean grey level of a frame (pixels when it has them, else its JPEG at 1/8 scale)."""
    import numpy as np
    from PIL import Image

    if frame.pixels is not None:
        return float(np.asarray(frame.pixels)[..., :3].mean())
    if not frame.jpeg:
        return None
    with Image.open(io.BytesIO(frame.jpeg)) as im:
        im.draft("L", (max(1, im.width // 8), max(1, im.height // 8)))
        return float(np.asarray(im.convert("L")).mean())


def judge_exposure(md: Mapping[str, float], brightness: float | None) -> Check:
    """Pure: the camera line from one frame's metadata and brightness."""
    bad = [k for k in EXPOSURE_KEYS if k in md and not math.isfinite(float(md[k]))]
    if bad:
        return Check("camera", "fail", f"metadata not finite: {', '.join(bad)}",
                     "power-cycle the unit; if it stays, the camera module or cable is faulty")
    shown = ", ".join(f"{k} {md[k]:g}" for k in EXPOSURE_KEYS if k in md)
    if brightness is not None and brightness >= SATURATED:
        return Check("camera", "fail", f"frame saturated (mean {brightness:.0f}/255; {shown})",
                     "shade the lens from direct sun; check the IR-cut filter switches by day")
    if brightness is not None and brightness <= BLACK:
        return Check("camera", "warn", f"frame black (mean {brightness:.1f}/255; {shown})",
                     "remove the lens cap; at night check the IR illuminator")
    if not shown:
        return Check("camera", "warn", "a frame, but no exposure metadata",
                     "update picamera2/libcamera (python3-picamera2 from apt)")
    level = "" if brightness is None else f", mean {brightness:.0f}/255"
    return Check("camera", "pass", f"frame captured ({shown}{level})")


def check_camera(ctx: Ctx) -> Check:
    """Open the camera as the trap does, take one frame, judge its exposure, close it."""
    from edge_app.core.errors import ConfigError, HardwareUnavailable
    from edge_app.trap.hardware.factory import make_camera

    cam_cfg = ctx.cfg.camera
    fix = (f"check the camera cable and `rpicam-hello --list-cameras`; {STOP_SERVICE}"
           if cam_cfg.source == "picamera2" else "check camera.images_dir holds JPEG images")
    try:
        cam = make_camera(cam_cfg, ctx.cfg.hardware.backend, ctx.clock)
    except ConfigError as e:
        return Check("camera", "fail", str(e), fix)
    try:
        cam.start()
        frame = cam.capture(0)
        md = dict(frame.metadata) or dict(cam.metadata())
    except (HardwareUnavailable, OSError, RuntimeError) as e:
        return Check("camera", "fail", f"{cam_cfg.source}: {e}", fix)
    finally:
        cam.close()
    return judge_exposure(md, mean_brightness(frame))


def check_pir(ctx: Ctx) -> Check:
    """Watch the PIR pin for ``pir_window_s``: a pin high the whole time is stuck (or someone
    stands in front of it); a pin that cannot be opened is wired or claimed wrong."""
    cfg = ctx.cfg
    if cfg.trigger.source == "mcu":
        return Check("pir", "skip", "the PIR is on the supervisor MCU (trigger.source = mcu)")
    from edge_app.trap.hardware.trigger import make_pin_factory

    factory = ctx.probes.pin_factory
    if factory is None:
        factory = make_pin_factory(cfg.hardware.backend)
    from gpiozero import DigitalInputDevice
    from gpiozero.exc import GPIOZeroError

    pin = cfg.trigger.pin
    try:
        # No pull resistor, as the trap's edge mode: the PIR drives the line (push-pull), and
        # a pull here would mask a line held high (and, with MockFactory, the driven level).
        dev = DigitalInputDevice(pin, pull_up=None, active_state=True, pin_factory=factory)
    except GPIOZeroError as e:
        return Check("pir", "fail", f"BCM {pin}: {e}", f"check trigger.pin; {STOP_SERVICE}")
    high = samples = 0
    stop = threading.Event()
    try:
        end = ctx.clock.monotonic() + ctx.pir_window_s
        while True:
            samples += 1
            high += int(bool(dev.value))
            left = end - ctx.clock.monotonic()
            if left <= 0:
                break
            ctx.clock.wait(stop, min(0.05, left))
    finally:
        dev.close()
    window = f"{ctx.pir_window_s:g} s"
    if high == samples:
        return Check("pir", "fail", f"PIR stuck high on BCM {pin} (high for the whole {window})",
                     "step out of its view and run again; an HC-SR501 is high during its "
                     f"warm-up (trigger.warmup_s {cfg.trigger.warmup_s:g} s after power-on); "
                     "else check the wiring and the sensitivity pot")
    if high:
        return Check("pir", "pass", f"BCM {pin}: motion seen {100 * high // samples} % of "
                     f"{window} (not stuck)")
    return Check("pir", "pass", f"BCM {pin}: low for {window} (wave a hand in front of it "
                 "with `camtrap walktest` to see it fire)")


def check_mcu(ctx: Ctx) -> Check:
    """GET_STATUS within the driver's own timeout and retries; the battery must be read."""
    cfg = ctx.cfg
    if not cfg.mcu_in_use:
        return Check("mcu", "skip", "no supervisor MCU in use (mcu.enabled false)")
    from edge_app.core.errors import ConfigError
    from edge_app.trap.hardware.factory import make_mcu
    from edge_app.trap.hardware.mcu import McuError

    fix = f"check the UART wiring (GPIO14/15), mcu.port and the MCU's power; {STOP_SERVICE}"
    emu = ctx.probes.mcu_emulator
    own = emu is None and cfg.hardware.backend == "sim"
    try:
        drv, emu = make_mcu(cfg, ctx.clock, lambda _ev: None, emulator=emu)
    except ConfigError as e:
        return Check("mcu", "fail", str(e), fix)
    assert drv is not None
    if own and emu is not None:
        emu.start()
    try:
        drv.link.open()
        st = drv.get_status()
    except McuError as e:
        return Check("mcu", "fail", f"no answer: {e}", fix)
    finally:
        drv.link.close()
        if own and emu is not None:
            emu.stop()
    ctx.found["rtc_valid"] = bool(st.rtc_valid)
    temp = "" if st.temp_c is None else f", {st.temp_c:g} °C"
    rtc = "RTC set" if st.rtc_valid else "RTC not set"
    if st.battery_v is None:
        return Check("mcu", "warn", f"answers, but reports no battery ({rtc}{temp})",
                     "fit the battery divider, or check the MCU's battery_ratio setting")
    return Check("mcu", "pass", f"answers: battery {st.battery_v:.2f} V, {rtc}{temp}")


def check_lora(ctx: Ctx) -> Check:
    """``AT`` answered, the set-up accepted, and whether the modem holds a session.

    Uses the router's own driver calls (``open`` probes ``AT``; ``provision`` is what the
    router runs after every reset and reads the RAK3172's join state). Not joined is a
    warning: the trap joins at start, and a join costs airtime the doctor should not spend.
    """
    lw = ctx.cfg.lorawan
    if not lw.enabled:
        return Check("lora", "skip", "LoRaWAN off (lorawan.enabled false)")
    from edge_app.core.errors import ConfigError
    from edge_app.trap.uplink.lorawan import ModemError, Timings, load_secrets, make_modem

    fix = (f"check the modem's power and wiring, lorawan.port ({lw.port}), lorawan.module "
           f"({lw.module}) and lorawan.baudrate; {STOP_SERVICE}")
    try:
        keys = load_secrets(lw.secrets_file)
    except ConfigError as e:
        return Check("lora", "fail", str(e), "write the unit's keys file (mode 0600)")
    step = min(lw.command_timeout_s, ctx.timeout_s / 8)
    modem = make_modem(lw.module, lw.port, lw.baudrate,
                       Timings(command_s=step, boot_s=min(6.0, ctx.timeout_s / 4)))
    try:
        modem.open()
        modem.provision(keys, lw.region, adr=lw.adr, data_rate=lw.data_rate)
    except ModemError as e:
        return Check("lora", "fail", f"modem silent or refusing: {e}", fix)
    finally:
        modem.close()
    if modem.joined:
        return Check("lora", "pass", f"{modem.name} answers and has joined")
    unknown = " (the Wio-E5 has no join-state query)" if lw.module == "wio-e5" else ""
    return Check("lora", "warn", f"{modem.name} answers, not joined (yet){unknown}",
                 "the trap joins at start: run it and watch `camtrap lorawan` / the stats "
                 "message; if it never joins check the keys and the gateway's coverage")
