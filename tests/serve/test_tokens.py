"""Token files: only salted hashes on disk, scopes enforced, revocation seen without restart."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from reidkit.serve.tokens import TokenFileError, TokenStore, create_token, revoke_token


def test_file_keeps_no_usable_token_and_verifies_the_printed_one(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = create_token(path, "ops-desk", ["search"])
    text = path.read_text()
    secret = token.split("_", 2)[2]
    assert token not in text and secret not in text
    entry = json.loads(text)["tokens"][0]
    # The stored hash is sha256(salt + secret), independently recomputed here.
    expected = hashlib.sha256(bytes.fromhex(entry["salt"]) + secret.encode()).hexdigest()
    assert entry["sha256"] == expected
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    caller = TokenStore(path).verify(token)
    assert caller is not None and caller.name == "ops-desk" and caller.scopes == {"search"}


def test_wrong_secret_unknown_id_and_garbage_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = create_token(path, "a", ["search"])
    store = TokenStore(path)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert store.verify(flipped) is None
    assert store.verify("rk_00000000_" + token.split("_", 2)[2]) is None
    assert store.verify("") is None and store.verify("Bearer " + token) is None


def test_admin_holds_every_scope_others_only_their_own(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store_tokens = {name: create_token(path, name, [name]) for name in ("search", "write")}
    admin = create_token(path, "boss", ["admin"])
    store = TokenStore(path)
    searcher = store.verify(store_tokens["search"])
    writer = store.verify(store_tokens["write"])
    boss = store.verify(admin)
    assert searcher and writer and boss
    assert searcher.allows("search") and not searcher.allows("write")
    assert writer.allows("write") and not writer.allows("search")
    assert all(boss.allows(scope) for scope in ("search", "write", "admin"))


def test_revoked_token_is_refused_by_a_running_store(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = create_token(path, "temp", ["search"])
    store = TokenStore(path)
    assert store.verify(token) is not None
    revoke_token(path, "temp")
    assert store.verify(token) is None


@pytest.mark.parametrize(
    ("name", "scopes", "needle"),
    [
        ("bad name!", ["search"], "token name"),
        # A name ending in a line break passed the pattern's "$" and went to the audit log and
        # to --list as two lines, beside a token of the same name without it.
        ("desk-operator\n", ["search"], "token name"),
        ("ok", ["root"], "scopes"),
        ("ok", [], "scopes"),
    ],
)
def test_bad_new_tokens_are_refused(tmp_path: Path, name: str, scopes: list, needle: str) -> None:
    with pytest.raises(TokenFileError, match=needle):
        create_token(tmp_path / "tokens.json", name, scopes)
    assert not (tmp_path / "tokens.json").exists()


def test_duplicate_name_and_corrupt_file_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    create_token(path, "a", ["search"])
    with pytest.raises(TokenFileError, match="already has a token named 'a'"):
        create_token(path, "a", ["write"])
    path.write_text("{not json")
    with pytest.raises(TokenFileError, match="unreadable"):
        TokenStore(path)
    with pytest.raises(TokenFileError, match="does not exist"):
        TokenStore(tmp_path / "absent.json")
