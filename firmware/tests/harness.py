"""Test rig for the supervisor: the real logic on FakeHal, a main loop, and a scripted Pi.

Plain Python that runs on CPython (pytest) and on MicroPython (tests/run_micropython.mjs).
"""

import binascii
import json

import config
import logic
import proto
from fakes import FakeHal


def _here():
    f = __file__.replace("\\", "/")
    return f.rsplit("/", 1)[0] if "/" in f else "."


def vectors_path():
    here = _here()
    parent = here.rsplit("/", 1)[0] if "/" in here else ".."
    return parent + "/protocol/vectors.json"


_VECTORS = []


def vectors():
    if not _VECTORS:
        with open(vectors_path()) as fh:
            _VECTORS.append(json.load(fh))
    return _VECTORS[0]


def unhex(s):
    return binascii.unhexlify(s)


def hexs(b):
    return binascii.hexlify(bytes(b)).decode()


class PiPeer:
    """The Pi's end of the UART, scripted by the test: encodes commands, decodes what came."""

    def __init__(self, hal):
        self.hal = hal
        self.rx = proto.Receiver(proto.MCU_TO_PI)
        self.seq = 0
        self.got = []

    def send(self, mtype, fields=None):
        seq = self.seq
        self.seq = (self.seq + 1) & 0xFF
        self.hal.rx.extend(proto.encode(mtype, seq, fields or {}))
        return seq

    def send_raw(self, data):
        self.hal.rx.extend(data)

    def poll(self, now_ms):
        data = bytes(self.hal.tx)
        self.hal.tx = bytearray()
        new = self.rx.feed(data, now_ms)
        self.got.extend(new)
        return new

    def of(self, mtype):
        return [f for f in self.got if f.type == mtype]

    def clear(self):
        self.got = []


class Rig:
    """A supervisor on fakes with a main loop that sleeps as main.py does."""

    def __init__(self, overrides=None, unix_s=1790000000, rtc_valid=True, battery_mv=13200,
                 solar_mv=0, state=None, cause=proto.RESET_POWER_ON, start=False):
        ov = {"power_on_at_start": start}
        if overrides:
            for k in overrides:
                ov[k] = overrides[k]
        self.cfg, self.bad = config.merge(ov)
        self.hal = FakeHal(unix_s, rtc_valid, battery_mv, solar_mv,
                           self.cfg["adc_vref_mv"], self.cfg["battery_ratio"],
                           self.cfg["solar_ratio"])
        self.hal.state = state
        self.hal.cause = cause
        self.now = 0
        self.last_tick = 0
        self.powered_at = None
        self.ticks = 0
        self.hal.advance_to(0)
        self.sup = logic.Supervisor(self.hal, self.cfg, len(self.bad), 0)
        self.pi = PiPeer(self.hal)

    def step(self):
        self.last_tick = self.now
        self.hal.advance_to(self.now)
        self.sup.tick(self.now)
        self.ticks += 1
        self.pi.poll(self.now)
        self.now += self.sup.sleep_ms()

    def run(self, ms):
        end = self.now + ms
        while self.now < end:
            self.step()

    def run_until(self, cond, limit_ms):
        """Tick until ``cond()`` holds; returns the time of the tick after which it did."""
        end = self.now + limit_ms
        while self.now <= end:
            self.step()
            if cond():
                return self.last_tick
        raise AssertionError(f"condition not reached within {limit_ms} ms")

    def pir(self, hold_ms=300, early_ms=0):
        """A PIR pulse: the IRQ's edge ``early_ms`` before the next tick, high for ``hold_ms``."""
        self.hal.pir = True
        self.sup.on_pir(self.now - early_ms)
        self.run(hold_ms)
        self.hal.pir = False

    def state(self):
        return self.sup.state

    def status(self):
        """Ask for STATUS the way the Pi does; returns its fields."""
        seq = self.pi.send(proto.GET_STATUS)
        self.pi.clear()
        self.step()
        st = [f for f in self.pi.of(proto.STATUS) if f.seq == seq]
        assert len(st) == 1, self.pi.got
        return st[0].fields

    def acks(self):
        return [(f.fields["acked_type"], f.fields["result"], f.seq)
                for f in self.pi.of(proto.ACK)]

    def wait_power_on(self, limit_ms):
        """Tick until the Pi is powered; returns the first HELLO's fields."""
        self.pi.clear()
        self.powered_at = self.run_until(lambda: self.hal.pi_power, limit_ms)
        hellos = self.pi.of(proto.HELLO)
        assert hellos, "HELLO on the power-on tick"
        return hellos[0].fields

    def boot_pi(self):
        """The Pi answers the HELLO with a heartbeat (what the real Pi side does first)."""
        self.run_until(lambda: self.pi.of(proto.HELLO), 10000)
        self.pi.send(proto.HEARTBEAT, {"health": 1})
        self.step()
        assert self.sup.state == proto.STATE_UP, self.sup.state
