"""The train action for real: actual steps, outputs, resume after a kill, encryption, errors."""

from __future__ import annotations

import copy
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from reidkit.actions.fit import run_training
from reidkit.actions.models import load_checked_embedder
from reidkit.actions.train import train
from reidkit.config.loading import apply_overrides
from reidkit.config.spec import ExperimentSpec
from reidkit.engine.module import ReidModule, build_model
from reidkit.errors import CheckpointError
from reidkit.models.card import model_weights, read_card
from reidkit.models.checkpoint_file import load_checkpoint
from reidkit.models.digest import weights_digest
from reidkit.models.restore import restore_model
from tests.conftest import (
    REPO,
    SHARED,
    RunMain,
    assert_one_line_error,
    empty_spec,
    run_cli,
    tiny_overrides,
)


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_train_writes_checkpoints_metrics_and_status(tiny_spec: ExperimentSpec) -> None:
    spec = apply_overrides(tiny_spec, {"train.num_epochs": 3, "train.checkpoint_interval": 2})
    result = train(spec)
    folder = result.results_dir
    names = sorted(p.name for p in folder.glob("*.pth"))
    assert names[-1] == "reid_model_latest.pth"
    assert [n[:10] for n in names[:-1]] == ["model_002_", "model_003_"]
    rows = _rows(folder)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["loss"]) > 0 for r in rows)
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "SUCCESS" and status["epoch"] == 3
    assert 0 <= status["kpi"]["cmc_rank_1"] <= 100 and 0 <= status["kpi"]["mAP"] <= 100
    assert (folder / "experiment.yaml").is_file()
    model, card = restore_model(result.checkpoint)
    images = torch.rand(2, 3, 64, 32)
    assert model(images).shape == (2, card.embedding_dim)


def test_training_learns_the_synthetic_identities(tiny_spec: ExperimentSpec) -> None:
    """Retrieval on unseen identities improves clearly over a dozen short epochs."""
    overrides = {
        "train.num_epochs": 12,
        "train.optim.base_lr": 1e-3,
        "train.optim.warmup_iters": 0,
        "train.validation_interval": 1,
    }
    result = train(apply_overrides(tiny_spec, overrides))
    mean_ap = [float(r["mAP"]) for r in _rows(result.results_dir)]
    assert max(mean_ap[-3:]) > 1.5 * mean_ap[0], mean_ap
    assert result.kpi["cmc_rank_1"] > 2 * 100 / 12, result.kpi  # chance is 1 in 12 identities


class _OneStep(Callback):
    """Keeps copies of the module before and after the first training step, and its batch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if batch_idx == 0:
            self.batch = [t.clone() for t in batch]
            self.before = copy.deepcopy(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if batch_idx == 0:
            self.after = copy.deepcopy(pl_module)
            self.lr = trainer.optimizers[0].param_groups[0]["lr"]


def _one_step(spec: ExperimentSpec) -> _OneStep:
    step = _OneStep()
    run_training(apply_overrides(spec, {"train.num_epochs": 1}), callbacks=[step])
    return step


PLAIN_SGD = {
    "train.optim.name": "SGD",
    "train.optim.momentum": 0.0,
    "train.optim.weight_decay": 0.0,
    "train.optim.weight_decay_bias": 0.0,
    "train.optim.warmup_iters": 0,
    "train.optim.base_lr": 0.01,
}


def test_center_optimiser_steps_the_centers_by_the_unweighted_gradient(
    tiny_spec: ExperimentSpec,
) -> None:
    """One real step of the engine: centers move by center_lr x d(center loss)/d(centers),
    i.e. the 1/center_loss_weight rescale undoes the loss weight (Bag of Tricks)."""
    weight, center_lr = 0.25, 0.3
    spec = apply_overrides(
        tiny_spec,
        {
            **PLAIN_SGD,
            "model.metric_loss_type": "triplet_center",
            "model.id_loss_type": "arcface",
            "train.optim.center_loss_weight": weight,
            "train.optim.center_lr": center_lr,
        },
    )
    step = _one_step(spec)
    images, labels, _ = step.batch
    reference = step.before.train()
    loss, _ = reference.criterion(reference.model(images, labels), labels)
    loss.backward()
    (before,) = reference.criterion.center_parameters()
    (after,) = step.after.criterion.center_parameters()
    expected = before.detach() - center_lr * before.grad / weight
    torch.testing.assert_close(after.detach(), expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(after, before)
    # The arcface head trained in the same step.
    assert not torch.allclose(step.after.model.classifier.weight, reference.model.classifier.weight)


def test_grad_clip_bounds_the_step(tiny_spec: ExperimentSpec) -> None:
    """One real step with plain SGD equals lr x the gradient clipped to grad_clip, computed here
    independently from a copy of the module taken before the step."""
    clip = 1e-2
    step = _one_step(apply_overrides(tiny_spec, {**PLAIN_SGD, "train.grad_clip": clip}))
    images, labels, _ = step.batch
    reference = step.before.train()
    loss, _ = reference.criterion(reference.model(images, labels), labels)
    loss.backward()
    params = [p for p in reference.model.parameters() if p.grad is not None]
    norm = torch.cat([p.grad.flatten() for p in params]).double().norm().item()
    assert norm > 10 * clip  # so clipping really acts
    scale = step.lr * clip / (norm + 1e-6)
    after = dict(step.after.model.named_parameters())
    for name, param in reference.model.named_parameters():
        if param.grad is not None:
            expected = param.detach() - scale * param.grad
            torch.testing.assert_close(after[name].detach(), expected, rtol=0, atol=1e-7)


def test_optimiser_groups_give_biases_their_lr_and_decay(tiny_spec: ExperimentSpec) -> None:
    spec = apply_overrides(
        tiny_spec,
        {
            "train.optim.base_lr": 0.002,
            "train.optim.bias_lr_factor": 3.0,
            "train.optim.weight_decay": 0.01,
            "train.optim.weight_decay_bias": 0.0,
        },
    )
    module = ReidModule(spec, 12)
    optimizer = module.configure_optimizers()[0]
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, param in module.model.named_parameters():
        if not param.requires_grad:
            continue
        group = group_of[id(param)]
        bias = name.endswith("bias")
        assert group["lr"] == pytest.approx(0.006 if bias else 0.002), name
        assert group["weight_decay"] == (0.0 if bias else 0.01), name


def test_encrypted_checkpoints_need_the_key(tiny_spec: ExperimentSpec) -> None:
    spec = apply_overrides(tiny_spec, {"encryption_key": "s3cret", "train.num_epochs": 1})
    result = train(spec)
    restore_model(result.checkpoint, "s3cret")
    with pytest.raises(CheckpointError, match="is encrypted"):
        restore_model(result.checkpoint, None)
    with pytest.raises(CheckpointError, match="encryption_key is wrong"):
        restore_model(result.checkpoint, "guess")


def test_checkpoint_that_does_not_fit_the_spec(tiny_spec: ExperimentSpec) -> None:
    result = train(apply_overrides(tiny_spec, {"train.num_epochs": 1}))
    other = apply_overrides(tiny_spec, {"model.backbone": "resnet_34"})
    with pytest.raises(
        CheckpointError, match=r"model.backbone=resnet_18 but the spec has resnet_34"
    ):
        load_checked_embedder(other, result.checkpoint, "evaluate.checkpoint")


def test_killed_run_resumes_without_losing_an_epoch(
    synth_root: Path, tmp_path: Path, run_main: RunMain
) -> None:
    results = tmp_path / "results"
    args = [
        "train",
        "-e",
        str(empty_spec(tmp_path)),
        *tiny_overrides(synth_root, results),
        "train.num_epochs=6",
    ]
    folder = results / "train"
    process = subprocess.Popen(
        [sys.executable, "-m", "reidkit", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not list(folder.glob("model_002_*.pth")):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "training never reached epoch 2"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = [int(r["epoch"]) for r in _rows(folder)]
    assert 2 <= done_before[-1] < 6, done_before

    resumed = run_main(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    epochs = [int(r["epoch"]) for r in _rows(folder)]
    assert epochs == [1, 2, 3, 4, 5, 6]
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "SUCCESS" and status["epoch"] == 6
    checkpoint = load_checkpoint(folder / "reid_model_latest.pth", None)
    assert checkpoint["epoch"] == 5  # Lightning's 0-based index of the last epoch


def test_num_classes_mismatch_is_one_line(
    synth_root: Path, tmp_path: Path, run_main: RunMain
) -> None:
    overrides = [*tiny_overrides(synth_root, tmp_path), "dataset.num_classes=751"]
    result = run_main("train", "-e", str(empty_spec(tmp_path)), *overrides)
    assert_one_line_error(result, "dataset.num_classes", "751", "dataset.num_classes=12")


def test_bad_override_is_one_line(tmp_path: Path, run_main: RunMain) -> None:
    result = run_main("train", "-e", str(empty_spec(tmp_path)), "train.optim.base_lrr=0.1")
    assert_one_line_error(result, "train.optim.base_lrr", "train.optim.base_lr")


TAO_SPEC = SHARED / "reference/tao_spec_cuhk03_resnet.yaml"
CUHK03 = SHARED / "data/cuhk03_detected"


@pytest.mark.skipif(
    not (TAO_SPEC.is_file() and CUHK03.is_dir()), reason="shared CUHK03 data not present"
)
def test_tao_reference_spec_refuses_imagenet_download_offline(
    tmp_path: Path, run_main: RunMain
) -> None:
    result = run_main("train", "-e", str(TAO_SPEC), f"results_dir={tmp_path}")
    assert_one_line_error(result, "model.pretrain_choice", "pretrained_model_path")


@pytest.mark.slow
@pytest.mark.skipif(
    not (TAO_SPEC.is_file() and CUHK03.is_dir()), reason="shared CUHK03 data not present"
)
def test_tao_reference_spec_trains_on_cuhk03(tmp_path: Path) -> None:
    """The TAO ResNet-50 recipe as is (from scratch offline), two steps, encrypted checkpoint."""
    result = run_cli(
        "train", "-e", str(TAO_SPEC), f"results_dir={tmp_path}", "model.pretrain_choice=self",
        "train.num_epochs=1", "train.steps_per_epoch=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    latest = tmp_path / "train" / "reid_model_latest.pth"
    with pytest.raises(CheckpointError, match="is encrypted"):
        load_checkpoint(latest, None)
    card = load_checkpoint(latest, "nvidia_tao")["reidkit"]
    assert card["backbone"] == "resnet_50" and card["num_classes"] == 743
    assert "743" in result.stderr  # the split table names the train identities


def test_encrypted_checkpoint_starts_a_new_training(tiny_spec: ExperimentSpec) -> None:
    """model.pretrained_model_path may be a sealed reidkit checkpoint: the spec's key opens it."""
    spec = apply_overrides(tiny_spec, {"encryption_key": "s3cret", "train.num_epochs": 1})
    result = train(spec)
    trained, card = restore_model(result.checkpoint, "s3cret")
    start = apply_overrides(spec, {"model.pretrained_model_path": str(result.checkpoint)})
    model = build_model(start, card.num_classes)
    for (name, value), expected in zip(
        model.state_dict().items(), trained.state_dict().values(), strict=True
    ):
        assert torch.equal(value, expected), name


class LiveWeights(Callback):
    """The live (trained, not averaged) parameters after every training step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: object, module: ReidModule, *args: object) -> None:
        self.steps.append({n: p.detach().clone() for n, p in module.named_parameters()})


def test_ema_checkpoint_holds_the_moving_average_of_the_steps(tiny_spec: ExperimentSpec) -> None:
    """``train.ema_decay``: the checkpoint's weights are the EMA of every step's weights,
    computed here independently; the live weights are kept beside them for resuming, and
    evaluate/export (``restore_model``) get the average."""
    decay = 0.6
    overrides = {"train.num_epochs": 2, "train.steps_per_epoch": 3, "train.ema_decay": decay}
    live = LiveWeights()
    result = run_training(apply_overrides(tiny_spec, overrides), callbacks=[live])
    assert len(live.steps) == 6
    expected = dict(live.steps[0])
    for weights in live.steps[1:]:
        expected = {n: decay * expected[n] + (1 - decay) * weights[n] for n in expected}
    checkpoint = load_checkpoint(result.checkpoint, None)
    for name, value in expected.items():
        torch.testing.assert_close(checkpoint["state_dict"][name], value)
        torch.testing.assert_close(checkpoint["current_model_state"][name], live.steps[-1][name])
    model, card = restore_model(result.checkpoint)
    name = "backbone." + next(n for n, _ in model.backbone.named_parameters())
    torch.testing.assert_close(model.state_dict()[name], expected["model." + name])
    assert not torch.equal(expected["model." + name], live.steps[-1]["model." + name])
    # The card names the averaged weights the file holds, not the live ones of the last step.
    assert read_card(checkpoint, "ema").weights_digest == card.weights_digest
    assert card.weights_digest == weights_digest(model_weights(checkpoint))


def test_a_softmax_batch_larger_than_the_train_set_is_one_line(
    synth_root: Path, tmp_path: Path, run_main: RunMain
) -> None:
    """The random-batch sampler drops a last partial batch: one larger than the whole train set
    left no batch at all, and the run said "trained 0 epochs" with exit 0 and no checkpoint."""
    overrides = [
        *tiny_overrides(synth_root, tmp_path),
        "dataset.sampler=softmax",
        "dataset.batch_size=4096",
    ]
    result = run_main("train", "-e", str(empty_spec(tmp_path)), *overrides)
    assert_one_line_error(result, "dataset.batch_size", "4096", "train images")
    assert json.loads((tmp_path / "train" / "status.json").read_text())["status"] == "FAILURE"


def _one_short_epoch(synth_root: Path, tmp_path: Path, run_main: RunMain) -> tuple[Path, list[str]]:
    """Train one short epoch; returns the run's folder and the arguments that resume it for a
    second epoch."""
    args = [
        "train",
        "-e",
        str(empty_spec(tmp_path)),
        *tiny_overrides(synth_root, tmp_path / "results"),
        "train.num_epochs=1",
        "train.steps_per_epoch=2",
    ]
    assert run_main(*args).returncode == 0
    again = [a.replace("train.num_epochs=1", "train.num_epochs=2") for a in args]
    return tmp_path / "results" / "train", again


def test_a_damaged_latest_checkpoint_names_the_older_one_to_resume_from(
    synth_root: Path, tmp_path: Path, run_main: RunMain
) -> None:
    """A rerun resumes from ``reid_model_latest.pth`` on its own; when that file is cut short
    the refusal said only "copy it again, or point at a checkpoint": the periodic checkpoint
    beside it, from which the run can go on, went unnamed."""
    folder, again = _one_short_epoch(synth_root, tmp_path, run_main)
    latest = folder / "reid_model_latest.pth"
    latest.write_bytes(latest.read_bytes()[:100_000])
    (periodic,) = folder.glob("model_001_*.pth")
    kept = periodic.read_bytes()

    result = run_main(*again)

    assert_one_line_error(
        result,
        "is truncated",
        f"train.resume_training_checkpoint_path={periodic}",
    )
    assert periodic.read_bytes() == kept
    resumed = run_main(*again, f"train.resume_training_checkpoint_path={periodic}")
    assert resumed.returncode == 0, resumed.stderr
    assert [int(r["epoch"]) for r in _rows(folder)] == [1, 2]


def test_a_resume_with_another_learning_rate_is_refused(
    synth_root: Path, tmp_path: Path, run_main: RunMain
) -> None:
    """Resuming restores the optimiser's own learning rates and weight decays: a rerun with
    another ``train.optim.base_lr`` trained on at the old one, exit 0, while its
    experiment.yaml recorded the new one."""
    folder, again = _one_short_epoch(synth_root, tmp_path, run_main)
    rows = _rows(folder)

    result = run_main(*again, "train.optim.base_lr=0.1")

    assert_one_line_error(result, "train.optim", "0.1", "model.pretrained_model_path")
    assert _rows(folder) == rows
    assert run_main(*again).returncode == 0  # the same settings resume


def test_a_resume_with_no_epochs_left_is_refused(
    synth_root: Path, tmp_path: Path, run_main: RunMain
) -> None:
    """A checkpoint that already holds ``train.num_epochs`` epochs or more left Lightning
    nothing to do: a rerun with ``train.num_epochs=1`` after two epochs exited 0 reporting
    "epoch 2 of 1", and its experiment.yaml (saying 1 epoch) replaced the run's own."""
    folder, again = _one_short_epoch(synth_root, tmp_path, run_main)
    assert run_main(*again).returncode == 0  # two epochs now
    records = {name: (folder / name).read_bytes() for name in ("experiment.yaml", "status.json")}
    once = [a.replace("train.num_epochs=2", "train.num_epochs=1") for a in again]

    result = run_main(*once)

    assert_one_line_error(
        result,
        "has already trained 2 epochs and train.num_epochs is 1",
        "set train.num_epochs above 2",
        f"evaluate.checkpoint={folder / 'reid_model_latest.pth'}",
    )
    assert {name: (folder / name).read_bytes() for name in records} == records
    assert [int(r["epoch"]) for r in _rows(folder)] == [1, 2]
    # Rerunning the finished run unchanged stays a success that trains nothing ...
    assert run_main(*again).returncode == 0
    assert [int(r["epoch"]) for r in _rows(folder)] == [1, 2]
    # ... but a finished checkpoint from elsewhere would leave the new folder without a model.
    other = tmp_path / "other"
    elsewhere = [f"results_dir={other}" if a.startswith("results_dir=") else a for a in again]
    latest = folder / "reid_model_latest.pth"
    result = run_main(*elsewhere, f"train.resume_training_checkpoint_path={latest}")
    assert_one_line_error(result, "has already trained 2 epochs and train.num_epochs is 2")
    assert not list((other / "train").glob("*.pth"))
