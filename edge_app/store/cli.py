"""``camtrap outbox {ls,stats,purge}``: what is waiting to leave the trap, for a technician.

Safe to run while the daemon is running: it opens its own connection, and WAL lets it read
while the daemon writes. ``purge`` only deletes rows already delivered (``sent``).
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from edge_app.clock import SystemClock, rfc3339
from edge_app.config import Config
from edge_app.errors import StorageError
from edge_app.store.db import db_path, open_db
from edge_app.store.outbox import Kind, Outbox, State


def outbox_command(cfg: Config, action: str, out: TextIO, *, as_json: bool = False,
                   limit: int = 50) -> int:
    """Run one outbox action.

    Args:
        cfg: for ``storage.root`` (where the database is) and the outbox settings.
        action: ``ls``, ``stats`` or ``purge``.
        out: where to print.
        as_json: machine-readable output (``ls``: one object per line).
        limit: rows shown by ``ls``.

    Returns:
        0 on success, 1 if there is no database or it cannot be read, 2 for an unknown action.
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
            for row in box.ls(limit):
                if as_json:
                    out.write(json.dumps(row.to_json()) + "\n")
                    continue
                size = len(row.payload) if row.payload is not None else row.media_path
                when = rfc3339(row.next_attempt_at) if row.state == State.READY else ""
                err = f"  ({row.last_error})" if row.last_error else ""
                out.write(f"{row.id:>6}  {row.state:<8} {row.kind:<6} {row.event_id or '-':<16} "
                          f"tries {row.attempts:<3} {when:<29} {row.topic}  {size}{err}\n")
        elif action == "stats":
            stats = box.stats()
            if as_json:
                out.write(json.dumps(stats) + "\n")
            else:
                states = [s.value for s in State]
                out.write(f"{'kind':<7}" + "".join(f"{s:>10}" for s in states) + "\n")
                for kind in Kind:
                    out.write(f"{kind.value:<7}"
                              + "".join(f"{stats[kind.value][s]:>10}" for s in states) + "\n")
        elif action == "purge":
            n = box.purge((State.SENT,))
            out.write(json.dumps({"purged": n}) + "\n" if as_json
                      else f"purged {n} sent message(s)\n")
        else:
            print(f"camtrap outbox: unknown action {action!r}", file=sys.stderr)
            return 2
    finally:
        conn.close()
    return 0
