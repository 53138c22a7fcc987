"""What a ranger reads: the one-line alert and the ``--broker HOST:PORT`` argument.

Dependency-free, so the demo, the CLI and the tests can format alerts without a receiver.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any


def _num(value: Any, fmt: str = ".2f") -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, fmt)
    return "?"


def local_time(ts: Any, tz: tzinfo) -> str:
    """An event's RFC 3339 ``ts`` in the ranger's time zone (``2026-09-22 00:15:00 +10``);
    the text as it came when it is not a time."""
    try:
        t = datetime.fromisoformat(str(ts))
    except ValueError:
        return str(ts)
    if t.tzinfo is None:
        return str(ts)
    local = t.astimezone(tz)
    offset = local.strftime("%z")
    short = offset[:3] if offset.endswith("00") else offset
    return f"{local:%Y-%m-%d %H:%M:%S} {short}"


def format_alert(event: dict[str, Any], *, tz: tzinfo | None = None,
                 site: str | None = None) -> str:
    """One human line: time, unit (and site), label, species and its confidence, score, id.

    Example: ``2026-09-21T10:15:00.123+00:00  LL-042  animal leopard 0.91  score 0.91
    LL-042-17``; with ``tz`` (the park is UTC+10, its rangers read local time) and ``site``:
    ``2026-09-21 20:15:00 +10  LL-042 Kedrovaya 3  animal leopard 0.91 …``. Missing or odd
    fields print as ``?`` rather than failing.
    """
    ts = str(event.get("ts", "?")) if tz is None else local_time(event.get("ts", "?"), tz)
    if event.get("time_synced") is False:
        ts += " (clock not synced)"
    label = str(event.get("label", "?"))
    species = event.get("species")
    what = label
    if species:
        confs: list[float] = [
            float(d["species_conf"])
            for d in event.get("detections") or []
            if isinstance(d, dict) and d.get("species") == species
            and isinstance(d.get("species_conf"), int | float)
        ]
        conf = max(confs) if confs else event.get("score")
        what = f"{label} {species} {_num(conf)}"
    outcome = event.get("outcome", "alert")
    tag = "" if outcome == "alert" else f"[{outcome}] "
    via = "  (LoRa: photo follows)" if event.get("source") == "lorawan" else ""
    unit = str(event.get("unit", "?")) + (f" {site}" if site else "")
    return (f"{ts}  {unit}  {tag}{what}  score {_num(event.get('score'))}  "
            f"{event.get('id', '?')}{via}")


def parse_broker(broker: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port).

    Raises:
        ValueError: not of that form.
    """
    host, sep, port_s = broker.rpartition(":")
    if not sep or not host or not port_s.isascii() or not port_s.isdigit():
        raise ValueError(f"expected HOST:PORT, got {broker!r}")
    port = int(port_s)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {broker!r}")
    return host.strip("[]"), port
