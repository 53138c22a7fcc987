"""What a ranger reads: the one-line alert and the ``--broker HOST:PORT`` argument.

Dependency-free, so the demo, the CLI and the tests can format alerts without a receiver.
"""

from __future__ import annotations

from typing import Any


def _num(value: Any, fmt: str = ".2f") -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, fmt)
    return "?"


def format_alert(event: dict[str, Any]) -> str:
    """One human line: time, unit, label, species and its confidence, score, id.

    Example: ``2026-09-21T10:15:00.123+00:00  LL-042  animal leopard 0.91  score 0.91
    LL-042-17``. Missing or odd fields print as ``?`` rather than failing.
    """
    ts = str(event.get("ts", "?"))
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
    return (f"{ts}  {event.get('unit', '?')}  {tag}{what}  score {_num(event.get('score'))}  "
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
