"""The rangers' web page (edge_app/station/web): real store, real uvicorn, real Chromium.

The browser tests drive headless Chromium (Playwright) against the app on a real uvicorn; the
"receiver" is the test thread storing events with :class:`RangerStore` and announcing them on
the bus, as ``edge_app/station/ingest.py`` does. Screenshots go to tests/artifacts/station/.
The HTTP tests use httpx against the same server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from station_support import wait_until
from web_support import PASSWORDS, T0, Station, event, lora_event, serve, tile_server

from edge_app.station.review import ReviewStore
from edge_app.station.web.accounts import add_user
from edge_app.station.web.app import make_app
from edge_app.station.web.bus import EventBus
from edge_app.station.web.map_svg import MapUnit
from edge_app.station.web.tiles import tile_view

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "station"
PHONE = {"width": 390, "height": 844}
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory, cameratrapai_dir: Path) -> Station:
    return Station(tmp_path_factory.mktemp("station"),
                   cameratrapai_dir / "american_black_bear.jpg")


@pytest.fixture(scope="module")
def base_url(station: Station) -> Iterator[str]:
    with serve(station) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        yield b
        b.close()


def login_page(browser: Browser, base_url: str, name: str) -> Page:
    page = browser.new_context(viewport=PHONE, base_url=base_url).new_page()
    page.set_default_timeout(10_000)
    page.goto("/login")
    page.fill("#name", name)
    page.fill("#password", PASSWORDS[name])
    page.click("form.login button[type=submit]")
    page.wait_for_url(base_url + "/")
    return page


@pytest.fixture(scope="module")
def sessions(browser: Browser, base_url: str) -> dict[str, Any]:
    """Each user logs in once through the login form; tests reuse the session cookie."""
    out: dict[str, Any] = {}
    for name in ("olga", "ivan"):
        page = login_page(browser, base_url, name)
        out[name] = page.context.storage_state()
        page.context.close()
    return out


def session_page(browser: Browser, base_url: str, state: Any) -> Page:
    page = browser.new_context(viewport=PHONE, base_url=base_url,
                               storage_state=state).new_page()
    page.set_default_timeout(10_000)
    return page


@pytest.fixture
def ranger(browser: Browser, base_url: str, sessions: dict[str, Any]) -> Iterator[Page]:
    page = session_page(browser, base_url, sessions["olga"])
    yield page
    page.context.close()


@pytest.fixture
def admin(browser: Browser, base_url: str, sessions: dict[str, Any]) -> Iterator[Page]:
    page = session_page(browser, base_url, sessions["ivan"])
    yield page
    page.context.close()


def no_horizontal_scroll(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{page.url} scrolls sideways ({width} px)"


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# -- in the browser ---------------------------------------------------------------------------


def test_wrong_password_gives_no_session(browser: Browser, base_url: str) -> None:
    page = browser.new_context(viewport=PHONE, base_url=base_url).new_page()
    try:
        page.goto("/login")
        page.fill("#name", "olga")
        page.fill("#password", "not-her-password")
        page.click("form.login button[type=submit]")
        expect(page.locator(".error")).to_contain_text("Wrong name or password")
        shot(page, "login-failed")
        page.goto("/")
        assert page.url.startswith(base_url + "/login")
    finally:
        page.context.close()


def test_alert_published_while_open_appears_without_reload(ranger: Page,
                                                           station: Station) -> None:
    station.add(event("LL-001", 1, T0 - 1800))
    ranger.goto("/")
    expect(ranger.locator("#live")).to_be_visible()  # the stream is open
    ranger.evaluate("window.__sameDocument = true")
    station.add(event("LL-001", 2, T0 - 300, species="tiger", score=0.77,
                      detections=[]))
    card = ranger.locator('[data-key="LL-001/LL-001-2"]')
    expect(card).to_be_visible()
    expect(card).to_contain_text("tiger")
    expect(card).to_contain_text("77%")
    expect(card).to_contain_text("Kedrovaya Pad ridge")
    expect(card).to_contain_text("5 min ago")
    expect(card).to_contain_text("Not acknowledged")
    expect(card.locator("img.thumb")).to_have_js_property("complete", True)
    assert ranger.evaluate("window.__sameDocument") is True, "the page was reloaded"
    first = ranger.locator("#alerts > article").first
    expect(first).to_have_attribute("data-key", "LL-001/LL-001-2")  # newest first
    no_horizontal_scroll(ranger)
    shot(ranger, "alerts-phone")


def test_lora_alert_completed_by_mqtt_updates_in_place(ranger: Page, station: Station) -> None:
    ranger.goto("/")
    expect(ranger.locator("#live")).to_be_visible()
    ranger.evaluate("window.__sameDocument = true")
    station.add(lora_event("LL-002", 7, T0 - 30), link="lorawan")
    card = ranger.locator('[data-key="LL-002/LL-002-7"]')
    expect(card).to_contain_text("photo follows")
    expect(card).to_contain_text("via LoRa")
    shot(ranger, "alerts-lora-only")
    station.clock.advance(120)  # the MQTT copy comes two minutes later, with the photo
    station.add(event("LL-002", 7, T0 - 30))
    expect(card.locator("img.thumb")).to_be_visible()
    expect(card).to_contain_text(re.compile(r"via LoRa \d\d:\d\d, MQTT \d\d:\d\d"))
    assert ranger.locator('[data-key="LL-002/LL-002-7"]').count() == 1
    assert ranger.evaluate("window.__sameDocument") is True
    shot(ranger, "alerts-lora-then-mqtt")


def test_detail_of_a_lora_alert_shows_the_photo_when_it_arrives(ranger: Page,
                                                                 station: Station) -> None:
    station.add(lora_event("LL-002", 8, T0 - 20), link="lorawan")
    ranger.goto("/alerts/LL-002/LL-002-8")
    expect(ranger.locator("main")).to_contain_text("the photo follows")
    ranger.wait_for_function("window.EventSource !== undefined")
    wait_until(lambda: station.bus.clients >= 1, what="the detail page's stream")
    station.add(event("LL-002", 8, T0 - 20), image=True)
    expect(ranger.locator("#photo")).to_have_attribute("src", "/media/LL-002/LL-002-8-image")
    expect(ranger.locator("main")).to_contain_text(re.compile(r"via LoRa \d\d:\d\d, MQTT"))


def test_hostile_event_text_is_shown_as_text(ranger: Page, station: Station) -> None:
    ranger.goto("/")
    expect(ranger.locator("#live")).to_be_visible()
    body = event("LL-001", 90, T0, label='<img src=x onerror="window.__pwned=1">',
                 species={"a": 1}, score=10**400, detections=[{"bbox": ["a", 1, 2, 3]}, 7])
    body["ts"] = "not a time"
    station.add(body)
    card = ranger.locator('[data-key="LL-001/LL-001-90"]')
    expect(card).to_contain_text('<img src=x onerror="window.__pwned=1">')
    assert ranger.evaluate("window.__pwned") is None
    response = ranger.goto("/alerts/LL-001/LL-001-90")
    assert response is not None
    assert response.status == 200
    assert ranger.evaluate("window.__pwned") is None


def test_detail_shows_image_with_boxes_and_acknowledges(ranger: Page,
                                                        station: Station) -> None:
    station.add(event("LL-001", 3, T0 - 600), image=True)
    ranger.goto("/alerts/LL-001/LL-001-3")
    expect(ranger).to_have_title(re.compile("leopard at Kedrovaya Pad ridge"))
    photo = ranger.locator("#photo")
    expect(photo).to_have_attribute("src", "/media/LL-001/LL-001-3-image")
    ranger.wait_for_function("document.getElementById('photo').naturalWidth > 0")
    expect(ranger.locator("svg.boxes rect")).to_have_count(2)
    box = ranger.locator("svg.boxes rect").first.bounding_box()
    img = photo.bounding_box()
    assert box is not None
    assert img is not None
    assert abs(box["x"] - (img["x"] + 0.20 * img["width"])) < 3  # drawn where it was found
    assert abs(box["width"] - 0.35 * img["width"]) < 3
    expect(ranger.locator(".box-label").first).to_contain_text("leopard 91%")
    expect(ranger.locator(".frames img")).to_have_count(2)  # thumbnail and full image
    expect(ranger.locator(".map.small svg")).to_be_visible()
    no_horizontal_scroll(ranger)
    shot(ranger, "alert-detail")

    ranger.get_by_role("button", name="On my way").click()
    expect(ranger.locator(".acks")).to_contain_text("olga")
    expect(ranger.locator(".acks")).to_contain_text("on my way")
    with sqlite3.connect(station.folder / "ranger.db") as conn:
        rows = conn.execute("SELECT user, note, at FROM web_acks WHERE unit = 'LL-001' AND "
                            "id = 'LL-001-3'").fetchall()
    assert rows == [("olga", "on my way", station.clock.wall())]
    ranger.fill("#note", "tracks at the creek")
    ranger.press("#note", "Enter")  # keyboard only
    expect(ranger.locator(".acks li")).to_have_count(2)
    shot(ranger, "alert-acknowledged")
    ranger.goto("/")
    expect(ranger.locator('[data-key="LL-001/LL-001-3"]')).to_contain_text(
        "Acknowledged by olga")


def test_keyboard_alone_opens_an_alert(ranger: Page) -> None:
    ranger.goto("/")
    for _ in range(20):
        ranger.keyboard.press("Tab")
        if ranger.evaluate("document.activeElement.classList.contains('card-link')"):
            break
    else:
        pytest.fail("no alert card is reachable with Tab")
    ranger.keyboard.press("Enter")
    ranger.wait_for_url(re.compile(r"/alerts/LL-\d+/LL-\d+-\d+$"))
    expect(ranger.get_by_role("heading", name="Acknowledge")).to_be_visible()
    ranger.set_viewport_size({"width": 1280, "height": 900})
    ranger.goto("/")
    shot(ranger, "alerts-desktop")


def test_fleet_and_map_pages_on_a_phone(ranger: Page, station: Station) -> None:
    now = station.clock.wall()
    station.store.update_unit("LL-001", now, state="online", stats={
        "battery_v": 12.9, "temp_c": -14.5, "disk_free_bytes": 21_000_000_000,
        "disk_low": False, "outbox": {"alert": 0, "event": 3}})
    station.store.update_unit("LL-009", now - 5 * 3600, state="online")  # a spare
    ranger.goto("/fleet")
    expect(ranger).to_have_title(re.compile("^Fleet"))
    expect(ranger.locator("#u-LL-001")).to_contain_text("online")
    expect(ranger.locator("#u-LL-001")).to_contain_text("12.90 V")
    expect(ranger.locator("#u-LL-009")).to_contain_text("silent")
    expect(ranger.locator("#u-LL-003")).to_contain_text("never")
    no_horizontal_scroll(ranger)
    shot(ranger, "fleet-phone")
    ranger.goto("/map")
    expect(ranger.locator(".map svg")).to_be_visible()
    expect(ranger.locator("main")).to_contain_text("LL-003")  # listed: it has no position
    no_horizontal_scroll(ranger)
    shot(ranger, "map-phone")


def test_ranger_cannot_reach_admin_pages(ranger: Page) -> None:
    response = ranger.goto("/review")
    assert response is not None
    assert response.status == 403
    expect(ranger.locator("nav[aria-label=Main]")).not_to_contain_text("Review")


def test_admin_reviews_with_one_key_per_frame(admin: Page, station: Station) -> None:
    for seq in (40, 41):
        station.add(event("LL-003", seq, T0 - 900, outcome="keep", label="empty",
                          species=None, score=0.4), publish=False)
    admin.goto("/review?unit=LL-003")
    expect(admin.locator("#review-form")).to_be_visible()
    shot(admin, "review")
    admin.keyboard.press("l")
    expect(admin.locator("main")).to_contain_text("1 waiting")
    admin.keyboard.press("e")
    expect(admin.locator("main")).to_contain_text("Nothing to review")
    with ReviewStore(station.folder) as rs:
        labels = [(lab.event_id, lab.label, lab.user) for lab in rs.labels("LL-003")]
    assert labels == [("LL-003-40", "leopard", "ivan"), ("LL-003-41", "empty", "ivan")]


# -- over HTTP ----------------------------------------------------------------------------------


def login_client(base_url: str, name: str) -> httpx.Client:
    c = httpx.Client(base_url=base_url, timeout=10)
    tok = CSRF_RE.search(c.get("/login").text)
    assert tok is not None
    r = c.post("/login", data={"csrf": tok.group(1), "name": name,
                               "password": PASSWORDS[name], "next": "/"})
    assert r.status_code == 303, r.text
    return c


@contextmanager
def logged_in(base_url: str, name: str) -> Iterator[httpx.Client]:
    c = login_client(base_url, name)
    try:
        yield c
    finally:
        c.close()


def csrf_of(c: httpx.Client, path: str = "/") -> str:
    m = CSRF_RE.search(c.get(path).text)
    assert m is not None
    return m.group(1)


def test_wrong_password_and_throttle(base_url: str, station: Station) -> None:
    add_user(station.folder / "ranger.db", "sasha", "sasha-pass-1", "ranger")
    with httpx.Client(base_url=base_url, timeout=10) as c:
        tok = CSRF_RE.search(c.get("/login").text)
        assert tok is not None
        for _ in range(5):
            r = c.post("/login", data={"csrf": tok.group(1), "name": "sasha",
                                       "password": "guess"})
            assert r.status_code == 401
            assert c.get("/").status_code == 303  # still no session
        r = c.post("/login", data={"csrf": tok.group(1), "name": "sasha",
                                   "password": "sasha-pass-1"})
        assert r.status_code == 429
        assert c.get("/").status_code == 303
        r = c.post("/login", data={"csrf": tok.group(1), "name": "nobody",
                                   "password": "whatever"})
        assert r.status_code == 401


def test_a_new_password_ends_the_sessions_of_that_user(base_url: str,
                                                       station: Station) -> None:
    add_user(station.folder / "ranger.db", "pavel", "pavel-pass-1", "ranger")
    with httpx.Client(base_url=base_url, timeout=10) as c:
        tok = CSRF_RE.search(c.get("/login").text)
        assert tok is not None
        r = c.post("/login", data={"csrf": tok.group(1), "name": "pavel",
                                   "password": "pavel-pass-1"})
        assert r.status_code == 303
        assert c.get("/").status_code == 200
        add_user(station.folder / "ranger.db", "pavel", "pavel-pass-2", "ranger")
        assert c.get("/").status_code == 303


def test_login_returns_to_the_page_asked_for_and_nowhere_else(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as c:
        r = c.get("/review?unit=LL-003")
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=%2Freview%3Funit%3DLL-003"
        nxt = re.search(r'name="next" value="([^"]*)"', c.get(r.headers["location"]).text)
        assert nxt is not None
    for target, lands in ((nxt.group(1), "/review?unit=LL-003"), ("//evil.example", "/"),
                          ("https://evil.example/", "/"), ("/\\evil.example", "/")):
        with httpx.Client(base_url=base_url, timeout=10) as c:
            tok = CSRF_RE.search(c.get("/login").text)
            assert tok is not None
            r = c.post("/login", data={"csrf": tok.group(1), "name": "ivan",
                                       "password": PASSWORDS["ivan"], "next": target})
            assert r.status_code == 303
            assert r.headers["location"] == lands, target


def test_session_cookie_flags(base_url: str, tmp_path: Path, cameratrapai_dir: Path) -> None:
    r = httpx.get(base_url + "/login")
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert "secure" not in cookie
    https = Station(tmp_path, cameratrapai_dir / "blank.jpg", public_url="https://ranger.park")
    with serve(https) as url:
        cookie = httpx.get(url + "/login").headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert "; secure" in cookie


def test_post_without_or_with_a_wrong_csrf_token_is_refused(base_url: str,
                                                           station: Station) -> None:
    station.add(event("LL-001", 50, T0 - 60))
    with logged_in(base_url, "olga") as c:
        for data in ({"note": "x"}, {"note": "x", "csrf": "forged"}):
            assert c.post("/alerts/LL-001/LL-001-50/ack", data=data).status_code == 403
            assert c.post("/logout", data=data).status_code == 403
        assert c.get("/").status_code == 200  # still logged in
        tok = csrf_of(c)
        assert c.post("/alerts/LL-001/LL-001-50/ack",
                      data={"csrf": tok, "note": "x"}).status_code == 303
        before_logout = dict(c.cookies)
        assert c.post("/logout", data={"csrf": tok}).status_code == 303
        assert c.get("/").status_code == 303
    with httpx.Client(base_url=base_url, cookies=before_logout) as replay:
        assert replay.get("/").status_code == 303  # the session ended with the logout
    with httpx.Client(base_url=base_url) as anon:
        assert anon.post("/login", data={"name": "olga", "password": PASSWORDS["olga"]}
                         ).status_code == 403
    with sqlite3.connect(station.folder / "ranger.db") as conn:
        n = conn.execute("SELECT COUNT(*) FROM web_acks WHERE id = 'LL-001-50'").fetchone()
    assert n == (1,)


def test_media_route_checks_paths(base_url: str, station: Station) -> None:
    station.add(event("LL-001", 60, T0 - 60))
    stray = station.folder / "media" / "LL-001" / "LL-001-61-thumb.jpg"
    stray.write_bytes(station.thumb)  # a file without a row in media
    assert httpx.get(base_url + "/media/LL-001/LL-001-60-thumb").status_code == 401
    with logged_in(base_url, "olga") as c:
        ok = c.get("/media/LL-001/LL-001-60-thumb")
        assert ok.status_code == 200
        assert ok.headers["content-type"] == "image/jpeg"
        assert ok.content == station.thumb
        for path in ("/media/LL-002/LL-001-60-thumb",  # another unit's media
                     "/media/LL-001/LL-001-61-thumb",  # on disk, not in the store
                     "/media/LL-001/..%2F..%2Franger.db",
                     "/media/..%2FLL-001/LL-001-60-thumb",
                     "/media/LL-001/%2e%2e",
                     "/media/LL-001/LL-001-60-thumb%00",
                     "/media/LL-001/LL-001-60-thumb.jpg",
                     "/media/%ff/LL-001-60-thumb"):
            assert c.get(path).status_code == 404, path


def test_hostile_input_gets_4xx_never_500(base_url: str, station: Station) -> None:
    station.add(event("LL-001", 70, T0 - 60))
    with logged_in(base_url, "ivan") as c:
        tok = csrf_of(c)
        ack = "/alerts/LL-001/LL-001-70/ack"
        form = {"content-type": "application/x-www-form-urlencoded"}
        cases = [
            c.get("/?before=" + "9" * 5000),
            c.get("/?before=%ff%fe"),
            c.get("/?before=-1"),
            c.get("/alerts/LL-001/%ff%fe"),
            c.get("/alerts/LL-001/LL-001-999"),
            c.get("/alerts/" + "A" * 300 + "/x"),
            c.get("/review?unit=%00"),
            c.post(ack, content=b"csrf=" + tok.encode() + b"&note=%ff%fe", headers=form),
            c.post(ack, content=b"\xff\xfe\x00" * 100, headers=form),
            c.post(ack, content=b"csrf=" + tok.encode() + b"&note=" + b"A" * 300_000,
                   headers=form),
            c.post(ack, content=b"&".join([b"f=1"] * 200) + b"&csrf=" + tok.encode(),
                   headers=form),
            c.post(ack, files={"note": ("x.txt", b"hello")}, data={"csrf": tok}),
            c.post(ack, data={"csrf": tok, "note": "n" * 201}),
            c.post(ack, data={"note": "no token"}),
            c.post("/alerts/LL-001/LL-001-999/ack", data={"csrf": tok, "note": "x"}),
            c.post("/review/LL-001/label", data={"csrf": tok, "media_id": "LL-001-70-thumb",
                                                 "label": "dragon"}),
            c.post("/review/LL-001/label", data={"csrf": tok, "media_id": "../x",
                                                 "label": "empty"}),
            c.post("/review/LL-001/label", data={"csrf": tok, "media_id": "LL-001-70-thumb",
                                                 "label": "empty"}),  # not a keep frame
        ]
        for r in cases:
            assert 400 <= r.status_code < 500, (r.request.url, r.status_code)
        for r in (c.get("/?" + "x=1&" * 3000), c.get("/fleet?" + "%ff" * 2000)):
            assert r.status_code < 500  # ignored, or refused by the server's limits
        r = c.get("/login?next=//evil.example")
        assert r.status_code in (200, 303)
        assert "evil" not in r.headers.get("location", "")
    # a login form with hostile fields
    with httpx.Client(base_url=base_url) as anon:
        tok = CSRF_RE.search(anon.get("/login").text)
        assert tok is not None
        r = anon.post("/login", data={"csrf": tok.group(1), "name": "x" * 5000,
                                      "password": "p" * 5000, "next": "javascript:x"})
        assert r.status_code == 401
    counted = station.app.state.refusals.snapshot()
    for kind in ("malformed", "too_large", "bad_type", "forbidden", "not_found", "bad_login"):
        assert counted.get(kind, 0) > 0, (kind, counted)


def test_admin_asks_for_the_full_image(base_url: str, station: Station) -> None:
    station.add(event("LL-002", 80, T0 - 60))
    with logged_in(base_url, "olga") as c:
        r = c.post("/alerts/LL-002/LL-002-80/request-image", data={"csrf": csrf_of(c)})
        assert r.status_code == 403
        r = c.post("/review/LL-003/label", data={"csrf": csrf_of(c), "label": "empty",
                                                 "media_id": "LL-003-40-thumb"})
        assert r.status_code == 403
        assert c.get("/review").status_code == 403
    assert station.commands == []
    with logged_in(base_url, "ivan") as c:
        page = c.get("/alerts/LL-002/LL-002-80").text
        assert "Ask the unit for the full image" in page
        r = c.post("/alerts/LL-002/LL-002-80/request-image", data={"csrf": csrf_of(c)})
        assert r.status_code == 303
    assert station.commands == [("LL-002", "media/request", {"media": "LL-002-80-image"})]


def test_security_headers(base_url: str) -> None:
    r = httpx.get(base_url + "/login")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"


def test_add_user_refuses_bad_input(tmp_path: Path) -> None:
    db = tmp_path / "ranger.db"
    for name, password, role, why in (("olga", "short", "ranger", "password"),
                                      ("olga", "long-enough", "boss", "role"),
                                      ("../x", "long-enough", "ranger", "user name"),
                                      ("", "long-enough", "admin", "user name")):
        with pytest.raises(ValueError, match=why):
            add_user(db, name, password, role)


def test_bus_drops_a_slow_client_and_never_blocks_the_publisher() -> None:
    async def main() -> tuple[int, bool, bool, int, bool]:
        bus = EventBus(queue_size=2)
        bus.bind(asyncio.get_running_loop())
        slow, fast = bus.subscribe(), bus.subscribe()  # slow never reads
        read = threading.Semaphore(0)
        done = threading.Event()

        def ingest() -> None:  # as the receiver's thread: publish, go on
            for i in range(5):
                bus.publish("LL-001", f"LL-001-{i}", "mqtt", True)
                read.acquire(timeout=5)
            done.set()

        threading.Thread(target=ingest).start()
        got = []
        while len(got) < 5:
            got.append(await asyncio.wait_for(fast.queue.get(), 5))
            read.release()
        ok = await asyncio.to_thread(done.wait, 5)
        return len(got), slow.dropped.is_set(), fast.dropped.is_set(), bus.clients, ok

    out: list[tuple[int, bool, bool, int, bool]] = []
    # its own thread: Playwright's sync API keeps an event loop running in this one
    runner = threading.Thread(target=lambda: out.append(asyncio.run(main())))
    runner.start()
    runner.join(20)
    assert out == [(5, True, False, 1, True)]


def test_publish_before_the_server_runs_is_dropped() -> None:
    bus = EventBus()
    bus.publish("LL-001", "LL-001-1", "mqtt", True)  # no loop bound: nothing, no error
    assert bus.published == 0


def test_server_stops_promptly_with_a_live_page_open(tmp_path: Path,
                                                    cameratrapai_dir: Path) -> None:
    st = Station(tmp_path, cameratrapai_dir / "blank.jpg")
    lines: list[str] = []
    ended = threading.Event()
    with serve(st) as url:
        c = login_client(url, "olga")

        def listen() -> None:
            with c.stream("GET", "/events", timeout=60) as r:
                lines.extend(r.iter_lines())
            ended.set()  # the server ended the stream cleanly

        threading.Thread(target=listen, daemon=True).start()
        wait_until(lambda: st.bus.clients == 1, what="the stream to open")
        st.add(event("LL-001", 1, T0))
        wait_until(lambda: any(line.startswith("event: alert") for line in lines),
                   what="the alert on the stream")
        started = time.monotonic()
    stopped_s = time.monotonic() - started
    try:
        assert ended.wait(5), "the stream did not end when the server stopped"
        assert stopped_s < 3, f"the server took {stopped_s:.1f} s to stop"
    finally:
        c.close()


def test_alerts_page_is_capped_with_a_link_to_older_ones(tmp_path: Path,
                                                        cameratrapai_dir: Path) -> None:
    st = Station(tmp_path, cameratrapai_dir / "blank.jpg")
    for seq in range(1, 56):
        st.add(event("LL-001", seq, T0 - 60 * (60 - seq)), thumb=False, publish=False)
    with serve(st) as url, logged_in(url, "olga") as c:
        first = c.get("/").text
        assert first.count("<article") == 50
        assert 'data-key="LL-001/LL-001-55"' in first
        older = re.search(r'href="(/\?before=\d+)"', first)
        assert older is not None
        rest = c.get(older.group(1)).text
        assert rest.count("<article") == 5
        assert 'data-key="LL-001/LL-001-1"' in rest
        assert 'data-key="LL-001/LL-001-55"' not in rest


def test_tile_view_frames_the_units_in_web_mercator() -> None:
    units = [MapUnit("LL-001", None, 43.10, 131.55, "online", "/fleet"),
             MapUnit("LL-002", None, 43.05, 131.62, "lost", "/fleet"),
             MapUnit("LL-003", None, None, None, "never", "/fleet")]
    view = tile_view(units, "http://tiles.local:8081/{z}/{x}/{y}.png", width=768, height=768)
    assert view is not None
    assert view.zoom == 13  # 0.07° x 0.05° is 408 x 399 px at 13, 816 x 798 at 14
    assert [m.unit.unit for m in view.markers] == ["LL-001", "LL-002"]
    for m in view.markers:
        assert 0 < m.left < 100
        assert 0 < m.top < 100
    # LL-001 lies in tile x = floor((131.55 + 180) / 360 * 8192) = 7089 at zoom 13
    assert any(t.url.startswith("http://tiles.local:8081/13/7089/") for t in view.tiles)
    assert tile_view(units[2:], "http://tiles.local/{z}/{x}/{y}.png") is None
    assert tile_view(units, "javascript:alert(1)//{z}/{x}/{y}") is None


def test_map_page_lays_tiles_under_the_units(browser: Browser, station: Station) -> None:
    with tile_server() as (url, paths):
        ctx = dataclasses.replace(station.ctx, tile_url=url, bus=EventBus())
        tiled = Station.__new__(Station)
        tiled.__dict__.update(station.__dict__, ctx=ctx, bus=ctx.bus, app=make_app(ctx))
        with serve(tiled) as base:
            page = login_page(browser, base, "olga")
            try:
                page.goto("/map")
                expect(page.locator(".tilemap a.marker")).to_have_count(2)
                page.wait_for_function("[...document.querySelectorAll('.tilemap img')]"
                                       ".every(i => i.complete && i.naturalWidth === 256)")
                no_horizontal_scroll(page)
                shot(page, "map-tiles-phone")
            finally:
                page.context.close()
    assert paths
    assert all(re.fullmatch(r"/13/\d+/\d+\.png", p) for p in paths)
