"""Algorithms map to optuna pieces; per-trial seeds keep draws distinct and repeatable."""

from __future__ import annotations

import optuna
import pytest

from reidkit.automl.algorithms import PerTrialSeedSampler, make_pruner, make_sampler
from reidkit.config.loading import load_spec


@pytest.mark.parametrize(
    ("algorithm", "pruner"),
    [
        ("bayesian", optuna.pruners.MedianPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("asha", optuna.pruners.SuccessiveHalvingPruner),
        ("random", optuna.pruners.NopPruner),
    ],
)
def test_each_algorithm_has_its_pruner(algorithm: str, pruner: type) -> None:
    spec = load_spec(None, [f"automl.automl_algorithm={algorithm}"])
    assert isinstance(make_pruner(spec), pruner)
    assert isinstance(make_sampler(spec), PerTrialSeedSampler)


def _draws(study: optuna.Study, n: int) -> list[float]:
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=n)
    return [t.params["x"] for t in study.trials]


@pytest.mark.parametrize("algorithm", ["random", "bayesian"])
def test_resumed_and_parallel_studies_do_not_replay_draws(algorithm: str) -> None:
    spec = load_spec(None, [f"automl.automl_algorithm={algorithm}", "automl.seed=7"])
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(storage=storage, study_name="s", sampler=make_sampler(spec))
    _draws(first, 3)
    # A rerun (or a second worker) opens the same study with a freshly seeded sampler.
    again = optuna.load_study(storage=storage, study_name="s", sampler=make_sampler(spec))
    draws = _draws(again, 3)
    assert len(set(draws)) == 6
    # The same seed gives the same study from scratch: results stay reproducible.
    fresh = optuna.create_study(sampler=make_sampler(spec))
    assert _draws(fresh, 6) == draws


def test_a_seed_at_the_top_of_its_range_wraps_round_for_later_trials() -> None:
    """Trial n is seeded with ``seed + n``; past numpy's 2**32 - 1 that was optuna's traceback
    ("Seed must be between 0 and 2**32 - 1") from the second trial on."""
    spec = load_spec(None, ["automl.automl_algorithm=random", "train.seed=4294967295"])
    study = optuna.create_study(sampler=make_sampler(spec))
    assert len(set(_draws(study, 3))) == 3
