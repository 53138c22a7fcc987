"""A fake of MicroPython's ``machine`` module (the parts board.py uses), for host tests only.

Installed as ``sys.modules["machine"]`` by the board scenarios, so board.py's glue — pin
levels and polarity, ADC sources, the UART's None-when-empty reads, reset-cause mapping, the
state file — runs on CPython and MicroPython without a Pico. Class-level dicts hold the
"hardware" the test drives; :func:`reset` clears them.
"""

from fakes import FakeI2C

PWRON_RESET = 1
WDT_RESET = 3
_cause = [PWRON_RESET]


def reset_cause():
    return _cause[0]


def set_reset_cause(c):
    _cause[0] = c


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8
    levels = {}
    modes = {}
    pulls = {}

    def __init__(self, pin_id, mode=-1, pull=-1, value=None):
        self.id = pin_id
        if mode != -1:
            Pin.modes[pin_id] = mode
        if pull != -1:
            Pin.pulls[pin_id] = pull
        if value is not None:
            Pin.levels[pin_id] = value
        self.handler = None

    def value(self, v=None):
        if v is None:
            return Pin.levels.get(self.id, 0)
        Pin.levels[self.id] = v
        return None

    def irq(self, trigger=0, handler=None):
        self.handler = handler


class ADC:
    raw = {}

    def __init__(self, src):
        self.key = src.id if isinstance(src, Pin) else src

    def read_u16(self):
        return ADC.raw.get(self.key, 0)


class UART:
    last = []

    def __init__(self, uart_id, baudrate=9600, bits=8, parity=None, stop=1, tx=None, rx=None,
                 rxbuf=256, timeout=0):
        self.id = uart_id
        self.baudrate = baudrate
        self.inbox = bytearray()
        self.sent = bytearray()
        UART.last.append(self)

    def any(self):
        return len(self.inbox)

    def read(self, n=-1):
        if not self.inbox:
            return None  # MicroPython's UART.read returns None, not b"", when nothing came
        data = bytes(self.inbox[:n]) if n >= 0 else bytes(self.inbox)
        self.inbox = self.inbox[len(data):]
        return data

    def write(self, data):
        self.sent.extend(data)
        return len(data)


class I2C:
    device = [None]

    def __init__(self, i2c_id, sda=None, scl=None, freq=400000):
        self.freq = freq

    def readfrom_mem(self, addr, reg, n):
        return I2C.device[0].readfrom_mem(addr, reg, n)

    def writeto_mem(self, addr, reg, buf):
        I2C.device[0].writeto_mem(addr, reg, buf)


class RTC:
    def __init__(self):
        self.dt = (2021, 1, 1, 4, 0, 0, 0, 0)

    def datetime(self, dt=None):
        if dt is None:
            return self.dt
        self.dt = tuple(dt)
        return None


class WDT:
    started = []

    def __init__(self, timeout=5000):
        self.timeout = timeout
        self.feeds = 0
        WDT.started.append(self)

    def feed(self):
        self.feeds += 1


def reset(unix_s=None):
    Pin.levels = {}
    Pin.modes = {}
    Pin.pulls = {}
    ADC.raw = {}
    UART.last = []
    WDT.started = []
    I2C.device[0] = FakeI2C(unix_s, osf=False)
    _cause[0] = PWRON_RESET
