"""Secrets in specs: where a key may come from, and ``***`` in the fields that hold one.

Secrets are masked by FIELD, where a value is recorded, never by searching free text for a
secret's value: with a short or common-word key ("model", "train") a text search put ``***``
inside file names and words of ``status.json`` and of messages, and where the stars fell gave
the key away. So:

* :func:`resolve_secret` lets a spec name a key instead of holding it: ``env:NAME`` reads the
  environment variable ``NAME``, ``file:PATH`` the first line of a file (keep it mode 0600);
  any other value is the key itself.
* :func:`redact_record` masks the secret fields of a spec-like tree (:data:`SECRET_KEYS`) and
  the user-info of the URLs in its values (``scheme://user:password@host``), for the files
  reidkit writes; :func:`redact_value` does it for one value (what a validation error quotes).
* Messages never hold a secret in the first place: the code that builds one quotes a secret
  field as ``***`` and a URL through :func:`redact_url`. Text from a library that may quote a
  URL it was given (a database driver's error, a log line) goes through
  :func:`mask_url_credentials`, which masks the user-info of whatever is shaped like a URL:
  its place in the URL, not its value, says it is a credential.
"""

from __future__ import annotations

import logging
import os
import re
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


def is_reference(value: str | None) -> bool:
    """Whether a spec value names where a secret is (safe to record) rather than holding it."""
    return bool(value) and value.startswith(("env:", "file:"))


def redact_url(url: str) -> str:
    """``url`` with its user and password replaced by ``***`` (unchanged if it has none)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_url_credentials(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{MASK}@{host}"))


def redact_value(key: str, value: Any) -> Any:
    """``value`` as it may be written or quoted under the spec key ``key`` (dotted or not).

    A secret field's value becomes ``***`` unless it is an ``env:``/``file:`` reference (which
    says where the secret is, not what it is); URLs in a string value lose their user-info.
    """
    if _is_secret(key) and value not in (None, ""):
        return value if isinstance(value, str) and is_reference(value) else MASK
    return mask_url_credentials(value) if isinstance(value, str) else value


def redact_record(data: Any, key: str = "") -> Any:
    """A copy of a spec-like tree safe to write: every value through :func:`redact_value`
    (``key`` is the field ``data`` sits under; a secret field is masked whatever it holds)."""
    if isinstance(data, dict) and not _is_secret(key):
        return {name: redact_record(value, str(name)) for name, value in data.items()}
    if isinstance(data, list) and not _is_secret(key):
        return [redact_record(item, key) for item in data]
    return redact_value(key, data)


def _is_secret(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in SECRET_KEYS


def mask_url_credentials(text: str) -> str:
    """``text`` (a library's message) with the user-info of every URL in it replaced by ``***``."""
    return _URL_CREDENTIALS.sub(rf"\1{MASK}@", text)


class RedactingFilter(logging.Filter):
    """A handler filter that masks URL credentials in records (a library may log a URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = mask_url_credentials(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
