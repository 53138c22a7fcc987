"""Which deliveries an event owes, per link: a pure rule, apart from the store that writes them.

* An alert goes over LoRaWAN (the 11-byte alert) when LoRaWAN is on.
* A LoRa-only unit queues nothing else: rows that no link would ever serve must not pile up.
* Otherwise (MQTT on, or no link at all, so that nothing decided is lost before a link is
  configured) the event JSON goes over MQTT as an ``alert`` or ``event``, followed by the
  thumbnail and the full image for the outcomes that want them (``mqtt.send_images``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from edge_app.trap.store.outbox import Kind, Link

Media = Literal["thumb", "image"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row to queue: what, over which link, and which media file (if any)."""

    kind: Kind
    link: Link
    media: Media | None = None


def deliveries(outcome: str, *, lora: bool, mqtt: bool, thumbs_for: Collection[str],
               images_for: Collection[str], has_thumb: bool,
               has_image: bool) -> list[Delivery]:
    """The rows an event with ``outcome`` owes (see the module docstring).

    Args:
        outcome: ``alert``, ``keep`` or ``audit``.
        lora: ``lorawan.enabled``.
        mqtt: ``mqtt.enabled``.
        thumbs_for: outcomes whose thumbnail is sent.
        images_for: outcomes whose full image is sent (empty when images are off).
        has_thumb: a thumbnail was written.
        has_image: the full image was written.
    """
    out: list[Delivery] = []
    if lora and outcome == "alert":
        out.append(Delivery(Kind.ALERT, Link.LORAWAN))
    if lora and not mqtt:
        return out
    out.append(Delivery(Kind.ALERT if outcome == "alert" else Kind.EVENT, Link.MQTT))
    if has_thumb and outcome in thumbs_for:
        out.append(Delivery(Kind.THUMB, Link.MQTT, "thumb"))
    if has_image and outcome in images_for:
        out.append(Delivery(Kind.IMAGE, Link.MQTT, "image"))
    return out
