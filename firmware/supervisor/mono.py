"""A monotonic millisecond count from MicroPython's wrapping ``time.ticks_ms``.

``ticks_ms`` wraps at 2**30 ms on rp2 (about 12.4 days) and must only be compared with
``ticks_diff``; the supervisor's logic wants plain, ever-growing ints instead (a trap runs for
months). The tick functions are injected so the wrap is tested on the host.
"""


class Mono:
    """A monotonic ms count from a wrapping tick counter (``ticks_ms``/``ticks_diff``)."""

    def __init__(self, ticks_ms, ticks_diff):
        self._ticks_ms = ticks_ms
        self._diff = ticks_diff
        self._last = ticks_ms()
        self.now = 0

    def advance(self):
        """Read the tick counter; returns (monotonic now, raw tick)."""
        raw = self._ticks_ms()
        self.now += self._diff(raw, self._last)
        self._last = raw
        return self.now, raw

    def at(self, raw, now, raw_now):
        """Monotonic time of an earlier raw tick ``raw``, given the pair from :meth:`advance`."""
        return now - self._diff(raw_now, raw)
