"""Install, switch and roll back model packs under ``<models>/packs``.

Layout of the models folder on a unit::

    <models>/current  -> packs/<version>     the active pack (a relative symlink)
    <models>/previous -> packs/<version>     what ``camtrap models rollback`` goes back to
    <models>/packs/<version>/                unpacked, verified, self-tested packs
    <models>/packs/<version>.staging/        an install in progress (removed by the next one)

Why power loss leaves the old or the new pack and never a mix: nothing the detector reads is
written in place. A pack is unpacked into a ``.staging`` folder (files fsynced), verified and
self-tested there, renamed to its final name, and only then does ``current`` change — by
``os.replace`` of a fresh symlink, which is atomic on POSIX file systems; the folder is fsynced
after each rename so the switch survives the power cut that follows it. Until that one rename,
``current`` names the old, complete pack; after it, the new, complete one.

``CAMTRAP_PACK_KILL_AT=<step>`` makes the installer ``os._exit`` at that step: test
instrumentation for the power-loss tests (a SIGKILL at a chosen point), inert otherwise.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edge_app.core.errors import ModelError
from edge_app.trap.detect.cards import (
    ACTIVE_PACK,
    PACK_MANIFEST,
    load_card,
    sha256_file,
    verify_model_file,
)
from edge_app.trap.packs.archive import extract
from edge_app.trap.packs.manifest import (
    SCORE_TOLERANCE,
    SIGNATURE,
    VERSION_RE,
    Manifest,
    parse_manifest,
    verify_signature,
)
from edge_app.trap.packs.trial import Trial

log = logging.getLogger(__name__)

PACKS = "packs"
PREVIOUS = "previous"
STAGING = ".staging"
STEPS = ("extract", "extract_mid", "verify", "selftest", "rename", "previous", "switch",
         "switched", "prune")
"""The points where ``CAMTRAP_PACK_KILL_AT`` can stop the installer, in order."""


def _step(name: str) -> None:
    if os.environ.get("CAMTRAP_PACK_KILL_AT") == name:
        os._exit(137)  # a power cut at this point, as far as the file system can tell


@dataclass(frozen=True, slots=True)
class Installed:
    """The outcome of an install or rollback."""

    version: str
    previous: str | None
    path: Path


def verify_pack_dir(d: Path, public_key: bytes) -> Manifest:
    """Check an unpacked pack: signature, exactly the pinned files, every sha256, the cards.

    Raises:
        ModelError: the first problem found; a changed file is named with both digests.
    """
    try:
        raw = (d / PACK_MANIFEST).read_bytes()
        sig = (d / SIGNATURE).read_bytes()
    except OSError as e:
        raise ModelError(str(d), f"not a complete pack: {e.strerror} ({e.filename})") from e
    verify_signature(raw, sig, public_key)
    m = parse_manifest(raw)
    present = {str(p.relative_to(d)) for p in d.rglob("*") if not p.is_dir()}
    extra = present - set(m.files) - {PACK_MANIFEST, SIGNATURE}
    if extra:
        raise ModelError(str(d), f"files not in the signed manifest: {', '.join(sorted(extra))}")
    for name, entry in m.files.items():
        path = d / name
        if path.is_symlink() or not path.is_file():
            raise ModelError(str(path), "pack file missing (or not a regular file)")
        actual = sha256_file(path)
        if actual != entry.sha256 or path.stat().st_size != entry.size:
            raise ModelError(str(path), f"pack file {name} changed: manifest sha256 "
                             f"{entry.sha256}, actual {actual}")
    for name in m.cards:
        card = load_card(d / f"{name}.toml")
        for f in (card.file, card.labels):
            if f and f not in m.files:  # a pack's card reads only the pack's files: no mix
                raise ModelError(str(card.path), f"card {name} names {f}, not in the pack")
        verify_model_file(card, d)
    return m


def self_test(d: Path, m: Manifest) -> None:
    """Load and invoke every model of the pack, then replay the recorded sample verdicts.

    Raises:
        ModelError: a model that does not load, fit its card or run, or a sample whose label
            or score differs from the pack's own record.
    """
    from edge_app.core.config import DetectorConfig
    from edge_app.trap.detect.loader import load_model
    from edge_app.trap.detect.pipeline import Pipeline

    for name in m.cards:
        card = load_card(d / f"{name}.toml")
        load_model(name, d, 1, card.task).model.close()  # verify + load + fit + one invoke
    cfg = DetectorConfig(detector=m.detector, classifier=m.classifier, num_threads=1)
    with Pipeline(cfg, d) as pipeline:  # the detector head's own output checks
        for v in m.record:
            got = pipeline.analyse(d / v.file).to_json()
            if got["label"] != v.label or abs(float(got["score"]) - v.score) > SCORE_TOLERANCE:
                raise ModelError(str(d / v.file), f"self-test: recorded {v.label} "
                                 f"{v.score:.4f}, the staged pack gives {got['label']} "
                                 f"{float(got['score']):.4f}")


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _point(root: Path, link: str, version: str) -> None:
    """Atomically make ``root/link`` a symlink to ``packs/<version>``."""
    tmp = root / f".{link}.new"
    tmp.unlink(missing_ok=True)
    os.symlink(f"{PACKS}/{version}", tmp)
    os.replace(tmp, root / link)
    _fsync_dir(root)


def active(root: Path, link: str = ACTIVE_PACK) -> str | None:
    """The version ``root/link`` points at, or None."""
    p = root / link
    if not p.is_symlink():
        return None
    return Path(os.readlink(p)).name


def _clean(root: Path) -> None:
    """Remove what an interrupted install left: staging folders and half-made links."""
    packs = root / PACKS
    for d in packs.glob(f"*{STAGING}"):
        log.info("removing %s left by an interrupted install", d)
        shutil.rmtree(d)
    for tmp in root.glob(".*.new"):
        tmp.unlink()


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One install or rollback at a time (a technician's and a remote one could overlap)."""
    (root / PACKS).mkdir(parents=True, exist_ok=True)
    fd = os.open(root / PACKS / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise ModelError(str(root), "another model pack install or rollback is running") from e
        yield
    finally:
        os.close(fd)


def install(pack: Path, root: Path, public_key: bytes) -> Installed:
    """Verify, stage, self-test and switch to ``pack``; keep the active one as previous.

    Raises:
        ModelError: any refusal; ``current`` is then unchanged.
    """
    with _locked(root):
        return _install(pack, root, public_key)


def _install(pack: Path, root: Path, public_key: bytes) -> Installed:
    digest = sha256_file(pack)[:12]  # streamed: a pack may be larger than a Pi Zero's RAM
    packs = root / PACKS
    packs.mkdir(parents=True, exist_ok=True)
    _clean(root)
    _step("extract")
    staging = packs / f"{digest}{STAGING}"
    staging.mkdir()
    try:
        extract(pack, staging, lambda n: _step("extract_mid") if n == 2 else None)
        _fsync_dir(staging)
        _step("verify")
        m = verify_pack_dir(staging, public_key)
        _step("selftest")
        self_test(staging, m)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = active(root)
    if m.version == old:
        shutil.rmtree(staging)
        raise ModelError(str(pack), f"version {m.version} is already the active pack")
    final = packs / m.version
    _step("rename")
    if final.exists():  # an older copy of this version that is not active: replace it
        shutil.rmtree(final)
    os.rename(staging, final)
    _fsync_dir(packs)
    _step("previous")
    if old is not None:
        _point(root, PREVIOUS, old)
    if old is not None:  # on trial until the daemon runs healthy with it (trial.py); written
        Trial.begin(root, m.version)  # before the switch: a kill between leaves no trial
    _step("switch")
    _point(root, ACTIVE_PACK, m.version)
    _step("switched")
    _step("prune")
    _prune(root)
    log.info("model pack %s %s active (previous %s)", m.name, m.version, old)
    return Installed(m.version, old, final)


def _prune(root: Path) -> None:
    keep = {active(root), active(root, PREVIOUS)}
    for d in (root / PACKS).iterdir():
        if (d.is_dir() and not d.is_symlink() and not d.name.endswith(STAGING)
                and d.name not in keep):
            shutil.rmtree(d)


def rollback(root: Path, public_key: bytes) -> Installed:
    """Make the previous pack active again (it is re-verified first); the two swap places.

    Raises:
        ModelError: no previous pack, or it no longer verifies.
    """
    with _locked(root):
        return _rollback(root, public_key)


def _rollback(root: Path, public_key: bytes) -> Installed:
    prev, cur = active(root, PREVIOUS), active(root)
    if prev is None or not VERSION_RE.match(prev) or prev == cur:
        raise ModelError(str(root / PREVIOUS), "no previous model pack to roll back to")
    verify_pack_dir(root / PACKS / prev, public_key)
    Trial.load(root).end()  # a rollback ends any trial
    _point(root, ACTIVE_PACK, prev)
    if cur is not None:
        _point(root, PREVIOUS, cur)
    log.info("rolled back to model pack %s (was %s)", prev, cur)
    return Installed(prev, cur, root / PACKS / prev)
