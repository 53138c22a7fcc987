"""The receiver's doors (station/doors.py): the topic's unit rules, nothing else gets through."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from station_support import event

from edge_app.core.guard import Refused
from edge_app.station.doors import (
    check_unit,
    expected_thumbs,
    parse_chunk,
    parse_event,
    parse_news,
    parse_status,
)

SHA = hashlib.sha256(b"x").hexdigest()
GUARD_KINDS = {"too_large", "too_deep", "not_json", "non_finite", "too_many_values"}


def kind_of(fn: Any, *args: Any) -> str:
    try:
        fn(*args)
    except Refused as r:
        return r.kind
    return ""


def test_an_event_is_stored_under_the_topic_unit() -> None:
    ev = parse_event("A-1", json.dumps(event("A-1", 7)).encode())
    assert (ev.unit, ev.id, ev.key, ev.outcome) == ("A-1", "A-1-7", ("A-1", "A-1-7"), "alert")
    assert ev.event["species"] == "leopard"


def test_missing_unit_and_seq_are_filled_in_from_the_topic() -> None:
    ev = parse_event("PROBE", b'{"id": "PROBE-1", "outcome": "alert"}')
    assert (ev.event["unit"], ev.event["seq"]) == ("PROBE", 1)


@pytest.mark.parametrize(("body", "kind"), [
    (event("B-2", 1), "unit_mismatch"),  # B's event on A's topic
    ({**event("A-1", 1), "id": "B-2-1"}, "id_mismatch"),  # A's unit, B's id
    ({**event("A-1", 1), "id": "A-1-2"}, "id_mismatch"),  # id and seq disagree
    ({**event("A-1", 1), "id": "A-1-01", "seq": 1}, "id_mismatch"),  # not canonical
    ({**event("A-1", 1), "id": "A-1"}, "id_mismatch"),
    ({**event("A-1", 1), "id": "A-1-x"}, "id_mismatch"),
    ({**event("A-1", 1), "id": "A-1-١"}, "id_mismatch"),  # an Arabic-Indic digit
    ({**event("A-1", 1), "id": "A-1-" + "9" * 19}, "id_mismatch"),
    ({k: v for k, v in event("A-1", 1).items() if k != "id"}, "missing"),
    ({**event("A-1", 1), "id": 5}, "bad_type"),
    ({**event("A-1", 1), "unit": ["A-1"]}, "bad_type"),
    ({**event("A-1", 1), "seq": True}, "bad_type"),
    ({**event("A-1", 1), "outcome": 3}, "bad_type"),
])
def test_an_event_that_disagrees_with_its_topic_is_refused(body: dict[str, Any],
                                                           kind: str) -> None:
    assert kind_of(parse_event, "A-1", json.dumps(body).encode()) == kind


@pytest.mark.parametrize(("payload", "kind"), [
    (b"[" * 100_000 + b"]" * 100_000, "too_large"),  # the one that killed the worker
    (b"[" * 2000 + b"]" * 2000, "too_deep"),
    (b'{"id": "A-1-1", "score": NaN}', "non_finite"),
    (b'{"id": "A-1-1", "score": 1e999}', "non_finite"),
    (b"\xff not json", "not_json"),
    (b"[1, 2]", "bad_type"),
    (b"x" * 70_000, "too_large"),
])
def test_poison_payloads_are_refused_by_kind(payload: bytes, kind: str) -> None:
    assert kind_of(parse_event, "A-1", payload) == kind


@pytest.mark.parametrize("unit", ["", "..", "a/b", "x" * 33, "A 1", "A+1", "A#"])
def test_a_topic_unit_that_is_no_unit_id_is_refused(unit: str) -> None:
    assert kind_of(check_unit, unit) == "bad_unit"


def test_chunks_are_checked_before_they_are_buffered() -> None:
    props = {"of": "3", "sha256": SHA, "event": "A-1-7"}
    c = parse_chunk("A-1", "A-1-7-thumb", "2", props, b"abc")
    assert (c.index, c.of, c.event_id, c.data) == (2, 3, "A-1-7", b"abc")
    bad = [
        (("A-1", "A-1-7-thumb", "3", props, b""), "bad_chunk"),  # index == of
        (("A-1", "A-1-7-thumb", "-1", props, b""), "bad_chunk"),
        (("A-1", "A-1-7-thumb", " 1", props, b""), "bad_chunk"),
        (("A-1", "A-1-7-thumb", "0", {**props, "of": "0"}, b""), "bad_chunk"),
        (("A-1", "A-1-7-thumb", "0", {**props, "of": "100001"}, b""), "bad_chunk"),
        (("A-1", "A-1-7-thumb", "0", {**props, "sha256": "ab"}, b""), "bad_sha256"),
        (("A-1", "B-2-7-thumb", "0", props, b""), "id_mismatch"),  # another unit's file
        (("A-1", "A-1-7-thumb", "0", {**props, "event": "B-2-7"}, b""), "id_mismatch"),
        (("A-1", "A-1-7-thumb", "0", {**props, "event": "A-1-8"}, b""), "id_mismatch"),
        (("A-1", "A-1-7-..", "0", props, b""), "id_mismatch"),
        (("A-1", "A-1-7-thumb", "0", props, b"x" * (1024 * 1024 + 1)), "too_large"),
        (("..", "..-7-thumb", "0", props, b""), "bad_unit"),
    ]
    for args, kind in bad:
        assert kind_of(parse_chunk, *args) == kind, args


def test_status_and_news() -> None:
    assert parse_status(b'{"state": "lost"}')["state"] == "lost"
    assert kind_of(parse_status, b'{"state": "hacked"}') == "bad_state"
    assert kind_of(parse_status, b'{"ts": 1}') == "missing"
    assert kind_of(parse_news, b'{"battery_v": NaN}') == "non_finite"
    assert parse_news(b'{"disk_low": true}') == {"disk_low": True}


def test_only_the_units_own_thumbnails_are_expected() -> None:
    ev = parse_event("A-1", json.dumps(event("A-1", 7, media=[
        {"id": "A-1-7-thumb", "kind": "thumb"}, {"id": "B-2-7-thumb", "kind": "thumb"},
        {"id": "A-1-7-image", "kind": "image"}, "junk", {"id": 3, "kind": "thumb"}])).encode())
    assert expected_thumbs(ev) == ["A-1-7-thumb"]


units = st.sampled_from(["A-1", "B-2", "LL-042"])
ids = st.one_of(units.flatmap(lambda u: st.integers(0, 10**6).map(lambda n: f"{u}-{n}")),
                st.text(max_size=12))
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)


@given(topic_unit=units, body_unit=st.one_of(st.none(), units, st.text(max_size=6)),
       event_id=ids, seq=st.one_of(st.none(), st.integers(-5, 10**6)),
       extra=st.dictionaries(st.text(max_size=6), json_scalars, max_size=4))
@settings(max_examples=400)
def test_whatever_the_body_says_only_the_topic_units_own_ids_pass(
    topic_unit: str, body_unit: str | None, event_id: str, seq: int | None,
    extra: dict[str, Any],
) -> None:
    body: dict[str, Any] = {**extra, "id": event_id}
    if body_unit is not None:
        body["unit"] = body_unit
    if seq is not None:
        body["seq"] = seq
    payload = json.dumps(body, allow_nan=True).encode()
    kind = kind_of(parse_event, topic_unit, payload)  # refused with a kind, never raised
    if kind:
        return
    ev = parse_event(topic_unit, payload)
    assert ev.unit == topic_unit
    assert ev.event["unit"] == topic_unit
    assert ev.id == f"{topic_unit}-{ev.event['seq']}"


@given(st.binary(max_size=300), units)
@settings(max_examples=300)
def test_any_bytes_are_an_event_or_a_refusal(payload: bytes, unit: str) -> None:
    kind = kind_of(parse_event, unit, payload)
    assert kind in GUARD_KINDS | {"", "bad_type", "missing", "unit_mismatch", "id_mismatch"}
    if not kind:
        assert parse_event(unit, payload).unit == unit


@given(unit=units, media_id=st.text(max_size=20) | units.map(lambda u: f"{u}-3-thumb"),
       index=st.text(max_size=8), of=st.text(max_size=8), sha=st.sampled_from([SHA, "", "x"]),
       ev=st.none() | st.text(max_size=10), data=st.binary(max_size=64))
@settings(max_examples=300)
def test_any_chunk_is_the_units_own_or_refused(unit: str, media_id: str, index: str, of: str,
                                               sha: str, ev: str | None, data: bytes) -> None:
    props = {"of": of, "sha256": sha} | ({"event": ev} if ev is not None else {})
    try:
        c = parse_chunk(unit, media_id, index, props, data)
    except Refused:
        return
    assert c.media_id.startswith(unit + "-")
    assert 0 <= c.index < c.of
