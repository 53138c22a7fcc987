"""When the Pi should be powered: the mode, schedule windows and the hybrid battery rule.

The MCU only ever *powers on* for these reasons; it never cuts a healthy Pi because a window
closed. Switching off is the Pi's orderly POWER_OFF (it knows the schedule it sent and reads
the battery from STATUS), so a window ending mid-upload cannot corrupt anything.

Window semantics: minutes after UTC midnight, start inclusive, end exclusive; ``end < start``
wraps past midnight (dusk-to-dawn); ``start == end`` is empty.
"""

import proto

HYBRID_HYST_MV = 200  # hybrid battery rule: on at >= above, off again below above - this


def in_window(minute, windows):
    for w in windows:
        start, end = w[0], w[1]
        if start <= end:
            if start <= minute < end:
                return True
        elif minute >= start or minute < end:
            return True
    return False


def minute_of_day(unix_s):
    return (unix_s % 86400) // 60


class PowerPlan:
    """Mode + windows + hybrid threshold, and the power-on reasons they give at a time.

    ``want(now_minute, battery_mv)`` answers the wake reason to power on with, or None.
    Two kinds of reason:

    * level: always_on, or (hybrid) inside a window / battery above the threshold. After the
      Pi asked to be switched off (:meth:`disarm`), a level reason powers it on again only
      once the condition has gone false and come back — otherwise an always-on Pi could never
      shut itself down for maintenance and a hybrid one would bounce straight back on;
    * edge (gated): the start of a window powers the Pi on once (e.g. a nightly upload).
    """

    def __init__(self, mode, windows, hybrid_above_mv):
        self.mode = mode
        self.windows = windows
        self.hybrid_above_mv = hybrid_above_mv
        self._armed = True
        self._was_in = None
        self._battery_on = False

    def set(self, mode, windows, hybrid_above_mv):
        self.mode = mode
        self.windows = windows
        self.hybrid_above_mv = hybrid_above_mv
        self._was_in = None

    def disarm(self):
        self._armed = False

    def _battery_rule(self, battery_mv):
        above = self.hybrid_above_mv
        if not above or not battery_mv:
            self._battery_on = False
        elif battery_mv >= above:
            self._battery_on = True
        elif battery_mv < above - HYBRID_HYST_MV:
            self._battery_on = False
        return self._battery_on

    def want(self, minute, battery_mv):
        """Wake reason to power on with now, or None. ``minute`` None = RTC not valid."""
        inside = minute is not None and in_window(minute, self.windows)
        started = inside and self._was_in is False
        self._was_in = inside if minute is not None else None
        battery = self._battery_rule(battery_mv)
        level = None
        if self.mode == proto.MODE_ALWAYS_ON:
            level = proto.WAKE_POWER_ON
        elif self.mode == proto.MODE_HYBRID:
            if inside:
                level = proto.WAKE_SCHEDULE
            elif battery:
                level = proto.WAKE_BATTERY
        if level is None:
            self._armed = True
        elif self._armed:
            return level
        if self.mode == proto.MODE_GATED and started:
            return proto.WAKE_SCHEDULE
        return None
