"""The doctor's result lines, the time bound around each check, and the two output forms.

Exit rule: 0 when no line fails (warnings allowed: a unit that is not joined to LoRaWAN yet,
or whose clock waits for NTP, still works and catches animals); 1 when any line fails. A
technician's script can then tell "go" from "fix this first" without parsing the table.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["pass", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail", "skip")


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the table.

    Attributes:
        name: what was checked (``config``, ``camera``, ``mqtt``...).
        status: pass / warn / fail / skip (skip: not in use by this config).
        detail: what was found, one line.
        fix: what to do about it, one line (empty when there is nothing to do).
    """

    name: str
    status: Status
    detail: str
    fix: str = ""


def ok(checks: Sequence[Check]) -> bool:
    """True when no line failed (warnings and skips are allowed)."""
    return all(c.status != "fail" for c in checks)


def exit_code(checks: Sequence[Check]) -> int:
    return 0 if ok(checks) else 1


def bounded(name: str, fn: Callable[[], Check], timeout_s: float, fix: str) -> Check:
    """Run one check on its own thread and give up on it after ``timeout_s``.

    Why a thread rather than trusting each driver's own timeouts: a camera stuck in the kernel
    or a serial port that never returns must not hang the doctor, whose whole job is to say
    what is wrong. A check that does not return is reported as a failure; its thread is a
    daemon, so the process can still exit (the one thing lost is that check's cleanup).
    An exception from a check is a failure line too, never a traceback.
    """
    box: list[Check] = []

    def run() -> None:
        try:
            box.append(fn())
        except Exception as e:  # noqa: BLE001 - any bug or driver error is this check's fail
            box.append(Check(name, "fail", f"{type(e).__name__}: {e}", fix))

    t = threading.Thread(target=run, name=f"doctor-{name}", daemon=True)
    t.start()
    t.join(timeout_s)
    if not box:
        return Check(name, "fail", f"no answer within {timeout_s:g} s", fix)
    return box[0]


def as_json(checks: Sequence[Check]) -> str:
    """``{"ok": bool, "checks": [{"name", "status", "detail", "fix"}, ...]}``."""
    return json.dumps({"ok": ok(checks), "checks": [asdict(c) for c in checks]}, indent=2)


MARK: dict[Status, str] = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def table(checks: Sequence[Check]) -> str:
    """The table for a person: status, name, detail, and the fix on the next line."""
    width = max((len(c.name) for c in checks), default=0)
    lines: list[str] = []
    for c in checks:
        lines.append(f"{MARK[c.status]}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status in ("warn", "fail"):
            lines.append(f"{'':4}  {'':<{width}}  fix: {c.fix}")
    n = {s: sum(c.status == s for c in checks) for s in STATUSES}
    lines.append(f"{n['pass']} pass, {n['warn']} warn, {n['fail']} fail, {n['skip']} skipped: "
                 + ("ok" if ok(checks) else "NOT OK"))
    return "\n".join(lines)
