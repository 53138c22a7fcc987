"""The Review page drives the review loop: label with one key each, train the unit's head (the
real ``camtrap models adapt`` in the background), see its figures, and only then send it —
naming the head whose figures were shown, so a head trained meanwhile is never shipped.

The last step, pack + push to a running unit, is the review job's own end-to-end test
(tests/test_station_review.py); here the push goes to a broker port nobody listens on, and the
page must say why the send failed.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from test_station_review import DET, RANGER_LABELS, UNIT, stock_site
from web_support import PASSWORDS, Station

from edge_app.station.review_job import JobSettings
from edge_app.station.review_runner import ReviewRunner
from edge_app.station.web.app import make_app
from edge_app.tools import pack_build

pytestmark = pytest.mark.models


def login(client: TestClient, name: str) -> None:
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert token is not None
    r = client.post("/login", data={"name": name, "password": PASSWORDS[name],
                                    "csrf": token.group(1)}, follow_redirects=False)
    assert r.status_code == 303


def csrf(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m is not None
    return m.group(1)


def test_train_shows_the_figures_then_send_names_that_head(
        tmp_path: Path, field_dir: Path, models_dir: Path, cameratrapai_dir: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    labels = stock_site(store, field_dir, RANGER_LABELS)
    pack_build.keygen(tmp_path / "fleet.key")
    st = Station(store, cameratrapai_dir / "blank.jpg")
    runner = ReviewRunner(store, JobSettings(
        models=models_dir, key=tmp_path / "fleet.key", cards=(DET,), broker="127.0.0.1:9",
        answer_s=2.0, push_timeout_s=30.0), st.clock)
    app = make_app(dataclasses.replace(st.ctx, review=runner))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        login(client, "ivan")
        # One key (a POST) per frame, as the page's buttons send them.
        for media_id, label in labels.items():
            page = client.get(f"/review?unit={UNIT}").text
            assert f'value="{media_id}"' in page  # the next frame is this one
            r = client.post(f"/review/{UNIT}/label", data={
                "csrf": csrf(page), "media_id": media_id, "label": label},
                follow_redirects=False)
            assert r.status_code == 303
        page = client.get(f"/review?unit={UNIT}").text
        assert "Nothing to review" in page
        assert "Send this head" not in page  # nothing trained, nothing to send
        r = client.post(f"/review/{UNIT}/train", data={"csrf": csrf(page)},
                        follow_redirects=False)
        assert r.status_code == 303
        runner.wait(UNIT, 300)
        page = client.get(f"/review?unit={UNIT}").text
        assert 'data-step="trained"' in page, page[-2000:]
        after = re.search(r'id="figures-after">([^<]+)<', page)
        assert after is not None
        assert "17 frames" in after.group(1)
        assert "animals kept" in after.group(1)
        head = re.search(r'name="head_sha256" value="([0-9a-f]{64})"', page)
        assert head is not None
        # A stale head (another one than on the screen) is refused: 409, nothing sent.
        r = client.post(f"/review/{UNIT}/send", data={"csrf": csrf(page),
                                                     "head_sha256": "0" * 64})
        assert r.status_code == 409
        # The shown head is sent; nobody listens on the broker port: the page says so.
        r = client.post(f"/review/{UNIT}/send", data={"csrf": csrf(page),
                                                     "head_sha256": head.group(1)},
                        follow_redirects=False)
        assert r.status_code == 303
        runner.wait(UNIT, 120)
        page = client.get(f"/review?unit={UNIT}").text
        assert 'data-step="failed"' in page
        assert "cannot connect" in page or "push" in page
        # Rangers do not train or send.
        client.get("/logout")
        login(client, "olga")
        assert client.post(f"/review/{UNIT}/train", data={"csrf": "x"}).status_code == 403
