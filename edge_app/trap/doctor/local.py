"""Checks of what is on the unit's card: models, free space, the outbox, the clock."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from edge_app.core.errors import ConfigError
from edge_app.trap.doctor.context import Ctx
from edge_app.trap.doctor.report import Check

MB = 1024 * 1024
OUTBOX_WARN_DEPTH = 1000
"""Unsent rows above this: the link has not kept up for a long time (a busy night of a trap
with receipts is a few hundred rows)."""
OUTBOX_WARN_AGE_S = 6 * 3600.0
"""The oldest unsent row older than this: the link has been down for hours."""
OUTBOX_FAIL_AGE_S = 3 * 86400.0
"""Older than this: days without a delivery; alerts are stuck on the card (images expire after
``outbox.image_expiry_s``, 7 days by default)."""


def check_models(ctx: Ctx) -> Check:
    """Every model the config names is present and matches its card's sha256
    (:func:`edge_app.trap.preflight.check_models`, the check ``run`` makes)."""
    from edge_app.trap.preflight import check_models as verify

    fix = ("run `camtrap models verify`; copy the model pack again (a changed byte means a "
           "damaged card or file)")
    try:
        folder = verify(ctx.cfg, ctx.models)
    except ConfigError as e:
        return Check("models", "fail", str(e), fix)
    det = ctx.cfg.detector
    names = ", ".join(n for n in (det.detector, det.classifier) if n)
    return Check("models", "pass", f"{names} match their cards (sha256) in {folder}")


def _existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_disk(ctx: Ctx) -> Check:
    """Free space against ``storage.min_free_mb`` (below it the trap prunes images), and the
    root writable (the same probe ``run`` makes)."""
    from edge_app.trap.preflight import check_writable
    from edge_app.trap.store.retention import statvfs_free

    st = ctx.cfg.storage
    root = Path(st.root)
    try:
        check_writable("storage.root", root)
    except ConfigError as e:
        return Check("disk", "fail", str(e), "fix the mount or the owner of storage.root "
                     "(sudo chown camtrap: <root>), or point storage.root at the data partition")
    free_mb = statvfs_free(_existing(root)) / MB
    detail = f"{free_mb:.0f} MB free on {root} (storage.min_free_mb {st.min_free_mb:g})"
    if free_mb < st.min_free_mb:
        return Check("disk", "fail", detail, "swap the card for an emptied one, or lower "
                     "storage.min_free_mb; the trap is pruning images to keep alerts")
    if free_mb < 2 * st.min_free_mb:
        return Check("disk", "warn", detail, "collect the card soon (camtrap export), the trap "
                     "starts pruning images at storage.min_free_mb")
    return Check("disk", "pass", detail)


def check_outbox(ctx: Ctx) -> Check:
    """How many messages wait to leave and since when, read-only (the daemon may be running;
    opening with :func:`~edge_app.trap.store.db.open_db` could migrate the file)."""
    from edge_app.trap.store.db import db_path

    path = db_path(ctx.cfg.storage.root)
    if not path.exists():
        return Check("outbox", "pass", "no database yet (a fresh unit)")
    fix = "check the link lines above (broker, modem); `camtrap outbox ls` shows what waits"
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            n, oldest = conn.execute(
                "SELECT COUNT(*), MIN(created) FROM outbox WHERE state IN "
                "('ready', 'inflight', 'acked-by-broker')").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        return Check("outbox", "fail", f"cannot read {path}: {e}",
                     "check the card (fsck) and storage.root")
    if not n:
        return Check("outbox", "pass", "empty: everything was delivered")
    age = max(0.0, time.time() - float(oldest))
    detail = f"{n} waiting, oldest {age / 3600:.1f} h"
    if age >= OUTBOX_FAIL_AGE_S:
        return Check("outbox", "fail", detail, fix)
    if n >= OUTBOX_WARN_DEPTH or age >= OUTBOX_WARN_AGE_S:
        return Check("outbox", "warn", detail, fix)
    return Check("outbox", "pass", detail)


def check_clock(ctx: Ctx) -> Check:
    """NTP or GPS: pass. Otherwise the MCU's RTC, if the MCU line found it valid: pass (the
    trap dates events by it). Neither: warn, events get the Pi's free-running time."""
    from edge_app.trap.hardware.factory import make_time_source

    source = ctx.probes.time_source or make_time_source(ctx.cfg.hardware.backend, ctx.clock)
    now = source()
    if now in ("ntp", "gps"):
        return Check("clock", "pass", f"synced by {now}")
    if ctx.found.get("rtc_valid"):
        return Check("clock", "pass", "not synced, but the MCU's RTC is set (events are dated "
                     "by it)")
    return Check("clock", "warn", "not synced (no NTP, no GPS) and no trusted RTC",
                 "give the unit a network for NTP once (the MCU's RTC then keeps the time), "
                 "or fit a GPS; check `timedatectl`")
