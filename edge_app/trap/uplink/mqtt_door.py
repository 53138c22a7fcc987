"""The guarded door for what the MQTT link receives.

Why: until issue 9, a receipt on ``<prefix>/<unit>/ack`` went straight into ``json.loads``. A
JSON text nested 100,000 deep raised ``RecursionError`` in the uplink stage; six in a minute
used up the stage's restart budget and the daemon exited, and one left *retained* on the topic
was read again at every start — a crash loop from a single message.

Now every message the link receives is sorted here before anything acts on it:

* the receipt topic: size first, then parsed with depth and node limits
  (:func:`edge_app.core.guard.parse_object`), then checked: ``{"ids": [<event id>, ...]}``
  with at most :data:`MAX_RECEIPT_IDS` non-empty ids of at most :data:`MAX_ID_LEN` characters;
* command topics ``cmd/<name>``: handed on as they are to
  :meth:`edge_app.trap.uplink.commands.Commands.handle`, which has its own door and always
  answers (our own ``.../result`` messages are dropped);
* model pack chunks ``pack/<sha256>/<index>``: the topic is checked here (a sha256, an index,
  at most :data:`MAX_PACK_CHUNK` bytes); whether the chunk fits an offered download is
  :mod:`edge_app.trap.packs.download`'s to say;
* anything else is refused as ``unexpected_topic``.

A refusal is counted per kind (the stats message shows them), logged with a throttle per kind,
and never raised. The message is still acknowledged (paho sends the QoS 1 PUBACK whatever the
payload holds): a message left unacknowledged would come back at every reconnect. A message
that arrives flagged *retained* is reported so the link can clear it from the broker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_app.core.guard import Limits, Refusals, Refused, field, parse_object
from edge_app.trap.packs.download import MAX_CHUNK, SHA_RE

MAX_PACK_CHUNK = MAX_CHUNK
_INDEX_RE = re.compile(r"^[0-9]{1,9}$")

MAX_RECEIPT_IDS = 1000
MAX_ID_LEN = 128
RECEIPT_LIMITS = Limits(max_bytes=(MAX_ID_LEN + 8) * MAX_RECEIPT_IDS + 1024, max_depth=4,
                        max_nodes=MAX_RECEIPT_IDS + 16)
"""A receipt is ``{"ids": [...]}``: two levels deep, one value per id."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """A receiver confirmed these events."""

    ids: list[str]


@dataclass(frozen=True, slots=True)
class CommandCall:
    """A command for :class:`edge_app.trap.uplink.commands.Commands` (raw payload)."""

    name: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class PackChunk:
    """One chunk of a model pack (raw bytes) for :mod:`edge_app.trap.packs.remote`."""

    sha256: str
    index: int
    payload: bytes


def receipt_ids(payload: bytes) -> list[str]:
    """The event ids of a receipt.

    Raises:
        Refused: ``too_large``, ``too_deep``, ``not_json``, ``non_finite``,
            ``too_many_values``, ``bad_type`` or ``missing``.
    """
    body = parse_object(payload, RECEIPT_LIMITS)
    ids = field(body, "ids", list)
    if len(ids) > MAX_RECEIPT_IDS:
        raise Refused("too_many_values", f"{len(ids)} ids, the limit is {MAX_RECEIPT_IDS}")
    if not all(isinstance(i, str) and 0 < len(i) <= MAX_ID_LEN for i in ids):
        raise Refused("bad_type", f"ids must be non-empty strings of at most {MAX_ID_LEN} "
                      "characters")
    return [str(i) for i in ids]


class MqttDoor:
    """Sorts received messages (see the module docstring).

    Args:
        ack_topic: the unit's receipt topic.
        cmd_prefix: the unit's command topic prefix (``<prefix>/<unit>/cmd/``).
        refusals: where refusals of this door are counted.
        pack_prefix: the unit's pack chunk prefix (``<prefix>/<unit>/pack/``).
    """

    def __init__(self, ack_topic: str, cmd_prefix: str, refusals: Refusals,
                 pack_prefix: str = "") -> None:
        self.ack_topic, self.cmd_prefix, self.refusals = ack_topic, cmd_prefix, refusals
        self.pack_prefix = pack_prefix

    def sort(self, topic: str, payload: bytes) -> Receipt | CommandCall | PackChunk | None:
        """What a message is; None when there is nothing to do (refused, counted, or our
        own command result)."""
        if not payload:
            return None  # how a retained message is deleted: nothing to act on
        if topic == self.ack_topic:
            try:
                return Receipt(receipt_ids(payload))
            except Refused as r:
                self.refusals.count(r, topic)
                return None
        if topic.startswith(self.cmd_prefix):
            name = topic[len(self.cmd_prefix):]
            if not name or name == "result" or name.endswith("/result"):
                return None
            return CommandCall(name, payload)
        if self.pack_prefix and topic.startswith(self.pack_prefix):
            try:
                return pack_chunk(topic[len(self.pack_prefix):], payload)
            except Refused as r:
                self.refusals.count(r, "pack")
                return None
        self.refusals.count(Refused("unexpected_topic", f"nothing is expected on {topic[:120]}"))
        return None

    def inbound(self, topic: str) -> bool:
        """True for a topic this door serves (the link may clear a retained message there)."""
        return (topic == self.ack_topic or topic.startswith(self.cmd_prefix)
                or (bool(self.pack_prefix) and topic.startswith(self.pack_prefix)))


def pack_chunk(rest: str, payload: bytes) -> PackChunk:
    """``<sha256>/<index>`` and the chunk's bytes.

    Raises:
        Refused: ``too_large`` or ``bad_topic``.
    """
    if len(payload) > MAX_PACK_CHUNK:
        raise Refused("too_large", f"a pack chunk of {len(payload)} bytes, the limit is "
                      f"{MAX_PACK_CHUNK}")
    sha, _, index = rest.partition("/")
    if not SHA_RE.match(sha) or not _INDEX_RE.match(index):
        raise Refused("bad_topic", "pack chunks go to pack/<sha256>/<index>")
    return PackChunk(sha, int(index), payload)
