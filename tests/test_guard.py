"""The guarded door (core/guard.py): limits hold for every input, refusals are counted."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_app.core.clock import FakeClock
from edge_app.core.guard import (
    Limits,
    Refusals,
    Refused,
    field,
    finite_number,
    guarded,
    json_depth,
    parse_json,
    parse_object,
    refusal_reply,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**9, 10**9)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=5),
    max_leaves=30)


@given(st.binary(max_size=400))
@settings(max_examples=400)
def test_any_bytes_parse_or_are_refused_never_anything_else(data: bytes) -> None:
    kinds = {"too_large", "too_deep", "not_json", "non_finite", "too_many_values"}
    kind = ""
    try:
        parse_json(data, Limits(max_bytes=300, max_depth=4))
    except Refused as r:
        kind = r.kind
    assert kind in kinds | {""}


@given(json_values)
@settings(max_examples=300)
def test_valid_documents_round_trip(value: Any) -> None:
    text = json.dumps(value)
    depth = json_depth(text.encode())
    if depth <= 16:
        assert parse_json(text) == value
    else:
        with pytest.raises(Refused):
            parse_json(text)


@given(st.integers(1, 200_000), st.sampled_from(["[", "{\"a\":"]))
@settings(max_examples=30, deadline=None)
def test_deep_nesting_is_refused_before_parsing(n: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    doc = opener * n + "1" + closer * n
    if n <= 16:
        parse_json(doc, Limits(max_bytes=10**7))
    else:
        with pytest.raises(Refused) as e:
            parse_json(doc, Limits(max_bytes=10**7))
        assert e.value.kind == "too_deep"


def test_hundred_thousand_deep_is_refused_without_recursion() -> None:
    doc = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(Refused) as e:
        parse_json(doc, Limits(max_bytes=10**6))
    assert e.value.kind == "too_deep"
    with pytest.raises(Refused) as e:
        parse_json(doc)
    assert e.value.kind == "too_large"  # size is checked first


def test_brackets_inside_strings_do_not_count() -> None:
    assert json_depth(b'{"a": "[[[[[[\\"[[[["}') == 1
    assert parse_json('{"a": "' + "[" * 100 + '"}') == {"a": "[" * 100}


@pytest.mark.parametrize("doc", ['{"x": NaN}', '{"x": Infinity}', '[-Infinity]', '{"x": 1e999}',
                                 '[-1e400]'])
def test_non_finite_numbers_are_refused(doc: str) -> None:
    with pytest.raises(Refused) as e:
        parse_json(doc)
    assert e.value.kind == "non_finite"


@pytest.mark.parametrize("doc", [b"\xff\xfe", b"{", b"", b'{"a":1}x', b"1" * 5000])
def test_garbage_is_not_json(doc: bytes) -> None:
    with pytest.raises(Refused) as e:
        parse_json(doc)
    assert e.value.kind == "not_json"


def test_node_limit() -> None:
    with pytest.raises(Refused) as e:
        parse_json("[" + ",".join(["0"] * 50) + "]", Limits(max_nodes=40))
    assert e.value.kind == "too_many_values"


def test_parse_object_and_fields() -> None:
    with pytest.raises(Refused) as e:
        parse_object("[1]")
    assert e.value.kind == "bad_type"
    obj = parse_object('{"id": "c1", "n": 2, "on": true}')
    assert field(obj, "id", str) == "c1"
    assert field(obj, "missing", str, required=False) is None
    with pytest.raises(Refused):
        field(obj, "on", int)  # a bool is not an int here
    with pytest.raises(Refused):
        field(obj, "id", str, max_len=1)
    with pytest.raises(Refused):
        field(obj, "nope", str)


@given(st.floats() | st.integers() | st.booleans() | st.text(max_size=3) | st.none())
def test_finite_number(value: Any) -> None:
    ok = (not isinstance(value, bool) and isinstance(value, int | float)
          and math.isfinite(float(value)))
    if ok:
        assert finite_number(value, "x") == float(value)
    else:
        with pytest.raises(Refused):
            finite_number(value, "x")


def test_refusals_are_counted_per_kind_and_logged_with_a_throttle(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    r = Refusals("mqtt-cmd", clock, log_every_s=60)
    caplog.set_level(logging.WARNING)
    for _ in range(5):
        r.count(Refused("too_deep", "nested 99"), "camtrap/LL-1/cmd/x")
    r.count(Refused("not_json", "bad"))
    assert r.snapshot() == {"too_deep": 5, "not_json": 1}
    assert r.total == 6
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 2  # one per kind: the noisy kind does not hide the other
    clock.advance(61)
    r.count(Refused("too_deep", "nested 99"))
    assert "+4 more" in caplog.records[-1].getMessage()


def test_guarded_catches_only_refusals() -> None:
    r = Refusals("door")
    ok, value = guarded(r, lambda: parse_object(b"{}"))
    assert ok
    assert value == {}
    ok, refusal = guarded(r, lambda: parse_object(b"nope"))
    assert not ok
    assert refusal_reply(refusal, id="c1")["ok"] is False
    with pytest.raises(ZeroDivisionError):
        guarded(r, lambda: 1 / 0)
