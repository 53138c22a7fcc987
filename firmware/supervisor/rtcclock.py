"""Wall-clock time with milliseconds from a seconds-only RTC, and civil-date maths.

The DS3231 counts whole seconds. To stamp a PIR edge to the millisecond, the clock notes the
MCU tick at which the RTC's seconds value last changed (the "second edge") and adds the ms
elapsed since. The edge is seen at tick resolution, so stamps are good to one tick (50 ms
while the Pi is up, 200 ms idle with the defaults) once a change has been observed; until
then (the first second after start or a failed read) the ms are a best guess. Writing the
DS3231's seconds register restarts its countdown, so right after SET_TIME the edge is exact.
"""


class RtcClock:
    def __init__(self):
        self.sec = None
        self.edge_ms = None

    def sample(self, now_ms, rtc_sec):
        """Feed an RTC reading taken at ``now_ms`` (None when the read failed)."""
        if rtc_sec is None:
            return
        if rtc_sec != self.sec:
            self.sec = rtc_sec
            self.edge_ms = now_ms

    def set(self, now_ms, unix_s):
        self.sec = unix_s
        self.edge_ms = now_ms

    def at(self, t_ms):
        """(unix_s, ms) at MCU time ``t_ms`` (may be before the last sample); (0, 0) unknown."""
        if self.sec is None:
            return 0, 0
        d = t_ms - self.edge_ms
        return self.sec + d // 1000, d % 1000


def days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (no time module needed: epochs
    differ between MicroPython ports)."""
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(z):
    """(year, month, day) of day number ``z`` since 1970-01-01."""
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return (y + 1 if m <= 2 else y), m, d


def to_unix(y, mo, d, h, mi, s):
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s


def from_unix(t):
    """(year, month, day, hour, minute, second, weekday 1=Monday..7)."""
    days, rem = t // 86400, t % 86400
    y, mo, d = civil_from_days(days)
    wd = (days + 3) % 7 + 1  # 1970-01-01 was a Thursday
    return y, mo, d, rem // 3600, (rem % 3600) // 60, rem % 60, wd
