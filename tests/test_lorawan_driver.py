"""The modem drivers against the pty emulators: both RUI3 firmware spellings, echo, a reboot
on a mode change, downlinks in both Wio-E5 formats, noise, timeouts, a vanished port, keys."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from lorawan_support import FAST, KEYS, write_secrets

from edge_app.core.errors import ConfigError
from edge_app.sim.modems import (
    Faults,
    NetworkAnswer,
    PtyModem,
    Rui3Modem,
    ScaledClock,
    UplinkFrame,
    WioE5Modem,
)
from edge_app.trap.uplink.airtime import uplink_airtime_s
from edge_app.trap.uplink.lorawan import (
    LineChannel,
    ModemError,
    Rak3172,
    SendStatus,
    Timings,
    WioE5,
    load_secrets,
    make_modem,
    redact,
    rui3_event,
)

AIRTIME = uplink_airtime_s(11, 7)


class Radio:
    """A network that accepts every device and queues downlinks (the radio side only; the
    MQTT side of the network server is tested in test_lorawan_router / _e2e)."""

    def __init__(self) -> None:
        self.frames: list[UplinkFrame] = []
        self.downlinks: list[tuple[int, bytes]] = []
        self.join_ok = True

    def join(self, dev_eui: str, join_eui: str, app_key: str, dr: int,
             freq_mhz: float) -> str | None:
        return "26011234" if self.join_ok and app_key == KEYS.app_key else None

    def uplink(self, frame: UplinkFrame) -> NetworkAnswer:
        self.frames.append(frame)
        return NetworkAnswer(True, self.downlinks.pop(0) if self.downlinks else None)


def emulator(cls: type[PtyModem], radio: Radio, **kw: Any) -> PtyModem:
    kw.setdefault("time_factor", 0.001)
    kw.setdefault("dr", 5)
    kw.setdefault("enforce_duty_cycle", False)
    return cls(radio, **kw).start()  # type: ignore[arg-type]


def joined(drv: Rak3172 | WioE5) -> None:
    drv.provision(KEYS, "RU864", adr=True, data_rate=0)
    assert drv.join(0.1).joined


@pytest.mark.parametrize("firmware", ["v4", "v3"])
def test_rui3_both_firmware_spellings_and_get_styles(firmware: str) -> None:
    radio = Radio()
    with emulator(Rui3Modem, radio, firmware=firmware, faults=Faults(lose_acks=1)) as emu, \
            Rak3172(emu.port, timings=FAST) as drv:
        drv.provision(KEYS, "RU864", adr=False, data_rate=5)
        assert drv.data_rate() == 5
        radio.join_ok = False
        failed = drv.join(0.1)
        assert not failed.joined
        assert failed.transmitted
        assert failed.detail in ("JOINFAILEDRXTIMEOUT", "JOINFAILED")
        radio.join_ok = True
        assert drv.join(0.1).joined
        lost = drv.send(10, b"\x01" * 11, True, AIRTIME)
        assert lost.status is SendStatus.NO_ACK
        assert lost.transmitted
        ok = drv.send(10, b"\x02" * 11, True, AIRTIME)
        assert ok.status is SendStatus.ACKED
        unconfirmed = drv.send(11, b"\x03" * 11, False, AIRTIME)
        assert unconfirmed.status is SendStatus.SENT
    assert [f.confirmed for f in radio.frames] == [True, True, False]
    assert "AT+BAND=2" in emu.received
    assert "AT+RETY=0" in emu.received


def test_rui3_event_names_normalise_both_spellings() -> None:
    assert rui3_event("+EVT:SEND_CONFIRMED_OK") == rui3_event("+EVT: SEND CONFIRMED OK")
    assert rui3_event("+EVT:JOIN_FAILED_RX_TIMEOUT") == "JOINFAILEDRXTIMEOUT"
    assert rui3_event("+EVT:JOIN FAILED") == "JOINFAILED"
    assert rui3_event("+EVT:SEND_CONFIRMED_FAILED(4)") == "SENDCONFIRMEDFAILED(4)"
    assert rui3_event("+EVT:RX_1:-46:10:UNICAST:111:48454c4c4f0a") == \
        "RX1:-46:10:UNICAST:111:48454c4c4f0a"
    assert rui3_event("OK") is None


def test_rui3_switches_work_mode_waits_for_the_reboot_and_tolerates_echo() -> None:
    radio = Radio()
    with emulator(Rui3Modem, radio, nwm=0) as emu:
        assert isinstance(emu, Rui3Modem)
        emu.echo = True  # ATE was left on by a technician
        with Rak3172(emu.port, timings=FAST) as drv:
            joined(drv)
            assert emu.flash["NWM"] == "1"
            assert emu.stats.resets == 1  # the reboot the mode change causes…
            assert drv.stats.resets == 0  # …is not mistaken for a brown-out
            assert drv.send(10, b"\x00" * 11, True, AIRTIME).status is SendStatus.ACKED


def test_rui3_downlink_event_is_read() -> None:
    radio = Radio()
    radio.downlinks.append((20, b"\x01\x00\x1e"))
    with emulator(Rui3Modem, radio) as emu, Rak3172(emu.port, timings=FAST) as drv:
        joined(drv)
        res = drv.send(10, b"\x00" * 11, True, AIRTIME)
    assert res.status is SendStatus.ACKED
    assert [(d.port, d.payload) for d in res.downlinks] == [(20, b"\x01\x00\x1e")]
    assert res.downlinks[0].rssi == -60


def test_rui3_refusals_map_to_statuses() -> None:
    radio = Radio()
    with emulator(Rui3Modem, radio, faults=Faults(busy=1)) as emu, \
            Rak3172(emu.port, timings=FAST) as drv:
        drv.provision(KEYS, "RU864", adr=True, data_rate=0)
        not_joined = drv.send(10, b"\x00" * 11, True, AIRTIME)
        assert (not_joined.status, not_joined.transmitted) == (SendStatus.NOT_JOINED, False)
        assert drv.join(0.1).joined
        busy = drv.send(10, b"\x00" * 11, True, AIRTIME)
        assert (busy.status, busy.transmitted) == (SendStatus.BUSY, False)
        too_big = drv.send(10, b"\x00" * 300, True, AIRTIME)
        assert too_big.status is SendStatus.REJECTED
        assert drv.stats.busy == 1


def test_rui3_module_duty_cycle_refusal_is_busy_and_nothing_is_sent() -> None:
    radio = Radio()
    clock = ScaledClock(speed=1000.0)
    with emulator(Rui3Modem, radio, clock=clock, enforce_duty_cycle=True, dr=0,
                  time_factor=0.001) as emu, Rak3172(emu.port, timings=FAST) as drv:
        joined(drv)  # the join's own time-off now blocks the band for ~148 s (148 ms here)
        res = drv.send(10, b"\x00" * 11, True, AIRTIME)
        assert res.status is SendStatus.BUSY
        assert not res.transmitted
        assert emu.stats.dc_refusals == 1
        time.sleep(0.2)
        assert drv.send(10, b"\x00" * 11, True, AIRTIME).status is SendStatus.ACKED


def test_noise_inside_a_reply_and_overlong_lines_are_survived() -> None:
    radio = Radio()
    with emulator(Rui3Modem, radio, faults=Faults(garbage_rate=1.0), seed=11) as emu, \
            Rak3172(emu.port, timings=FAST) as drv:
        joined(drv)  # noise after every single line the module prints
        emu.inject(b"B" * 4000 + b"\r\n")
        emu.inject(bytes(b for b in range(256) if b != 0x0A) * 8 + b"\r\n")
        assert drv.send(10, b"\x00" * 11, True, AIRTIME).status is SendStatus.ACKED
        assert drv.data_rate() == 5
    assert drv.stats.garbage > 10
    assert drv.stats.overlong == 2


def test_a_reply_that_never_comes_times_out(caplog: pytest.LogCaptureFixture) -> None:
    radio = Radio()
    with emulator(Rui3Modem, radio) as emu, Rak3172(
            emu.port, timings=Timings(command_s=0.1, send_extra_s=0.2)) as drv:
        joined(drv)
        emu._command = lambda line: None  # type: ignore[method-assign]  # the module hangs
        t = time.monotonic()
        res = drv.send(10, b"\x00" * 11, True, AIRTIME)
        assert time.monotonic() - t < 1.0
        assert res.status is SendStatus.TIMEOUT
        assert res.transmitted
        with pytest.raises(ModemError, match="DR=\\? failed: TIMEOUT"):
            drv.data_rate()
    assert drv.stats.timeouts >= 2
    assert "AT+SEND=10:" in caplog.text


def test_a_vanished_port_is_a_modem_error_not_a_crash() -> None:
    radio = Radio()
    emu = emulator(Rui3Modem, radio)
    drv = Rak3172(emu.port, timings=FAST)
    drv.open()
    try:
        os.close(emu._pty.master)  # the USB adapter is unplugged

        def use_it() -> None:
            for _ in range(5):
                drv.data_rate()

        with pytest.raises(ModemError):
            use_it()
    finally:
        drv.close()
        emu.stop()
    with pytest.raises(ModemError, match="cannot open"):
        Rak3172("/dev/does-not-exist", timings=FAST).open()


@pytest.mark.parametrize("old_rx_format", [False, True])
def test_wio_e5_dialect(old_rx_format: bool) -> None:
    radio = Radio()
    faults = Faults(lose_acks=1)
    with emulator(WioE5Modem, radio, old_rx_format=old_rx_format, faults=faults) as emu, \
            WioE5(emu.port, timings=FAST) as drv:
        drv.provision(KEYS, "RU864", adr=False, data_rate=5)
        assert drv.data_rate() == 5
        assert drv.send(10, b"\x00" * 11, True, AIRTIME).status is SendStatus.NOT_JOINED
        assert drv.join(0.1).joined
        assert drv.join(0.1).detail == "joined already"
        lost = drv.send(10, b"\x00" * 11, True, AIRTIME)  # Done without ACK Received
        assert lost.status is SendStatus.NO_ACK
        assert lost.transmitted
        radio.downlinks.append((20, b"\x02"))
        ok = drv.send(10, b"\x00" * 11, True, AIRTIME)
        assert ok.status is SendStatus.ACKED
        assert [(d.port, d.payload) for d in ok.downlinks] == [(20, b"\x02")]
        assert drv.send(11, b"\x00" * 11, False, AIRTIME).status is SendStatus.SENT
    assert 'AT+KEY=APPKEY,"' + KEYS.app_key + '"' in emu.received
    assert "AT+PORT=10" in emu.received
    assert "AT+PORT=11" in emu.received


def test_wio_e5_no_band_gives_the_wait_and_a_partial_command_times_out() -> None:
    radio = Radio()
    clock = ScaledClock(speed=1000.0)
    with emulator(WioE5Modem, radio, clock=clock, enforce_duty_cycle=True, dr=0) as emu, \
            WioE5(emu.port, timings=FAST) as drv:
        joined(drv)
        res = drv.send(10, b"\x00" * 11, True, AIRTIME)
        assert res.status is SendStatus.DUTY_CYCLE
        assert not res.transmitted
        assert res.retry_after_s is not None
        assert 100 < res.retry_after_s < 151
        drv.ch.write("AT+DR")  # no line end: the E5 gives up on it with ERROR(-22)
        time.sleep(0.5)
        assert drv.data_rate() == 0
        assert drv.stats.unexpected >= 1


def test_keys_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    radio = Radio()
    for cls, drv_cls in ((Rui3Modem, Rak3172), (WioE5Modem, WioE5)):
        with emulator(cls, radio) as emu, drv_cls(emu.port, timings=FAST) as drv:
            joined(drv)
    assert "APPKEY" in caplog.text
    assert "****" in caplog.text
    assert KEYS.app_key not in caplog.text
    assert KEYS.app_key.lower() not in caplog.text
    assert redact('AT+KEY=APPKEY,"2B7E151628AED2A6ABF7158809CF4F3C"') == 'AT+KEY=APPKEY,"****"'


def test_secrets_file_rules(tmp_path: Path) -> None:
    good = write_secrets(tmp_path / "ok.toml")
    assert load_secrets(good) == KEYS
    for mode in (0o644, 0o640, 0o604):
        bad = write_secrets(tmp_path / f"m{mode:o}.toml", mode=mode)
        with pytest.raises(ConfigError, match="chmod 600"):
            load_secrets(bad)
    cases = {
        "missing": 'dev_eui = "70B3D57ED0061234"\njoin_eui = "0000000000000001"\n',
        "short": f'dev_eui = "70B3"\njoin_eui = "0000000000000001"\napp_key = "{KEYS.app_key}"\n',
        "extra": (f'dev_eui = "{KEYS.dev_eui}"\njoin_eui = "{KEYS.join_eui}"\n'
                  f'app_key = "{KEYS.app_key}"\nnwk_key = "00"\n'),
        "toml": f'app_key = {KEYS.app_key}\n',
    }
    for name, text in cases.items():
        p = tmp_path / f"{name}.toml"
        p.write_text(text)
        p.chmod(0o600)
        with pytest.raises(ConfigError) as e:
            load_secrets(p)
        assert KEYS.app_key not in str(e.value), name
    with pytest.raises(ConfigError, match="cannot read"):
        load_secrets(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_secrets(tmp_path)


def test_make_modem_picks_the_dialect_and_its_speed() -> None:
    assert isinstance(make_modem("rak3172", "/dev/null"), Rak3172)
    e5 = make_modem("wio-e5", "/dev/null")
    assert isinstance(e5, WioE5)
    assert e5.baudrate == 9600
    with pytest.raises(ValueError, match="unknown"):
        make_modem("rn2483", "/dev/null")


def test_idle_reader_blocks_without_polling() -> None:
    """~0 % CPU while idle: the reader thread sleeps in select, not in a read loop."""
    radio = Radio()
    with emulator(Rui3Modem, radio) as emu, Rak3172(emu.port, timings=FAST) as drv:
        drv.data_rate()
        ch = drv.ch
        assert isinstance(ch, LineChannel)
        t_cpu = time.thread_time()
        before = os.times()
        time.sleep(0.5)
        after = os.times()
        used = (after.user - before.user) + (after.system - before.system)
        assert time.thread_time() - t_cpu < 0.05
        assert used < 0.1, f"{used:.3f} s of CPU in 0.5 s idle"


def test_the_lora_stage_idles_at_zero_cpu(tmp_path: Path) -> None:
    """Joined, nothing to send: the router sleeps on its event, the reader in select."""
    import threading

    from lorawan_support import lora_cfg, make_router

    from edge_app.core.clock import SystemClock

    radio = Radio()
    cfg = lora_cfg(tmp_path, data_rate=5, duty_cycle=0.1)
    with emulator(Rui3Modem, radio) as emu:
        router = make_router(cfg, emu, SystemClock())
        stop = threading.Event()
        t = threading.Thread(target=router.run, args=(stop,), daemon=True)
        t.start()
        try:
            deadline = time.monotonic() + 10
            while not router.stats()["joined"] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert router.stats()["joined"]
            time.sleep(0.2)
            before = os.times()
            time.sleep(1.0)
            after = os.times()
        finally:
            stop.set()
            router.interrupt()
            t.join(5)
    used = (after.user - before.user) + (after.system - before.system)
    assert used < 0.1, f"{used:.3f} s of CPU in 1 s idle"
    assert not t.is_alive()
