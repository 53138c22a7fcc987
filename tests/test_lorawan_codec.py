"""Codec v1: shared vectors for Python and JS, JS vs Python on random bytes, round trips,
every field's range within 11 bytes, malformed input → errors (never exceptions), CLI tools."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_app.cli import main as camtrap
from edge_app.core import lora_codec as codec

REPO = Path(__file__).resolve().parents[1]
VECTORS_PATH = REPO / "tests" / "lorawan_vectors.json"
CODEC_JS = REPO / "deploy" / "lorawan" / "codec.js"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())

# Runs every vector through codec.js and decodes a batch of payloads given on stdin; prints
# one JSON object. Kept here so the JS side needs nothing but node and the codec itself.
NODE_RUNNER = r"""
const fs = require("fs");
const codec = require(process.argv[1]);
const vectors = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = {decodeUplink: [], decodeDownlink: [], encodeDownlink: [], encodeUplink: [],
             random: []};
for (const v of vectors.decodeUplink) out.decodeUplink.push(codec.decodeUplink(v.input));
for (const v of vectors.decodeDownlink) out.decodeDownlink.push(codec.decodeDownlink(v.input));
for (const v of vectors.encodeDownlink) out.encodeDownlink.push(codec.encodeDownlink(v.input));
for (const v of vectors.encodeUplink) out.encodeUplink.push(codec.encodeUplink(v.input));
const batch = JSON.parse(fs.readFileSync(0, "utf8"));
for (const b of batch) {
  out.random.push(b.fPort === 20 ? codec.decodeDownlink(b) : codec.decodeUplink(b));
}
process.stdout.write(JSON.stringify(out));
"""


def _node() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not installed (the JS codec must be tested against Python)")
    return exe


def _run_node(batch: list[dict[str, Any]]) -> dict[str, Any]:
    proc = subprocess.run([_node(), "-e", NODE_RUNNER, str(CODEC_JS), str(VECTORS_PATH)],
                          input=json.dumps(batch), capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _random_batch(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    batch = []
    for _ in range(n):
        port = rng.choice([10, 10, 10, 11, 11, 20, 12])
        length = rng.choice([11, 11, 11, rng.randint(0, 14)]) if port != 20 else rng.randint(0, 4)
        data = [rng.randrange(256) for _ in range(length)]
        if port in (10, 11) and data and rng.random() < 0.8:
            data[0] = (1 << 5) | (data[0] & 0x1F)  # mostly version 1, to reach the fields
        batch.append({"fPort": port, "bytes": data})
    return batch


def _py_decode(item: dict[str, Any]) -> dict[str, Any]:
    fn = codec.decode_downlink if item["fPort"] == 20 else codec.decode_uplink
    return fn(item["fPort"], item["bytes"]).to_json()


# -- vectors --------------------------------------------------------------------------------


@pytest.mark.parametrize("v", VECTORS["decodeUplink"], ids=lambda v: v["description"])
def test_python_decode_uplink_vectors(v: dict[str, Any]) -> None:
    got = codec.decode_uplink(v["input"]["fPort"], v["input"]["bytes"]).to_json()
    assert got == v["output"]


@pytest.mark.parametrize("v", VECTORS["decodeDownlink"], ids=lambda v: v["description"])
def test_python_decode_downlink_vectors(v: dict[str, Any]) -> None:
    got = codec.decode_downlink(v["input"]["fPort"], v["input"]["bytes"]).to_json()
    assert got == v["output"]


@pytest.mark.parametrize("v", VECTORS["encodeDownlink"], ids=lambda v: v["description"])
def test_python_encode_downlink_vectors(v: dict[str, Any]) -> None:
    r = codec.encode_downlink(v["input"]["data"])
    assert {"bytes": list(r.payload), "fPort": r.fport, "warnings": r.warnings,
            "errors": r.errors} == v["output"]


@pytest.mark.parametrize("v", VECTORS["encodeUplink"], ids=lambda v: v["description"])
def test_python_encode_uplink_vectors(v: dict[str, Any]) -> None:
    r = codec.encode_uplink(v["input"]["fPort"], v["input"]["data"])
    assert {"bytes": list(r.payload), "fPort": r.fport, "warnings": r.warnings,
            "errors": r.errors} == v["output"]


def test_the_leopard_alert_is_these_eleven_bytes() -> None:
    """One vector checked by hand, so the golden file is not just Python agreeing with itself."""
    payload = codec.encode_alert(codec.Alert(label="animal", species="leopard", confidence=0.91,
                                             time=1_790_000_000, seq=17, battery_v=3.9))
    assert payload.hex() == "295b" + "6ab13b80" + "0011" + "01" + "27" + "01"
    assert VECTORS["decodeUplink"][0]["input"]["bytes"] == list(payload)


def test_javascript_agrees_with_every_vector_and_with_python_on_random_bytes() -> None:
    batch = _random_batch(3000, seed=5)
    js = _run_node(batch)
    for kind in ("decodeUplink", "decodeDownlink", "encodeDownlink", "encodeUplink"):
        for v, got in zip(VECTORS[kind], js[kind], strict=True):
            assert got == v["output"], (kind, v["description"])
    assert len(js["random"]) == len(batch)
    for item, got in zip(batch, js["random"], strict=True):
        assert got == _py_decode(item), item


# -- properties -----------------------------------------------------------------------------

alerts = st.builds(
    codec.Alert,
    label=st.sampled_from(codec.LABELS),
    species=st.sampled_from(codec.SPECIES),
    confidence=st.integers(0, 100).map(lambda p: p / 100),
    time=st.integers(0, codec.U32),
    seq=st.integers(0, 2**40),
    count=st.integers(0, 255),
    battery_v=st.none() | st.integers(0, 254).map(lambda v: v / 10),
    time_synced=st.booleans(),
    backlog=st.booleans(),
    mqtt_down=st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(alerts)
def test_alert_round_trip_within_eleven_bytes(alert: codec.Alert) -> None:
    payload = codec.encode_alert(alert)
    assert len(payload) == codec.ALERT_BYTES <= 11
    res = codec.decode_uplink(codec.PORT_ALERT, payload)
    assert res.ok
    assert not res.warnings
    d = res.data
    assert (d["label"], d["species"], d["confidence"], d["time"], d["seq16"], d["count"],
            d["battery_v"], d["time_synced"], d["backlog"], d["mqtt_down"]) == (
        alert.label, alert.species, alert.confidence, alert.time, alert.seq & 0xFFFF,
        alert.count, alert.battery_v, alert.time_synced, alert.backlog, alert.mqtt_down)
    again = codec.encode_uplink(codec.PORT_ALERT, d)
    assert again.ok
    assert again.payload == payload


@settings(max_examples=200, deadline=None)
@given(st.builds(codec.Status,
                 battery_v=st.none() | st.integers(0, 254).map(lambda v: v / 10),
                 temp_c=st.none() | st.integers(-127, 127).map(float),
                 disk_free_gb=st.integers(0, 65535).map(lambda v: v / 10),
                 outbox_depth=st.integers(0, 65535), uptime_min=st.integers(0, codec.U24),
                 time_synced=st.booleans(), mqtt_connected=st.booleans(),
                 disk_low=st.booleans(), lora_backlog=st.booleans()))
def test_status_round_trip(status: codec.Status) -> None:
    payload = codec.encode_status(status)
    assert len(payload) == codec.STATUS_BYTES
    d = codec.decode_uplink(codec.PORT_STATUS, payload).data
    assert d["battery_v"] == status.battery_v
    assert d["temp_c"] == (None if status.temp_c is None else int(status.temp_c))
    assert (d["disk_free_gb"], d["outbox_depth"], d["uptime_min"]) == (
        status.disk_free_gb, status.outbox_depth, status.uptime_min)
    assert (d["time_synced"], d["mqtt_connected"], d["disk_low"], d["lora_backlog"]) == (
        status.time_synced, status.mqtt_connected, status.disk_low, status.lora_backlog)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=40))
def test_any_bytes_on_any_port_decode_without_raising(port: int, data: bytes) -> None:
    for fn in (codec.decode_uplink, codec.decode_downlink):
        res = fn(port, data)
        assert res.ok != bool(res.errors)
        assert res.data == {} or res.ok


def test_payloads_that_are_not_bytes_are_errors() -> None:
    for junk in ("2901", None, [1, 256], [1, True], 3.5):
        res = codec.decode_uplink(10, junk)  # type: ignore[arg-type]
        assert res.errors == ["bytes must be integers 0..255"]
        assert codec.decode_downlink(20, junk).errors  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(codec._ALERT_KEYS), "x"]),
                       st.none() | st.booleans() | st.integers() | st.floats()
                       | st.text(max_size=5)), st.sampled_from([10, 11, 20, 99]))
def test_encoders_never_raise_on_junk(data: dict[str, Any], port: int) -> None:
    r = codec.encode_downlink(data) if port == 20 else codec.encode_uplink(port, data)
    assert r.ok == (not r.errors)
    assert r.ok or r.payload == b""
    if r.ok and port == 10:
        assert len(r.payload) == 11


def test_every_field_range_fits_eleven_bytes() -> None:
    """The extremes of each field encode into exactly 11 bytes and come back unchanged."""
    extremes = {
        "label": codec.LABELS, "species": codec.SPECIES, "confidence": (0.0, 0.01, 0.99, 1.0),
        "time": (0, 1, codec.U32), "seq16": (0, 1, codec.U16), "count": (0, 1, 255),
        "battery_v": (None, 0.0, 25.4), "time_synced": (False, True),
        "backlog": (False, True), "mqtt_down": (False, True),
    }
    base: dict[str, Any] = {"label": "animal", "species": None, "confidence": 0.5, "time": 1,
                            "seq16": 1}
    for name, values in extremes.items():
        for value in values:
            r = codec.encode_uplink(10, {**base, name: value})
            assert r.ok, (name, value)
            assert len(r.payload) == 11, (name, value)
            assert codec.decode_uplink(10, r.payload).data[name] == value, (name, value)
    # Out of range never silently wraps: the encoder refuses it.
    for name, bad in (("confidence", 1.01), ("time", codec.U32 + 1), ("seq16", codec.U16 + 1),
                      ("battery_v", 25.5), ("label", "bear"), ("species", "lynx")):
        assert not codec.encode_uplink(10, {**base, name: bad}).ok, name
    # Saturating fields saturate (count) rather than wrapping.
    r = codec.encode_uplink(10, {**base, "count": 1000})
    assert codec.decode_uplink(10, r.payload).data["count"] == 255


def test_alert_dataclass_clamps_instead_of_failing() -> None:
    """A sensor reading out of range must not cost the alert: the trap clamps."""
    payload = codec.encode_alert(codec.Alert(label="animal", species="leopard",
                                             confidence=1.7, time=-5, seq=-1,
                                             battery_v=99.0, count=-3))
    d = codec.decode_uplink(10, payload).data
    assert (d["confidence"], d["time"], d["seq16"], d["battery_v"], d["count"]) == (
        1.0, 0, 0, None, 0)


# -- the technicians' CLI ------------------------------------------------------------------


def test_cli_encode_then_decode(capsys: pytest.CaptureFixture[str]) -> None:
    fields = {"label": "animal", "species": "leopard", "confidence": 0.91, "time": 1790000000,
              "seq": 17, "battery_v": 3.9, "time_synced": True}
    assert camtrap(["lorawan", "encode", "--port", "10", json.dumps(fields)]) == 0
    hex_payload = capsys.readouterr().out.strip()
    assert hex_payload == "295B6AB13B800011012701"
    assert camtrap(["lorawan", "decode", "--port", "10", hex_payload]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out) == VECTORS["decodeUplink"][0]["output"]["data"]


def test_cli_commands_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert camtrap(["lorawan", "encode", "--port", "20",
                    '{"command": "set_threshold", "threshold": 0.3}']) == 0
    assert capsys.readouterr().out.strip() == "01001E"
    assert camtrap(["lorawan", "decode", "--port", "20", "01 00 1e"]) == 0
    assert json.loads(capsys.readouterr().out) == {"command": "set_threshold",
                                                   "target": "detector", "threshold": 0.3}
    assert camtrap(["lorawan", "decode", "--port", "10", "2102"]) == 1
    assert "expected 11 bytes, got 2" in capsys.readouterr().err
    assert camtrap(["lorawan", "decode", "--port", "10", "zz"]) == 2
    assert camtrap(["lorawan", "encode", "--port", "10", "{not json"]) == 2
    assert camtrap(["lorawan", "encode", "--port", "10", '{"label": "bear"}']) == 1
    assert camtrap(["lorawan", "decode", "--port", "10", "--full", "2102"]) == 1
    full = json.loads(capsys.readouterr().out)
    assert full == {"data": {}, "warnings": [], "errors": ["alert: expected 11 bytes, got 2"]}


def test_cli_runs_as_a_program() -> None:
    """Scripts call the installed command: one line on stdout, exit code 0."""
    proc = subprocess.run([sys.executable, "-m", "edge_app", "lorawan", "decode", "--port",
                           "11", "--base64", "IH4E/////////wI="], capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outbox_depth"] == 65535
