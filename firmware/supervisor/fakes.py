"""Fakes of the supervisor's hardware, for tests and the Pi-side simulator (never on the board).

``FakeHal`` is a fake at the hal.Hal API boundary: pins are attributes, the ADC returns the
counts a real divider would give for a pack voltage the test sets, the RTC runs from the
test's clock, the UART is two byte buffers. ``FakeI2C`` is a fake of ``machine.I2C``'s memory
calls holding a DS3231's register file, so ds3231.py is exercised down to its BCD bytes.
Everything here is plain Python that also runs under MicroPython.
"""

import ds3231
import proto
import rtcclock
from hal import Hal


class FakeI2C:
    """A fake ``machine.I2C`` with one DS3231 at 0x68 (registers 0x00–0x12)."""

    def __init__(self, unix_s=None, osf=True):
        self.regs = bytearray(0x13)
        if unix_s is not None:
            self.regs[0:7] = ds3231.encode_time(unix_s)
        self.regs[ds3231.REG_STATUS] = ds3231.OSF if osf else 0
        self.fail = False

    def set_temp_c4(self, quarters):
        """Temperature register in 0.25 °C steps (signed)."""
        v = quarters & 0x3FF
        self.regs[0x11] = v >> 2
        self.regs[0x12] = (v & 0x3) << 6

    def readfrom_mem(self, addr, reg, n):
        if self.fail or addr != ds3231.ADDR:
            raise OSError(5)
        return bytes(self.regs[reg:reg + n])

    def writeto_mem(self, addr, reg, buf):
        if self.fail or addr != ds3231.ADDR:
            raise OSError(5)
        self.regs[reg:reg + len(buf)] = buf


class FakeHal(Hal):
    """A fake HAL driven by the test's clock (``now_ms``, advanced by the test).

    The RTC is a real ds3231.DS3231 over a FakeI2C whose seconds advance with ``now_ms``.
    """

    def __init__(self, unix_s=1790000000, rtc_valid=True, battery_mv=13200, solar_mv=0,
                 vref_mv=3300, battery_ratio=5.7, solar_ratio=9.333):
        self.now_ms = 0
        self.pi_power = False
        self.power_log = []  # (now_ms, on) for every change
        self.halted = False
        self.pir = False
        self.ir = False
        self.led = False
        self.led_changes = 0
        self.vref_mv = vref_mv
        self.ratios = {"battery": battery_ratio, "solar": solar_ratio}
        self.volts = {"battery": battery_mv, "solar": solar_mv}
        self.adc_fail = False
        self.temp = 215
        self.i2c = FakeI2C(unix_s, osf=not rtc_valid)
        self.rtc = ds3231.DS3231(self.i2c)
        self._rtc_base = (0, unix_s if unix_s is not None else 946684800)
        self.rx = bytearray()  # Pi -> MCU, not yet read
        self.tx = bytearray()  # MCU -> Pi
        self.wdt_feeds = 0
        self.cause = proto.RESET_POWER_ON
        self.state = None
        self.saves = 0

    # the test's clock drives the fake RTC's seconds register
    def advance_to(self, now_ms):
        self.now_ms = now_ms
        base_ms, base_s = self._rtc_base
        t = base_s + (now_ms - base_ms) // 1000
        if not self.i2c.fail:
            self.i2c.regs[0:7] = ds3231.encode_time(t)

    def set_pi_power(self, on):
        if on != self.pi_power:
            self.power_log.append((self.now_ms, on))
        self.pi_power = on
        if not on:
            self.halted = False

    def pi_halted(self):
        return self.halted and self.pi_power

    def set_ir(self, on):
        self.ir = on

    def set_led(self, on):
        if on != self.led:
            self.led_changes += 1
        self.led = on

    def pir_level(self):
        return self.pir

    def read_adc(self, name):
        if self.adc_fail:
            return None
        mv = self.volts[name]
        raw = int(mv * 65535 / (self.vref_mv * self.ratios[name]) + 0.5)
        return max(0, min(65535, raw))

    def read_temp_dc(self):
        return self.temp

    def rtc_read(self):
        return self.rtc.read()

    def rtc_set(self, unix_s):
        ok = self.rtc.set(unix_s)
        if ok:
            self._rtc_base = (self.now_ms, unix_s)
        return ok

    def rtc_valid(self):
        return self.rtc.valid()

    def uart_read(self):
        data = bytes(self.rx)
        self.rx = bytearray()
        return data

    def uart_write(self, data):
        self.tx.extend(data)

    def wdt_feed(self):
        self.wdt_feeds += 1

    def reset_cause(self):
        return self.cause

    def load_state(self):
        return self.state

    def save_state(self, state):
        self.saves += 1
        self.state = state


def civil(unix_s):
    """Handy in tests: (y, mo, d, h, mi, s) of a unix time."""
    return rtcclock.from_unix(unix_s)[:6]
