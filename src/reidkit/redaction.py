"""Secrets in specs: where a key may come from, and ``***`` wherever one would be written.

The encryption key protecting checkpoints was written in clear into ``experiment.yaml`` beside
them, and AutoML storage passwords appeared in files and error messages. Here:

* :func:`resolve_secret` lets a spec name a key instead of holding it: ``env:NAME`` reads the
  environment variable ``NAME``, ``file:PATH`` the first line of a file (keep it mode 0600);
  any other value is the key itself.
* :func:`redact_url` replaces the credentials of a URL (``scheme://user:password@host``) with
  ``***``; :func:`redact` does that for every URL in a text and also replaces known secrets.
* :class:`RedactingFilter` applies :func:`redact` to every log record passing a handler, so a
  library message that quotes a URL or key cannot leak it to the console or a log file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from reidkit.errors import SpecError

MASK = "***"
#: Spec keys whose values are secrets wherever they appear in the tree.
SECRET_KEYS = ("encryption_key",)
# scheme://userinfo@ — userinfo runs up to the last '@' before the host part.
_URL_CREDENTIALS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#]*@")


def resolve_secret(value: str | None, key: str) -> str | None:
    """The secret a spec value stands for; ``key`` names the setting in errors."""
    if value is None or value == "":
        return None
    if value.startswith("env:"):
        name = value[4:]
        secret = os.environ.get(name)
        if not secret:
            raise SpecError(f"{key} names environment variable '{name}', which is not set; set it")
        return secret
    if value.startswith("file:"):
        path = Path(value[5:]).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise SpecError(f"{key}: cannot read key file '{path}' ({reason}); fix it") from None
        secret = lines[0].strip() if lines else ""
        if not secret:
            raise SpecError(f"{key}: key file '{path}' is empty; write the key on its first line")
        return secret
    return value


def known_secrets(encryption_key: str | None) -> tuple[str, ...]:
    """The secret values behind a spec's ``encryption_key``, to mask wherever text may quote
    them: the literal key, or what an ``env:``/``file:`` reference resolves to (if it does)."""
    try:
        resolved = resolve_secret(encryption_key, "encryption_key")
    except SpecError:
        resolved = None
    return tuple(s for s in {encryption_key, resolved} if s and not is_reference(s))


def is_reference(value: str | None) -> bool:
    """Whether a spec value names where a secret is (safe to record) rather than holding it."""
    return bool(value) and value.startswith(("env:", "file:"))


def redact_url(url: str) -> str:
    """``url`` with its user and password replaced by ``***`` (unchanged if it has none)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_CREDENTIALS.sub(rf"\1{MASK}@", url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{MASK}@{host}"))


def redact_record(data: Any, secret_keys: tuple[str, ...] = SECRET_KEYS) -> Any:
    """A copy of a spec-like structure safe to write: secrets masked, references kept.

    A value under a key named in ``secret_keys`` is replaced by ``***`` unless it is an
    ``env:``/``file:`` reference (which says where the secret is, not what it is); URL
    credentials are masked in every string.
    """
    if isinstance(data, dict):
        return {
            key: MASK
            if key in secret_keys and isinstance(value, str) and value and not is_reference(value)
            else redact_record(value, secret_keys)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [redact_record(item, secret_keys) for item in data]
    if isinstance(data, str):
        return redact(data)
    return data


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with URL credentials and every given secret replaced by ``***``."""
    text = _URL_CREDENTIALS.sub(rf"\1{MASK}@", text)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter that masks URL credentials and the registered secrets in records."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, *secrets: str | None) -> None:
        self.secrets.update(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True
