"""Status LED blink codes: readable by a technician at the tree without any tool.

Every ``CYCLE_MS`` (10 s) the LED shows one group of short blinks for the Pi's state, then, if
something needs attention, one long blink followed by short blinks for the fault. A single
flash on each accepted PIR trigger makes a walk test possible. Short = 200 ms on / 300 ms off,
long = 1 s on / 500 ms off (long enough to be seen at the 200 ms idle tick). The codes are
listed in firmware/README.md; keep the two in step.
"""

import proto

CYCLE_MS = 10000
SHORT_ON, SHORT_OFF = 200, 300
LONG_ON, LONG_OFF = 1000, 500
GAP_MS = 800
PIR_FLASH_MS = 200

# Pi state -> number of short blinks
STATE_BLINKS = {
    proto.STATE_OFF: 1,
    proto.STATE_BOOTING: 2,
    proto.STATE_UP: 3,
    proto.STATE_SHUTTING_DOWN: 4,
    proto.STATE_LOW_VOLTAGE_OFF: 5,
    proto.STATE_BACKOFF: 6,
}

# faults, by priority (only the first present is shown): code -> blinks after the long one
FAULT_RTC = 1  # RTC not set since its battery was fitted (or unreadable)
FAULT_CONFIG = 2  # config.json had bad values (defaults used for them)
FAULT_MCU_WDT = 3  # the MCU itself was last reset by its watchdog


def pattern(state, fault):
    """The cycle as a list of (on, duration_ms) segments."""
    segs = []
    for _ in range(STATE_BLINKS.get(state, 1)):
        segs.append((True, SHORT_ON))
        segs.append((False, SHORT_OFF))
    if fault:
        segs.append((False, GAP_MS))
        segs.append((True, LONG_ON))
        segs.append((False, LONG_OFF))
        for _ in range(fault):
            segs.append((True, SHORT_ON))
            segs.append((False, SHORT_OFF))
    return segs


def level(now_ms, state, fault, flash_until_ms=None):
    """Whether the LED is on at ``now_ms``."""
    if flash_until_ms is not None and now_ms < flash_until_ms:
        return True
    t = now_ms % CYCLE_MS
    for on, dur in pattern(state, fault):
        if t < dur:
            return on
        t -= dur
    return False
