"""The guarded door for what the LoRa link receives: downlink commands on fPort 20.

Why a door although the codec validates: a downlink is untrusted input (anyone holding the
application's keys, or a network server bug, can send one), and the codec is shared with the
JavaScript decoder, whose rules may be loosened for other fleets. So the router never acts on
the codec's dictionary directly: each command is re-checked here into a typed
:class:`Command` (a threshold must be a finite number strictly between 0 and 1, an interval
finite and within the schema's range, a mode one of the modes), and anything else is a
:class:`edge_app.core.guard.Refused` that the router counts per kind and logs with a throttle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edge_app.core import lora_codec as codec
from edge_app.core.guard import Refusals, Refused, check_size, field, finite_number
from edge_app.trap.uplink.lorawan import Downlink

logger = logging.getLogger(__name__)

MAX_DOWNLINK_BYTES = 242
"""The largest LoRaWAN application payload (EU868/RU864 at DR5..7); a command is 1..3 bytes."""
THRESHOLD_KEYS: dict[str, str] = {"detector": "detector.score_threshold",
                                  "species": "detector.species_threshold"}
MODES = ("always", "fallback")
MAX_STATUS_HOURS = 255.0

CommandName = Literal["request_status", "set_status_interval", "set_mode", "set_threshold"]


@dataclass(frozen=True, slots=True)
class Command:
    """A downlink command that passed the door.

    Attributes:
        name: what to do.
        key: ``set_threshold``: the dotted settings key.
        value: ``set_threshold``: the threshold; ``set_status_interval``: hours.
        mode: ``set_mode``: ``always`` or ``fallback``.
    """

    name: CommandName
    key: str = ""
    value: float = 0.0
    mode: str = ""

    def settings(self) -> dict[str, Any]:
        """The remote settings this command changes (empty for ``request_status``): they go
        through the settings service like an MQTT ``config/set``."""
        if self.name == "set_status_interval":
            return {"lorawan.status_every_h": float(int(self.value))}
        if self.name == "set_mode":
            return {"lorawan.mode": self.mode}
        if self.name == "set_threshold":
            return {self.key: self.value}
        return {}


def read_command(port: int, payload: bytes) -> Command:
    """Decode and check one downlink.

    Raises:
        Refused: ``too_large``, ``bad_downlink`` (the codec's errors: port, length, unknown
            command), or a refusal of :func:`check_command`.
    """
    check_size(payload, MAX_DOWNLINK_BYTES)
    res = codec.decode_downlink(port, payload)
    if not res.ok:
        raise Refused("bad_downlink", "; ".join(res.errors) or "undecodable")
    return check_command(res.data)


def check_command(data: Mapping[str, Any]) -> Command:
    """A decoded command, checked field by field into a :class:`Command`.

    Raises:
        Refused: ``bad_type``, ``missing``, ``non_finite``, ``out_of_range`` or
            ``bad_downlink`` (an unknown command name).
    """
    name = field(data, "command", str, max_len=32)
    if name == "request_status":
        return Command("request_status")
    if name == "set_status_interval":
        hours = finite_number(data.get("hours"), "hours")
        if not 0 <= hours <= MAX_STATUS_HOURS:
            raise Refused("out_of_range", f"status interval {hours} h outside 0..255")
        return Command("set_status_interval", value=hours)
    if name == "set_mode":
        mode = field(data, "mode", str, max_len=16)
        if mode not in MODES:
            raise Refused("out_of_range", f"unknown mode {mode!r}")
        return Command("set_mode", mode=mode)
    if name == "set_threshold":
        target = field(data, "target", str, max_len=16)
        key = THRESHOLD_KEYS.get(target)
        if key is None:
            raise Refused("out_of_range", f"unknown threshold target {target!r}")
        value = finite_number(data.get("threshold"), "threshold")
        if not 0.0 < value < 1.0:
            raise Refused("out_of_range", f"threshold {value} outside (0, 1)")
        return Command("set_threshold", key=key, value=value)
    raise Refused("bad_downlink", f"unknown command {name[:32]!r}")


class DownlinkDoor:
    """Downlinks in: each counted, passed through :func:`read_command`, then acted on.

    A refused downlink is counted per kind in ``refusals`` (logged with a throttle) and
    changes nothing; an accepted one goes to ``act`` unless commands are switched off.

    Args:
        refusals: where refusals are counted (the stats show them).
        count: bumps the router's counters (``downlinks``, ``bad_downlinks``, ``commands``).
        accepts: whether commands are acted on now (``lorawan.accept_commands``).
        act: carries out an accepted command.
    """

    def __init__(self, refusals: Refusals, count: Callable[..., None],
                 accepts: Callable[[], bool], act: Callable[[Command], None]) -> None:
        self.refusals, self._count, self._accepts, self._act = refusals, count, accepts, act

    def handle(self, downlinks: Iterable[Downlink]) -> None:
        for dl in downlinks:
            self._count(downlinks=1)
            try:
                cmd = read_command(dl.port, dl.payload)
            except Refused as r:
                self._count(bad_downlinks=1)
                self.refusals.count(r, f"port {dl.port}")
                continue
            if not self._accepts():
                logger.warning("LoRa: command %s ignored (lorawan.accept_commands = false)",
                               cmd.name)
                continue
            self._count(commands=1)
            logger.warning("LoRa: downlink command %s", cmd)
            self._act(cmd)
