"""The modem-line door of the LoRaWAN driver: whatever the serial line says, the driver counts
it and goes on; a downlink reaches the router only with a valid port, payload and finite
signal figures."""

from __future__ import annotations

import math

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_app.core.guard import Refused
from edge_app.trap.uplink.lorawan import (
    MAX_LINE,
    DriverStats,
    LineChannel,
    Rak3172,
    parse_downlink,
)


def test_a_good_downlink() -> None:
    d = parse_downlink("20", "01 02 0a", "-46", "10.5")
    assert (d.port, d.payload, d.rssi, d.snr) == (20, b"\x01\x02\x0a", -46.0, 10.5)


@pytest.mark.parametrize(("port", "data", "rssi", "kind"), [
    ("0", "01", "-40", "bad_port"), ("224", "01", "-40", "bad_port"), ("-1", "01", "1", "bad_port"),
    ("x", "01", "1", "bad_port"), ("20", "0", "1", "bad_payload"), ("20", "zz", "1", "bad_payload"),
    ("20", "00" * 243, "1", "bad_payload"), ("20", "01", "nan", "non_finite"),
    ("20", "01", "inf", "non_finite"), ("20", "01", "loud", "bad_type"),
])
def test_bad_downlinks_are_refused(port: str, data: str, rssi: str, kind: str) -> None:
    with pytest.raises(Refused) as e:
        parse_downlink(port, data, rssi, "1")
    assert e.value.kind == kind


@given(st.text(max_size=300))
@settings(max_examples=400)
def test_any_rx_event_line_is_a_downlink_or_counted(tail: str) -> None:
    modem = Rak3172("loop://")
    d = modem._parse_rx("+EVT:RX_1:" + tail)
    if d is None:
        assert modem.stats.unexpected == 1
    else:
        assert 1 <= d.port <= 223
        assert len(d.payload) <= 242
        assert d.rssi is not None
        assert math.isfinite(d.rssi)


@given(st.lists(st.binary(max_size=2 * MAX_LINE), max_size=6))
@settings(max_examples=200, deadline=None)
def test_any_bytes_on_the_line_become_printable_lines_or_counts(chunks: list[bytes]) -> None:
    stats = DriverStats()
    ch = LineChannel(serial.serial_for_url("loop://", timeout=None), stats)
    for raw in chunks:
        ch._line(raw)  # the reader thread's per-line step, on this thread
    lines = []
    while (line := ch.get(0)) is not None:
        lines.append(line)
    assert len(lines) == stats.lines
    for line in lines:
        assert line
        assert len(line) <= MAX_LINE
        assert all(0x20 <= ord(c) < 0x7F for c in line)
