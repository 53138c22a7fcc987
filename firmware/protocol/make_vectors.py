"""Generate firmware/protocol/vectors.json, the shared test vectors of the supervisor protocol.

Run with CPython from the repository root:  python firmware/protocol/make_vectors.py
(``--check`` exits 1 if the file on disk differs from what this script makes).

The frames are encoded by the firmware's own codec (firmware/supervisor/proto.py), and every
CRC is cross-checked here against CPython's ``binascii.crc_hqx`` — an implementation that
shares no code with the firmware's table. The receiver cases carry their expected frames and
counters written out *by hand* from PROTOCOL.md; the script refuses to write the file if the
firmware receiver disagrees with them, so the vectors are the spec, not a recording of
whatever the code happens to do.
"""

import binascii
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "supervisor"))

import proto  # noqa: E402

OUT = os.path.join(HERE, "vectors.json")


def hx(data):
    return binascii.hexlify(bytes(data)).decode()


def frame_vector(description, mtype, seq, fields):
    payload = proto.pack_payload(mtype, fields)
    frame = proto.encode_frame(mtype, seq, payload)
    crc = binascii.crc_hqx(frame[2:-2], 0xFFFF)
    if crc != proto.crc16(frame[2:-2]) or frame[-2:] != bytes((crc >> 8, crc & 0xFF)):
        raise SystemExit("CRC disagrees with binascii.crc_hqx for " + description)
    decoded = proto.unpack_payload(mtype, payload)
    expect = dict(fields)
    if mtype == proto.SCHEDULE:
        expect["n"] = len(fields["windows"])
    if decoded != expect:
        raise SystemExit("round trip failed for " + description)
    return {
        "description": description,
        "direction": "mcu_to_pi" if mtype in proto.MCU_TO_PI else "pi_to_mcu",
        "type": mtype,
        "name": proto.NAMES[mtype],
        "seq": seq,
        "fields": expect,
        "payload_hex": hx(payload),
        "crc": crc,
        "hex": hx(frame),
    }


FRAMES = [
    ("HELLO after a PIR wake, MCU reset by power-on, 3rd boot, gated, RTC valid",
     proto.HELLO, 0,
     {"fw_major": 1, "fw_minor": 0, "wake_reason": proto.WAKE_PIR,
      "reset_cause": proto.RESET_POWER_ON, "boot_count": 3, "mode": proto.MODE_GATED,
      "flags": proto.FLAG_RTC_VALID}),
    ("HELLO after a watchdog power-cycle, MCU itself reset by its WDT, backoff flag",
     proto.HELLO, 255,
     {"fw_major": 1, "fw_minor": 2, "wake_reason": proto.WAKE_BACKOFF_RETRY,
      "reset_cause": proto.RESET_WATCHDOG, "boot_count": 65535, "mode": proto.MODE_HYBRID,
      "flags": proto.FLAG_RTC_VALID | proto.FLAG_BOOT_BACKOFF}),
    ("STATUS at -23.5 C on a 12.8 V LiFePO4 pack, panel charging",
     proto.STATUS, 7,
     {"rtc_time": 1790000000, "battery_mv": 12800, "solar_mv": 18250, "temp_dc": -235,
      "triggers_total": 1234, "triggers_pending": 2, "boot_count": 17,
      "reset_cause": proto.RESET_POWER_ON, "wake_reason": proto.WAKE_PIR,
      "state": proto.STATE_UP, "mode": proto.MODE_GATED,
      "flags": proto.FLAG_RTC_VALID | proto.FLAG_SOLAR_CHARGING, "bad_frames": 3}),
    ("STATUS with temperature unknown, no panel, low voltage",
     proto.STATUS, 8,
     {"rtc_time": 0, "battery_mv": 10100, "solar_mv": 0, "temp_dc": -32768,
      "triggers_total": 0, "triggers_pending": 0, "boot_count": 1,
      "reset_cause": proto.RESET_UNKNOWN, "wake_reason": proto.WAKE_POWER_ON,
      "state": proto.STATE_SHUTTING_DOWN, "mode": proto.MODE_ALWAYS_ON,
      "flags": proto.FLAG_LOW_VOLTAGE, "bad_frames": 65535}),
    ("TRIGGER taken while the Pi was off, RTC valid",
     proto.TRIGGER, 1,
     {"number": 42, "rtc_time": 1790000000, "rtc_ms": 250,
      "flags": proto.TRIG_WHILE_OFF | proto.TRIG_RTC_VALID}),
    ("ACK of a SET_TIME, ok", proto.ACK, 9, {"acked_type": proto.SET_TIME, "result": 0}),
    ("ACK of an unknown type 0x7F", proto.ACK, 10,
     {"acked_type": 0x7F, "result": proto.RESULT_UNKNOWN_TYPE}),
    ("HEARTBEAT, all stages healthy", proto.HEARTBEAT, 1, {"health": 1}),
    ("SET_TIME from NTP", proto.SET_TIME, 2, {"unix_s": 1790000000, "source": 1}),
    ("POWER_OFF with a 30 s halt timeout", proto.POWER_OFF, 3, {"timeout_s": 30}),
    ("SCHEDULE hybrid, above 12.9 V, dusk to dawn wrapping midnight + a noon hour",
     proto.SCHEDULE, 4,
     {"mode": proto.MODE_HYBRID, "hybrid_above_mv": 12900,
      "windows": [[1080, 360], [720, 780]]}),
    ("SCHEDULE gated, no windows", proto.SCHEDULE, 5,
     {"mode": proto.MODE_GATED, "hybrid_above_mv": 0, "windows": []}),
    ("GET_STATUS", proto.GET_STATUS, 6, {}),
    ("POWER_CYCLE: 20 s grace, 60 s off", proto.POWER_CYCLE, 7, {"grace_s": 20, "off_s": 60}),
    ("TRIGGER_ACK up to 42", proto.TRIGGER_ACK, 8, {"up_to_number": 42}),
]

# CRC-valid frames whose payload must be refused by unpack (and counted as bad_payload).
INVALID_PAYLOADS = [
    ("HEARTBEAT with 2 bytes", proto.HEARTBEAT, "0100"),
    ("SET_TIME before 2024-01-01", proto.SET_TIME, "ffbf915901"),
    ("SET_TIME unknown source 9", proto.SET_TIME, "806a3a6a09"),
    ("POWER_OFF timeout 0", proto.POWER_OFF, "0000"),
    ("POWER_OFF timeout 601", proto.POWER_OFF, "5902"),
    ("POWER_CYCLE off 0", proto.POWER_CYCLE, "00000000"),
    ("SCHEDULE n=7", proto.SCHEDULE, "0207" + "0000" + "00000100" * 7),
    ("SCHEDULE n=1 but no window bytes", proto.SCHEDULE, "02010000"),
    ("SCHEDULE window minute 1440", proto.SCHEDULE, "01010000a0050000"),
    ("SCHEDULE mode 3", proto.SCHEDULE, "03000000"),
    ("GET_STATUS with a byte", proto.GET_STATUS, "00"),
    ("TRIGGER rtc_ms 1000", proto.TRIGGER, "01000000806a3a6ae80300"),
    ("HELLO wake_reason 8", proto.HELLO, "0100080103000100"),
    ("STATUS too short", proto.STATUS, "00" * 24),
    ("ACK result 4", proto.ACK, "1004"),
]


def f(mtype, seq, fields):
    return proto.encode(mtype, seq, fields)


HB1 = f(proto.HEARTBEAT, 1, {"health": 1})
HB2 = f(proto.HEARTBEAT, 2, {"health": 0})
GS = f(proto.GET_STATUS, 3, {})
TA = f(proto.TRIGGER_ACK, 4, {"up_to_number": 7})


def expect_frame(frame_bytes, error=0, fields=None):
    mtype = frame_bytes[3]
    payload = frame_bytes[6:-2]
    if error == 0 and fields is None:
        fields = proto.unpack_payload(mtype, payload)
    return {"type": mtype, "seq": frame_bytes[4], "payload_hex": hx(payload),
            "error": error, "fields": fields if error == 0 else None}


def counters(**kw):
    out = dict.fromkeys(proto.COUNTER_NAMES, 0)
    for k, v in kw.items():
        if k not in out:
            raise SystemExit("unknown counter " + k)
        out[k] = v
    return out


def chunk(at_ms, data):
    return {"at_ms": at_ms, "hex": hx(data)}


def bad_crc(frame_bytes):
    b = bytearray(frame_bytes)
    b[-1] ^= 0xFF
    return bytes(b)


def no_sof_in(data):
    """The hand-counted garbage below assumes the re-scanned bytes hold no 0xA5."""
    if proto.SOF0 in bytes(data):
        raise SystemExit("vector assumption broken: 0xA5 inside " + hx(data))
    return len(data)


def raw_frame(version, mtype, seq, payload, crc=None):
    body = bytes((version, mtype, seq, len(payload))) + bytes(payload)
    c = binascii.crc_hqx(body, 0xFFFF) if crc is None else crc
    return proto.SOF + body + bytes((c >> 8, c & 0xFF))


def receiver_cases():
    cases = []

    def case(description, side, chunks, frames, counts, poll_at_ms=None):
        c = {"description": description, "side": side, "chunks": chunks,
             "frames": frames, "counters": counts}
        if poll_at_ms is not None:
            c["poll_at_ms"] = poll_at_ms
        cases.append(c)

    case("one clean frame", "mcu", [chunk(0, HB1)], [expect_frame(HB1)], counters())

    garbage = bytes((0x00, 0xFF, 0xA5, 0x00, 0x5A, 0x12))
    case("garbage before SOF: 6 bytes, incl. an 0xA5 not followed by 0x5A (counted, dropped)",
         "mcu", [chunk(0, garbage + HB1)], [expect_frame(HB1)], counters(garbage_bytes=6))

    case("0xA5 0xA5 0x5A: the first 0xA5 is garbage, the second starts the frame",
         "mcu", [chunk(0, b"\xa5" + HB1)], [expect_frame(HB1)], counters(garbage_bytes=1))

    bad = bad_crc(HB1)
    case("bad CRC, then a good frame; the rejected frame's bytes after its 0xA5 are "
         "re-scanned and count as garbage",
         "mcu", [chunk(0, bad + HB2)], [expect_frame(HB2)],
         counters(bad_crc=1, garbage_bytes=no_sof_in(bad[1:])))

    badver = raw_frame(2, proto.HEARTBEAT, 1, b"\x01")
    # rejected at the 6th byte; bytes 1..5 re-scanned, then the 3 bytes after the header
    case("bad version 2 (bad_header), then a good frame", "mcu", [chunk(0, badver + HB1)],
         [expect_frame(HB1)],
         counters(bad_header=1, garbage_bytes=no_sof_in(badver[1:6]) + no_sof_in(badver[6:])))

    toolong = bytes((0xA5, 0x5A, 0x01, 0x10, 0x01, 65))
    case("len 65 > 64 (bad_header), resync on the next frame", "mcu",
         [chunk(0, toolong + HB1)], [expect_frame(HB1)],
         counters(bad_header=1, garbage_bytes=no_sof_in(toolong[1:])))

    case("frame split across three chunks within 200 ms", "mcu",
         [chunk(0, HB1[:1]), chunk(50, HB1[1:5]), chunk(120, HB1[5:])],
         [expect_frame(HB1)], counters())

    case("frame completed exactly 200 ms after its SOF is still on time", "mcu",
         [chunk(1000, HB1[:4]), chunk(1200, HB1[4:])], [expect_frame(HB1)], counters())

    case("two frames back to back in one chunk", "mcu", [chunk(0, HB1 + GS)],
         [expect_frame(HB1), expect_frame(GS)], counters())

    # A header claiming 10 payload bytes swallows a whole real frame; after 18 bytes its CRC
    # fails and the re-scan finds the real frame inside it.
    outer_head = bytes((0xA5, 0x5A, 0x01, 0x10, 0x07, 10))
    filler = bytes(6 + 10 + 2 - len(outer_head) - len(HB1))
    outer = outer_head + HB1 + filler
    if binascii.crc_hqx(outer[2:-2], 0xFFFF) == (outer[-2] << 8 | outer[-1]):
        raise SystemExit("vector assumption broken: outer frame CRC valid")
    case("a frame starting inside a bad one (bad CRC) is found by the re-scan", "mcu",
         [chunk(0, outer)], [expect_frame(HB1)],
         counters(bad_crc=1, garbage_bytes=no_sof_in(outer_head[1:]) + no_sof_in(filler)))

    # The stub A5 5A 01 10 01 lacks its len byte, so the next frame's 0xA5 becomes len = 165:
    # bad_header; bytes 1..4 of the stub are re-scanned as garbage, then the 0xA5 starts the
    # real frame.
    cut = HB1[:5]
    case("a truncated frame directly followed by a complete one: the next SOF lands in the "
         "header (len 0xA5 > 64, bad_header), the re-scan finds the frame", "mcu",
         [chunk(0, cut + TA)], [expect_frame(TA)],
         counters(bad_header=1, garbage_bytes=no_sof_in(cut[1:])))

    case("truncated frame: 5 bytes, then silence; poll at 201 ms counts it partial", "mcu",
         [chunk(0, HB1[:5])], [], counters(partial=1), poll_at_ms=201)

    case("truncated frame, then a complete frame 250 ms later (partial counted on arrival)",
         "mcu", [chunk(0, HB1[:7]), chunk(250, HB2)], [expect_frame(HB2)],
         counters(partial=1))

    case("a lone 0xA5 that times out is garbage, not partial", "mcu",
         [chunk(0, b"\xa5")], [], counters(garbage_bytes=1), poll_at_ms=500)

    unk = raw_frame(1, 0x7F, 9, b"\x01\x02")
    case("valid frame of unknown type 0x7F: returned with error 2 (MCU answers ACK 2)",
         "mcu", [chunk(0, unk + HB1)], [expect_frame(unk, error=2), expect_frame(HB1)],
         counters(unknown_type=1))

    hello = f(proto.HELLO, 0, FRAMES[0][3])
    case("an MCU->Pi type arriving at the MCU is an unknown type there", "mcu",
         [chunk(0, hello)], [expect_frame(hello, error=2)], counters(unknown_type=1))

    badpl = raw_frame(1, proto.HEARTBEAT, 5, b"\x01\x00")
    oldtime = raw_frame(1, proto.SET_TIME, 6, binascii.unhexlify("ffbf915901"))
    case("known types with bad payloads: wrong length, SET_TIME before 2024 (error 1)",
         "mcu", [chunk(0, badpl + oldtime)],
         [expect_frame(badpl, error=1), expect_frame(oldtime, error=1)],
         counters(bad_payload=2))

    status = f(proto.STATUS, 3, FRAMES[2][3])
    trig = f(proto.TRIGGER, 1, FRAMES[4][3])
    ack = f(proto.ACK, 9, FRAMES[5][3])
    case("Pi side: HELLO, TRIGGER, ACK, STATUS interleaved with line noise", "pi",
         [chunk(0, hello + b"\x00" + trig), chunk(10, ack + b"\xff\xff"), chunk(20, status)],
         [expect_frame(hello), expect_frame(trig), expect_frame(ack), expect_frame(status)],
         counters(garbage_bytes=3))

    case("Pi side: a Pi->MCU type echoed back (loopback wiring) is an unknown type", "pi",
         [chunk(0, HB1)], [expect_frame(HB1, error=2)], counters(unknown_type=1))
    return cases


def build():
    check = proto.crc16(b"123456789")
    if check != 0x29B1 or binascii.crc_hqx(b"123456789", 0xFFFF) != 0x29B1:
        raise SystemExit("CRC check value is not 0x29B1")
    crc_cases = []
    for text in (b"", b"\x00", b"\xa5\x5a", bytes(range(64))):
        crc = binascii.crc_hqx(text, 0xFFFF)
        if crc != proto.crc16(text):
            raise SystemExit("table CRC disagrees with binascii.crc_hqx")
        crc_cases.append({"input_hex": hx(text), "crc": crc})
    vectors = {
        "protocol": "camtrap supervisor UART protocol v1 (firmware/PROTOCOL.md)",
        "generated_by": "firmware/protocol/make_vectors.py (do not edit by hand)",
        "how_to_use": (
            "frames: pack 'fields' for 'type' and frame with 'seq' -> must equal 'hex'; decode "
            "'hex' -> same type/seq/fields. invalid_payloads: unpacking must fail. receiver: a "
            "fresh receiver for 'side' (mcu accepts Pi->MCU types, pi accepts MCU->Pi types) is "
            "fed each chunk at its at_ms, then polled at poll_at_ms if given; it must return "
            "exactly 'frames' (error 0 ok with fields, 1 bad payload, 2 unknown type) and end "
            "with exactly 'counters'."),
        "version": proto.VERSION,
        "max_payload": proto.MAX_PAYLOAD,
        "frame_timeout_ms": proto.FRAME_TIMEOUT_MS,
        "crc": {
            "algorithm": "CRC-16/CCITT-FALSE poly 0x1021 init 0xFFFF, big-endian on the wire",
            "check": {"input_hex": hx(b"123456789"), "crc": check},
            "cases": crc_cases,
        },
        "frames": [frame_vector(*row) for row in FRAMES],
        "invalid_payloads": [
            {"description": d, "type": t, "payload_hex": p} for d, t, p in INVALID_PAYLOADS
        ],
        "receiver": receiver_cases(),
    }
    for row in vectors["invalid_payloads"]:
        try:
            proto.unpack_payload(row["type"], binascii.unhexlify(row["payload_hex"]))
        except ValueError:
            continue
        raise SystemExit("invalid payload accepted: " + row["description"])
    for c in vectors["receiver"]:
        got_frames, got_counts = run_receiver_case(c)
        if got_frames != c["frames"] or got_counts != c["counters"]:
            raise SystemExit("receiver disagrees with the hand-written expectation: "
                             + c["description"] + "\n got " + repr((got_frames, got_counts)))
    return vectors


def run_receiver_case(c):
    accept = proto.PI_TO_MCU if c["side"] == "mcu" else proto.MCU_TO_PI
    rx = proto.Receiver(accept)
    frames = []
    for ch in c["chunks"]:
        frames.extend(rx.feed(binascii.unhexlify(ch["hex"]), ch["at_ms"]))
    if "poll_at_ms" in c:
        rx.poll(c["poll_at_ms"])
    got = [{"type": fr.type, "seq": fr.seq, "payload_hex": hx(fr.payload), "error": fr.error,
            "fields": fr.fields} for fr in frames]
    return got, rx.counters()


def render(vectors):
    return json.dumps(vectors, indent=1) + "\n"


def main(argv):
    text = render(build())
    if "--check" in argv:
        with open(OUT) as fh:
            same = fh.read() == text
        print("vectors.json is " + ("up to date" if same else "STALE: re-run make_vectors.py"))
        return 0 if same else 1
    with open(OUT, "w") as fh:
        fh.write(text)
    print("wrote " + OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
