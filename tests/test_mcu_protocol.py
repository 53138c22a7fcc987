"""The Pi's codec of the supervisor UART protocol against the shared vectors (both directions),
against the firmware's own codec on random messages, and on random garbage and splits."""

from __future__ import annotations

import binascii
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_app.core import mcu_protocol as mp
from edge_app.sim.mcu import firmware_dir, firmware_module

VECTORS_PATH = Path(__file__).resolve().parents[1] / "firmware" / "protocol" / "vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
SIDES = {"mcu": mp.PI_TO_MCU, "pi": mp.MCU_TO_PI}


def fields_of(msg: mp.Message) -> dict[str, Any]:
    """A message as the vectors write its fields."""
    if isinstance(msg, mp.Schedule):
        return {"mode": msg.mode, "n": len(msg.windows), "hybrid_above_mv": msg.hybrid_above_mv,
                "windows": [list(w) for w in msg.windows]}
    return dataclasses.asdict(msg)


def from_fields(mtype: int, fields: dict[str, Any]) -> mp.Message:
    if mtype == mp.MsgType.SCHEDULE:
        return mp.Schedule(fields["mode"], fields["hybrid_above_mv"],
                           tuple((a, b) for a, b in fields["windows"]))
    return mp.MESSAGES[mtype](**fields)


def test_crc_is_ccitt_false_with_the_vectors_check_values() -> None:
    assert mp.crc16(b"123456789") == 0x29B1 == VECTORS["crc"]["check"]["crc"]
    for case in VECTORS["crc"]["cases"]:
        assert mp.crc16(binascii.unhexlify(case["input_hex"])) == case["crc"]
    assert VECTORS["version"] == mp.VERSION
    assert VECTORS["max_payload"] == mp.MAX_PAYLOAD
    assert VECTORS["frame_timeout_ms"] == round(mp.FRAME_TIMEOUT_S * 1000)


@pytest.mark.parametrize("vec", VECTORS["frames"], ids=lambda v: v["description"][:40])
def test_frame_vectors_encode_and_decode(vec: dict[str, Any]) -> None:
    msg = from_fields(vec["type"], {k: v for k, v in vec["fields"].items() if k != "n"})
    assert msg.pack().hex() == vec["payload_hex"]
    assert msg.frame(vec["seq"]).hex() == vec["hex"]
    # Decoded by the receiver of the side it is meant for, and refused as an unknown type by
    # the other side's (a loop-back wire must not look like a message).
    side = mp.MCU_TO_PI if vec["direction"] == "mcu_to_pi" else mp.PI_TO_MCU
    (frame,) = mp.Receiver(side).feed(binascii.unhexlify(vec["hex"]), 0.0)
    assert (frame.type, frame.seq, frame.error) == (vec["type"], vec["seq"], mp.AckResult.OK)
    assert frame.message is not None
    assert fields_of(frame.message) == vec["fields"]
    other = mp.Receiver(mp.PI_TO_MCU if side is mp.MCU_TO_PI else mp.MCU_TO_PI)
    (refused,) = other.feed(binascii.unhexlify(vec["hex"]), 0.0)
    assert refused.error == mp.AckResult.UNKNOWN_TYPE
    assert refused.message is None


@pytest.mark.parametrize("vec", VECTORS["invalid_payloads"], ids=lambda v: v["description"])
def test_invalid_payloads_are_refused(vec: dict[str, Any]) -> None:
    payload = binascii.unhexlify(vec["payload_hex"])
    with pytest.raises(mp.BadPayload):
        mp.MESSAGES[vec["type"]].unpack(payload)
    rx = mp.Receiver(mp.MESSAGES)
    (frame,) = rx.feed(mp.encode_frame(vec["type"], 1, payload), 0.0)
    assert frame.error == mp.AckResult.BAD_PAYLOAD
    assert frame.message is None
    assert rx.counts["bad_payload"] == 1


@pytest.mark.parametrize("case", VECTORS["receiver"], ids=lambda c: c["description"][:50])
def test_receiver_vectors(case: dict[str, Any]) -> None:
    rx = mp.Receiver(SIDES[case["side"]])
    frames: list[mp.Frame] = []
    for chunk in case["chunks"]:
        frames += rx.feed(binascii.unhexlify(chunk["hex"]), chunk["at_ms"] / 1000.0)
    if "poll_at_ms" in case:
        rx.poll(case["poll_at_ms"] / 1000.0)
    got = [{"type": f.type, "seq": f.seq, "payload_hex": f.payload.hex(), "error": f.error,
            "fields": None if f.message is None else fields_of(f.message)} for f in frames]
    assert got == case["frames"]
    assert rx.counts == case["counters"]


def test_pack_refuses_our_own_bad_values() -> None:
    for bad in (mp.PowerOff(0), mp.PowerOff(601), mp.SetTime(mp.TIME_FLOOR - 1, 1),
                mp.SetTime(mp.TIME_FLOOR, 4), mp.PowerCycle(601, 5), mp.Heartbeat(256),
                mp.Schedule(1, 0, ((0, 1440),)), mp.Schedule(3, 0),
                mp.Schedule(1, 0, ((0, 1),) * 7), mp.Trigger(1, 0, 1000, 0)):
        with pytest.raises(ValueError, match=r"outside|at most"):
            bad.pack()


def test_status_units_and_unknowns() -> None:
    st_ = mp.Status(1_790_000_000, 12_800, 0, -235, 5, 1, 3, 1, 1, 2, 1, 0x09, 0)
    assert (st_.battery_v, st_.solar_v, st_.temp_c) == (12.8, None, -23.5)
    assert st_.rtc_valid
    assert st_.solar_charging
    assert not st_.low_voltage
    unknown = dataclasses.replace(st_, temp_dc=mp.TEMP_UNKNOWN, battery_mv=0)
    assert (unknown.temp_c, unknown.battery_v) == (None, None)
    trig = mp.Trigger(7, 1_790_000_000, 250, mp.TRIG_WHILE_OFF | mp.TRIG_RTC_VALID)
    assert trig.time == 1_790_000_000.25
    assert trig.while_off
    assert trig.rtc_valid
    assert mp.code_name(mp.WakeReason, 1) == "pir"
    assert mp.code_name(mp.WakeReason, 42) == "unknown_42"


# -- against the firmware's own codec ---------------------------------------------------------

u8, u16, u32 = (st.integers(0, 2**n - 1) for n in (8, 16, 32))


def _messages() -> st.SearchStrategy[mp.Message]:
    return st.one_of(
        st.builds(mp.Hello, u8, u8, st.integers(0, 7), st.integers(0, 5), u16,
                  st.integers(0, 2), u8),
        st.builds(mp.Status, u32, u16, u16, st.integers(-32768, 32767), u32, u16, u16,
                  st.integers(0, 5), st.integers(0, 7), st.integers(0, 5), st.integers(0, 2),
                  u8, u16),
        st.builds(mp.Trigger, u32, u32, st.integers(0, 999), u8),
        st.builds(mp.Ack, u8, st.integers(0, 3)),
        st.builds(mp.Heartbeat, u8),
        st.builds(mp.SetTime, st.integers(mp.TIME_FLOOR, 2**32 - 1), st.integers(1, 3)),
        st.builds(mp.PowerOff, st.integers(1, 600)),
        st.builds(mp.Schedule, st.integers(0, 2), u16,
                  st.lists(st.tuples(st.integers(0, 1439), st.integers(0, 1439)),
                           max_size=6).map(tuple)),
        st.just(mp.GetStatus()),
        st.builds(mp.PowerCycle, st.integers(0, 600), st.integers(1, 3600)),
        st.builds(mp.TriggerAck, u32),
    )


@settings(max_examples=300, deadline=None)
@given(msg=_messages(), seq=u8)
def test_pi_and_firmware_codecs_agree(msg: mp.Message, seq: int) -> None:
    proto = firmware_module("proto")
    assert Path(proto.__file__).parent == firmware_dir()
    fields = fields_of(msg)
    assert proto.encode(msg.TYPE, seq, fields) == msg.frame(seq)
    rx = proto.Receiver()
    (frame,) = rx.feed(msg.frame(seq), 0)
    assert (frame.type, frame.seq, frame.error, frame.fields) == (msg.TYPE, seq, 0, fields)


# -- hostile bytes ----------------------------------------------------------------------------

frames_st = _messages().flatmap(lambda m: u8.map(lambda s: m.frame(s)))


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8),
       gaps=st.lists(st.floats(0, 0.5), min_size=9, max_size=9))
def test_garbage_in_any_split_never_raises(data: bytes, cuts: list[int],
                                           gaps: list[float]) -> None:
    rx = mp.Receiver(mp.MESSAGES)
    now = 0.0
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    frames: list[mp.Frame] = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        now += gaps[i]
        frames += rx.feed(data[a:b], now)
    rx.poll(now + 1.0)
    assert not rx.busy()
    assert all(v >= 0 for v in rx.counts.values())
    # Every byte ends up in a frame or counted: nothing disappears silently.
    assert rx.counts["garbage_bytes"] <= len(data)


@settings(max_examples=300, deadline=None)
@given(before=st.binary(max_size=200), after=st.binary(max_size=200), frame=frames_st,
       cuts=st.lists(st.integers(0, 600), max_size=6))
def test_a_frame_inside_garbage_is_recovered(before: bytes, after: bytes, frame: bytes,
                                             cuts: list[int]) -> None:
    # Within 200 ms, with more traffic after it (here: zeros, a quiet line reads as breaks
    # on a real UART): a false start in the garbage that swallowed the frame's first bytes
    # is completed by the traffic, fails its CRC and the re-scan finds the frame.
    stream = before + frame + after + bytes(mp.MAX_FRAME)
    rx = mp.Receiver(mp.MESSAGES)
    bounds = [0, *sorted(c for c in cuts if c <= len(stream)), len(stream)]
    got: list[bytes] = []
    for a, b in itertools.pairwise(bounds):
        got += [mp.encode_frame(f.type, f.seq, f.payload) for f in rx.feed(stream[a:b], 0.1)]
    assert frame in got


@settings(max_examples=200, deadline=None)
@given(stream=st.lists(st.one_of(frames_st, st.binary(max_size=40)), max_size=12),
       cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_splitting_does_not_change_what_is_received(stream: list[bytes],
                                                    cuts: list[int]) -> None:
    data = b"".join(stream)
    whole = mp.Receiver(mp.MESSAGES)
    expect = whole.feed(data, 0.0)
    split = mp.Receiver(mp.MESSAGES)
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    got: list[mp.Frame] = []
    for a, b in itertools.pairwise(bounds):
        got += split.feed(data[a:b], 0.05)
    assert got == expect
    assert split.counts == whole.counts
