"""What a killed run leaves behind is cleaned by the next one, and how each stop ends.

The leftovers are made the way they happen: a real process is SIGKILLed in the middle of a
staged write (a checkpoint) or of an archive's extraction, so its files carry a dead writer's
name. Only files that are provably such leftovers may go: a live writer's staged file, files
of another name and another machine's extraction folders stay.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

from reidkit.actions.lifecycle import run_action
from reidkit.config.loading import load_spec
from reidkit.data.sources import resolve_dataset
from tests.conftest import REPO
from tests.serve.conftest import Server, Tokens

CHECKPOINT_BYTES = 3 * 2**20


def _python(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, text=True, stdout=subprocess.PIPE
    )


def _killed_mid_write(target: Path) -> None:
    """A process that dies by SIGKILL while its checkpoint is half written."""
    writer = _python(
        f"""
        import os, signal
        from pathlib import Path
        from reidkit.outputs import staged_path
        with staged_path(Path({str(target)!r})) as staged:
            staged.write_bytes(bytes({CHECKPOINT_BYTES}))
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert writer.wait(timeout=60) == -signal.SIGKILL


def _staged(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_next_run_removes_a_killed_runs_staged_checkpoint(tmp_path: Path) -> None:
    spec = load_spec(None, [f"results_dir={tmp_path / 'results'}"])
    folder = spec.action_dir("train")
    folder.mkdir(parents=True)
    _killed_mid_write(folder / "reid_model_latest.pth")
    left = _staged(folder)
    assert len(left) == 1 and (folder / left[0]).stat().st_size == CHECKPOINT_BYTES
    # A writer that is still alive (another program, outside any run) keeps its file.
    alive = _python(
        f"""
        import sys, time
        from pathlib import Path
        from reidkit.outputs import staged_path
        with staged_path(Path({str(folder / "notes.json")!r})) as staged:
            print("staged", flush=True)
            time.sleep(60)
        """
    )
    try:
        assert alive.stdout is not None and alive.stdout.readline().strip() == "staged"
        live = [name for name in _staged(folder) if name not in left]
        lookalikes = [".model.pth.tmp", ".x.0.0123456789ab.tmp", "model.pth.12.0123456789ab.tmp"]
        for name in lookalikes:
            (folder / name).write_bytes(b"not ours")

        with run_action(spec, "train"):
            pass  # the next run of the action, as train, evaluate or export start

        assert _staged(folder) == sorted([*live, *lookalikes])
    finally:
        alive.kill()
        alive.wait(timeout=60)


def _tar_of_images(path: Path, count: int) -> Path:
    source = path.parent / "images"
    source.mkdir()
    for i in range(count):
        (source / f"{i:04d}_c1s1_{i:06d}_00.jpg").write_bytes(b"\xff\xd8" + bytes(2000))
    with tarfile.open(path, "w") as tar:
        tar.add(source, arcname="train")
    return path


def test_next_extraction_removes_a_killed_extractions_folder(tmp_path: Path) -> None:
    archive = _tar_of_images(tmp_path / "train.tar", 20)
    root = tmp_path / "extract"
    extractor = _python(
        f"""
        import os, signal
        from pathlib import Path
        from reidkit.data import sources
        write = sources._write_member
        def write_then_die(*args, **kwargs):  # killed after the first member, as a user would
            write(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        sources._write_member = write_then_die
        sources.resolve_dataset(Path({str(archive)!r}), Path({str(root)!r}))
        """
    )
    assert extractor.wait(timeout=60) == -signal.SIGKILL
    left = sorted(p.name for p in root.iterdir())
    assert len(left) == 1 and ".partial-" in left[0]
    elsewhere = root / f".{left[0].split('.partial-')[0][1:]}.partial-other-host-1-abcd"
    elsewhere.mkdir()  # another machine's extraction into a shared folder: not ours to judge

    folder = resolve_dataset(archive, root)

    assert len(list(folder.iterdir())) == 20
    assert sorted(p.name for p in root.iterdir()) == sorted([folder.parent.name, elsewhere.name])
    assert socket.gethostname() != "other-host"


def test_ctrl_c_stops_the_service_like_sigterm(
    tmp_path: Path,
    onnx_model: Path,
    tokens: Tokens,
) -> None:
    """Stopping is how a service ends: Ctrl-C exits 0 with status SUCCESS, as SIGTERM does
    (tests/serve/test_cli.py); it gave 130 and FAILURE. Other actions stopped by a signal exit
    130 or 143 with FAILURE (tests/faults)."""
    server = Server(onnx_model, tmp_path / "gallery", tokens.path)
    try:
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=60) == 0, server.log.read_text()[-2000:]
    finally:
        server.kill()
    status = json.loads((server.results / "serve" / "status.json").read_text())
    assert status["status"] == "SUCCESS", status
