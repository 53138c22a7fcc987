"""Maintainer side of model packs: ``camtrap models keygen`` and ``camtrap models pack``.

A pack is one plain tar file::

    manifest.json     name, version, created, detector/classifier card names, the cards, an
                      optional site head, every file's sha256 and size, and the "record":
                      the label and score the pack's own models give each sample frame
    manifest.sig      the detached Ed25519 signature (64 raw bytes) over manifest.json's bytes
    <card>.toml, <model>.tflite, <labels>.txt, [head], samples/<frame>.jpg

Signing the manifest signs everything, because it pins every other file by sha256. The record
is made here, by running the same pipeline the unit runs (one thread) on the staged pack, so
the unit's self-test compares like with like. Uncompressed tar: TFLite weights barely compress,
and the unit can read members without a decompressor's memory.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_app.core.errors import ModelError
from edge_app.trap.detect.cards import PACK_MANIFEST, PACKAGED_CARDS, load_card
from edge_app.trap.packs.manifest import SIGNATURE, VERSION_RE, parse_manifest

SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png")


def keygen(out: Path) -> tuple[Path, Path]:
    """Write an Ed25519 private key (PEM, mode 0600) to ``out`` and its public key, base64 of
    the 32 raw bytes (the value of ``detector.pack_public_key``), to ``out.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    pub_path = out.with_name(out.name + ".pub")
    pub_path.write_text(base64.b64encode(pub).decode() + "\n")
    return out, pub_path


def _sign(private_pem: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ModelError("key", "not an Ed25519 private key (make one with camtrap models keygen)")
    return key.sign(data)


def _card_path(spec: str) -> Path:
    p = Path(spec)
    if p.suffix == ".toml":
        return p
    return PACKAGED_CARDS / f"{spec}.toml"


def stage(models: Path, cards: Sequence[str], head: Path | None, samples: Path | None,
          dest: Path, version: str, name: str) -> dict[str, Any]:
    """Copy the pack's files into ``dest`` and return the manifest (record still empty)."""
    if not VERSION_RE.match(version):
        raise ModelError("--version", f"{version!r}: letters, digits, '.', '_', '-'")
    names: list[str] = []
    detector = classifier = ""
    for spec in cards:
        card = load_card(_card_path(spec))
        names.append(card.name)
        shutil.copyfile(card.path, dest / f"{card.name}.toml")
        for f in (card.file, card.labels):
            if f:
                shutil.copyfile(models / f, dest / f)
        if card.task == "detector" and not detector:
            detector = card.name
        if card.task == "classifier" and not classifier:
            classifier = card.name
    if not detector:
        raise ModelError("--cards", "a pack needs a detector card")
    if head is not None:
        shutil.copyfile(head, dest / head.name)
    if samples is not None:
        (dest / "samples").mkdir()
        for p in sorted(samples.iterdir()):
            if p.suffix.lower() in SAMPLE_SUFFIXES:
                shutil.copyfile(p, dest / "samples" / p.name)
    files = {str(p.relative_to(dest)): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                        "size": p.stat().st_size}
             for p in sorted(dest.rglob("*")) if p.is_file()}
    return {"schema": 1, "name": name, "version": version,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "detector": detector, "classifier": classifier, "cards": names,
            "head": "" if head is None else head.name, "files": files, "record": []}


def record(dest: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdicts the pack's own models give its samples (``camtrap detect --json``)."""
    from edge_app.core.config import DetectorConfig
    from edge_app.trap.detect.pipeline import Pipeline

    (dest / PACK_MANIFEST).write_text(json.dumps(manifest))  # so lookups read this pack
    cfg = DetectorConfig(detector=manifest["detector"], classifier=manifest["classifier"],
                         num_threads=1)
    out = []
    with Pipeline(cfg, dest) as pipeline:
        for f in sorted(manifest["files"]):
            if f.startswith("samples/"):
                got = pipeline.analyse(dest / f).to_json()
                out.append({"file": f, "label": got["label"], "score": got["score"]})
    return out


def write_pack(dest: Path, manifest: dict[str, Any], private_pem: bytes, out: Path) -> None:
    """Sign the manifest and write the tar (manifest, signature, then the pinned files)."""
    raw = json.dumps(manifest, indent=1, sort_keys=True).encode()
    parse_manifest(raw)  # the unit's own checks, before anything is signed
    sig = _sign(private_pem, raw)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for member, data in ((PACK_MANIFEST, raw), (SIGNATURE, sig)):
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for f in sorted(manifest["files"]):
            tar.add(dest / f, arcname=f, recursive=False)
    os.replace(tmp, out)


def build(key: Path, models: Path, cards: Sequence[str], out: Path, *, version: str,
          name: str = "camtrap-models", head: Path | None = None,
          samples: Path | None = None) -> dict[str, Any]:
    """Stage, record, sign and write a pack; returns the manifest."""
    pem = key.read_bytes()
    with tempfile.TemporaryDirectory(prefix="camtrap-pack-") as tmp:
        dest = Path(tmp)
        manifest = stage(models, cards, head, samples, dest, version, name)
        manifest["record"] = record(dest, manifest) if samples is not None else []
        (dest / PACK_MANIFEST).unlink(missing_ok=True)
        write_pack(dest, manifest, pem, out)
    return manifest
