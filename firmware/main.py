"""Device entry point of the supervisor (copied to the board's flash as main.py).

Boot: read config.json (bad values → defaults, counted, LED fault 2), set the pins up, give a
technician a 5 s window (LED on) to interrupt with ``mpremote`` before the hardware watchdog
starts — once started it cannot be stopped, and a board that resets every 8 s while you try
to copy files is no fun — then tick the supervisor forever.

Sleeping between ticks: while the Pi is up, ``time.sleep_ms`` (the UART must keep receiving
and the tick is short). While the Pi is off — most of a gated trap's life — ``machine.lightsleep``
(``idle_sleep = "light"``, the default): about 1.5 mA instead of ~26 mA awake, which is what
makes gated mode last months (``camtrap power-budget --mcu-idle``). The hardware watchdog is
fed before each sleep, and a sleep never exceeds ``idle_tick_ms`` (≤ 2 s, well inside the
8.4 s WDT). An RP2 power-control library warns that lightsleep on MicroPython 1.24/1.25
resets registers its code relies on (formats-and-field.md §5.3): ``idle_sleep = "idle"`` in
config.json falls back to ``sleep_ms`` if a release misbehaves on a board. The standby draw
is not measured here; for µA-class standby the reference's judgement is a C firmware with
dormant sleep (same protocol).

Time: ``time.ticks_ms`` wraps (2**30 ms on rp2, about 12.4 days), so ``mono.Mono`` extends
it to the monotonic count the logic expects. The PIR IRQ only appends the raw tick to a list; the
loop converts and hands it over, so no shared state is touched from interrupt context.
"""

import time

MAINT_WINDOW_MS = 5000
MAX_EDGES = 8

_edges = []


def _pir_irq(_pin):
    if len(_edges) < MAX_EDGES:
        _edges.append(time.ticks_ms())


def read_config_text():
    try:
        with open("config.json") as fh:
            return fh.read(8193)
    except OSError:
        return None


def main():
    import board
    import config
    import logic
    import machine
    from mono import Mono

    cfg, bad = config.loads(read_config_text())
    if bad:
        print("config.json: refused, defaults used:", bad)
    hal = board.Board(cfg)
    hal.set_led(True)
    time.sleep_ms(MAINT_WINDOW_MS)
    hal.set_led(False)
    hal.start_wdt()
    mono = Mono(time.ticks_ms, time.ticks_diff)
    sup = logic.Supervisor(hal, cfg, len(bad), mono.now)
    hal.pir_pin.irq(trigger=machine.Pin.IRQ_RISING, handler=_pir_irq)
    while True:
        now, raw = mono.advance()
        while _edges:
            sup.on_pir(mono.at(_edges.pop(0), now, raw))
        sup.tick(now)
        if sup.may_lightsleep():
            machine.lightsleep(sup.sleep_ms())
        else:
            time.sleep_ms(sup.sleep_ms())


if __name__ == "__main__":
    main()
