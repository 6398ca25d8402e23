"""The epoch learning-rate schedules of the TAO recipes."""

from __future__ import annotations

import pytest

from reidkit.config.spec import OptimSpec
from reidkit.engine.schedule import lr_factor


def test_linear_warmup_then_steps() -> None:
    factor = lr_factor(
        OptimSpec(warmup_iters=10, warmup_factor=0.01, lr_steps=[40, 70], gamma=0.1), 120
    )
    assert factor(0) == pytest.approx(0.01)
    assert factor(5) == pytest.approx(0.01 * 0.5 + 0.5)
    assert factor(10) == pytest.approx(1.0)
    assert factor(39) == pytest.approx(1.0)
    assert factor(40) == pytest.approx(0.1)
    assert factor(70) == pytest.approx(0.01)


def test_constant_warmup() -> None:
    factor = lr_factor(OptimSpec(warmup_method="constant", warmup_iters=3, warmup_factor=0.1), 120)
    assert [factor(e) for e in (0, 2, 3)] == pytest.approx([0.1, 0.1, 1.0])


def test_cosine_decays_to_zero_after_warmup() -> None:
    factor = lr_factor(OptimSpec(warmup_method="cosine", warmup_epochs=5, warmup_factor=0.01), 25)
    assert factor(0) == pytest.approx(0.01)
    assert factor(5) == pytest.approx(1.0)
    assert factor(15) == pytest.approx(0.5)
    assert factor(24) < 0.01
    values = [factor(e) for e in range(5, 25)]
    assert values == sorted(values, reverse=True)


def test_warmup_ramps_per_iteration_in_fractional_epochs() -> None:
    factor = lr_factor(OptimSpec(warmup_iters=2, warmup_factor=0.01, lr_steps=[40]), 120, 100)
    assert factor(0) == pytest.approx(0.01)
    assert factor(100) == pytest.approx(0.01 * 0.5 + 0.5)  # halfway through 2 epochs
    assert factor(150) == pytest.approx(0.01 * 0.25 + 0.75)
    assert factor(200) == pytest.approx(1.0)
    assert factor(3999) == pytest.approx(1.0) and factor(4000) == pytest.approx(0.1)


@pytest.mark.parametrize("method", ["linear", "constant", "cosine"])
@pytest.mark.parametrize("num_epochs", [1, 2, 4, 10, 21, 60, 120])
def test_every_run_length_reaches_base_lr_then_decays(method: str, num_epochs: int) -> None:
    """TAO's default epoch keys (10-epoch warm-up, steps at 40/70, cosine warm-up 20)."""
    steps_per_epoch = 20
    factor = lr_factor(OptimSpec(warmup_method=method), num_epochs, steps_per_epoch)
    values = [factor(s) for s in range(num_epochs * steps_per_epoch)]
    peak = values.index(max(values))
    assert max(values) == pytest.approx(1.0)
    assert peak <= 0.25 * len(values)  # warm-up takes at most a quarter of the run
    assert values[-1] <= 0.1  # and the run ends decayed
    after_peak = values[peak:]
    assert after_peak == sorted(after_peak, reverse=True)


def test_a_schedule_that_fits_its_run_is_tao_s() -> None:
    """The 120-epoch Market recipe: warm-up 10, steps at 40 and 70, exactly as written."""
    factor = lr_factor(OptimSpec(), 120, 10)
    assert factor(99) < 1.0 and factor(100) == pytest.approx(1.0)
    assert factor(399) == pytest.approx(1.0) and factor(400) == pytest.approx(0.1)
    assert factor(699) == pytest.approx(0.1) and factor(700) == pytest.approx(0.01)


def test_cosine_delay_holds_base_lr_then_decays_over_the_rest() -> None:
    """fast-reid's flat-then-cosine: warm-up 2, flat until 2 + 6 = 8, cosine over 8..16."""
    optim = OptimSpec(warmup_method="cosine", warmup_epochs=2, cosine_delay_epochs=6)
    factor = lr_factor(optim, 16)
    assert factor(1) == pytest.approx(0.01 * 0.5 + 0.5)
    assert [factor(e) for e in (2, 5, 8)] == pytest.approx([1.0, 1.0, 1.0])
    assert factor(12) == pytest.approx(0.5)  # halfway through the decay
    assert factor(16) == pytest.approx(0.0)


def test_cosine_delay_leaves_the_last_quarter_to_the_decay() -> None:
    optim = OptimSpec(warmup_method="cosine", warmup_epochs=0, cosine_delay_epochs=50)
    factor = lr_factor(optim, 12, steps_per_epoch=10)
    assert factor(89) == pytest.approx(1.0)  # flat until 3/4 of the 12 epochs
    assert factor(90) == pytest.approx(1.0) and factor(91) < 1.0
    assert factor(105) == pytest.approx(0.5)
