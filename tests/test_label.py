"""``camtrap label``: the page in a real headless Chromium, keys pressed, the CSV checked."""

from __future__ import annotations

import csv
import http.client
import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from cdp_support import Chromium, find_chromium

from edge_app import cli
from edge_app.tools.head_training import read_label_csv
from edge_app.tools.label import LabelStore, serve

FILES = ("blank.jpg", "human.jpg", "ocelot.jpg", "vehicle.jpg")


@pytest.fixture
def frames(cameratrapai_dir: Path, tmp_path: Path) -> Path:
    """Four real frames; ocelot already labelled in a CSV with an extra column."""
    d = tmp_path / "frames"
    d.mkdir()
    for f in FILES:
        shutil.copy(cameratrapai_dir / f, d / f)
    (d / "labels.csv").write_text("file,label,species,source\n"
                                  "ocelot.jpg,animal,leopard,cameratrapai\n")
    return d


@pytest.fixture
def server(frames: Path) -> Iterator[tuple[str, LabelStore]]:
    store = LabelStore(frames, frames / "labels.csv")
    urls: list[str] = []
    srv: ThreadingHTTPServer = serve(store, "127.0.0.1", 0, urls.append)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield urls[0], store
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    exe = find_chromium()
    if exe is None:
        msg = "chromium is not installed (apt-get install chromium; deploy/dev/test does it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    profile = tmp_path / "profile"
    profile.mkdir()
    b = Chromium(exe, profile)
    try:
        yield b
    finally:
        b.close()


def rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {r["file"]: r for r in csv.DictReader(f)}


def test_label_page_keys_write_the_csv(server: tuple[str, LabelStore], browser: Chromium,
                                       frames: Path) -> None:
    url, _ = server
    browser.call("Page.enable")
    browser.call("Page.navigate", url=url)
    browser.wait_for("document.body && document.body.dataset.ready === '1'")
    # Resumes at the first unlabelled image, and shows the progress of the existing CSV.
    assert browser.eval("document.getElementById('progress').textContent") == "1 / 4 labelled"
    assert browser.eval("document.getElementById('name').textContent") == "1: blank.jpg"
    browser.wait_for("document.getElementById('img').complete && "
                     "document.getElementById('img').naturalWidth > 0")
    assert browser.eval("document.getElementById('img').naturalWidth") <= 1600  # preview

    browser.press("e")  # blank → empty
    browser.wait_for("document.getElementById('progress').textContent === '2 / 4 labelled'")
    assert rows(frames / "labels.csv")["blank.jpg"]["label"] == "empty"
    browser.press("a")  # human: a slip of the finger...
    browser.wait_for("document.getElementById('name').textContent === '3: ocelot.jpg'")
    browser.press("ArrowLeft")  # ...go back and fix it
    browser.press("p")
    browser.wait_for("document.getElementById('name').textContent === '3: ocelot.jpg'")
    assert browser.eval("document.getElementById('label').textContent") == "animal"
    browser.press("s")  # ocelot is already labelled: skip
    browser.press("v")  # vehicle
    browser.wait_for("document.getElementById('progress').textContent === '4 / 4 labelled'")
    assert browser.eval("document.getElementById('name').textContent") == "all images seen"

    got = rows(frames / "labels.csv")
    assert {f: r["label"] for f, r in got.items()} == {
        "blank.jpg": "empty", "human.jpg": "person", "ocelot.jpg": "animal",
        "vehicle.jpg": "vehicle"}
    # The existing row and its extra column survive; the columns stay in their order.
    assert got["ocelot.jpg"]["species"] == "leopard"
    assert got["ocelot.jpg"]["source"] == "cameratrapai"
    assert (frames / "labels.csv").read_text().splitlines()[0] == "file,label,species,source"
    assert not [p for p in frames.iterdir() if p.name.startswith(".")]  # no temp file left
    # What models adapt reads.
    assert [r.label for r in read_label_csv(frames / "labels.csv", frames)] == [
        "empty", "person", "animal", "vehicle"]


def _request(url: str, method: str = "GET", path: str = "", doc: object = None,
             token: str | None = None) -> tuple[int, bytes]:
    """One HTTP request to the label server (``url`` is its root)."""
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Camtrap-Token"] = token
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, "/" + path, None if doc is None else json.dumps(doc), headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _post(url: str, doc: object, token: str | None) -> tuple[int, dict[str, object]]:
    status, body = _request(url, "POST", "api/label", doc, token)
    return status, json.loads(body)


def test_label_api_refuses_foreign_and_bad_writes(server: tuple[str, LabelStore],
                                                  frames: Path) -> None:
    url, _ = server
    before = (frames / "labels.csv").read_text()
    assert _post(url, {"file": "blank.jpg", "label": "empty"}, None)[0] == 403
    assert _post(url, {"file": "blank.jpg", "label": "empty"}, "guess")[0] == 403
    page = _request(url)[1].decode()
    token = page.split('const TOKEN = "', 1)[1].split('"', 1)[0]
    status, doc = _post(url, {"file": "blank.jpg", "label": "bird"}, token)
    assert status == 400
    assert "label must be one of" in str(doc["error"])
    assert _post(url, {"file": "../etc/passwd", "label": "empty"}, token)[0] == 400
    assert (frames / "labels.csv").read_text() == before  # nothing written
    assert _post(url, {"file": "blank.jpg", "label": "empty"}, token) == (
        200, {"done": 2, "total": 4})
    status, body = _request(url, path="api/state")
    st = json.loads(body)
    assert st["next"] == 1
    assert st["labels"]["blank.jpg"] == "empty"
    for path in ("img/99", "img/x", "nothing"):
        assert _request(url, path=path)[0] == 404
    status, body = _request(url, path="img/0")
    assert status == 200
    assert body[:2] == b"\xff\xd8"  # a JPEG preview


def test_label_command_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["label", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert cli.main(["label", str(tmp_path)]) == 2
    assert "no images" in capsys.readouterr().err
