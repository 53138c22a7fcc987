"""The pack manifest: what a pack holds, pinned by sha256, and its Ed25519 signature.

One signature over the manifest bytes signs the whole pack, because the manifest pins every
other file by sha256 and size. The manifest is untrusted input until the signature verifies,
and is parsed with limits even after (a signed manifest from a buggy build tool must still not
stop the installer with a traceback).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from edge_app.core.errors import ModelError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SCHEMA = 1
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILES = 64
MAX_FILE_BYTES = 128 << 20
MAX_PACK_BYTES = 256 << 20
SCORE_TOLERANCE = 0.02
"""How far a self-test sample's score may drift from the record: the same int8 model on the
same runtime gives the same scores; a different CPU's float rounding moves them a little."""

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FILE_RE = re.compile(r"^(samples/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""Pack member names: flat, or one level under ``samples/``; no '..', no absolute path."""
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
LABELS = ("empty", "animal", "person", "vehicle")


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One pinned file of the pack."""

    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the pack's own models said about one sample frame when it was built."""

    file: str
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed, validated manifest (``raw`` is the exact signed bytes)."""

    name: str
    version: str
    created: str
    detector: str
    classifier: str
    cards: tuple[str, ...]
    head: str
    files: dict[str, FileEntry]
    record: tuple[Verdict, ...]
    raw: bytes


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ModelError(MANIFEST, f"bad pack manifest: {what}")


def parse_manifest(raw: bytes) -> Manifest:
    """Validate the manifest's shape, names and numbers.

    Raises:
        ModelError: too large, not JSON, or any field out of shape.
    """
    _need(len(raw) <= MAX_MANIFEST_BYTES, f"{len(raw)} bytes, limit {MAX_MANIFEST_BYTES}")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise ModelError(MANIFEST, f"bad pack manifest: not JSON ({e})") from e
    _need(isinstance(data, dict), "not an object")
    _need(data.get("schema") == SCHEMA, f"schema must be {SCHEMA}")
    strings = {k: data.get(k, "") for k in ("name", "version", "created", "detector",
                                            "classifier", "head")}
    for k, v in strings.items():
        _need(isinstance(v, str) and len(v) <= 128, f"{k} must be a short string")
    _need(bool(VERSION_RE.match(strings["version"])), f"version {strings['version']!r}")
    files_raw = data.get("files")
    _need(isinstance(files_raw, dict) and 0 < len(files_raw) <= MAX_FILES,
          f"files must be an object of 1-{MAX_FILES} entries")
    files: dict[str, FileEntry] = {}
    for name, entry in files_raw.items():
        _need(bool(FILE_RE.match(name)) and name not in (MANIFEST, SIGNATURE),
              f"file name {name!r}")
        _need(isinstance(entry, dict), f"files.{name} must be an object")
        sha, size = entry.get("sha256"), entry.get("size")
        _need(isinstance(sha, str) and bool(_SHA_RE.match(sha)), f"files.{name}.sha256")
        _need(isinstance(size, int) and not isinstance(size, bool)
              and 0 <= size <= MAX_FILE_BYTES, f"files.{name}.size")
        files[name] = FileEntry(sha, size)
    _need(sum(f.size for f in files.values()) <= MAX_PACK_BYTES, "files too large in total")
    cards = data.get("cards")
    _need(isinstance(cards, list) and all(isinstance(c, str) and f"{c}.toml" in files
                                          for c in cards) and len(cards) > 0,
          "cards must list the packed cards (each <name>.toml in files)")
    _need(strings["detector"] in cards, "detector must be one of the pack's cards")
    _need(strings["classifier"] in ("", *cards), "classifier must be '' or one of its cards")
    _need(strings["head"] in ("", *files), "head must be '' or one of its files")
    record_raw = data.get("record", [])
    _need(isinstance(record_raw, list) and len(record_raw) <= MAX_FILES, "record")
    record = []
    for r in record_raw:
        _need(isinstance(r, dict) and r.get("file") in files and r.get("label") in LABELS,
              f"record entry {r!r}")
        score = r.get("score")
        _need(isinstance(score, int | float) and not isinstance(score, bool)
              and math.isfinite(score) and 0 <= score <= 1, f"record score {score!r}")
        record.append(Verdict(r["file"], r["label"], float(score)))
    return Manifest(strings["name"], strings["version"], strings["created"],
                    strings["detector"], strings["classifier"], tuple(cards), strings["head"],
                    files, tuple(record), raw)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def decode_public_key(text: str) -> bytes:
    """The 32 raw key bytes of a base64 public key (config value or ``.pub`` file).

    Raises:
        ModelError: empty or not a 32-byte base64 key.
    """
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ModelError("detector.pack_public_key", f"not base64: {e}") from e
    if len(key) != 32:
        raise ModelError("detector.pack_public_key",
                         "not set or not a 32-byte Ed25519 public key: cannot verify a pack")
    return key


def verify_signature(raw: bytes, signature: bytes, public_key: bytes) -> None:
    """Check the detached Ed25519 signature over the manifest bytes.

    Raises:
        ModelError: the signature does not verify (a changed manifest or another key).
    """
    import hashlib

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, raw)
    except (InvalidSignature, ValueError) as e:
        raise ModelError(MANIFEST, "signature does not verify against detector.pack_public_key "
                         f"(manifest sha256 {hashlib.sha256(raw).hexdigest()}, key "
                         f"{base64.b64encode(public_key).decode()}): the manifest was changed "
                         "after signing, or the pack was signed with another key") from e
