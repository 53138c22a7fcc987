"""The supervisor's side of the UART conversation: answering the Pi, HELLO, TRIGGER frames.

A mixin of logic.Supervisor (kept apart so neither file grows past a screenful of concerns): it
uses the supervisor's state and calls back into its power methods (``_begin_shutdown``).
Every command is answered — ACK with a result, or STATUS for GET_STATUS — echoing the
request's seq, so the Pi can match replies without a table of outstanding requests.
"""

import proto

OFF = proto.STATE_OFF
BOOTING = proto.STATE_BOOTING
UP = proto.STATE_UP
SHUTTING_DOWN = proto.STATE_SHUTTING_DOWN
POWERED = (BOOTING, UP, SHUTTING_DOWN)
HELLO_INTERVAL_MS = 2000
TRIGGER_BURST = 8  # TRIGGER frames per tick at most (the UART FIFO, a just-booted Pi)


class LinkMixin:
    def _send(self, mtype, fields, seq=None):
        if seq is None:
            seq = self.seq
            self.seq = (self.seq + 1) & 0xFF
        try:
            data = proto.encode(mtype, seq, fields)
        except ValueError:
            self.counts["encode_errors"] += 1
            return
        self.hal.uart_write(data)

    def _ack(self, frame, result):
        if result:
            self.counts["refused"] += 1
        self._send(proto.ACK, {"acked_type": frame.type, "result": result}, frame.seq)

    def _handle(self, frame, now):
        if frame.error:
            self._ack(frame, frame.error)
            return
        self.counts["commands"] += 1
        if self.state in POWERED:
            self.link_up = True
            if self.state == BOOTING:
                self.state = UP
        t = frame.type
        f = frame.fields
        if t == proto.GET_STATUS:
            self._send(proto.STATUS, self.status_fields(now), frame.seq)
            return
        result = proto.RESULT_OK
        if t == proto.HEARTBEAT:
            self.hb_seen = True
            self._last_hb_ms = now
            self.failed_boots = 0
            self.health = f["health"]
        elif t == proto.SET_TIME:
            if self.hal.rtc_set(f["unix_s"]):
                self.clock.set(now, f["unix_s"])
                self.rtc_valid = True
            else:
                result = proto.RESULT_REFUSED
        elif t == proto.POWER_OFF:
            result = self._shutdown_cmd(now, f["timeout_s"] * 1000, (OFF, None, None))
            if result == proto.RESULT_OK:
                self.plan.disarm()
        elif t == proto.POWER_CYCLE:
            result = self._shutdown_cmd(now, f["grace_s"] * 1000,
                                        (OFF, f["off_s"] * 1000, proto.WAKE_REQUESTED))
        elif t == proto.SCHEDULE:
            self._set_schedule(f)
        elif t == proto.TRIGGER_ACK:
            self.triggers.ack(f["up_to_number"])
        self._ack(frame, result)

    def _shutdown_cmd(self, now, delay_ms, after):
        if self.state not in (UP, SHUTTING_DOWN):
            return proto.RESULT_REFUSED
        self._begin_shutdown(now, delay_ms, after)
        return proto.RESULT_OK

    def _set_schedule(self, f):
        old = (self.plan.mode, self.plan.windows, self.plan.hybrid_above_mv)
        new = (f["mode"], f["windows"], f["hybrid_above_mv"])
        self.plan.set(*new)
        if old != new:
            self.hal.save_state({"schedule": {"mode": new[0], "windows": new[1],
                                              "hybrid_above_mv": new[2]}})

    def _send_due(self, now):
        if self.state == BOOTING and not self.link_up and now >= self._next_hello:
            self._send(proto.HELLO, self.hello_fields())
            self._next_hello = now + HELLO_INTERVAL_MS
        if self.state == UP and self.link_up:
            for it in self.triggers.due(now, self.cfg["trigger_resend_ms"], TRIGGER_BURST):
                self._send(proto.TRIGGER, {"number": it[0], "rtc_time": it[1], "rtc_ms": it[2],
                                           "flags": it[3]})

