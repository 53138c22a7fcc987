"""DS3231 RTC over I²C: time (BCD registers), the oscillator-stop flag, the temperature sensor.

Takes any object with MicroPython's ``readfrom_mem(addr, reg, n)`` / ``writeto_mem(addr, reg,
buf)`` (``machine.I2C`` on the board, ``fakes.FakeI2C`` on the host), so the BCD and register
handling is tested without the chip. Register map from the Maxim DS3231 datasheet: 0x00–0x06
seconds … year (BCD; the century bit is bit 7 of the month register), 0x0F status (bit 7 OSF:
the oscillator stopped — time lost since the last set), 0x11/0x12 temperature (signed °C in
0.25 steps, upper byte + top two bits of the lower). Any I²C error answers None / False:
a loose RTC must not stop the supervisor.
"""

import rtcclock

ADDR = 0x68
REG_TIME = 0x00
REG_STATUS = 0x0F
REG_TEMP = 0x11
OSF = 0x80


def bcd2bin(b):
    return (b >> 4) * 10 + (b & 0x0F)


def bin2bcd(v):
    return ((v // 10) << 4) | (v % 10)


def encode_time(unix_s):
    """The 7 time registers for ``unix_s`` (years 2000–2199)."""
    y, mo, d, h, mi, s, wd = rtcclock.from_unix(unix_s)
    century = 0x80 if y >= 2100 else 0
    return bytes((bin2bcd(s), bin2bcd(mi), bin2bcd(h), wd, bin2bcd(d),
                  bin2bcd(mo) | century, bin2bcd(y % 100)))


def _hours(hr):
    if hr & 0x40:  # 12-hour mode (never set by us, but a previous owner may have)
        return bcd2bin(hr & 0x1F) % 12 + (12 if hr & 0x20 else 0)
    return bcd2bin(hr & 0x3F)


def decode_time(regs):
    """Unix seconds from the 7 time registers, or None if they hold an impossible date."""
    s = bcd2bin(regs[0] & 0x7F)
    mi = bcd2bin(regs[1] & 0x7F)
    h = _hours(regs[2])
    d = bcd2bin(regs[4] & 0x3F)
    mo = bcd2bin(regs[5] & 0x1F)
    y = 2000 + bcd2bin(regs[6]) + (100 if regs[5] & 0x80 else 0)
    if not (s < 60 and mi < 60 and h < 24 and 1 <= d <= 31 and 1 <= mo <= 12):
        return None
    return rtcclock.to_unix(y, mo, d, h, mi, s)


class DS3231:
    def __init__(self, i2c, addr=ADDR):
        self.i2c = i2c
        self.addr = addr
        self.errors = 0

    def read(self):
        try:
            regs = self.i2c.readfrom_mem(self.addr, REG_TIME, 7)
        except OSError:
            self.errors += 1
            return None
        return decode_time(regs)

    def set(self, unix_s):
        try:
            self.i2c.writeto_mem(self.addr, REG_TIME, encode_time(unix_s))
            status = self.i2c.readfrom_mem(self.addr, REG_STATUS, 1)[0]
            self.i2c.writeto_mem(self.addr, REG_STATUS, bytes((status & ~OSF & 0xFF,)))
        except OSError:
            self.errors += 1
            return False
        return True

    def valid(self):
        try:
            return not self.i2c.readfrom_mem(self.addr, REG_STATUS, 1)[0] & OSF
        except OSError:
            self.errors += 1
            return False

    def temp_dc(self):
        """Temperature in 0.1 °C, or None."""
        try:
            msb, lsb = self.i2c.readfrom_mem(self.addr, REG_TEMP, 2)
        except OSError:
            self.errors += 1
            return None
        quarters = ((msb << 2) | (lsb >> 6))
        if msb & 0x80:
            quarters -= 1024
        return (quarters * 25) // 10
