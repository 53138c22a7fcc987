"""What the MQTT link receives: receipts, commands and model pack chunks, behind the door.

Why apart from the link: the link's loop (:class:`edge_app.trap.uplink.mqtt.MqttLink`) moves
rows out; this is the other direction, on the same uplink thread. Every message passes the
guarded door (:class:`~edge_app.trap.uplink.mqtt_door.MqttDoor`): a receipt goes to the send
policy, a command is run (:class:`~edge_app.trap.uplink.commands.Commands`) and answered on
``.../cmd/<name>/result``, a model pack chunk goes onto the card. A message found retained on
one of our inbound topics is cleared from the broker, so it cannot come back. What the door
refuses is counted per kind (``links.mqtt.refusals`` in the stats), never raised.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable

from edge_app.core.clock import Clock
from edge_app.core.config import Config
from edge_app.core.guard import Refusals, Refused
from edge_app.core.topics import ack_topic, cmd_result_topic, cmd_topic, pack_topic
from edge_app.trap.packs.download import DownloadError
from edge_app.trap.packs.remote import RemotePacks
from edge_app.trap.settings import Settings
from edge_app.trap.uplink.commands import Commands
from edge_app.trap.uplink.mqtt_door import CommandCall, MqttDoor, PackChunk, Receipt
from edge_app.trap.uplink.mqtt_policy import SendPolicy
from edge_app.trap.uplink.mqtt_session import Message, Session

logger = logging.getLogger(__name__)


class Inbound:
    """The link's receiving side (module docstring).

    Args:
        cfg: unit id and topic prefix at start.
        settings: the settings service (``config/set``; the current config for results).
        clock: refusal throttles, the time of pack activity.
        packs: model packs over MQTT (None: this unit takes none).
        image_pass: ``images/send``'s way past the data plan's gate (the link's rows).
        count: bumps the link's counters.
    """

    def __init__(self, cfg: Config, settings: Settings, clock: Clock,
                 packs: RemotePacks | None, image_pass: Callable[[str], None],
                 count: Callable[..., None]) -> None:
        self.settings, self.clock, self._count = settings, clock, count
        self.commands = Commands(settings, clock, packs=packs, image_pass=image_pass)
        self.receipt_refusals = Refusals("mqtt receipts", clock)
        m = cfg.mqtt
        self.door = MqttDoor(ack_topic(m.topic_prefix, cfg.unit.id),
                             cmd_topic(m.topic_prefix, cfg.unit.id, ""), self.receipt_refusals,
                             pack_topic(m.topic_prefix, cfg.unit.id, "") if packs else "")
        # When a model pack last moved (chunk or models/* command): the power stage keeps the
        # Pi up through a download in gated mode. One float, written here, read there.
        self.pack_activity_mono: float | None = None

    def refusals(self) -> dict[str, dict[str, int]]:
        """What the doors refused, per door and kind."""
        return {"receipts": self.receipt_refusals.snapshot(),
                "commands": self.commands.refusals.snapshot()}

    def sort(self, ev: Message, s: Session, policy: SendPolicy,
             calls: list[CommandCall]) -> None:
        """A message in: a receipt to the policy, a command onto ``calls`` (run after the
        batch's deliveries are recorded), a pack chunk onto the card; a retained one is
        cleared from the broker."""
        what = self.door.sort(ev.topic, ev.payload)
        if isinstance(what, Receipt):
            policy.receipt(what.ids)
        elif isinstance(what, CommandCall):
            calls.append(what)
        elif isinstance(what, PackChunk):
            self._pack_chunk(what)
        if ev.retain and ev.payload and self.door.inbound(ev.topic):
            logger.warning("MQTT: a message was left retained on %s: clearing it", ev.topic)
            s.clear_retained(ev.topic)
            self._count(retained_cleared=1)

    def run(self, calls: list[CommandCall], s: Session, conn: sqlite3.Connection) -> None:
        """Run commands and publish each one's result."""
        cfg = self.settings.config
        for call in calls:
            if call.name.startswith("models/"):
                self.pack_activity_mono = self.clock.monotonic()
            result = self.commands.handle(call.name, call.payload, conn)
            self._count(commands=1)
            topic = cmd_result_topic(cfg.mqtt.topic_prefix, cfg.unit.id, call.name)
            s.publish(topic, json.dumps(result, separators=(",", ":")).encode())

    def _pack_chunk(self, c: PackChunk) -> None:
        """A model pack chunk onto the card; one that fits no offered download is counted
        (the sender learns what is still missing from its next ``models/offer``)."""
        packs = self.commands.packs
        if packs is None:
            return
        self.pack_activity_mono = self.clock.monotonic()
        try:
            packs.chunk(c.sha256, c.index, c.payload)
            self._count(pack_chunks=1)
        except DownloadError as e:
            self.receipt_refusals.count(Refused("pack_chunk", str(e)), "pack")
        except OSError as e:  # the card; the chunk is asked for again
            logger.warning("MQTT: model pack chunk %d not written: %s", c.index, e)
