"""``camtrap label DIR``: a small local web page to label a site's frames for the head.

A technician copies a trap's frames to a laptop, runs ``camtrap label DIR``, opens the URL it
prints, and presses one key per image: ``e`` empty, ``a`` animal, ``p`` person, ``v``
vehicle, ``s`` skip (← and → move without labelling). Each label is written at once to the
labels CSV (``DIR/labels.csv`` by default) that ``camtrap models adapt`` reads, so closing
the browser loses nothing and running the command again resumes where it stopped.

Why a web page and not a desktop GUI: every laptop has a browser, the standard library has an
HTTP server, and nothing needs installing next to camtrap. The server binds to 127.0.0.1 by
default and serves only the images in DIR (by index, never by a path from the request).
Because any web page open in the same browser could post to a localhost port, every write
must carry a per-run token that only this page knows (sent as a custom header, which a
foreign page cannot add without a CORS preflight we never answer).

CSV writes are atomic (temp file, fsync, rename): a crash or a pulled power cord leaves the old
file or the new one, never half of one. Columns other than ``file``/``label``/``species``
already in the CSV (e.g. ``source``) are kept as they are.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import secrets
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LABELS = ("empty", "animal", "person", "vehicle")
KEYS = {"e": "empty", "a": "animal", "p": "person", "v": "vehicle"}
BASE_COLUMNS = ("file", "label", "species")
MAX_BODY = 4096
PREVIEW_PX = 1600
"""Images are sent downscaled to this long side: a 5 MB frame would make every key press wait."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``camtrap label``."""
    p.add_argument("dir", metavar="DIR", help="folder of frames to label")
    p.add_argument("--labels", metavar="CSV", help="labels CSV to write (default "
                   "DIR/labels.csv; existing labels are kept and shown)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free)")


class LabelStore:
    """The labels CSV and the list of images, shared by the request threads.

    Args:
        folder: the images' folder.
        csv_path: the labels CSV (read if it exists, written on every change).

    Raises:
        ValueError: ``folder`` holds no image, or the existing CSV has no ``file`` column.
    """

    def __init__(self, folder: Path, csv_path: Path) -> None:
        from edge_app.tools.batch import expand_paths

        self.folder = folder
        self.csv_path = csv_path
        self.files: list[str] = [name for name, _ in expand_paths([str(folder)])]
        if not self.files:
            raise ValueError(f"no images in {folder}")
        self._index = {f: i for i, f in enumerate(self.files)}
        self._lock = threading.Lock()
        self.columns: list[str] = list(BASE_COLUMNS)
        self.rows: dict[str, dict[str, str]] = {}
        if csv_path.is_file():
            self._read()

    def _read(self) -> None:
        with self.csv_path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "file" not in (reader.fieldnames or ()):
                raise ValueError(f"{self.csv_path} has no 'file' column")
            for c in reader.fieldnames or ():
                if c not in self.columns:
                    self.columns.append(c)
            for row in reader:
                name = (row.get("file") or "").strip()
                if name:
                    self.rows[name] = {k: v or "" for k, v in row.items() if k is not None}

    def path_of(self, index: int) -> Path | None:
        """The image at ``index`` of the list, or None."""
        if 0 <= index < len(self.files):
            return self.folder / self.files[index]
        return None

    def state(self) -> dict[str, Any]:
        """Everything the page needs: the files, their labels, and the first unlabelled."""
        with self._lock:
            labels = {f: r.get("label", "") for f, r in self.rows.items() if f in self._index}
        done = sum(1 for v in labels.values() if v in LABELS)
        first = next((i for i, f in enumerate(self.files) if labels.get(f) not in LABELS),
                     len(self.files))
        return {"files": self.files, "labels": labels, "done": done, "total": len(self.files),
                "next": first, "csv": str(self.csv_path)}

    def set_label(self, file: str, label: str) -> None:
        """Record a label and rewrite the CSV atomically.

        Raises:
            KeyError: ``file`` is not one of the listed images.
            ValueError: ``label`` is not empty/animal/person/vehicle.
            OSError: the CSV cannot be written (the in-memory label is rolled back).
        """
        if file not in self._index:
            raise KeyError(file)
        if label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
        from edge_app.core.files import atomic_write

        with self._lock:
            old = self.rows.get(file)
            row = dict(old) if old else dict.fromkeys(self.columns, "")
            row["file"] = file
            row["label"] = label
            if label != "animal":
                row["species"] = ""  # a species only makes sense on an animal
            self.rows[file] = row
            try:
                atomic_write(self.csv_path, self._csv_bytes())
            except OSError:
                if old is None:
                    del self.rows[file]
                else:
                    self.rows[file] = old
                raise

    def _csv_bytes(self) -> bytes:
        """Rows in the images' order (then any rows for files no longer here, kept)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore",
                           lineterminator="\n")
        w.writeheader()
        order = sorted(self.rows, key=lambda f: (self._index.get(f, len(self.files)), f))
        for f in order:
            w.writerow({c: self.rows[f].get(c, "") for c in self.columns})
        return buf.getvalue().encode("utf-8")


def preview_jpeg(path: Path) -> bytes:
    """The image as a JPEG no larger than :data:`PREVIEW_PX` (upright, RGB).

    Raises:
        ImageError: the image cannot be decoded.
    """
    from PIL import Image

    from edge_app.trap.detect.preprocess import decode_image

    im = decode_image(path, (PREVIEW_PX, PREVIEW_PX), "letterbox").image
    if max(im.size) > PREVIEW_PX:
        im.thumbnail((PREVIEW_PX, PREVIEW_PX), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def make_handler(store: LabelStore, token: str) -> type[BaseHTTPRequestHandler]:
    """The request handler class for one store (the token is baked into the page)."""
    page = PAGE.replace("__TOKEN__", token).encode("utf-8")

    class Handler(BaseHTTPRequestHandler):
        server_version = "camtrap-label"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("label: %s", format % args)

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, doc: Any) -> None:
            self._send(status, json.dumps(doc).encode("utf-8"), "application/json")

        def do_GET(self) -> None:
            from edge_app.core.errors import ImageError

            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
            elif path == "/api/state":
                self._json(HTTPStatus.OK, store.state())
            elif path.startswith("/img/") and path[5:].isdigit():
                img = store.path_of(int(path[5:]))
                if img is None:
                    self._json(HTTPStatus.NOT_FOUND, {"error": "no such image"})
                    return
                try:
                    self._send(HTTPStatus.OK, preview_jpeg(img), "image/jpeg")
                except ImageError as e:
                    self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(e)})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/api/label":
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            if not secrets.compare_digest(self.headers.get("X-Camtrap-Token", ""), token):
                self._json(HTTPStatus.FORBIDDEN, {"error": "bad or missing token"})
                return
            try:
                n = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                n = -1
            if not 0 < n <= MAX_BODY:
                self._json(HTTPStatus.BAD_REQUEST, {"error": "body missing or too large"})
                return
            try:
                doc = json.loads(self.rfile.read(n))
                store.set_label(str(doc["file"]), str(doc["label"]))
            except (ValueError, KeyError, TypeError) as e:
                self._json(HTTPStatus.BAD_REQUEST, {"error": f"bad label request: {e}"})
                return
            except OSError as e:
                log.error("label: cannot write %s: %s", store.csv_path, e)
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR,
                           {"error": f"cannot write {store.csv_path}: {e}"})
                return
            st = store.state()
            self._json(HTTPStatus.OK, {"done": st["done"], "total": st["total"]})

    return Handler


def serve(store: LabelStore, host: str, port: int,
          ready: Callable[[str], None] | None = None) -> ThreadingHTTPServer:
    """A started-but-not-serving server; call ``serve_forever`` on it (tests use a thread).

    Raises:
        OSError: the address cannot be bound.
    """
    server = ThreadingHTTPServer((host, port), make_handler(store, secrets.token_urlsafe(24)))
    server.daemon_threads = True
    if ready is not None:
        h, p = server.server_address[:2]
        ready(f"http://{h if isinstance(h, str) else h.decode()}:{p}/")
    return server


def main(args: argparse.Namespace) -> int:
    """``camtrap label``: serve until Ctrl-C; exit 2 on a bad folder, CSV or address."""
    folder = Path(args.dir)
    if not folder.is_dir():
        print(f"label: {folder} is not a folder", file=sys.stderr)
        return 2
    csv_path = Path(args.labels) if args.labels else folder / "labels.csv"
    try:
        store = LabelStore(folder, csv_path)
        server = serve(store, args.host, args.port)
    except (ValueError, OSError) as e:
        print(f"label: {e}", file=sys.stderr)
        return 2
    h, p = server.server_address[:2]
    st = store.state()
    print(f"labelling {st['total']} images in {folder} ({st['done']} already labelled) into "
          f"{csv_path}")
    print(f"open http://{h if isinstance(h, str) else h.decode()}:{p}/ — keys: e empty, "
          "a animal, p person, v vehicle, s skip, ← → move; Ctrl-C here to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>camtrap label</title>
<style>
 body{margin:0;font:15px system-ui,sans-serif;background:#111;color:#eee;display:flex;
      flex-direction:column;height:100vh}
 header{padding:8px 12px;display:flex;gap:16px;align-items:center;background:#222}
 #bar{flex:1;height:8px;background:#333;border-radius:4px;overflow:hidden}
 #fill{height:100%;background:#4a4;width:0}
 main{flex:1;display:flex;align-items:center;justify-content:center;min-height:0}
 img{max-width:100%;max-height:100%;object-fit:contain}
 footer{padding:6px 12px;background:#222;display:flex;gap:18px}
 kbd{background:#444;border-radius:3px;padding:1px 5px}
 #label.empty{color:#aaa}#label.animal{color:#6c6}#label.person{color:#f84}
 #label.vehicle{color:#6af}
</style></head>
<body>
<header><span id="progress">loading…</span><div id="bar"><div id="fill"></div></div>
 <span id="name"></span><strong id="label"></strong></header>
<main><img id="img" alt=""></main>
<footer><span><kbd>e</kbd> empty</span><span><kbd>a</kbd> animal</span>
 <span><kbd>p</kbd> person</span><span><kbd>v</kbd> vehicle</span><span><kbd>s</kbd> skip</span>
 <span><kbd>←</kbd> <kbd>→</kbd> move</span><span id="status"></span></footer>
<script>
"use strict";
const TOKEN = "__TOKEN__";
const KEYS = {e: "empty", a: "animal", p: "person", v: "vehicle"};
let files = [], labels = {}, i = 0, done = 0, busy = false;
const $ = id => document.getElementById(id);
function show() {
  const total = files.length;
  $("progress").textContent = done + " / " + total + " labelled";
  $("fill").style.width = (total ? 100 * done / total : 0) + "%";
  if (i >= total) {
    $("name").textContent = "all images seen";
    $("label").textContent = ""; $("img").removeAttribute("src"); return;
  }
  $("name").textContent = (i + 1) + ": " + files[i];
  const lab = labels[files[i]] || "";
  $("label").textContent = lab; $("label").className = lab;
  $("img").src = "/img/" + i;
}
async function label(value) {
  if (busy || i >= files.length) return;
  busy = true;
  try {
    const r = await fetch("/api/label", {method: "POST", headers: {
      "Content-Type": "application/json", "X-Camtrap-Token": TOKEN},
      body: JSON.stringify({file: files[i], label: value})});
    const doc = await r.json();
    if (!r.ok) { $("status").textContent = "not saved: " + doc.error; return; }
    labels[files[i]] = value; done = doc.done; i += 1;
    $("status").textContent = "saved";
    show();
  } catch (e) {
    $("status").textContent = "not saved: " + e;
  } finally { busy = false; }
}
document.addEventListener("keydown", ev => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const k = ev.key.toLowerCase();
  if (k in KEYS) { label(KEYS[k]); }
  else if (k === "s" || ev.key === "ArrowRight") { if (i < files.length) { i += 1; show(); } }
  else if (ev.key === "ArrowLeft") { if (i > 0) { i -= 1; show(); } }
  else return;
  ev.preventDefault();
});
fetch("/api/state").then(r => r.json()).then(st => {
  files = st.files; labels = st.labels; done = st.done; i = st.next; show();
  document.body.dataset.ready = "1";
});
</script></body></html>
"""
