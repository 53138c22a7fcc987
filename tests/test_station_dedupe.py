"""Per-unit dedupe and the receipt decisions (station/dedupe.py), without a broker."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from station_support import event

from edge_app.station.dedupe import EventBook, UnitMemory, short_key
from edge_app.station.store import StoredEvent


def ev(unit: str, event_id: str, outcome: str = "alert", seq: int | None = None) -> StoredEvent:
    n = seq if seq is not None else int(event_id.rpartition("-")[2] or 0)
    return StoredEvent(event_id, unit, outcome, event(unit, n, id=event_id, outcome=outcome))


def run(book: EventBook, events: list[StoredEvent]) -> list[str]:
    d = book.decide(events, book.fresh(events))
    return [e.id for e in d.deliver]


def test_the_same_id_from_two_units_is_two_events() -> None:
    """Keyed by (unit, id): an id another unit used first does not hide the real event (the
    store's keys are the same; the door refuses such ids anyway)."""
    book = EventBook()
    forged = [ev("A-1", f"B-2-{n}") for n in range(1, 31)]
    assert len(run(book, forged)) == 30
    real = [ev("B-2", f"B-2-{n}") for n in range(1, 31)]
    d = book.decide(real, book.fresh(real))
    assert [e.id for e in d.deliver] == [f"B-2-{n}" for n in range(1, 31)]
    assert d.duplicates == 0
    assert d.receipts == {"B-2": [f"B-2-{n}" for n in range(1, 31)]}


def test_duplicates_are_confirmed_again_but_shown_once() -> None:
    book = EventBook()
    first = [ev("A-1", "A-1-1"), ev("A-1", "A-1-1"), ev("A-1", "A-1-2", "keep")]
    d = book.decide(first, book.fresh(first))
    assert [e.id for e in d.deliver] == ["A-1-1"]
    assert (d.duplicates, d.ignored) == (1, 1)
    assert d.receipts == {"A-1": ["A-1-1", "A-1-2"]}  # each id once per receipt
    again = [ev("A-1", "A-1-1")]
    d = book.decide(again, book.fresh(again))
    assert (d.deliver, d.duplicates, d.receipts) == ([], 1, {"A-1": ["A-1-1"]})


def test_keep_events_are_delivered_when_asked() -> None:
    book = EventBook(include_keep=True)
    assert run(book, [ev("A-1", "A-1-1", "keep")]) == ["A-1-1"]


def test_one_flooding_unit_cannot_push_another_units_ids_out() -> None:
    book = EventBook(dedupe_size=10)
    assert run(book, [ev("B-2", "B-2-1")]) == ["B-2-1"]
    assert len(run(book, [ev("A-1", f"A-1-{n}") for n in range(1000)])) == 1000
    assert run(book, [ev("B-2", "B-2-1")]) == []  # still remembered


def test_unit_memory_is_bounded_per_unit_and_in_units() -> None:
    mem: UnitMemory[str, None] = UnitMemory(per_unit=3, max_units=2)
    for n in range(5):
        mem.put("A", str(n), None)
    assert [mem.has("A", str(n)) for n in range(5)] == [False, False, True, True, True]
    mem.put("B", "x", None)
    mem.put("A", "5", None)  # A heard last: C pushes B out, not A
    mem.put("C", "y", None)
    assert (mem.has("A", "5"), mem.has("B", "x"), mem.has("C", "y")) == (True, False, True)
    assert len(mem) == 4


def test_a_lora_alert_and_its_mqtt_event_are_shown_once_either_way() -> None:
    book = EventBook(linked=True)
    lora = event("LL-042", 17, source="lorawan")
    assert book.lora_alert(lora) is True
    assert book.lora_alert(lora) is False
    mqtt_copy = [ev("LL-042", "LL-042-17")]
    d = book.decide(mqtt_copy, book.fresh(mqtt_copy))
    assert (d.deliver, d.duplicates, d.receipts) == ([], 1, {"LL-042": ["LL-042-17"]})
    # The other way round, and another unit with the same seq is another alert.
    assert run(book, [ev("LL-043", "LL-043-17")]) == ["LL-043-17"]
    assert book.lora_alert(event("LL-043", 17)) is False
    assert book.lora_alert(event("LL-044", 17)) is True
    assert short_key(event("X", 65536 + 17)) == ("X", 17)


events_st = st.lists(st.tuples(st.sampled_from(["A-1", "B-2", "C-3"]),
                               st.sampled_from(["A-1", "B-2", "C-3"]), st.integers(1, 8),
                               st.sampled_from(["alert", "keep"])), max_size=60)


@given(events_st, st.integers(1, 5))
@settings(max_examples=300)
def test_each_unit_event_is_delivered_once_and_receipted_to_its_own_unit(
    items: list[tuple[str, str, int, str]], batch: int,
) -> None:
    book = EventBook()
    seen: list[tuple[str, str]] = []
    receipted: set[tuple[str, str]] = set()
    all_events = [ev(unit, f"{owner}-{n}", outcome, n) for unit, owner, n, outcome in items]
    for i in range(0, len(all_events), batch):
        chunk = all_events[i:i + batch]
        d = book.decide(chunk, book.fresh(chunk))
        seen += [e.key for e in d.deliver]
        for unit, ids in d.receipts.items():
            receipted |= {(unit, x) for x in ids}
            assert all(any(e.unit == unit and e.id == x for e in chunk) for x in ids)
    alerts = {e.key for e in all_events if e.outcome == "alert"}
    first_outcome: dict[tuple[str, str], str] = {}
    for e in all_events:
        first_outcome.setdefault(e.key, e.outcome)
    assert len(seen) == len(set(seen))  # never twice
    assert set(seen) == {k for k in alerts if first_outcome[k] == "alert"}
    assert receipted == {e.key for e in all_events}  # every stored event confirmed to its unit
