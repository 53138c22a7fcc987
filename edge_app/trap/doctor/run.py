"""The doctor's sequence: the config first (everything else needs it), then each part, each
bounded in time. A config that cannot be read is still a table: its line fails and every other
line is skipped, so ``--json`` readers always get the same shape."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from edge_app.core.clock import Clock, SystemClock
from edge_app.core.errors import ConfigError
from edge_app.trap.doctor.context import Ctx, Probes
from edge_app.trap.doctor.report import Check, bounded

Step = tuple[str, Callable[[Ctx], Check], str]


def steps() -> list[Step]:
    """(name, check, fix when it hangs), in the order they run: the MCU before the clock (the
    clock line trusts the RTC the MCU line found set)."""
    from edge_app.trap.doctor.broker import check_broker
    from edge_app.trap.doctor.cellular import check_cellular
    from edge_app.trap.doctor.devices import (
        STOP_SERVICE,
        check_camera,
        check_lora,
        check_mcu,
        check_pir,
    )
    from edge_app.trap.doctor.local import check_clock, check_disk, check_models, check_outbox

    return [
        ("models", check_models, "the models folder is on a slow or failing card"),
        ("camera", check_camera, f"camera hung: power-cycle the unit; {STOP_SERVICE}"),
        ("pir", check_pir, STOP_SERVICE),
        ("mcu", check_mcu, STOP_SERVICE),
        ("clock", check_clock, "check chronyd (`chronyc tracking`)"),
        ("lora", check_lora, STOP_SERVICE),
        ("cellular", check_cellular, "ModemManager does not answer: `systemctl status "
         "ModemManager`"),
        ("mqtt", check_broker, "check the network and mqtt.host"),
        ("disk", check_disk, "the card does not answer: check it (fsck) or replace it"),
        ("outbox", check_outbox, "the database is locked: stop the trap first"),
    ]


def run_doctor(config_path: str, models: str | None = None, *, timeout_s: float = 20.0,
               pir_window_s: float = 2.0, probes: Probes | None = None,
               clock: Clock | None = None) -> list[Check]:
    """Every check, in order; never raises for what it finds."""
    from edge_app.core import config

    names = [name for name, _fn, _fix in steps()]
    try:
        cfg = config.load(config_path)
    except ConfigError as e:
        return [Check("config", "fail", f"{config_path}: {e}",
                      f"fix {e.key} (`camtrap check-config --explain` lists every key)"),
                *(Check(n, "skip", "config unreadable") for n in names)]
    except OSError as e:
        return [Check("config", "fail", f"{config_path}: {e.strerror or e}",
                      "give --config the unit's file (/etc/camtrap/camtrap.toml)"),
                *(Check(n, "skip", "config unreadable") for n in names)]
    out = [Check("config", "pass", f"{config_path}: unit {cfg.unit.id or '?'}, backend "
                 f"{cfg.hardware.backend}")]
    ctx = Ctx(cfg, models, timeout_s, pir_window_s, clock or SystemClock(), probes or Probes())
    for name, fn, fix in steps():
        out.append(bounded(name, partial(fn, ctx), timeout_s, fix))
    return out
