"""Phone notifications: the ``[notify]`` config, the pure policy, and real Apprise sending.

The policy runs on a :class:`FakeClock` set to Vladivostok local times, so quiet hours across
midnight and rate windows are exact. Sending uses the real Apprise library posting to a real
local HTTP endpoint (``notify_support.Recorder``) through its ``json://`` and ``form://``
plugins.
"""

from __future__ import annotations

import base64
import math
import socket
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from notify_support import Recorder, event, lora, vlad, wait_until

from edge_app.core.clock import FakeClock, SystemClock
from edge_app.core.errors import ConfigError
from edge_app.station.notify.config import NotifyConfig, parse, target_urls
from edge_app.station.notify.message import render
from edge_app.station.notify.policy import Alert, NotifyPolicy, Outgoing
from edge_app.station.notify.sender import AppriseSender, Notifier

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"

EXAMPLE = """
[notify]
base_url = "https://station.example/"
timezone = "Asia/Vladivostok"

[[notify.targets]]
name = "rangers-telegram"
url = "tgram://123456789:AAbbCCddEEffGGhh/-100123"

[[notify.targets]]
name = "office-mail"
url = "json://127.0.0.1:9/office"

[notify.groups]
north = ["LL-001", "LL-002"]

[[notify.rules]]
labels = ["leopard", "tiger", "person"]
units = ["LL-0*"]
min_score = 0.5
targets = ["rangers-telegram"]
quiet_hours = "22:00-06:00"
rate_limit = { count = 5, per_s = 600 }

[[notify.rules]]
labels = ["tiger"]
groups = ["north"]
targets = ["rangers-telegram", "office-mail"]
urgent = true
"""


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with Recorder() as r:
        yield r


def cfg(rules: list[dict[str, Any]], targets: tuple[str, ...] = ("a", "b"),
        **top: Any) -> NotifyConfig:
    raw: dict[str, Any] = {"base_url": "https://station.example", "timezone": "Asia/Vladivostok",
                           "targets": [{"name": t, "url": f"json://127.0.0.1:9/{t}"}
                                       for t in targets],
                           "rules": rules, **top}
    return parse(raw)


def alert(unit: str, seq: int, ts: float, picture: str | None = None, **over: Any) -> Alert:
    return Alert.from_event(event(unit, seq, ts, **over), ts, picture=picture)


def lora_alert(unit: str, seq: int, ts: float, **over: Any) -> Alert:
    return Alert.from_event(lora(unit, seq, ts, **over), ts)


def sent(policy: NotifyPolicy, a: Alert, now: float) -> list[str]:
    return [o.target for o in policy.offer(a, now).send]


# --- config --------------------------------------------------------------------------------


def test_example_section_parses_to_what_it_says() -> None:
    c = parse(tomllib.loads(EXAMPLE)["notify"])
    assert c.base_url == "https://station.example/"
    assert c.alert_link("LL-042", "LL-042-17") == "https://station.example/alerts/LL-042/LL-042-17"
    first, second = c.rules
    assert first.labels == {"leopard", "tiger", "person"}
    assert str(first.quiet_hours) == "22:00-06:00"
    assert first.rate_limit is not None
    assert first.rate_limit.count == 5
    assert second.units == ("LL-001", "LL-002")
    assert second.urgent
    assert cfg([]).base_url.endswith("/")  # added when missing


GOOD_RULE: dict[str, Any] = {"targets": ["a"]}


@pytest.mark.parametrize(("raw", "key"), [
    ({"bogus": 1}, "notify.bogus"),
    ({"timezone": "Mars/Olympus"}, "notify.timezone"),
    ({"base_url": "ftp://x/"}, "notify.base_url"),
    ({"targets": [{"name": "a"}]}, "notify.targets[0].url"),
    ({"targets": [{"name": "a", "url": "json://x", "url_file": "/f"}]}, "notify.targets[0].url"),
    ({"targets": [{"name": "a", "url": "json://x"}, {"name": "a", "url": "json://y"}]},
     "notify.targets[1].name"),
    ({"targets": [{"name": "a b", "url": "json://x"}]}, "notify.targets[0].name"),
    ({"targets": [{"name": "a", "url": "no-scheme"}]}, "notify.targets[0].url"),
    ({"targets": [{"name": "a", "url": "json://x", "token": "t"}]}, "notify.targets[0].token"),
    ({"rules": [{**GOOD_RULE, "colour": "red"}]}, "notify.rules[0].colour"),
    ({"rules": [{"targets": ["nobody"]}]}, "notify.rules[0].targets[0]"),
    ({"rules": [{"targets": []}]}, "notify.rules[0].targets"),
    ({"rules": [{**GOOD_RULE, "min_score": "0.5"}]}, "notify.rules[0].min_score"),
    ({"rules": [{**GOOD_RULE, "min_score": math.nan}]}, "notify.rules[0].min_score"),
    ({"rules": [{**GOOD_RULE, "min_score": 1.5}]}, "notify.rules[0].min_score"),
    ({"rules": [{**GOOD_RULE, "labels": ["leapard"]}]}, "notify.rules[0].labels[0]"),
    ({"rules": [{**GOOD_RULE, "labels": "leopard"}]}, "notify.rules[0].labels"),
    ({"rules": [{**GOOD_RULE, "units": [3]}]}, "notify.rules[0].units[0]"),
    ({"rules": [{**GOOD_RULE, "groups": ["south"]}]}, "notify.rules[0].groups[0]"),
    ({"rules": [{**GOOD_RULE, "quiet_hours": "25:00-06:00"}]}, "notify.rules[0].quiet_hours"),
    ({"rules": [{**GOOD_RULE, "quiet_hours": "22:00"}]}, "notify.rules[0].quiet_hours"),
    ({"rules": [{**GOOD_RULE, "quiet_hours": "06:00-06:00"}]}, "notify.rules[0].quiet_hours"),
    ({"rules": [{**GOOD_RULE, "urgent": "yes"}]}, "notify.rules[0].urgent"),
    ({"rules": [{**GOOD_RULE, "rate_limit": {"count": 0, "per_s": 60}}]},
     "notify.rules[0].rate_limit.count"),
    ({"rules": [{**GOOD_RULE, "rate_limit": {"count": 5, "per_s": math.inf}}]},
     "notify.rules[0].rate_limit.per_s"),
    ({"rules": [{**GOOD_RULE, "rate_limit": {"count": 5}}]}, "notify.rules[0].rate_limit.per_s"),
    ({"rules": [{**GOOD_RULE, "rate_limit": {"count": 5, "per_s": 60, "burst": 2}}]},
     "notify.rules[0].rate_limit.burst"),
    ({"groups": {"north": []}}, "notify.groups.north"),
    ({"rules": {"targets": ["a"]}}, "notify.rules"),
])
def test_config_refusals_name_the_key(raw: dict[str, Any], key: str) -> None:
    full: dict[str, Any] = {"targets": [{"name": "a", "url": "json://127.0.0.1/x"}], **raw}
    with pytest.raises(ConfigError) as e:
        parse(full)
    assert e.value.key == key


def test_url_file_must_be_private_and_is_read(tmp_path: Path) -> None:
    f = tmp_path / "tg.url"
    f.write_text("json://127.0.0.1:9/secret\n")
    f.chmod(0o644)
    c = parse({"targets": [{"name": "tg", "url_file": str(f)}]})
    with pytest.raises(ConfigError) as e:
        target_urls(c)
    assert e.value.key == "notify.targets[0].url_file"
    assert "chmod 600" in e.value.reason
    f.chmod(0o600)
    assert target_urls(c) == {"tg": "json://127.0.0.1:9/secret"}
    with pytest.raises(ConfigError, match=r"notify.targets\[0\].url_file"):
        target_urls(parse({"targets": [{"name": "tg", "url_file": str(tmp_path / "none")}]}))


def test_apprise_refuses_an_unknown_scheme_without_echoing_the_secret() -> None:
    c = parse({"targets": [{"name": "ok", "url": "json://127.0.0.1:9/x"},
                           {"name": "bad", "url": "nosuchservice://s3cr3t-token@host"}]})
    with pytest.raises(ConfigError) as e:
        AppriseSender(target_urls(c), c)
    assert e.value.key == "notify.targets[1].url"
    assert "s3cr3t" not in str(e.value)


# --- policy --------------------------------------------------------------------------------


def test_rules_by_label_species_unit_group_and_score() -> None:
    c = cfg([{"labels": ["leopard"], "units": ["LL-0*"], "min_score": 0.5, "targets": ["a"]},
             {"labels": ["person"], "groups": ["north"], "targets": ["b"]}],
            groups={"north": ["LL-1*", "XX-007"]})
    p = NotifyPolicy(c)
    t = vlad(3, 12)
    assert sent(p, alert("LL-042", 1, t), t) == ["a"]  # species leopard, unit glob
    assert sent(p, alert("LL-042", 2, t, score=0.49), t) == []  # under min_score
    assert sent(p, alert("LL-142", 3, t), t) == []  # unit does not match LL-0*
    assert sent(p, alert("LL-042", 4, t, species="tiger"), t) == []
    assert sent(p, alert("LL-142", 5, t, label="person", species=None), t) == ["b"]  # group glob
    assert sent(p, alert("XX-007", 6, t, label="person", species=None), t) == ["b"]
    assert sent(p, alert("LL-042", 7, t, label="person", species=None), t) == []  # not in group
    anyone = NotifyPolicy(cfg([{"targets": ["a"]}]))  # no labels, no units: everything
    assert sent(anyone, alert("ZZ-9", 1, t, label="vehicle", species=None, score=0.0), t) == ["a"]


def test_a_target_hears_once_even_when_several_rules_match() -> None:
    p = NotifyPolicy(cfg([{"labels": ["leopard"], "targets": ["a"]},
                          {"labels": ["animal"], "targets": ["a", "b"]},
                          {"units": ["LL-042"], "targets": ["b", "a"]}]))
    t = vlad(3, 12)
    assert sent(p, alert("LL-042", 1, t), t) == ["a", "b"]


def test_quiet_hours_across_midnight_in_vladivostok_give_one_digest_at_the_end() -> None:
    clock = FakeClock(start_wall=vlad(3, 21, 59))
    p = NotifyPolicy(cfg([{"targets": ["a"], "quiet_hours": "22:00-06:00"}]))
    assert sent(p, alert("LL-001", 1, clock.wall()), clock.wall()) == ["a"]  # 21:59: not yet
    for seq, minutes in ((2, 31), (3, 180), (4, 120)):  # 22:30, 01:30, 03:30
        clock.advance(minutes * 60)
        d = p.offer(alert("LL-001", seq, clock.wall()), clock.wall())
        assert d.send == []
        assert d.held == ["a"]
    assert p.next_due() == vlad(4, 6)  # 06:00 the next morning, local
    clock.advance(vlad(4, 5, 59) - clock.wall())
    assert p.due(clock.wall()) == []
    clock.advance(60)
    (digest,) = p.due(clock.wall())
    assert digest.kind == "digest"
    assert digest.reason == "quiet hours"
    assert [a.id for a in digest.alerts] == ["LL-001-2", "LL-001-3", "LL-001-4"]
    assert p.next_due() is None
    assert p.due(clock.wall() + 86400) == []
    assert sent(p, alert("LL-001", 5, clock.wall()), clock.wall()) == ["a"]  # 06:00: awake


def test_quiet_hours_within_one_day() -> None:
    p = NotifyPolicy(cfg([{"targets": ["a"], "quiet_hours": "13:00-14:30"}]))
    assert sent(p, alert("LL-001", 1, vlad(3, 12, 59)), vlad(3, 12, 59)) == ["a"]
    assert p.offer(alert("LL-001", 2, vlad(3, 13)), vlad(3, 13)).held == ["a"]
    assert p.next_due() == vlad(3, 14, 30)
    assert sent(p, alert("LL-001", 3, vlad(3, 14, 30)), vlad(3, 14, 30)) == ["a"]


def test_urgent_rule_bypasses_quiet_hours() -> None:
    p = NotifyPolicy(cfg([{"labels": ["leopard", "tiger"], "targets": ["a", "b"],
                           "quiet_hours": "22:00-06:00"},
                          {"labels": ["tiger"], "targets": ["a"], "urgent": True,
                           "quiet_hours": "22:00-06:00"}]))
    night = vlad(4, 3, 12)
    d = p.offer(alert("LL-001", 1, night, species="tiger"), night)
    assert [o.target for o in d.send] == ["a"]
    assert d.held == ["b"]
    d = p.offer(alert("LL-001", 2, night), night)  # a leopard: no urgent rule matches
    assert d.send == []
    assert d.held == ["a", "b"]


def test_rate_limit_holds_the_excess_and_releases_one_digest() -> None:
    clock = FakeClock(start_wall=vlad(3, 12))
    p = NotifyPolicy(cfg([{"targets": ["a"], "rate_limit": {"count": 2, "per_s": 600}}]))
    t0 = clock.wall()
    out = []
    for seq in range(1, 8):
        out.append(sent(p, alert("LL-001", seq, clock.wall()), clock.wall()))
        clock.advance(10)
    assert out == [["a"], ["a"], [], [], [], [], []]
    assert p.held_count == 5
    assert p.next_due() == t0 + 600  # when the first of the two sends leaves the window
    assert p.due(t0 + 599) == []
    (digest,) = p.due(t0 + 600)
    assert digest.kind == "digest"
    assert digest.reason == "rate limit"
    assert [a.id for a in digest.alerts] == [f"LL-001-{s}" for s in range(3, 8)]
    # The window now holds the second send (t0+10) and the digest (t0+600): full until t0+610.
    d = p.offer(alert("LL-001", 8, t0 + 605), t0 + 605)
    assert d.held == ["a"]
    assert p.next_due() == t0 + 610
    (single,) = p.due(t0 + 610)
    assert single.kind == "alert"
    assert single.alerts[0].id == "LL-001-8"


def test_a_new_alert_never_overtakes_held_ones() -> None:
    """The worker may release late (busy with a slow server): a newcomer joins the held ones."""
    p = NotifyPolicy(cfg([{"targets": ["a"], "rate_limit": {"count": 1, "per_s": 60}}]))
    t = vlad(3, 12)
    assert sent(p, alert("LL-001", 1, t), t) == ["a"]
    assert p.offer(alert("LL-001", 2, t + 1), t + 1).held == ["a"]
    assert p.offer(alert("LL-001", 3, t + 61), t + 61).held == ["a"]  # window free, 2 waits
    (digest,) = p.due(t + 61)
    assert [a.id for a in digest.alerts] == ["LL-001-2", "LL-001-3"]


def test_rate_limits_are_per_target() -> None:
    p = NotifyPolicy(cfg([{"targets": ["a"], "rate_limit": {"count": 1, "per_s": 60}},
                          {"targets": ["b"]}]))
    t = vlad(3, 12)
    assert sent(p, alert("LL-001", 1, t), t) == ["a", "b"]
    assert sent(p, alert("LL-001", 2, t + 1), t + 1) == ["b"]


def test_a_rule_without_limit_lets_an_alert_through_a_full_window() -> None:
    p = NotifyPolicy(cfg([{"targets": ["a"], "rate_limit": {"count": 1, "per_s": 60}},
                          {"labels": ["tiger"], "targets": ["a"]}]))
    t = vlad(3, 12)
    assert sent(p, alert("LL-001", 1, t), t) == ["a"]
    assert sent(p, alert("LL-001", 2, t + 1), t + 1) == []
    assert sent(p, alert("LL-001", 3, t + 2, species="tiger"), t + 2) == ["a"]


def test_same_alert_twice_notifies_once_per_unit_and_id() -> None:
    p = NotifyPolicy(cfg([{"targets": ["a"]}]))
    t = vlad(3, 12)
    assert sent(p, alert("LL-001", 1, t), t) == ["a"]
    d = p.offer(alert("LL-001", 1, t), t + 5)
    assert d.send == []
    assert d.duplicate
    # The same id from another unit is another event (a unit cannot occupy another's ids).
    assert sent(p, Alert.from_event({**event("LL-001", 1, t), "unit": "LL-002"}, t), t) == ["a"]


def test_lora_then_mqtt_with_picture_sends_one_follow_up() -> None:
    p = NotifyPolicy(cfg([{"targets": ["a", "b"]}]))
    t = vlad(3, 3, 12)
    d = p.offer(lora_alert("LL-042", 17, t), t + 20)
    assert [(o.target, o.kind, o.alerts[0].picture) for o in d.send] == [
        ("a", "alert", None), ("b", "alert", None)]
    d = p.offer(alert("LL-042", 17, t, picture="/media/LL-042-17.jpg"), t + 60)
    assert d.duplicate
    assert [(o.target, o.kind, o.alerts[0].picture) for o in d.send] == [
        ("a", "followup", "/media/LL-042-17.jpg"), ("b", "followup", "/media/LL-042-17.jpg")]
    assert p.offer(alert("LL-042", 17, t, picture="/media/x.jpg"), t + 90).send == []  # resend


def test_mqtt_with_picture_first_makes_the_lora_copy_a_plain_duplicate() -> None:
    p = NotifyPolicy(cfg([{"targets": ["a"]}]))
    t = vlad(3, 3, 12)
    assert sent(p, alert("LL-042", 17, t, picture="/media/p.jpg"), t) == ["a"]
    d = p.offer(lora_alert("LL-042", 17, t), t + 30)
    assert d.send == []
    assert d.duplicate


def test_lora_and_mqtt_ids_differ_but_low_seq_bits_match() -> None:
    """After a station restart the LoRa copy's reconstructed id can lose the high seq bits."""
    p = NotifyPolicy(cfg([{"targets": ["a"]}]))
    t = vlad(3, 3, 12)
    full = 0x10000 + 17
    assert sent(p, lora_alert("LL-042", 17, t), t) == ["a"]  # id LL-042-17, seq 17
    d = p.offer(alert("LL-042", full, t, picture="/media/p.jpg"), t + 30)  # id LL-042-65553
    assert d.duplicate
    assert [o.kind for o in d.send] == ["followup"]


def test_picture_arriving_while_held_goes_with_the_held_alert() -> None:
    p = NotifyPolicy(cfg([{"targets": ["a"], "quiet_hours": "22:00-06:00"}]))
    t = vlad(3, 23)
    assert p.offer(lora_alert("LL-042", 17, t), t).held == ["a"]
    d = p.offer(alert("LL-042", 17, t, picture="/media/p.jpg"), t + 30)
    assert d.send == []
    assert d.duplicate
    (late,) = p.due(vlad(4, 6))
    assert late.kind == "alert"
    assert late.alerts[0].picture == "/media/p.jpg"
    assert p.offer(alert("LL-042", 17, t, picture="/media/p.jpg"), vlad(4, 6, 1)).send == []


def test_second_copy_is_judged_afresh_when_the_first_notified_nobody() -> None:
    p = NotifyPolicy(cfg([{"targets": ["a"], "min_score": 0.8}]))
    t = vlad(3, 12)
    assert sent(p, lora_alert("LL-042", 17, t, score=0.79), t) == []  # LoRa score, quantised
    assert sent(p, alert("LL-042", 17, t, score=0.81, picture="/m.jpg"), t + 30) == ["a"]


def test_events_without_unit_or_with_bad_scores_are_refused() -> None:
    t = vlad(3, 12)
    for bad in ({"unit": None}, {"id": ""}, {"score": math.nan}, {"score": "0.9"},
                {"score": True}):
        with pytest.raises(ValueError, match=r"unit or id|score"):
            Alert.from_event({**event("LL-001", 1, t), **bad}, t)
    assert Alert.from_event({**event("LL-001", 1, t), "ts": "garbage"}, t + 5).ts == t + 5


def test_message_text() -> None:
    c = cfg([{"targets": ["a"]}])
    t = vlad(3, 3, 12)
    a = Alert.from_event(lora("LL-042", 17, t), t, site="Kedrovaya 3", lat=43.1, lon=131.9)
    m = render(Outgoing("a", "alert", (a,)), c, t + 300)
    assert m.title == "Leopard at Kedrovaya 3 (LL-042), 0.87"
    assert m.body.splitlines() == [
        "03:12 Asia/Vladivostok, 5 min ago", "Unit: LL-042, Kedrovaya 3",
        "Position: 43.10000, 131.90000", "Via: LoRa (11-byte alert, no picture yet)",
        "Alert: https://station.example/alerts/LL-042/LL-042-17"]
    assert m.picture is None
    other = Alert.from_event(event("LL-7", 2, t, label="person", species=None, score=0.5), t)
    assert render(Outgoing("a", "alert", (other,)), c, t).title == "Person at LL-7, 0.50"


# --- sending through real Apprise ------------------------------------------------------------


def notifier(rec: Recorder, clock: FakeClock, scheme: str = "json",
             rules: list[dict[str, Any]] | None = None) -> Notifier:
    c = parse({"base_url": "https://station.example/", "timezone": "Asia/Vladivostok",
               "targets": [{"name": "rangers", "url": rec.url(scheme)}],
               "rules": rules or [{"targets": ["rangers"]}]})
    n = Notifier(c, clock)
    n.start()
    return n


def test_alert_with_picture_arrives_with_title_body_link_and_bytes(
        recorder: Recorder, tmp_path: Path) -> None:
    pic = tmp_path / "LL-042-17.jpg"
    pic.write_bytes(JPEG)
    t = vlad(3, 3, 12)
    clock = FakeClock(start_wall=t + 300)
    n = notifier(recorder, clock)
    try:
        n.alert(event("LL-042", 17, t), site="Kedrovaya 3", lat=43.1, lon=131.9, picture=pic)
        (req,) = recorder.wait(1)
    finally:
        n.stop()
    assert req.path == "/hook"
    assert req.content_type.startswith("application/json")
    body = req.json()
    assert body["title"] == "Leopard at Kedrovaya 3 (LL-042), 0.87"
    assert "03:12 Asia/Vladivostok, 5 min ago" in body["message"]
    assert "Via: MQTT" in body["message"]
    assert "https://station.example/alerts/LL-042/LL-042-17" in body["message"]
    (att,) = body["attachments"]
    assert att["filename"] == "LL-042-17.jpg"
    assert att["mimetype"] == "image/jpeg"
    assert base64.b64decode(att["base64"]) == JPEG
    s = n.stats
    assert (s.sent, s.failed, s.held) == (1, 0, 0)


def test_lora_text_first_then_the_picture_as_a_form_upload(
        recorder: Recorder, tmp_path: Path) -> None:
    pic = tmp_path / "thumb.jpg"
    pic.write_bytes(JPEG)
    t = vlad(3, 3, 12)
    clock = FakeClock(start_wall=t + 20)
    n = notifier(recorder, clock, scheme="form")
    try:
        n.alert(lora("LL-042", 17, t), site="Kedrovaya 3", lat=None, lon=None, picture=None)
        recorder.wait(1)
        clock.advance(40)
        n.alert(event("LL-042", 17, t), site="Kedrovaya 3", picture=pic)
        n.alert(event("LL-042", 17, t), site="Kedrovaya 3", picture=pic)  # a resend
        first, second = recorder.wait(2)
    finally:
        n.stop()
    text = first.form()
    assert text["title"][1] == b"Leopard at Kedrovaya 3 (LL-042), 0.87"
    assert b"Via: LoRa" in text["message"][1]
    assert not [k for k, (filename, _) in text.items() if filename]  # no file part
    follow = second.form()
    assert follow["title"][1].startswith(b"Picture: Leopard at Kedrovaya 3")
    files = [(filename, data) for filename, data in follow.values() if filename]
    assert files == [("thumb.jpg", JPEG)]
    assert len(recorder.received) == 2
    s = n.stats
    assert (s.sent, s.followups, s.duplicates) == (2, 1, 2)


def test_held_alerts_arrive_as_one_digest_message(recorder: Recorder) -> None:
    t = vlad(3, 12)
    clock = FakeClock(start_wall=t)
    n = notifier(recorder, clock, rules=[{"targets": ["rangers"],
                                          "rate_limit": {"count": 1, "per_s": 600}}])
    try:
        for seq, unit in enumerate(("LL-001", "LL-002", "LL-003", "LL-004"), start=1):
            n.alert(event(unit, seq, clock.wall(), score=0.5 + seq / 10), site=None)
            clock.advance(5)
        recorder.wait(1)
        assert n.stats.held == 3
        assert n.stats.pending == 3
        clock.advance(600)
        n.tick()
        first, digest = recorder.wait(2)
        wait_until(lambda: n.stats.digests == 1, what="the digest counted")
    finally:
        n.stop()
    assert first.json()["title"] == "Leopard at LL-001, 0.60"
    d = digest.json()
    assert d["title"] == "3 more alerts, best: Leopard at LL-004, 0.90"
    lines = d["message"].splitlines()
    assert lines[0] == "3 more alerts (held by rate limit):"
    assert lines[1] == "LL-002 leopard 0.70 at 12:00 https://station.example/alerts/LL-002/LL-002-2"
    assert [ln.split()[0] for ln in lines[1:4]] == ["LL-002", "LL-003", "LL-004"]
    assert d["attachments"] == []
    assert len(recorder.received) == 2
    assert (n.stats.sent, n.stats.pending) == (2, 0)


def test_failures_are_counted_never_raised() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = parse({"targets": [{"name": "down", "url": f"json://127.0.0.1:{port}/x"}],
               "rules": [{"targets": ["down"]}]})
    n = Notifier(c, FakeClock(start_wall=vlad(3, 12)))
    n.start()
    try:
        n.alert(event("LL-001", 1, vlad(3, 12)), picture=Path("/nonexistent/p.jpg"))
        n.alert({"unit": "LL-001"})  # no id: refused, not raised
        wait_until(lambda: n.stats.failed == 1, what="the failure counted")
    finally:
        n.stop()
    assert (n.stats.sent, n.stats.refused) == (0, 1)


def test_a_slow_service_never_stalls_the_caller(recorder: Recorder) -> None:
    clock = FakeClock(start_wall=vlad(3, 12))
    n = notifier(recorder, clock)
    recorder.gate.clear()  # the service takes its time answering
    try:
        n.alert(event("LL-001", 1, clock.wall()))
        assert recorder.entered.wait(5.0)  # the worker is inside the first request
        started = time.monotonic()
        for seq in range(2, 12):
            n.alert(event("LL-001", seq, clock.wall()))
        assert time.monotonic() - started < 0.5
        recorder.gate.set()
        recorder.wait(11)
    finally:
        n.stop()
    assert n.stats.sent == 11


def test_stop_ends_the_worker_and_counts_held_alerts_as_dropped(recorder: Recorder) -> None:
    clock = FakeClock(start_wall=vlad(3, 23))
    n = notifier(recorder, clock, rules=[{"targets": ["rangers"], "quiet_hours": "22:00-06:00"}])
    n.alert(event("LL-001", 1, clock.wall()))
    n.stop(timeout_s=5.0)
    assert (n.stats.held, n.stats.dropped, n.stats.sent) == (1, 1, 0)
    assert recorder.received == []


def test_held_alert_says_why_and_unsynced_clocks_use_the_arrival_time() -> None:
    c = cfg([{"targets": ["a"]}])
    t = vlad(4, 6)
    a = Alert.from_event(event("LL-042", 17, 0.0, time_synced=False), t)
    assert a.ts == t  # not 1970
    m = render(Outgoing("a", "alert", (a,), "quiet hours"), c, t)
    assert "Held by quiet hours" in m.body.splitlines()
    b = Alert.from_event(event("LL-043", 18, t - 3600, score=0.9), t)
    d = render(Outgoing("a", "digest", (a, b), "quiet hours and rate limit"), c, t)
    assert d.title == "2 more alerts, best: Leopard at LL-043, 0.90"
    assert d.body.splitlines()[0] == "2 more alerts (held by quiet hours and rate limit):"
    assert d.picture is None


def test_worker_releases_held_alerts_on_its_own_timer(recorder: Recorder) -> None:
    """With the real clock no tick() is needed: the worker waits until the next due time."""
    c = parse({"targets": [{"name": "r", "url": recorder.url("json")}],
               "rules": [{"targets": ["r"], "rate_limit": {"count": 1, "per_s": 0.3}}]})
    n = Notifier(c, SystemClock())
    n.start()
    try:
        n.alert(event("LL-001", 1, time.time()))
        n.alert(event("LL-001", 2, time.time()))
        assert n.stats.pending == 1
        _, late = recorder.wait(2, timeout_s=5.0)
    finally:
        n.stop()
    assert late.json()["title"] == "Leopard at LL-001, 0.87"
    assert "Held by rate limit" in late.json()["message"]
