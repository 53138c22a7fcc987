"""The doctor's ``cellular`` line: the modem under ModemManager, its network and signal, and
whether the SIM's data plan lasts the month.

Read only: the check asks ModemManager what it knows and reads the data budget's saved state;
it never enables the modem or brings a bearer up (the trap's cellular stage owns that, and a
connect would spend the plan). Order of what it says, worst first: no modem is a failure (the
trap cannot send), no network or no signal a warning (the forest's coverage comes and goes),
then the plan: a warning once the month is projected past :data:`PLAN_WARN` of it, before the
trap starts holding full images.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from edge_app.trap.doctor.context import Ctx
from edge_app.trap.doctor.report import Check

PLAN_WARN = 0.9
"""Projected use beyond this fraction of ``cellular.plan_mb``: warn."""
MB = 1_000_000


def check_cellular(ctx: Ctx) -> Check:
    c = ctx.cfg.cellular
    if not c.enabled:
        return Check("cellular", "skip", "cellular off (cellular.enabled false)")
    from edge_app.trap.cellular.modem import ModemManagerClient

    bus = ctx.probes.modem_bus or ("SESSION" if ctx.cfg.hardware.backend == "sim"
                                   else "SYSTEM")
    client = ModemManagerClient(bus, timeout_s=min(5.0, ctx.timeout_s / 4), clock=ctx.clock)
    try:
        snap = client.snapshot()
    finally:
        client.close(final=True)
    if snap.state == "absent":
        why = client.last_error or "ModemManager lists no modem"
        return Check("cellular", "fail", f"no modem: {why}",
                     "check the modem's USB cable and power; `mmcli -L` lists what "
                     "ModemManager sees (`systemctl status ModemManager`)")
    tech = ",".join(snap.technologies) or "?"
    quality = "?" if snap.signal_percent is None else f"{snap.signal_percent} %"
    detail = (f"modem {snap.state}, {snap.registration or 'registration ?'}, "
              f"{snap.operator_name or 'operator ?'}, {tech}, signal {quality}")
    if snap.state in ("failed", "locked"):
        return Check("cellular", "fail", detail,
                     "the SIM is locked or missing: check it (`mmcli -m any`); set its PIN "
                     "off")
    registered = snap.state in ("registered", "connecting", "connected", "disconnecting") or (
        snap.registration in ("home", "roaming"))
    if snap.state != "disabled" and (not registered or snap.signal_percent == 0):
        return Check("cellular", "warn", detail + ": no network",
                     "check the antenna and its cable; the site may have no coverage "
                     "(the trap keeps its outbox and sends when the network is back)")
    plan = _plan_line(ctx)
    if plan is not None:
        text, over = plan
        detail += f"; {text}"
        if over:
            return Check("cellular", "warn", detail,
                         "full images will be held: raise cellular.plan_mb (a larger plan), "
                         "send fewer (mqtt.send_images = false) or use cellular.mode = "
                         "'windows'")
    return Check("cellular", "pass", detail)


def _plan_line(ctx: Ctx) -> tuple[str, bool] | None:
    """The month so far from the cellular stage's saved state; (text, over the warn line)."""
    from edge_app.trap.cellular.budget import DataBudget
    from edge_app.trap.cellular.stage import STATE_FILE

    c = ctx.cfg.cellular
    if c.plan_mb <= 0:
        return None
    tz = ZoneInfo(c.timezone)
    wall = ctx.clock.wall()
    state = DataBudget.load(Path(ctx.cfg.storage.root) / STATE_FILE)
    budget = DataBudget(c.plan_mb, c.cycle_day, c.full_image_margin, tz, wall, state)
    u = budget.usage(wall)
    end = datetime.fromtimestamp(u.cycle_end, tz).strftime("%d %b")
    text = (f"data {u.used_bytes / MB:.1f} of {c.plan_mb:g} MB, "
            f"{u.projected_bytes / MB:.1f} MB projected by {end}")
    return text, u.projected_bytes > PLAN_WARN * c.plan_mb * MB
