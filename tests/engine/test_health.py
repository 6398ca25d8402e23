"""Numerical health: a real Lightning loop stopped by NaN losses, weights and BN statistics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from reidkit.engine.health import NumericalHealth, all_finite
from reidkit.errors import TrainingDivergedError


class _Net(LightningModule):
    """A BN + linear model trained manually, like ReidModule, with faults injected on demand.

    ``losses`` maps a global batch number to a forced loss value (the real loss is scaled to
    it, keeping the graph); ``poison`` maps a batch number to a tensor name to fill with NaN
    after that batch's optimizer step.
    """

    def __init__(
        self, losses: dict[int, float] | None = None, poison: dict[int, str] | None = None
    ):
        super().__init__()
        self.automatic_optimization = False
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        self.losses = losses or {}
        self.poison = poison or {}
        self.batches = 0

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.batches += 1
        (x,) = batch
        base = self.net(x).pow(2).mean() + 1.0
        loss = base / base.detach() * self.losses.get(self.batches, 1.0)
        parts = {"id": loss.detach(), "triplet": torch.tensor(0.5)}
        self.last_loss = (loss.detach(), parts)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        if self.batches in self.poison:
            dict(self.named_buffers(), **dict(self.named_parameters()))[
                self.poison[self.batches]
            ].data.fill_(math.nan)
        return loss.detach()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _SaveEachEpoch(Callback):
    """Stands in for RunRecorder: writes a checkpoint file at each epoch end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        torch.save(pl_module.state_dict(), self.folder / "latest.pth")
        (self.folder / f"epoch_{trainer.current_epoch + 1}").touch()


def _fit(tmp_path: Path, module: _Net, health: NumericalHealth, epochs: int = 3) -> None:
    data = DataLoader(TensorDataset(torch.randn(40, 4)), batch_size=4)  # 10 batches an epoch
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=[health, _SaveEachEpoch(tmp_path)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)


def _finite_model(path: Path) -> bool:
    return all(
        bool(torch.isfinite(t).all()) for t in torch.load(path).values() if t.is_floating_point()
    )


def test_nan_loss_stops_at_once_naming_step_and_term(tmp_path: Path) -> None:
    module = _Net(losses={14: math.nan})
    with pytest.raises(TrainingDivergedError) as info:
        _fit(tmp_path, module, NumericalHealth())
    message = str(info.value)
    assert "epoch 2, batch 4" in message and "loss term 'id' is nan" in message
    assert "'triplet'" not in message and "\n" not in message
    assert module.batches == 14  # nothing after the bad batch ran
    assert sorted(p.name for p in tmp_path.glob("epoch_*")) == ["epoch_1"]
    assert _finite_model(tmp_path / "latest.pth")
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())  # no NaN step taken


def test_non_finite_weight_after_a_step_is_named(tmp_path: Path) -> None:
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, batch 3: weight 'net.0.weight'"):
        _fit(tmp_path, _Net(poison={3: "net.0.weight"}), NumericalHealth())
    assert not (tmp_path / "latest.pth").exists()


def test_non_finite_batchnorm_statistic_stops_before_the_epoch_checkpoint(tmp_path: Path) -> None:
    health = NumericalHealth()
    with pytest.raises(TrainingDivergedError, match=r"statistic 'net.1.running_var'"):
        _fit(tmp_path, _Net(poison={20: "net.1.running_var"}), health)
    assert sorted(p.name for p in tmp_path.glob("epoch_*")) == ["epoch_1"]
    assert _finite_model(tmp_path / "latest.pth")


def test_divergence_guard_is_opt_in(tmp_path: Path) -> None:
    exploding = {25: 4.6e9}
    (tmp_path / "off").mkdir()
    _fit(tmp_path / "off", _Net(losses=exploding), NumericalHealth())
    assert (tmp_path / "off" / "epoch_3").exists()  # without the guard a finite blow-up passes
    with pytest.raises(TrainingDivergedError) as info:
        _fit(tmp_path, _Net(losses=exploding), NumericalHealth(divergence_factor=10))
    assert "epoch 3, batch 5: the loss 4.6e+09 is above 10 x its running median 1" in str(
        info.value
    )


def test_all_finite_matches_an_element_wise_reference() -> None:
    rng = torch.Generator().manual_seed(0)
    tensors = [torch.randn(5, 3, generator=rng), torch.randn(7, generator=rng).double()]
    assert all_finite(tensors)
    for bad in (math.nan, math.inf, -math.inf):
        broken = [t.clone() for t in tensors]
        broken[1][3] = bad
        assert not all_finite(broken)
    assert all_finite([])


def test_huge_finite_weights_are_not_a_false_alarm(tmp_path: Path) -> None:
    """A norm overflows for values near 1e30; the element-wise recheck clears them."""

    class _Huge(Callback):  # after the last step, so no forward pass overflows on them
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == 1:
                pl_module.net[0].bias.data.fill_(1e30)

    module = _Net()
    trainer = Trainer(
        accelerator="cpu", max_epochs=1, callbacks=[_Huge(), NumericalHealth()], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4))
    assert not all_finite([module.net[0].bias])  # the alarm that the recheck cleared
    assert module.batches == 2
