"""``reidkit serve`` and ``reidkit serve token`` as a user types them."""

from __future__ import annotations

import json
import re
import socket
import stat
from pathlib import Path

from reidkit.serve.tokens import TokenStore
from tests.conftest import RunMain, assert_one_line_error, run_cli
from tests.serve.conftest import Model, Server, Tokens


def _spec(folder: Path) -> Path:
    path = folder / "spec.yaml"
    path.write_text(f"results_dir: {folder / 'results'}\nserve:\n  threads: 1\n")
    return path


def test_token_is_printed_once_and_only_its_hash_is_kept(tmp_path: Path, run_main: RunMain) -> None:
    spec = _spec(tmp_path)
    result = run_main(
        "serve", "token", "-e", str(spec), "--name", "desk", "--scopes", "search,write"
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert re.fullmatch(r"rk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", token)
    path = tmp_path / "results" / "serve" / "tokens.json"
    assert str(path) in result.stderr
    assert token.split("_", 2)[2] not in path.read_text()
    caller = TokenStore(path).verify(token)
    assert caller is not None and caller.scopes == {"search", "write"}

    again = run_main("serve", "token", "-e", str(spec), "--name", "desk")
    assert_one_line_error(again, "already has a token named 'desk'")
    assert_one_line_error(run_main("serve", "token", "-e", str(spec)), "--name")
    assert_one_line_error(
        run_main("serve", "token", "-e", str(spec), "--name", "x", "--scopes", "root"), "scopes"
    )


def test_bad_serve_settings_are_one_line_errors(
    tmp_path: Path, onnx_model: Path, run_main: RunMain
) -> None:
    spec = _spec(tmp_path)
    assert_one_line_error(run_main("serve", "-e", str(spec)), "serve.model is not set")
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"not really")
    result = run_main(
        "serve", "-e", str(spec), f"serve.model={checkpoint}", f"serve.gallery_uri={tmp_path}/g"
    )
    assert_one_line_error(result, "is a checkpoint", "reidkit export")
    assert_one_line_error(run_main("serve", "-e", str(spec), "serve.port=0"), "serve.port")
    tokens = tmp_path / "absent-tokens.json"
    result = run_main(
        "serve", "-e", str(spec), f"serve.model={onnx_model}",
        f"serve.gallery_uri={tmp_path / 'g'}", f"serve.token_file={tokens}",
    )  # fmt: skip
    assert_one_line_error(result, "reidkit serve token")


def test_busy_port_is_a_one_line_error(tmp_path: Path, onnx_model: Path, tokens: Tokens) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "serve", "-e", str(_spec(tmp_path)), f"serve.model={onnx_model}",
            f"serve.gallery_uri={tmp_path / 'g'}", f"serve.token_file={tokens.path}",
            f"serve.port={port}",
        )  # fmt: skip
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "serve.port")
    status = json.loads((tmp_path / "results" / "serve" / "status.json").read_text())
    assert status["status"] == "FAILURE" and "cannot listen" in status["message"]


def test_clean_stop_records_success(tmp_path: Path, start_server) -> None:
    server: Server = start_server(tmp_path / "gallery")
    status = json.loads((server.results / "serve" / "status.json").read_text())
    assert status["status"] == "RUNNING" and status["url"] == server.url
    server.stop()
    assert server.process.returncode == 0
    status = json.loads((server.results / "serve" / "status.json").read_text())
    assert status["status"] == "SUCCESS", status


def test_gallery_filled_by_the_cli_from_the_checkpoint_is_served_from_its_onnx(
    tmp_path: Path, model: Model, synth_root: Path, start_server, tokens: Tokens
) -> None:
    """One model, two files: 'gallery add' with the .pth, 'serve' with its export. The cards
    agree, so the server opens the gallery and its searches find the CLI's crops."""
    gallery = tmp_path / "gallery"
    crops = synth_root / "bounding_box_test"
    result = run_cli(
        "gallery", "add", "-e", str(_spec(tmp_path)), *model.overrides,
        f"gallery.uri={gallery}", f"gallery.checkpoint={model.checkpoint}",
        f"gallery.crops={crops}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The spec that filled the gallery names the crop root; the server shows paths under it.
    server: Server = start_server(gallery, f"gallery.crops={crops}")
    query = sorted(crops.glob("0013_*.jpg"))[0]
    files = [("images", ("q.jpg", query.read_bytes(), "image/jpeg"))]
    with server.client(tokens.search) as searcher:
        size = searcher.get("/v1/gallery/stats").json()["size"]
        hits = searcher.post("/v1/search", files=files, data={"k": "3"}).json()["hits"]
    assert size > 0 and hits[0]["path"] == query.name
    assert hits[0]["distance"] < 1e-4  # the served ONNX file embeds as the checkpoint did
    # Issue 25: no search token learns the ingest machine's layout; the admin scope does.
    assert not any(str(crops) in hit["path"] or hit["path"].startswith("/") for hit in hits)
    with server.client(tokens.admin) as admin:
        hits = admin.post("/v1/search", files=files, data={"k": "3"}).json()["hits"]
    assert hits[0]["path"] == str(query.resolve())


def test_tokens_are_listed_without_secrets_and_revoked_by_name(
    tmp_path: Path, run_main: RunMain
) -> None:
    spec = _spec(tmp_path)
    made = {
        name: run_main("serve", "token", "-e", str(spec), "--name", name, "--scopes", scopes)
        for name, scopes in (("desk", "search"), ("dpo", "admin"))
    }
    path = tmp_path / "results" / "serve" / "tokens.json"
    stored = json.loads(path.read_text())["tokens"]
    listed = run_main("serve", "token", "-e", str(spec), "--list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert rows == [[e["name"], ",".join(e["scopes"]), e["created"]] for e in stored]
    assert [r[:2] for r in rows] == [["desk", "search"], ["dpo", "admin"]]
    for entry, result in zip(stored, made.values(), strict=True):
        for secret in (entry["salt"], entry["sha256"], result.stdout.strip()):
            assert secret not in listed.stdout + listed.stderr

    revoked = run_main("serve", "token", "-e", str(spec), "--revoke", "desk")
    assert revoked.returncode == 0 and "revoked" in revoked.stderr
    assert TokenStore(path).verify(made["desk"].stdout.strip()) is None
    assert TokenStore(path).verify(made["dpo"].stdout.strip()) is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(path.parent.glob("*.tmp*"))  # rewritten atomically, nothing left beside it
    after = run_main("serve", "token", "-e", str(spec), "--list").stdout
    assert [line.split("\t")[0] for line in after.splitlines()] == ["dpo"]
    assert_one_line_error(
        run_main("serve", "token", "-e", str(spec), "--revoke", "desk"), "no token named 'desk'"
    )
    assert_one_line_error(
        run_main("serve", "token", "-e", str(spec), "--list", "--name", "x"), "one of --list"
    )
    assert_one_line_error(run_main("serve", "-e", str(spec), "--list"), "'reidkit serve token'")
