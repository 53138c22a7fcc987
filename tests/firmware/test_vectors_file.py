"""The shared vectors file is what its generator makes, and its CRCs agree with CPython's own
CRC-16/CCITT (``binascii.crc_hqx``, no code shared with the firmware's table).

CPython-only by nature (the generator is a CPython tool); the vectors themselves are checked
on both interpreters by the scenarios.
"""

from __future__ import annotations

import binascii
import importlib.util
import json
from pathlib import Path

PROTOCOL = Path(__file__).resolve().parents[2] / "firmware" / "protocol"


def test_vectors_file_is_current() -> None:
    spec = importlib.util.spec_from_file_location("make_vectors", PROTOCOL / "make_vectors.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    on_disk = (PROTOCOL / "vectors.json").read_text()
    assert mod.render(mod.build()) == on_disk, "re-run firmware/protocol/make_vectors.py"


def test_every_frame_crc_matches_binascii() -> None:
    vectors = json.loads((PROTOCOL / "vectors.json").read_text())
    assert binascii.crc_hqx(b"123456789", 0xFFFF) == vectors["crc"]["check"]["crc"] == 0x29B1
    for v in vectors["frames"]:
        raw = bytes.fromhex(v["hex"])
        assert raw[:3] == b"\xa5\x5a\x01"
        assert raw[5] == len(raw) - 8
        assert int.from_bytes(raw[-2:], "big") == binascii.crc_hqx(raw[2:-2], 0xFFFF) == v["crc"]
