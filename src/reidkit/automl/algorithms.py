"""``automl.automl_algorithm`` -> an optuna sampler and pruner.

The epoch is the resource: trials report their validation metric each validated epoch, so the
pruners stop weak trials early. ``bayesian`` is TPE with median pruning, ``hyperband`` and
``asha`` pair TPE with successive halving (Hyperband runs several brackets of it, ASHA one),
``random`` is plain random search without pruning, the baseline the others must beat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from reidkit.config.spec import ExperimentSpec


class PerTrialSeedSampler(BaseSampler):
    """Delegates each trial to a sampler seeded with ``seed + trial number``.

    One seeded sampler per process would replay the same random stream in every process: a
    resumed study and every parallel worker would propose the configurations already tried.
    Seeding per trial number keeps a study reproducible and every trial's draw distinct.
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self._make = make
        self._seed = seed
        self._current: tuple[int, BaseSampler] | None = None

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if self._current is None or self._current[0] != trial.number:
            # samplers take seeds below 2**32 (numpy's); a seed near the top wraps round
            self._current = (trial.number, self._make((self._seed + trial.number) % 2**32))
        return self._current[1]

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._for(trial).after_trial(study, trial, state, values)


def make_sampler(spec: ExperimentSpec) -> BaseSampler:
    seed = spec.automl.seed if spec.automl.seed is not None else spec.train.seed
    if spec.automl.automl_algorithm == "random":
        return PerTrialSeedSampler(lambda s: RandomSampler(seed=s), seed)
    # constant_liar: parallel workers treat running trials as bad so they spread out.
    return PerTrialSeedSampler(lambda s: TPESampler(seed=s, constant_liar=True), seed)


def make_pruner(spec: ExperimentSpec) -> optuna.pruners.BasePruner:
    automl = spec.automl
    # Metrics arrive every validation_interval epochs: the first rung cannot come sooner.
    first = spec.train.validation_interval
    if automl.automl_algorithm == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=first,
            max_resource=automl.automl_max_epochs,
            reduction_factor=automl.automl_reduction_factor,
        )
    if automl.automl_algorithm == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=first, reduction_factor=automl.automl_reduction_factor
        )
    if automl.automl_algorithm == "bayesian":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    return optuna.pruners.NopPruner()
