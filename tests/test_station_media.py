"""Media reassembly bookkeeping (station/media.py), clock-driven, without a broker."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_app.core.clock import FakeClock
from edge_app.core.guard import Refused
from edge_app.station.doors import Chunk
from edge_app.station.media import MediaAssembler, MediaRequest

DATA = bytes(range(256)) * 40  # 10 240 bytes
SIZE = 1024


def chunks(unit: str = "A-1", media_id: str = "A-1-7-thumb", data: bytes = DATA,
           sha: str | None = None) -> list[Chunk]:
    parts = [data[i:i + SIZE] for i in range(0, len(data), SIZE)]
    digest = sha or hashlib.sha256(data).hexdigest()
    return [Chunk(unit, media_id, i, len(parts), digest, media_id.rsplit("-", 1)[0], p)
            for i, p in enumerate(parts)]


def make(stored: set[tuple[str, str]] | None = None, **kw: float) -> MediaAssembler:
    have = stored if stored is not None else set()
    return MediaAssembler(lambda u, m: (u, m) in have, timeout_s=30.0, thumb_wait_s=600.0,
                          **kw)  # type: ignore[arg-type]


def test_a_file_is_assembled_from_chunks_in_any_order() -> None:
    m = make()
    cs = chunks()
    outcomes = [m.add(c, 1.0) for c in reversed(cs)]
    assert [o.status for o in outcomes] == ["partial"] * (len(cs) - 1) + ["complete"]
    f = outcomes[-1].file
    assert f is not None
    assert (f.unit, f.media_id, f.event_id, f.data) == ("A-1", "A-1-7-thumb", "A-1-7", DATA)
    assert m.in_progress() == 0


def test_a_stored_file_is_not_assembled_again() -> None:
    m = make({("A-1", "A-1-7-thumb")})
    assert m.add(chunks()[0], 1.0).status == "known"
    # ...but the same media id of another unit is that unit's own business
    other = chunks(unit="B-2", media_id="A-1-7-thumb")
    assert m.add(other[0], 1.0).status == "partial"


def test_a_file_that_fails_its_sha256_is_asked_for_again() -> None:
    m = make()
    out = [m.add(c, 1.0) for c in chunks(sha="0" * 64)]
    assert out[-1].status == "bad_sha256"
    assert out[-1].request == MediaRequest("A-1", "A-1-7-thumb")
    assert out[-1].request.body() == {"media": "A-1-7-thumb"}


def test_a_stalled_transfer_asks_for_its_missing_chunks_with_doubling_delays() -> None:
    clock = FakeClock()
    m = make()
    cs = chunks()
    for c in cs[:3] + cs[5:]:
        m.add(c, clock.monotonic())
    assert m.next_due_s(clock.monotonic()) == pytest.approx(30.0)
    asked: list[float] = []
    gave_up_at = None
    for _ in range(2000):
        clock.advance(1.0)
        for req in m.due(clock.monotonic()):
            assert req.body() == {"media": "A-1-7-thumb", "chunks": [3, 4], "of": len(cs)}
            asked.append(clock.monotonic() - 1000.0)
        if gave_up_at is None and m.in_progress() == 0:
            gave_up_at = clock.monotonic() - 1000.0
    # after 30 s, then 60, 120, 240, 480 s more; it gives up when a sixth would be due
    assert asked == [30.0, 90.0, 210.0, 450.0, 930.0]
    assert gave_up_at == 930.0 + 960.0
    assert m.next_due_s(clock.monotonic()) is None


def test_an_announced_thumbnail_is_requested_once_the_unit_is_quiet() -> None:
    clock = FakeClock()
    m = make()
    m.expect("A-1", "A-1-7", ["A-1-7-thumb"], clock.monotonic())
    clock.advance(599.0)
    assert m.due(clock.monotonic()) == []
    other = chunks(media_id="A-1-6-image")
    m.add(other[0], clock.monotonic())  # the unit is busy sending something else
    clock.advance(10.0)
    assert m.due(clock.monotonic()) == []
    assert m.next_due_s(clock.monotonic()) == pytest.approx(20.0)
    clock.advance(20.0)
    assert MediaRequest("A-1", "A-1-7-thumb") in m.due(clock.monotonic())
    clock.advance(5000.0)
    assert MediaRequest("A-1", "A-1-7-thumb") not in m.due(clock.monotonic())  # once


def test_a_thumbnail_that_starts_is_no_longer_awaited() -> None:
    m = make()
    m.expect("A-1", "A-1-7", ["A-1-7-thumb"], 0.0)
    m.add(chunks()[0], 1.0)
    assert [r.chunks for r in m.due(10_000.0)] == [list(range(1, 10))]


def test_a_file_larger_than_the_limit_is_refused_and_dropped() -> None:
    m = MediaAssembler(lambda u, i: False, max_file_bytes=3 * SIZE)
    cs = chunks()
    for c in cs[:3]:
        m.add(c, 1.0)
    with pytest.raises(Refused) as e:
        m.add(cs[3], 1.0)
    assert e.value.kind == "too_large"
    assert m.in_progress() == 0


def test_one_units_transfers_never_evict_another_units() -> None:
    m = MediaAssembler(lambda u, i: False, max_partials=2)
    m.add(chunks(unit="B-2", media_id="B-2-1-thumb")[0], 0.0)
    for n in range(1, 20):
        m.add(chunks(media_id=f"A-1-{n}-thumb")[0], float(n))
    assert m.in_progress() == 3  # A's two newest and B's one
    assert m.evicted == 17
    rest = chunks(unit="B-2", media_id="B-2-1-thumb")[1:]
    assert [m.add(c, 30.0).status for c in rest][-1] == "complete"


@given(st.lists(st.integers(0, 9), min_size=10, max_size=40), st.data())
@settings(max_examples=200)
def test_any_order_and_repetition_of_chunks_yields_the_file_exactly_once(
    order: list[int], data: st.DataObject,
) -> None:
    order = order + data.draw(st.permutations(list(range(10))))
    m = make()
    cs = chunks()
    stored: list[bytes] = []
    have: set[tuple[str, str]] = set()
    m = make(have)
    for i in order:
        out = m.add(cs[i], 1.0)
        if out.file is not None:
            stored.append(out.file.data)
            have.add(("A-1", "A-1-7-thumb"))
    assert stored == [DATA]
