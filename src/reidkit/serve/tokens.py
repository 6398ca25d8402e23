"""Bearer tokens with scopes, kept as salted hashes in a JSON file.

A token is ``rk_<id>_<secret>``: the id (8 hex digits) finds the entry, the 32-byte random
secret proves possession. The file stores only ``sha256(salt + secret)``; a 256-bit secret
cannot be guessed, so a slow password hash would add latency to every request and no safety.
The comparison uses :func:`hmac.compare_digest`, so timing does not reveal how much matched.
Whoever reads the token file learns names and scopes, never a usable token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from reidkit.errors import ReidkitError
from reidkit.outputs import atomic_open

# search: embed, search, read thumbnails and stats; write: add crops; admin: forget (and all).
SCOPES = ("search", "write", "admin")
FORMAT_VERSION = 1
_TOKEN = re.compile(r"^rk_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_ID = re.compile(r"^[0-9a-f]{8}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class TokenFileError(ReidkitError):
    """The token file is missing, unreadable or malformed, or a new token's fields are invalid."""


@dataclass(frozen=True)
class Caller:
    """Who made a request: the token's name (written to the audit log) and its scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """``admin`` holds every scope; the others hold only themselves."""
        return scope in self.scopes or "admin" in self.scopes


def _digest(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode("ascii")).hexdigest()


def _read(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TokenFileError(
            f"token file '{path}' does not exist; create a token with "
            "'reidkit serve token -e SPEC --name NAME' (serve.token_file names the file)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenFileError(f"token file '{path}' is unreadable ({exc}); recreate it") from None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise TokenFileError(
            f"token file '{path}' is not a reidkit token file of version {FORMAT_VERSION}; "
            "recreate it with 'reidkit serve token'"
        )
    entries = data.get("tokens")
    required = {"id", "name", "scopes", "salt", "sha256"}
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and required <= e.keys() for e in entries
    ):
        raise TokenFileError(f"token file '{path}' has a malformed 'tokens' list; recreate it")
    for number, entry in enumerate(entries, start=1):
        if (field := _malformed_field(entry)) is not None:
            name = f" ({entry['name']!r})" if isinstance(entry["name"], str) else ""
            raise TokenFileError(
                f"token file '{path}': token {number}{name} has a malformed {field}; delete that "
                "entry from the file and create the token again with 'reidkit serve token'"
            )
    return entries


def _malformed_field(entry: dict) -> str | None:
    """The first field of a token entry that a check could not use, with what it must be.

    A hand-edited salt that is not hex made every request with that token a 500 (and an id
    that is no string stopped the server with a traceback). The file is refused where it is
    read instead, naming the entry: the server does not start with it, and a running server
    that re-reads it refuses every token (401) until it is fixed, as for any unreadable file.
    """
    if not isinstance(entry["id"], str) or not _ID.fullmatch(entry["id"]):
        return "id (8 hex digits)"
    if not isinstance(entry["name"], str) or not entry["name"]:
        return "name (text)"
    scopes = entry["scopes"]
    if not isinstance(scopes, list) or not scopes or not all(s in SCOPES for s in scopes):
        return f"scopes (a list of some of {', '.join(SCOPES)})"
    try:
        bytes.fromhex(entry["salt"])
    except (TypeError, ValueError):
        return "salt (hex digits)"
    if not isinstance(entry["sha256"], str) or not _SHA256.fullmatch(entry["sha256"]):
        return "sha256 (64 hex digits)"
    return None


def create_token(path: Path, name: str, scopes: list[str] | tuple[str, ...]) -> str:
    """Append a new token named ``name`` to ``path`` (created 0600 if absent); return it.

    The returned string is the only copy of the token: print it once and forget it.
    """
    if not _NAME.fullmatch(name):  # match's "$" would pass a name ending in a line break
        raise TokenFileError(
            f"token name {name!r} must be 1-64 letters, digits or _.@- (it goes to the audit log)"
        )
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise TokenFileError(f"token scopes must be some of {', '.join(SCOPES)}; got {unknown}")
    entries = _read(path) if path.exists() else []
    if any(entry["name"] == name for entry in entries):
        raise TokenFileError(
            f"token file '{path}' already has a token named '{name}'; revoke it or pick another"
        )
    token_id = secrets.token_hex(4)
    while any(entry["id"] == token_id for entry in entries):
        token_id = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    entries.append(
        {
            "id": token_id,
            "name": name,
            "scopes": sorted(set(scopes), key=SCOPES.index),
            "salt": salt.hex(),
            "sha256": _digest(salt, secret),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    _write(path, entries)
    return f"rk_{token_id}_{secret}"


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown of a token: never its secret, nor its hash and salt."""

    name: str
    scopes: tuple[str, ...]
    created: str | None


def list_tokens(path: Path) -> list[TokenInfo]:
    """The tokens of ``path``, in creation order: names, scopes and creation times."""
    return [
        TokenInfo(entry["name"], tuple(entry["scopes"]), entry.get("created"))
        for entry in _read(path)
    ]


def revoke_token(path: Path, name: str) -> None:
    """Remove the token named ``name``; a running server stops accepting it on its next reload."""
    entries = _read(path)
    kept = [entry for entry in entries if entry["name"] != name]
    if len(kept) == len(entries):
        raise TokenFileError(f"token file '{path}' has no token named '{name}'")
    _write(path, kept)


def _write(path: Path, entries: list[dict]) -> None:
    with atomic_open(path) as handle:
        json.dump({"version": FORMAT_VERSION, "tokens": entries}, handle, indent=2)
    os.chmod(path, 0o600)


class TokenStore:
    """The verifier a server holds: token file entries indexed by id, re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, dict] = {}
        self._reload()

    def _reload(self) -> None:
        stat = self.path.stat() if self.path.exists() else None
        stamp = (stat.st_mtime_ns, stat.st_size) if stat else None
        if stamp is not None and stamp == self._stamp:
            return
        self._entries = {entry["id"]: entry for entry in _read(self.path)}
        self._stamp = stamp

    def verify(self, token: str) -> Caller | None:
        """The caller a token belongs to, or ``None`` for a malformed, unknown or revoked one."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        try:
            self._reload()
        except TokenFileError:
            return None  # a file being rewritten by hand: refuse rather than guess
        entry = self._entries.get(match.group(1))
        if entry is None:
            return None
        expected = entry["sha256"]
        actual = _digest(bytes.fromhex(entry["salt"]), match.group(2))
        if not hmac.compare_digest(expected, actual):
            return None
        return Caller(name=entry["name"], scopes=frozenset(entry["scopes"]))
