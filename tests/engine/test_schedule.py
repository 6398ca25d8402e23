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
