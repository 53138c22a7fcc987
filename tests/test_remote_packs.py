"""Model packs over MQTT: the download on the card, the door, the pusher's rounds, and the
whole path — ``camtrap models push`` through the shipped broker (TLS, ACL) to a running
``camtrap run``, which installs the pack, restarts on it (exit 75) and keeps it on trial.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from station_support import deploy_broker
from test_packs import DET, built, key_of, keys, rewrite, samples  # noqa: F401 (fixtures)

from edge_app.core.guard import Refusals
from edge_app.tools.pack_push import Pusher, PushError, sha256_of
from edge_app.trap.packs import install as packs
from edge_app.trap.packs.download import MAX_CHUNK, DownloadError, Downloads
from edge_app.trap.packs.install import Installed
from edge_app.trap.packs.remote import EXIT_RESTART, PackCommandError, RemotePacks, pack_state
from edge_app.trap.uplink.mqtt_door import MqttDoor, PackChunk

REPO = Path(__file__).resolve().parents[1]
SHA = "ab" * 32


def offer_all(d: Downloads, data: bytes, chunk: int = 1024) -> list[int]:
    return d.offer(_sha(data), len(data), chunk).missing


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# -- the download on the card ------------------------------------------------------------------


def test_a_pack_arrives_in_any_order_and_survives_a_restart_of_the_unit(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(10_000)
    sha = _sha(data)
    d = Downloads(tmp_path)
    assert offer_all(d, data) == list(range(10))
    order = [7, 0, 9, 3]
    for i in order:
        d.chunk(sha, i, data[i * 1024:(i + 1) * 1024])
    # A power cut: a new process sees what is on the card, and the same offer resumes.
    again = Downloads(tmp_path)
    p = again.offer(sha, len(data), 1024)
    assert p.missing == [1, 2, 4, 5, 6, 8]
    for i in p.missing:
        again.chunk(sha, i, data[i * 1024:(i + 1) * 1024])
    done = again.progress(sha)
    assert done is not None
    assert done.complete
    assert again.complete(sha).read_bytes() == data
    again.discard()
    assert list((tmp_path / "packs-incoming").iterdir()) == []


def test_a_chunk_whose_record_was_lost_is_asked_for_again(tmp_path: Path) -> None:
    """The bytes are fsynced before the chunk's byte in .have: a cut between the two loses the
    record, never claims a chunk that is not there."""
    data = bytes(range(256)) * 10
    sha = _sha(data)
    d = Downloads(tmp_path)
    d.offer(sha, len(data), 1024)
    d.chunk(sha, 1, data[1024:2048])
    have = tmp_path / "packs-incoming" / f"{sha}.have"
    have.write_bytes(b"\x00" * 3)  # the record of chunk 1 never reached the card
    assert d.offer(sha, len(data), 1024).missing == [0, 1, 2]


def test_what_the_download_refuses(tmp_path: Path) -> None:
    data = b"x" * 3000
    sha = _sha(data)
    d = Downloads(tmp_path)
    with pytest.raises(DownloadError, match="was not offered"):
        d.chunk(sha, 0, data[:1024])
    with pytest.raises(DownloadError, match="sha256"):
        d.offer("NOT-A-SHA", 3000, 1024)
    with pytest.raises(DownloadError, match="'bytes'"):
        d.offer(sha, 0, 1024)
    with pytest.raises(DownloadError, match="'chunk_bytes'"):
        d.offer(sha, 3000, MAX_CHUNK + 1)
    d.offer(sha, 3000, 1024)
    with pytest.raises(DownloadError, match="out of range"):
        d.chunk(sha, 3, b"x")
    with pytest.raises(DownloadError, match="expected 1024"):
        d.chunk(sha, 0, b"x" * 1000)
    with pytest.raises(DownloadError, match="expected 952"):
        d.chunk(sha, 2, b"x" * 1024)  # the last chunk is the rest
    with pytest.raises(DownloadError, match="3 of 3 chunks are still missing"):
        d.complete(sha)
    # The same pack cut differently starts afresh; another pack replaces this one.
    d.chunk(sha, 0, data[:1024])
    assert d.offer(sha, 3000, 2048).missing == [0, 1]
    other = b"y" * 5000
    d.offer(_sha(other), 5000, 1024)
    assert d.progress(sha) is None
    assert Downloads(tmp_path, min_free_mb=1e12).dir.exists()
    with pytest.raises(DownloadError, match="no room"):
        Downloads(tmp_path, min_free_mb=1e12).offer(sha, 3000, 1024)


def test_chunks_that_do_not_hash_to_the_pack_are_thrown_away(tmp_path: Path) -> None:
    data = b"a" * 2048
    sha = _sha(data)
    d = Downloads(tmp_path)
    d.offer(sha, 2048, 1024)
    d.chunk(sha, 0, data[:1024])
    d.chunk(sha, 1, b"b" * 1024)  # corrupted on the way (or a sender bug)
    with pytest.raises(DownloadError, match="download discarded"):
        d.complete(sha)
    assert d.progress(sha) is None


# -- the door ------------------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "payload", "kind"), [
    (f"camtrap/T-1/pack/{SHA}/x", b"1", "bad_topic"),
    (f"camtrap/T-1/pack/{SHA}/\u00b2", b"1", "bad_topic"),  # a digit to str.isdigit, not int()
    (f"camtrap/T-1/pack/{SHA}/1234567890", b"1", "bad_topic"),
    ("camtrap/T-1/pack/ABC/0", b"1", "bad_topic"),
    (f"camtrap/T-1/pack/{SHA}", b"1", "bad_topic"),
    (f"camtrap/T-1/pack/{SHA}/0", b"z" * (MAX_CHUNK + 1), "too_large"),
])
def test_the_door_refuses_malformed_pack_chunks(topic: str, payload: bytes, kind: str) -> None:
    r = Refusals("test")
    door = MqttDoor("camtrap/T-1/ack", "camtrap/T-1/cmd/", r, "camtrap/T-1/pack/")
    assert door.sort(topic, payload) is None
    assert r.snapshot() == {kind: 1}


def test_the_door_hands_on_a_chunk_only_when_packs_are_on() -> None:
    r = Refusals("test")
    on = MqttDoor("camtrap/T-1/ack", "camtrap/T-1/cmd/", r, "camtrap/T-1/pack/")
    assert on.sort(f"camtrap/T-1/pack/{SHA}/12", b"abc") == PackChunk(SHA, 12, b"abc")
    assert on.inbound(f"camtrap/T-1/pack/{SHA}/12")
    off = MqttDoor("camtrap/T-1/ack", "camtrap/T-1/cmd/", r)
    assert off.sort(f"camtrap/T-1/pack/{SHA}/12", b"abc") is None
    assert r.snapshot() == {"unexpected_topic": 1}


# -- the pusher's rounds against the unit's side, in process ---------------------------------


class InProcessUnit:
    """The unit's side (:class:`RemotePacks` over a real models folder) wired to the pusher's
    two callables; ``lose`` drops chunks on the way, ``die_after`` ends the push there."""

    def __init__(self, root: Path, key: bytes, lose: set[int] | None = None,
                 die_after: int | None = None) -> None:
        self.installed: list[Installed] = []
        self.remote = RemotePacks(Downloads(root / "data"), root / "models", key,
                                  self.installed.append)
        self.lose = set(lose or ())
        self.die_after = die_after
        self.got = 0

    def call(self, name: str, body: dict[str, Any], _timeout: float) -> dict[str, Any] | None:
        try:
            if name == "models/offer":
                return {"ok": True, **self.remote.offer(body)}
            return {"ok": True, **self.remote.install(body)}
        except PackCommandError as e:
            return {"ok": False, "error": str(e)}

    def send(self, sha: str) -> Any:
        def send_chunk(i: int, data: bytes) -> None:
            if self.die_after is not None and self.got >= self.die_after:
                raise KeyboardInterrupt  # the operator's laptop lost the link
            self.got += 1
            if i in self.lose:
                self.lose.discard(i)  # lost once, then it gets through
                return
            self.remote.chunk(sha, i, data)
        return send_chunk


def test_a_push_lost_midway_resumes_with_only_the_missing_chunks(
        tmp_path: Path, built: dict[str, Path], keys: dict[str, Path]) -> None:  # noqa: F811
    key = key_of(keys)
    packs.install(built["v1"], tmp_path / "models", key)
    pack = built["v2"]
    sha, size = sha256_of(pack), pack.stat().st_size
    of = -(-size // 65536)
    first = InProcessUnit(tmp_path, key, die_after=20)
    with pytest.raises(KeyboardInterrupt):
        Pusher(pack, first.call, first.send(sha), window=8).run()
    assert packs.active(tmp_path / "models") == "v1"
    unit = InProcessUnit(tmp_path, key, lose={of - 1, 25})
    said: list[str] = []
    r = Pusher(pack, unit.call, unit.send(sha), window=8, say=said.append).run()
    assert (r.already, r.sent) == (20, of - 20 + 2)  # the two lost ones went twice
    assert r.install == {"ok": True, "version": "v2", "previous": "v1", "restarting": True}
    assert [i.version for i in unit.installed] == ["v2"]
    assert packs.active(tmp_path / "models") == "v2"
    assert pack_state(tmp_path / "models") == {"active": "v2", "previous": "v1",
                                               "on_trial": True}
    assert said[0].endswith(f"{of} chunks of 65536 bytes): the unit has 20")
    assert list((tmp_path / "data" / "packs-incoming").iterdir()) == []


def test_a_tampered_or_foreign_pack_is_refused_and_nothing_changes(
        tmp_path: Path, built: dict[str, Path], keys: dict[str, Path]) -> None:  # noqa: F811
    key = key_of(keys)
    packs.install(built["v1"], tmp_path / "models", key)
    bad = tmp_path / "bad.pack"
    rewrite(built["v2"], bad, {"manifest.json": b'{"tampered": true}'})
    unit = InProcessUnit(tmp_path, key)
    with pytest.raises(PushError, match=r"refused the pack: refused, the active pack is "
                       r"unchanged: .*signature"):
        Pusher(bad, unit.call, unit.send(sha256_of(bad))).run()
    other = InProcessUnit(tmp_path, key_of(keys, "other_pub"))
    with pytest.raises(PushError, match="signature"):
        Pusher(built["v2"], other.call, other.send(sha256_of(built["v2"]))).run()
    assert packs.active(tmp_path / "models") == "v1"
    assert unit.installed == other.installed == []
    assert list((tmp_path / "data" / "packs-incoming").iterdir()) == []


def test_a_unit_that_takes_no_chunks_stops_the_push_with_a_reason(
        tmp_path: Path, built: dict[str, Path], keys: dict[str, Path]) -> None:  # noqa: F811
    unit = InProcessUnit(tmp_path, key_of(keys))
    with pytest.raises(PushError, match="took no chunks in 3 rounds"):
        Pusher(built["v2"], unit.call, lambda _i, _d: None).run()
    with pytest.raises(PushError, match="no answer to models/offer"):
        Pusher(built["v2"], lambda *_a: None, lambda _i, _d: None).run()


# -- the whole path: push → broker → running daemon → restart on the new pack ------------------


def _unit_config(tmp: Path, pki: Path, port: int, images: Path, pub: str) -> Path:
    cfg = tmp / "camtrap.toml"
    cfg.write_text(f"""
[unit]
id = "LL-1"
[hardware]
backend = "sim"
[trigger]
sim_every_s = 0
[camera]
source = "replay"
images_dir = "{images}"
[storage]
root = "{tmp / 'data'}"
[detector]
models_dir = "{tmp / 'models'}"
detector = "{DET}"
classifier = ""
pack_public_key = "{pub}"
[mqtt]
host = "localhost"
port = {port}
tls = true
ca_file = "{pki / 'ca.crt'}"
password_file = "{pki / 'units' / 'LL-1' / 'mqtt-password'}"
stats_interval_s = 1
reconnect_min_s = 1.0
reconnect_max_s = 2.0
""")
    return cfg


def _push(pki: Path, port: int, pack: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_app", "models", "push", str(pack), "--unit", "LL-1",
         "--broker", f"localhost:{port}", "--ca-file", str(pki / "ca.crt"),
         "--username", "ops", "--password-file", str(pki / "rangers" / "ops" / "mqtt-password"),
         "--json", "--timeout", "30"],
        capture_output=True, text=True, timeout=180, cwd=REPO, check=False)


@pytest.mark.broker
def test_models_push_installs_on_a_running_unit_which_restarts_on_it(
        tmp_path: Path, built: dict[str, Path], keys: dict[str, Path],  # noqa: F811
        cameratrapai_dir: Path) -> None:
    broker, pki = deploy_broker(tmp_path, ["LL-1"], ["station", "ops"])
    images = tmp_path / "images"
    images.mkdir()
    shutil.copyfile(cameratrapai_dir / "blank.jpg", images / "blank.jpg")
    packs.install(built["v1"], tmp_path / "models", key_of(keys))
    cfg = _unit_config(tmp_path, pki, broker.port, images, keys["pub"].read_text().strip())
    log = tmp_path / "daemon.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as f:
            return subprocess.Popen([sys.executable, "-m", "edge_app", "run", "--config",
                                     str(cfg)], stdout=f, stderr=subprocess.STDOUT, cwd=REPO)

    def wait_log(text: str, timeout_s: float = 60.0, after: int = 0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in log.read_text(errors="replace")[after:]:
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} in the daemon's log:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    proc = start()
    try:
        wait_log("MQTT: connected")
        # A tampered pack: refused with the reason, and the daemon keeps running on v1.
        bad = tmp_path / "bad.pack"
        rewrite(built["v2"], bad, {"manifest.json": b'{"tampered": true}'})
        r = _push(pki, broker.port, bad)
        assert r.returncode == 1, r.stderr
        out = json.loads(r.stdout)
        assert out["ok"] is False
        assert "signature" in out["error"], out
        time.sleep(1.0)
        assert proc.poll() is None
        assert packs.active(tmp_path / "models") == "v1"
        # The signed v2: installed, the daemon exits 75 for systemd to start it on v2.
        r = _push(pki, broker.port, built["v2"])
        assert r.returncode == 0, r.stderr + r.stdout
        out = json.loads(r.stdout)
        assert (out["version"], out["previous"], out["already_on_unit"]) == ("v2", "v1", 0)
        assert out["sent"] == out["chunks"] > 1
        assert proc.wait(60) == EXIT_RESTART
        assert packs.active(tmp_path / "models") == "v2"
        wait_log("a new model pack is active")
        seen = len(log.read_text(errors="replace"))
        proc = start()  # what systemd's Restart=on-failure does
        wait_log("MQTT: connected", 60, after=seen)
        assert proc.poll() is None
        assert pack_state(tmp_path / "models") == {"active": "v2", "previous": "v1",
                                                   "on_trial": True}
        trial = json.loads((tmp_path / "models" / "trial.json").read_text())
        assert trial == {"version": "v2", "starts": 1}
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(20)
        broker.stop()
    assert os.path.islink(tmp_path / "models" / "current")
