"""The per-link delivery rule of the store, without a database."""

from __future__ import annotations

import pytest

from edge_app.trap.store.outbox import Kind, Link
from edge_app.trap.store.routing import Delivery, deliveries

ALL = frozenset({"alert", "keep"})


@pytest.mark.parametrize(("outcome", "lora", "mqtt", "images", "want"), [
    ("alert", True, False, ALL, [Delivery(Kind.ALERT, Link.LORAWAN)]),
    ("keep", True, False, ALL, []),
    ("alert", True, True, frozenset(), [
        Delivery(Kind.ALERT, Link.LORAWAN), Delivery(Kind.ALERT, Link.MQTT),
        Delivery(Kind.THUMB, Link.MQTT, "thumb")]),
    ("keep", False, True, ALL, [
        Delivery(Kind.EVENT, Link.MQTT), Delivery(Kind.THUMB, Link.MQTT, "thumb"),
        Delivery(Kind.IMAGE, Link.MQTT, "image")]),
    ("alert", False, False, frozenset(), [  # no link yet: keep the MQTT rows, lose nothing
        Delivery(Kind.ALERT, Link.MQTT), Delivery(Kind.THUMB, Link.MQTT, "thumb")]),
])
def test_deliveries(outcome: str, lora: bool, mqtt: bool, images: frozenset[str],
                    want: list[Delivery]) -> None:
    got = deliveries(outcome, lora=lora, mqtt=mqtt, thumbs_for=ALL, images_for=images,
                     has_thumb=True, has_image=True)
    assert got == want
    assert not any(d.link is Link.LORAWAN and d.kind is not Kind.ALERT for d in got)


def test_missing_media_is_not_queued() -> None:
    got = deliveries("keep", lora=False, mqtt=True, thumbs_for=ALL, images_for=ALL,
                     has_thumb=False, has_image=False)
    assert got == [Delivery(Kind.EVENT, Link.MQTT)]
