"""MQTT topic names (ARCHITECTURE §6), in one place for the trap, the store and the receiver."""

from __future__ import annotations


def event_topic(prefix: str, unit: str) -> str:
    """``<prefix>/<unit>/event``: event JSON, QoS 1."""
    return f"{prefix}/{unit}/event"


def status_topic(prefix: str, unit: str) -> str:
    """``<prefix>/<unit>/status``: retained online/offline/lost; the Last Will."""
    return f"{prefix}/{unit}/status"


def media_topic(prefix: str, unit: str, media_id: str) -> str:
    """``<prefix>/<unit>/media/<media_id>``; each chunk goes to ``…/<chunk index>``."""
    return f"{prefix}/{unit}/media/{media_id}"


def stats_topic(prefix: str, unit: str) -> str:
    """``<prefix>/<unit>/stats``: periodic health (retained: the last known health)."""
    return f"{prefix}/{unit}/stats"


def ack_topic(prefix: str, unit: str) -> str:
    """``<prefix>/<unit>/ack``: a receiver's end-to-end receipts for the unit's events."""
    return f"{prefix}/{unit}/ack"


def cmd_topic(prefix: str, unit: str, name: str) -> str:
    """``<prefix>/<unit>/cmd/<name>``: a command to the unit (``name`` may contain '/')."""
    return f"{prefix}/{unit}/cmd/{name}"


def cmd_result_topic(prefix: str, unit: str, name: str) -> str:
    """``<prefix>/<unit>/cmd/<name>/result``: the unit's answer to a command."""
    return f"{cmd_topic(prefix, unit, name)}/result"


def pack_topic(prefix: str, unit: str, sha256: str) -> str:
    """``<prefix>/<unit>/pack/<sha256>``: a model pack for the unit; chunk *i* goes to
    ``…/<i>`` (raw bytes, QoS 1), after a ``models/offer`` command."""
    return f"{prefix}/{unit}/pack/{sha256}"


def parse_unit_topic(prefix: str, topic: str) -> tuple[str, list[str]] | None:
    """``<prefix>/<unit>/<rest...>`` → (unit, rest levels); None for another prefix."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head):].split("/")
    if len(parts) < 2 or not parts[0]:
        return None
    return parts[0], parts[1:]
