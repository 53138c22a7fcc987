"""``camtrap outbox {ls,stats,purge}``: what is waiting to leave the trap, for a technician.

Safe to run while the daemon is running: it opens its own connection, and WAL lets it read
while the daemon writes. ``purge`` deletes only finished rows (``sent``; ``dead`` and
``skipped`` when asked); purging rows that are still waiting (``ready``, ``inflight``,
``acked-by-broker``) throws alerts away and is refused here — an operator who means it can use
SQLite directly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TextIO

from edge_app.core.clock import SystemClock, rfc3339
from edge_app.core.config import Config
from edge_app.core.errors import StorageError
from edge_app.trap.store.db import db_path, open_db
from edge_app.trap.store.outbox import UNSENT_STATES, Kind, Outbox, State
from edge_app.trap.store.retention import MB, DiskGuard
from edge_app.trap.store.upkeep import OutboxUpkeep


def outbox_command(
    cfg: Config,
    action: str,
    out: TextIO,
    *,
    as_json: bool = False,
    limit: int = 50,
    states: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    older_than_s: float = 0.0,
) -> int:
    """Run one outbox action.

    Args:
        cfg: for ``storage.root`` (where the database is) and the outbox settings.
        action: ``ls``, ``stats`` or ``purge``.
        out: where to print.
        as_json: machine-readable output (``ls``: one object per line).
        limit: rows shown by ``ls``.
        states: ``ls``: only these states; ``purge``: these states (default ``sent``).
        kinds: ``ls``: only these kinds.
        older_than_s: ``purge``: keep rows finished more recently.

    Returns:
        0 on success, 1 if there is no database or it cannot be read, 2 for an unknown action
        or a purge of unsent rows.
    """
    path = db_path(cfg.storage.root)
    if not path.exists():
        print(f"camtrap outbox: no database at {path}", file=sys.stderr)
        return 1
    try:
        conn = open_db(path)
    except StorageError as e:
        print(f"camtrap outbox: {e}", file=sys.stderr)
        return 1
    try:
        box = Outbox(conn, SystemClock(), cfg.outbox)
        if action == "ls":
            for row in box.ls(limit, states=states, kinds=kinds):
                if as_json:
                    out.write(json.dumps(row.to_json()) + "\n")
                    continue
                size = len(row.payload) if row.payload is not None else row.media_path
                when = rfc3339(row.next_attempt_at) if row.state in (
                    State.READY, State.ACKED) else ""
                err = f"  ({row.last_error})" if row.last_error else ""
                out.write(f"{row.id:>6}  {row.state:<15} {row.kind:<6} {row.link:<8}"
                          f"{row.event_id or '-':<16} tries {row.attempts:<3} {when:<29} "
                          f"{size}{err}\n")
        elif action == "stats":
            _stats(cfg, box, out, as_json)
        elif action == "purge":
            wanted = list(states or [State.SENT.value])
            unsent = sorted(set(wanted) & set(UNSENT_STATES))
            if unsent:
                print(f"camtrap outbox: refusing to purge rows still to be delivered "
                      f"({', '.join(unsent)})", file=sys.stderr)
                return 2
            n = OutboxUpkeep(conn, SystemClock(), cfg.outbox).purge(wanted, older_than_s)
            out.write(json.dumps({"purged": n}) + "\n" if as_json
                      else f"purged {n} {'/'.join(wanted)} message(s)\n")
        else:
            print(f"camtrap outbox: unknown action {action!r}", file=sys.stderr)
            return 2
    finally:
        conn.close()
    return 0


def _stats(cfg: Config, box: Outbox, out: TextIO, as_json: bool) -> None:
    stats = box.stats()
    guard = DiskGuard.from_config(cfg)
    free = guard.free_bytes()
    if as_json:
        body = {"rows": stats, "depth": box.depth(), "disk_free_bytes": free,
                "disk_low": free < guard.min_free_bytes}
        out.write(json.dumps(body) + "\n")
        return
    states = [s.value for s in State]
    out.write(f"{'kind':<7}" + "".join(f"{s:>16}" for s in states) + "\n")
    for kind in Kind:
        out.write(f"{kind.value:<7}"
                  + "".join(f"{stats[kind.value][s]:>16}" for s in states) + "\n")
    low = "  DISK LOW" if free < guard.min_free_bytes else ""
    out.write(f"disk free: {free / MB:.1f} MB (minimum {guard.min_free_bytes / MB:.1f} MB)"
              f"{low}\n")
