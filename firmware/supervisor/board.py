"""hal.Hal on an RP2040 board (Raspberry Pi Pico) with MicroPython's ``machine`` module.

Only main.py imports this, on the device; host tests exercise it against a fake ``machine``
(firmware/tests/fake_machine.py) so a typo here is caught before a technician flashes it.
Pins and calibration come from config (see firmware/README.md for the wiring).

Pin choices that matter for safety: the load-switch enable starts *off* and has an external
pull-down on the board, so a crashed or resetting MCU leaves the Pi unpowered rather than
draining the battery; the halt and PIR inputs use pull-downs, so an unplugged Pi or PIR reads
"running" / "no motion".
"""

import json
import os

import ds3231
import machine
import proto
import rtcclock
from hal import Hal

STATE_FILE = "state.json"
BAUD = 115200

# RP2040 datasheet §4.9.5: T = 27 - (V_sense - 0.706) / 0.001721, V_sense on ADC channel 4.
TEMP_ADC_CHANNEL = 4


class Board(Hal):
    def __init__(self, cfg, state_dir=""):
        pin = machine.Pin
        self.cfg = cfg
        self.state_path = state_dir + STATE_FILE
        self._on_level = 1 if cfg["pi_power_active_high"] else 0
        self.pi_pin = pin(cfg["pin_pi_power"], pin.OUT, value=1 - self._on_level)
        self.halt_pin = pin(cfg["pin_pi_halt"], pin.IN, pin.PULL_DOWN)
        self.pir_pin = pin(cfg["pin_pir"], pin.IN, pin.PULL_DOWN)
        self.ir_pin = pin(cfg["pin_ir"], pin.OUT, value=0) if cfg["pin_ir"] >= 0 else None
        self.led_pin = pin(cfg["pin_led"], pin.OUT, value=0)
        self.adc = {
            "battery": machine.ADC(pin(cfg["pin_battery_adc"])) if cfg["battery_fitted"] else None,
            "solar": machine.ADC(pin(cfg["pin_solar_adc"])) if cfg["solar_fitted"] else None,
        }
        self.temp_adc = machine.ADC(TEMP_ADC_CHANNEL)
        self.uart = machine.UART(cfg["uart_id"], baudrate=BAUD, bits=8, parity=None, stop=1,
                                 tx=pin(cfg["pin_uart_tx"]), rx=pin(cfg["pin_uart_rx"]),
                                 rxbuf=512, timeout=0)
        self.rtc = None
        if cfg["rtc"] == "ds3231":
            i2c = machine.I2C(cfg["i2c_id"], sda=pin(cfg["pin_i2c_sda"]),
                              scl=pin(cfg["pin_i2c_scl"]), freq=100000)
            self.rtc = ds3231.DS3231(i2c)
        self.internal_rtc = machine.RTC()
        self._internal_set = False
        self.wdt = None

    def start_wdt(self):
        """Start the hardware watchdog (it cannot be stopped again until the next reset)."""
        self.wdt = machine.WDT(timeout=self.cfg["wdt_timeout_ms"])

    # --- Pi power and signals
    def set_pi_power(self, on):
        self.pi_pin.value(self._on_level if on else 1 - self._on_level)

    def pi_halted(self):
        return self.halt_pin.value() == 1

    def set_ir(self, on):
        if self.ir_pin is not None:
            self.ir_pin.value(1 if on else 0)

    def set_led(self, on):
        self.led_pin.value(1 if on else 0)

    def pir_level(self):
        return self.pir_pin.value() == 1

    # --- measurements
    def read_adc(self, name):
        adc = self.adc.get(name)
        return adc.read_u16() if adc is not None else None

    def read_temp_dc(self):
        if self.rtc is not None:
            t = self.rtc.temp_dc()
            if t is not None:
                return t
        v = self.temp_adc.read_u16() * 3.3 / 65535
        return round((27 - (v - 0.706) / 0.001721) * 10)

    # --- RTC (the MCU's own RTC stands in when no DS3231 is fitted; it forgets on reset)
    def rtc_read(self):
        if self.rtc is not None:
            return self.rtc.read()
        y, mo, d, _wd, h, mi, s, _sub = self.internal_rtc.datetime()
        return rtcclock.to_unix(y, mo, d, h, mi, s)

    def rtc_set(self, unix_s):
        y, mo, d, h, mi, s, wd = rtcclock.from_unix(unix_s)
        self.internal_rtc.datetime((y, mo, d, wd - 1, h, mi, s, 0))
        self._internal_set = True
        return self.rtc.set(unix_s) if self.rtc is not None else True

    def rtc_valid(self):
        return self.rtc.valid() if self.rtc is not None else self._internal_set

    # --- UART
    def uart_read(self):
        n = self.uart.any()
        if not n:
            return b""
        return self.uart.read(n) or b""

    def uart_write(self, data):
        self.uart.write(data)

    # --- the MCU
    def wdt_feed(self):
        if self.wdt is not None:
            self.wdt.feed()

    def reset_cause(self):
        cause = machine.reset_cause()
        for name, code in (("PWRON_RESET", proto.RESET_POWER_ON),
                           ("WDT_RESET", proto.RESET_WATCHDOG),
                           ("HARD_RESET", proto.RESET_HARD),
                           ("SOFT_RESET", proto.RESET_SOFT),
                           ("DEEPSLEEP_RESET", proto.RESET_DEEPSLEEP)):
            if getattr(machine, name, None) == cause:
                return code
        return proto.RESET_UNKNOWN

    def load_state(self):
        try:
            with open(self.state_path) as fh:
                return json.loads(fh.read(4096))
        except (OSError, ValueError):
            return None

    def save_state(self, state):
        """Write-then-rename, so a reset mid-write leaves the old file, never half a new one."""
        try:
            tmp = self.state_path + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(json.dumps(state))
            os.rename(tmp, self.state_path)
        except OSError:
            return False
        return True
