"""PIR triggers: a debounce / hold-off filter and the bounded queue of not-yet-acknowledged ones.

Both are pure and clock-driven (times are passed in), so a day of PIR activity is tested in
milliseconds on the host. The rules match the Pi-side ``TriggerFilter``
(edge_app/trap/hardware/trigger.py), so a trigger means the same thing whichever side saw it:

* a rising edge becomes a trigger once the pin has stayed high for ``debounce_ms`` and carries
  the time of the *edge* (the IRQ's), not of the tick that noticed it;
* hold-off counts from the previous accepted trigger; an edge inside it is suppressed, but a
  pin still high when hold-off ends re-fires (an HC-SR501 in retrigger mode holds its output
  high while motion continues, so "still high" *is* the re-trigger);
* a pin high without a break for ``stuck_ms`` stops re-firing until it goes low (a faulty or
  sun-heated sensor must not drain the battery by waking the Pi forever).
"""


class PirFilter:
    def __init__(self, debounce_ms, holdoff_ms, stuck_ms):
        self.debounce_ms = debounce_ms
        self.holdoff_ms = holdoff_ms
        self.stuck_ms = stuck_ms
        self._edge_ms = None
        self._last_ms = None
        self._high_since = None
        self._stuck = False
        self.accepted = 0
        self.refired = 0
        self.too_short = 0
        self.suppressed = 0
        self.stuck = 0

    def edge(self, t_ms):
        """A rising edge at ``t_ms`` (called from the pin IRQ: records, nothing else)."""
        if self._edge_ms is None:
            self._edge_ms = t_ms

    def pending(self):
        """True while an edge waits for its debounce (the main loop should tick soon)."""
        return self._edge_ms is not None

    def _holdoff_over(self, t_ms):
        return self._last_ms is None or t_ms - self._last_ms >= self.holdoff_ms

    def poll(self, now_ms, level):
        """Return the trigger time if one is due now (else None), given the pin's level."""
        if not level:
            self._high_since = None
            self._stuck = False
        elif self._high_since is None:
            self._high_since = self._edge_ms if self._edge_ms is not None else now_ms
        if self._edge_ms is not None:
            t = self._edge_ms
            if now_ms - t < self.debounce_ms:
                return None
            self._edge_ms = None
            if not level:
                self.too_short += 1
                return None
            if self._holdoff_over(t):
                return self._accept(t)
            self.suppressed += 1
            return None
        if not level or self.holdoff_ms == 0 or self._last_ms is None or self._stuck:
            return None
        if now_ms - self._high_since >= self.stuck_ms:
            self._stuck = True
            self.stuck += 1
            return None
        if self._holdoff_over(now_ms):
            self.refired += 1
            return self._accept(now_ms)
        return None

    def _accept(self, t_ms):
        self._last_ms = t_ms
        self.accepted += 1
        return t_ms


class TriggerQueue:
    """Triggers waiting for the Pi's TRIGGER_ACK, oldest first, at most ``cap``.

    Each entry is a list ``[number, rtc_time, rtc_ms, flags, sent_ms]`` (``sent_ms`` None
    until first sent). When full, the oldest is dropped and counted: the newest triggers are
    the ones an animal is still near.
    """

    def __init__(self, cap=64):
        self.cap = cap
        self.items = []
        self.total = 0
        self.dropped = 0

    def add(self, rtc_time, rtc_ms, flags):
        self.total += 1
        if len(self.items) >= self.cap:
            self.items.pop(0)
            self.dropped += 1
        self.items.append([self.total & 0xFFFFFFFF, rtc_time, rtc_ms, flags, None])
        return self.total

    def pending(self):
        return len(self.items)

    def ack(self, up_to):
        """Drop triggers numbered <= ``up_to``; returns how many went."""
        keep = [it for it in self.items if it[0] > up_to]
        n = len(self.items) - len(keep)
        self.items = keep
        return n

    def unsend(self):
        """Forget send times (a new boot of the Pi has seen none of them)."""
        for it in self.items:
            it[4] = None

    def due(self, now_ms, resend_ms, limit):
        """Entries to (re)send now, oldest first, at most ``limit``; marks them sent."""
        out = []
        for it in self.items:
            if len(out) >= limit:
                break
            if it[4] is None or now_ms - it[4] >= resend_ms:
                it[4] = now_ms
                out.append(it)
        return out
