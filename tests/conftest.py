"""Fixtures shared across the suite: a small synthetic dataset and a tiny, fast spec."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

from reidkit.config.loading import load_spec
from reidkit.config.spec import ExperimentSpec, ModelSpec, OptimSpec
from reidkit.engine.module import model_settings
from reidkit.models import Backbone, ReidModel, build_backbone

#: Python that gives SIGINT back its default (KeyboardInterrupt) handler, for a test's child
#: process: a shell starts background jobs with SIGINT ignored and children inherit that, while
#: Ctrl-C must reach a test's run as it reaches a user's foreground run. The child runs it
#: itself, not as ``preexec_fn``: that runs Python between fork and exec, and with gRPC loaded
#: in the test process (pymilvus, by the Milvus tests) its fork handlers abort the child now
#: and then ("epoll_wait error: Bad file descriptor", SIGABRT).
FOREGROUND_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)"
#: The ``reidkit`` CLI as a child command, SIGINT restored (:data:`FOREGROUND_SIGINT`).
REIDKIT_FOREGROUND = [
    sys.executable,
    "-c",
    f"{FOREGROUND_SIGINT}; import runpy; runpy.run_module('reidkit', run_name='__main__', "
    "alter_sys=True)",
]

# Property tests draw the same examples on every run of the suite, so that CI passes or fails
# on the code, never on the draw. New cases are looked for on purpose, with random draws and
# many more examples: ``HYPOTHESIS_PROFILE=explore pytest tests/reliability``; each case found
# becomes an ``@example`` of its test.
settings.register_profile("suite", derandomize=True, database=None, max_examples=200)
settings.register_profile("explore", derandomize=False, database=None, max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

# The suite (and the CLI subprocesses it starts) keeps reidkit's caches to itself, never the
# user's ~/.cache/reidkit.
os.environ["REIDKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="reidkit-test-cache-")
atexit.register(shutil.rmtree, os.environ["REIDKIT_CACHE_DIR"], ignore_errors=True)

SHARED = Path(__file__).resolve().parents[2] / "shared"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-identity, 3-camera synthetic Market-style dataset at 64x32 (built once per run)."""
    from reidkit.data import synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(root, ids=24, cameras=3, images_per_id=8, height=64, width=32, seed=3)
    return root


def backbone_from(model: ModelSpec) -> Backbone:
    """The backbone a spec's ``model`` section describes (the spec translated as train does)."""
    return build_backbone(
        model.backbone,
        last_stride=model.last_stride,
        input_size=(model.input_height, model.input_width),
        drop_path=model.drop_path,
    )


def model_from(model: ModelSpec, num_classes: int, optim: OptimSpec | None = None) -> ReidModel:
    """The untrained network a spec's ``model`` section describes."""
    return ReidModel(model.backbone, num_classes, **model_settings(model, optim or OptimSpec()))


def tiny_overrides(data: Path, results: Path) -> list[str]:
    """Overrides that make any spec train in seconds on 2 CPU cores."""
    num_ids = len({p.name.split("_")[0] for p in (data / "bounding_box_train").iterdir()})
    return [
        f"results_dir={results}",
        f"dataset.train_dataset_dir={data / 'bounding_box_train'}",
        f"dataset.test_dataset_dir={data / 'bounding_box_test'}",
        f"dataset.query_dataset_dir={data / 'query'}",
        f"dataset.num_classes={num_ids}",
        "dataset.batch_size=16",
        "dataset.num_instances=4",
        "dataset.num_workers=0",
        "dataset.val_batch_size=64",
        "model.backbone=resnet_18",
        "model.pretrain_choice=self",
        "model.input_height=64",
        "model.input_width=32",
        "model.feat_dim=64",
        "train.num_epochs=2",
        "train.optim.warmup_iters=1",
        "train.optim.lr_steps=[10]",
    ]


@pytest.fixture
def tiny_spec(synth_root: Path, tmp_path: Path) -> ExperimentSpec:
    return load_spec(None, tiny_overrides(synth_root, tmp_path / "results"))


def empty_spec(folder: Path) -> Path:
    """A spec file with no keys: everything comes from defaults and overrides."""
    path = folder / "empty_spec.yaml"
    path.write_text("{}\n")
    return path


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m reidkit`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "reidkit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


#: The type of the :func:`run_main` fixture: ``run_main("train", "-e", ...)``.
RunMain = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture[str]) -> RunMain:
    """``reidkit`` run by its own ``main`` in this process, captured as :func:`run_cli` captures
    a child: the same exit code, output and error lines, without the seconds a new Python
    spends importing torch (converting the error-line tests took the suite from 1,219 s to
    965 s on 2 cores). What a process boundary changes (signals, kills, a server's lifetime,
    what leaks into a crash) stays with :func:`run_cli`."""
    from reidkit.cli import main

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()  # what the test printed before is not the command's
        code = main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(["reidkit", *args], code, captured.out, captured.err)

    return run


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit code 2, a single ``error:`` line on stderr naming what is wrong, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="session")
def trained(
    synth_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ExperimentSpec, Path]:
    """A tiny model really trained for 3 epochs on the synthetic data, and its checkpoint."""
    from reidkit.actions.train import train

    results = tmp_path_factory.mktemp("trained")
    spec = load_spec(None, [*tiny_overrides(synth_root, results), "train.num_epochs=3"])
    return spec, train(spec).checkpoint
