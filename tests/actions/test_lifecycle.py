"""One lifecycle for every action: status.json says RUNNING, then SUCCESS or FAILURE with the
one-line reason on every way out (a user error, a crash, Ctrl-C); and the house rules the
layout promises (actions on their own floor, no torch for the light verbs)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from lightning.pytorch import Callback

from reidkit.actions import automl as automl_action
from reidkit.actions import evaluate as evaluate_action
from reidkit.actions import export as export_action
from reidkit.actions import infer as infer_action
from reidkit.actions.train import run_training
from reidkit.config.loading import apply_overrides
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import CheckpointError, ReidkitError
from tests.conftest import REPO, SHARED

SRC = REPO / "src" / "reidkit"

# action -> (its function, the name inside its module that does the real work)
ACTIONS: dict[str, tuple[Callable[[ExperimentSpec], object], object, str]] = {
    "evaluate": (evaluate_action.evaluate, evaluate_action, "embed_splits"),
    "inference": (infer_action.infer, infer_action, "embed_splits"),
    "export": (export_action.export, export_action, "write_verified"),
    "automl": (automl_action.automl, automl_action, "run_study"),
}


def _status(spec: ExperimentSpec, action: str) -> dict:
    return json.loads((spec.action_dir(action) / "status.json").read_text())


def _ready(spec: ExperimentSpec, checkpoint: Path, tmp_path: Path) -> ExperimentSpec:
    return apply_overrides(
        spec,
        {
            "results_dir": str(tmp_path / "results"),
            "evaluate.checkpoint": str(checkpoint),
            "inference.checkpoint": str(checkpoint),
            "export.checkpoint": str(checkpoint),
            "automl.automl_hyperparameters": ["dataset.re_prob"],
            "automl.automl_max_recommendations": 1,
        },
    )


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(
    ("raised", "reason"),
    [
        (ReidkitError("gallery folder 'x' is unreadable; fix it"), "gallery folder 'x'"),
        (RuntimeError("CUDA error: device-side assert\nsecond line"), "CUDA error"),
        (KeyboardInterrupt(), "interrupted; rerun the same command to resume"),
    ],
    ids=["user-error", "crash", "ctrl-c"],
)
def test_every_action_records_failure_with_its_reason(
    trained: tuple[ExperimentSpec, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
    raised: BaseException,
    reason: str,
) -> None:
    function, module, worker = ACTIONS[action]
    spec = _ready(*trained, tmp_path)

    def fail(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(module, worker, fail)
    with pytest.raises(type(raised)):
        function(spec)
    status = _status(spec, action)
    assert status["status"] == "FAILURE" and status["action"] == action
    assert status["message"].startswith(reason) and "\n" not in status["message"]
    assert (spec.action_dir(action) / "experiment.yaml").is_file()


class _Raise(Callback):
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def on_train_batch_start(self, *args: object) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("raised", "reason"),
    [
        (RuntimeError("loss exploded"), "loss exploded"),
        (KeyboardInterrupt(), "interrupted; rerun the same command to resume"),
    ],
    ids=["crash", "ctrl-c"],
)
def test_train_records_failure_on_a_crash_and_ctrl_c(
    tiny_spec: ExperimentSpec, raised: BaseException, reason: str
) -> None:
    """Lightning turns Ctrl-C into SystemExit after its own shutdown: still a FAILURE."""
    with pytest.raises((type(raised), SystemExit)):
        run_training(tiny_spec, callbacks=[_Raise(raised)])
    status = _status(tiny_spec, "train")
    assert status["status"] == "FAILURE" and status["message"].startswith(reason)


def test_user_errors_are_failures_too(trained: tuple[ExperimentSpec, Path], tmp_path: Path) -> None:
    spec = _ready(*trained, tmp_path)
    missing = str(tmp_path / "absent.pth")
    for action, key in (("evaluate", "evaluate.checkpoint"), ("export", "export.checkpoint")):
        broken = apply_overrides(spec, {key: missing})
        with pytest.raises(CheckpointError):
            ACTIONS[action][0](broken)
        assert _status(broken, action)["status"] == "FAILURE"
        assert "absent.pth" in _status(broken, action)["message"]
    wrong = apply_overrides(spec, {"dataset.num_classes": 5})
    with pytest.raises(ReidkitError):
        run_training(wrong)
    assert _status(wrong, "train")["message"].startswith("dataset.num_classes")


def test_light_verbs_never_import_torch(tmp_path: Path) -> None:
    """--version, validate and schema answer in a fraction of a second: no torch, no Lightning."""
    tao_spec = SHARED / "reference" / "tao_spec_cuhk03_resnet.yaml"
    spec = tao_spec if tao_spec.is_file() else tmp_path / "empty.yaml"
    if not spec.is_file():
        spec.write_text("{}\n")
    code = (
        "import sys\n"
        "from reidkit.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        f"assert main(['validate', '-e', {str(spec)!r}]) == 0\n"
        f"assert main(['schema', '--out', {str(tmp_path / 'schemas')!r}]) == 0\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'onnxruntime') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("reidkit.")}


# Which floors each library folder may import (besides itself and the ground floor).
GROUND = {
    "reidkit.errors", "reidkit.outputs", "reidkit.registry", "reidkit",
    # Reliability utilities that depend on nothing but the ground floor.
    "reidkit.interrupts", "reidkit.oserrors", "reidkit.redaction", "reidkit.runlock",
    "reidkit.yamlsafe",
}  # fmt: skip
MAY_IMPORT = {
    "config": set(),
    "data": {"config"},
    "models": {"config"},
    "losses": {"models"},
    "evaluation": {"config", "data", "models"},
    "engine": {"config", "data", "models", "losses", "evaluation"},
    "export": {"config", "data", "models"},
    "automl": {"config"},
    "serve": {"data", "export", "gallery"},
    "adaptation": {"config", "data", "models", "losses", "engine", "evaluation", "export"},
}


@pytest.mark.parametrize("floor", MAY_IMPORT)
def test_libraries_only_look_down(floor: str) -> None:
    files = (
        [SRC / f"{floor}.py"] if (SRC / f"{floor}.py").is_file() else (SRC / floor).rglob("*.py")
    )
    allowed = {f"reidkit.{name}" for name in MAY_IMPORT[floor] | {floor}} | GROUND
    for path in files:
        for name in _imports(path):
            top = ".".join(name.split(".")[:2])
            assert top in allowed, f"{path.relative_to(SRC)} imports {name}"
