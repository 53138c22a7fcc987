"""Ranger and admin accounts: argon2id hashes in ``web_users``.

``camtrap station adduser`` calls :func:`add_user`. Login always spends one argon2
verification, also for a name that does not exist (against a fixed dummy hash), so the time a
failed login takes does not tell whether the name is an account.

Why sessions are rows (``web_sessions``) and not only a signed cookie: a signed cookie stays
valid until it expires, whatever happens. With a row behind it, logging out, a new password
(``adduser`` again) or a deleted account ends the session at once. The row holds the sha256
of the session id, so a copy of the database does not hold live sessions.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from edge_app.station.web import db

ROLES = ("ranger", "admin")
NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
"""Longer passwords are refused before hashing (argon2 time grows with the input)."""

_hasher = PasswordHasher()
_dummy: list[str] = []


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise ValueError("a user name is 1-64 letters, digits, '_', '.', '@' or '-'")
    return name


def add_user(db_path: str | Path, name: str, password: str, role: str, now: float = 0.0) -> None:
    """Create the account ``name``, or set its password and role if it exists.

    Raises:
        ValueError: a bad name, role, or a password shorter than 8 or longer than 1024.
        StorageError: the store cannot be opened.
    """
    check_name(name)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    path = Path(db_path)
    db.ensure(path)
    digest = _hasher.hash(password)

    def write(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO web_users (name, hash, role, created) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, "
                  "role = excluded.role", (name, digest, role, now))
        c.execute("DELETE FROM web_sessions WHERE user = ?", (name,))  # a new password

    db.call(path, write)


def _dummy_hash() -> str:
    if not _dummy:
        _dummy.append(_hasher.hash("not a password of anyone"))
    return _dummy[0]


def verify(conn: sqlite3.Connection, name: str, password: str) -> User | None:
    """The user if ``password`` is theirs, else None (one argon2 verification either way)."""
    if not NAME_RE.fullmatch(name) or not 0 < len(password) <= MAX_PASSWORD:
        _verify(_dummy_hash(), "x")
        return None
    r = conn.execute("SELECT hash, role FROM web_users WHERE name = ?", (name,)).fetchone()
    if r is None:
        _verify(_dummy_hash(), password)
        return None
    digest, role = str(r[0]), str(r[1])
    if not _verify(digest, password):
        return None
    if _hasher.check_needs_rehash(digest):
        conn.execute("UPDATE web_users SET hash = ? WHERE name = ?",
                     (_hasher.hash(password), name))
    return User(name, role)


def _verify(digest: str, password: str) -> bool:
    try:
        return _hasher.verify(digest, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _sid_key(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8", "surrogatepass")).hexdigest()


def open_session(conn: sqlite3.Connection, user: User, now: float, max_age_s: float) -> str:
    """A new session of ``user`` (its id goes into the signed cookie); expired ones go."""
    sid = secrets.token_urlsafe(32)
    conn.execute("DELETE FROM web_sessions WHERE created < ?", (now - max_age_s,))
    conn.execute("INSERT INTO web_sessions (id, user, created) VALUES (?, ?, ?)",
                 (_sid_key(sid), user.name, now))
    return sid


def session_user(conn: sqlite3.Connection, sid: str, now: float,
                 max_age_s: float) -> User | None:
    """The user of a live session, None if it ended, expired or its account is gone."""
    r = conn.execute("SELECT u.name, u.role FROM web_sessions s JOIN web_users u "
                     "ON u.name = s.user WHERE s.id = ? AND s.created >= ?",
                     (_sid_key(sid), now - max_age_s)).fetchone()
    return None if r is None else User(str(r[0]), str(r[1]))


def close_session(conn: sqlite3.Connection, sid: str) -> None:
    conn.execute("DELETE FROM web_sessions WHERE id = ?", (_sid_key(sid),))
