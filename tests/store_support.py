"""Builders shared by the store, outbox and MQTT link tests (real values, no mocks)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from edge_app.core import config
from edge_app.core.events import (
    Burst,
    Detection,
    Frame,
    FrameResult,
    Outcome,
    TriggerEvent,
    Verdict,
)


def make_cfg(root: Path, port: int = 1883, **sections: dict[str, Any]) -> config.Config:
    """A valid config for unit ``T-1`` storing under ``root``, plain MQTT to 127.0.0.1:port."""
    return config.parse(cfg_data(root, port, **sections))


def cfg_data(root: Path, port: int = 1883, **sections: dict[str, Any]) -> dict[str, Any]:
    """The TOML-like dict behind :func:`make_cfg` (for passing to a subprocess)."""
    data: dict[str, Any] = {
        "unit": {"id": "T-1"},
        "hardware": {"backend": "sim"},
        "camera": {"source": "synthetic"},
        "storage": {"root": str(root)},
        "outbox": {"backoff_min_s": 0.2, "backoff_max_s": 1.0},
        "mqtt": {"host": "127.0.0.1", "port": port, "tls": False, "keepalive_s": 10,
                 "reconnect_min_s": 1.0, "reconnect_max_s": 1.0, "image_min_link_s": 0.0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def jpeg(w: int = 320, h: int = 240, color: tuple[int, int, int] = (40, 120, 60),
         exif: bytes | None = None) -> bytes:
    """A small real JPEG."""
    out = io.BytesIO()
    im = Image.new("RGB", (w, h), color)
    for x in range(0, w, 16):  # some detail so the file is not trivially small
        im.putpixel((x, h // 2), (255, 255, 255))
    if exif is None:
        im.save(out, "JPEG", quality=90)
    else:
        im.save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


_number = 0


def burst_and_verdict(
    outcome: Outcome = "alert",
    label: str = "animal",
    species: str | None = "leopard",
    score: float = 0.91,
    wall: float | None = None,
    frames: int = 3,
) -> tuple[Burst, Verdict]:
    """A burst of ``frames`` JPEG frames (the first pre-trigger) and its verdict."""
    global _number
    _number += 1
    w = time.time() if wall is None else wall
    trig = TriggerEvent(number=_number, mono=time.monotonic(), wall=w, source="test")
    fr = tuple(
        Frame(jpeg=jpeg(color=(20 * i, 100, 60)), mono=trig.mono + i, wall=w + i, index=i,
              pre_trigger=(i == 0), name=f"f{i}.jpg")
        for i in range(frames)
    )
    dets: tuple[Detection, ...] = ()
    if label != "empty":
        dets = (Detection(category=label, conf=0.78, bbox=(0.4, 0.3, 0.2, 0.2), cls="cat",  # type: ignore[arg-type]
                          species=species, species_conf=score if species else None),)  # type: ignore[arg-type]
    res = FrameResult(label=label, species=species, score=score, detections=dets)  # type: ignore[arg-type]
    results = tuple(res if i == 1 else None for i in range(frames))
    verdict = Verdict(outcome=outcome, label=label, species=species, score=score,  # type: ignore[arg-type]
                      best_index=1 if frames > 1 else -1, results=results, reason="test")
    return Burst(trigger=trig, frames=fr), verdict


def wait_for(cond: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``cond`` until true, failing the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
