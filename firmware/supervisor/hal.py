"""The supervisor's hardware interface: everything the logic touches, and nothing more.

The logic (logic.py and friends) only ever calls these methods, so it runs unchanged on the
RP2040 (board.py implements them with ``machine``) and on a host under CPython or MicroPython
(fakes.py). Keeping the interface this small is what makes "the simulator *is* the firmware"
possible on the Pi side.

Conventions: voltages come back raw (ADC counts 0–65535, as ``machine.ADC.read_u16``) and are
converted in the logic with the calibration from config, so the maths is tested on the host;
times are plain ints; a part that is missing or fails answers None instead of raising.
"""


class Hal:
    """Base class documenting the interface; every method must be overridden."""

    # --- Pi power and signals -------------------------------------------------------------
    def set_pi_power(self, on):
        """Drive the Pi's load switch (True = Pi powered)."""
        raise NotImplementedError

    def pi_halted(self):
        """True while the Pi's halt signal is high (gpio-poweroff: the Pi has halted)."""
        raise NotImplementedError

    def set_ir(self, on):
        """Switch the IR illuminator rail, where one is fitted (a no-op otherwise)."""
        raise NotImplementedError

    def set_led(self, on):
        raise NotImplementedError

    def pir_level(self):
        """The PIR output's current level (True = motion)."""
        raise NotImplementedError

    # --- measurements ---------------------------------------------------------------------
    def read_adc(self, name):
        """Raw ADC counts 0–65535 for ``"battery"`` or ``"solar"``, or None if unavailable."""
        raise NotImplementedError

    def read_temp_dc(self):
        """Temperature in 0.1 °C (DS3231 sensor or the MCU's), or None."""
        raise NotImplementedError

    # --- RTC --------------------------------------------------------------------------------
    def rtc_read(self):
        """Unix seconds UTC from the RTC, or None when it cannot be read."""
        raise NotImplementedError

    def rtc_set(self, unix_s):
        """Set the RTC; returns True on success. Also marks the RTC valid."""
        raise NotImplementedError

    def rtc_valid(self):
        """False when the RTC lost power since it was last set (DS3231 OSF flag)."""
        raise NotImplementedError

    # --- UART to the Pi ---------------------------------------------------------------------
    def uart_read(self):
        """Whatever bytes have arrived (b"" when none); never blocks."""
        raise NotImplementedError

    def uart_write(self, data):
        raise NotImplementedError

    # --- the MCU itself ---------------------------------------------------------------------
    def wdt_feed(self):
        """Feed the hardware watchdog."""
        raise NotImplementedError

    def reset_cause(self):
        """Why the MCU last reset, as a protocol ``reset_cause`` code (proto.RESET_*)."""
        raise NotImplementedError

    def load_state(self):
        """Persisted small state (a dict, e.g. the last SCHEDULE) or None."""
        raise NotImplementedError

    def save_state(self, state):
        """Persist ``state`` (a JSON-able dict); called only when it changes (flash wear)."""
        raise NotImplementedError
