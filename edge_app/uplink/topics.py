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
