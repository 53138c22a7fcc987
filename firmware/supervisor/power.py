"""Battery, solar and temperature readings, and the low-voltage guard with hysteresis.

Pure: raw ADC counts and times go in, millivolts and decisions come out, so the calibration
maths and the cut/recover rules are tested on the host for every chemistry.
"""

TEMP_UNKNOWN = -32768
EMA_SHIFT = 2  # smoothing: each new sample weighs 1/4 (ADC noise, Pi load steps)


def adc_to_mv(raw, vref_mv, ratio, gain, offset_mv):
    """Pack voltage in mV from raw ``read_u16`` counts through a resistor divider.

    ``ratio`` is (R_top + R_bottom) / R_bottom; ``gain`` and ``offset_mv`` are the field
    calibration (measure the pack with a multimeter, set gain = true / reported).
    """
    mv = int(raw * vref_mv * ratio * gain / 65535 + offset_mv + 0.5)
    if mv < 0:
        return 0
    return mv if mv < 65535 else 65535


class VoltageGuard:
    """Low-voltage cut-off with a separate recovery threshold (hysteresis).

    Both edges need the condition to hold for ``confirm_ms``: a Pi booting or an IR
    illuminator switching on sags a tired pack for a moment, and a resting pack rebounds
    for a while after the load is cut; neither should flip the state.
    """

    def __init__(self, cut_mv, recover_mv, confirm_ms):
        self.cut_mv = cut_mv
        self.recover_mv = recover_mv
        self.confirm_ms = confirm_ms
        self.low = False
        self._since = None

    def update(self, mv, now_ms):
        """Feed a reading; returns "cut" or "recover" on the tick the state flips, else None.

        ``mv`` 0 or None (no battery divider fitted / not read yet) never flips anything.
        """
        if not mv:
            self._since = None
            return None
        crossing = mv >= self.recover_mv if self.low else mv < self.cut_mv
        if not crossing:
            self._since = None
            return None
        if self._since is None:
            self._since = now_ms
        if now_ms - self._since < self.confirm_ms:
            return None
        self._since = None
        self.low = not self.low
        return "cut" if self.low else "recover"


class Meter:
    """Samples battery, solar and temperature every ``adc_period_ms`` through the HAL."""

    def __init__(self, hal, cfg):
        self.hal = hal
        self.cfg = cfg
        self.battery_mv = 0
        self.solar_mv = 0
        self.temp_dc = TEMP_UNKNOWN
        self._next_ms = None

    def _read(self, name):
        c = self.cfg
        if not c[name + "_fitted"]:
            return 0
        raw = self.hal.read_adc(name)
        if raw is None:
            return 0
        return adc_to_mv(raw, c["adc_vref_mv"], c[name + "_ratio"], c[name + "_gain"],
                         c[name + "_offset_mv"])

    @staticmethod
    def _smooth(old, new):
        if not old or not new:
            return new
        return old + ((new - old) >> EMA_SHIFT)

    def sample(self, now_ms):
        """Take a reading if one is due; returns True when it did."""
        if self._next_ms is not None and now_ms < self._next_ms:
            return False
        self._next_ms = now_ms + self.cfg["adc_period_ms"]
        self.battery_mv = self._smooth(self.battery_mv, self._read("battery"))
        self.solar_mv = self._smooth(self.solar_mv, self._read("solar"))
        t = self.hal.read_temp_dc()
        self.temp_dc = TEMP_UNKNOWN if t is None else max(-32767, min(32767, int(t)))
        return True

    def solar_charging(self):
        return bool(self.solar_mv) and bool(self.battery_mv) and (
            self.solar_mv > self.battery_mv + self.cfg["solar_charging_margin_mv"])
