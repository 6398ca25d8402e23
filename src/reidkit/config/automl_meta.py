"""TAO's AutoML metadata for the train spec: which keys are tuned, over what, under which rules.

TAO publishes this metadata inside the generated train schema (``automl_default_parameters``,
``automl_disabled_parameters`` and per-field ``valid_min`` / ``valid_options`` / ``math_cond``
...), and its AutoML reads it back from there. reidkit does the same: this module is the one
place the metadata is written by hand, :mod:`reidkit.config.schema` merges it into the schema
generated from the pydantic models, and :mod:`reidkit.automl` searches what the packaged schema
says. The spec models stay free of search concerns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# ``math_cond`` forms the AutoML understands. TAO writes conditions as short strings relative to
# ``depends_on``; reidkit needs exactly one: the P x K sampler needs whole identities per batch.
MULTIPLE_OF_DEPENDENCY = "% depends_on == 0"


@dataclass(frozen=True)
class AutomlField:
    """How AutoML may tune one spec key.

    ``valid_min`` / ``valid_max`` are the *search* range (narrower than what the spec accepts,
    which the schema's ``minimum`` / ``maximum`` say). ``option_weights`` are TAO's prior over
    ``valid_options``; they are published for TAO tools, while optuna's samplers learn their
    own preference from the trials.
    """

    valid_min: float | None = None
    valid_max: float | None = None
    valid_options: tuple[Any, ...] | None = None
    option_weights: tuple[float, ...] | None = None
    log_scale: bool = False
    math_cond: str | None = None
    depends_on: str | None = None
    popular: bool = False

    def schema_entries(self) -> dict[str, Any]:
        """The keys this field adds to its node of the train schema (unset ones omitted)."""
        entries: dict[str, Any] = {"automl_enabled": True}
        for name in ("valid_min", "valid_max", "math_cond", "depends_on"):
            value = getattr(self, name)
            if value is not None:
                entries[name] = value
        if self.valid_options is not None:
            entries["valid_options"] = list(self.valid_options)
        if self.option_weights is not None:
            entries["option_weights"] = list(self.option_weights)
        if self.log_scale:
            entries["log_scale"] = True
        if self.popular:
            entries["popular"] = True
        return entries


# Ranges centre on TAO's Bag-of-Tricks defaults; learning rate and weight decay span a decade
# either side on a log scale because their effect is multiplicative.
AUTOML_FIELDS: dict[str, AutomlField] = {
    "train.optim.base_lr": AutomlField(
        valid_min=3.5e-5, valid_max=3.5e-3, log_scale=True, popular=True
    ),
    "train.optim.weight_decay": AutomlField(valid_min=5e-5, valid_max=5e-3, log_scale=True),
    "train.optim.warmup_iters": AutomlField(valid_min=0, valid_max=10),
    "train.optim.triplet_loss_margin": AutomlField(valid_min=0.1, valid_max=0.6, popular=True),
    # Absolute epochs: they only make sense once the trial budget is close to the real run
    # length, so lr_steps is tunable but not searched by default.
    "train.optim.lr_steps": AutomlField(valid_options=([40, 70], [30, 60], [20, 40], [10, 20])),
    "train.optim.gamma": AutomlField(valid_min=0.05, valid_max=0.5, log_scale=True),
    "model.label_smooth": AutomlField(valid_options=(True, False), option_weights=(0.8, 0.2)),
    "model.dropout_rate": AutomlField(valid_min=0.0, valid_max=0.5),
    "dataset.re_prob": AutomlField(valid_min=0.0, valid_max=0.8),
    "dataset.prob": AutomlField(valid_min=0.0, valid_max=0.8),
    "dataset.num_instances": AutomlField(
        valid_options=(2, 4, 8), option_weights=(0.2, 0.6, 0.2), popular=True
    ),
    "dataset.batch_size": AutomlField(
        valid_options=(32, 64, 128),
        option_weights=(0.3, 0.5, 0.2),
        math_cond=MULTIPLE_OF_DEPENDENCY,
        depends_on="dataset.num_instances",
        popular=True,
    ),
}

# What ReID results hinge on: step size, regularisation, warm-up, the triplet margin, label
# smoothing, random erasing and the P x K batch shape.
AUTOML_DEFAULT_PARAMETERS: tuple[str, ...] = (
    "train.optim.base_lr",
    "train.optim.weight_decay",
    "train.optim.warmup_iters",
    "train.optim.triplet_loss_margin",
    "model.label_smooth",
    "dataset.re_prob",
    "dataset.num_instances",
    "dataset.batch_size",
)

# Paths, devices, seeds, bookkeeping and data facts: changing them changes where or how a run
# happens, or what data it sees, never how well the model learns. ``train.num_epochs`` belongs
# to AutoML itself (the trial budget). A section disables every key below it.
AUTOML_DISABLED_PARAMETERS: tuple[str, ...] = (
    "results_dir",
    "encryption_key",
    "model_name",
    "model.pretrained_model_path",
    "model.input_channels",
    "dataset.train_dataset_dir",
    "dataset.test_dataset_dir",
    "dataset.query_dataset_dir",
    "dataset.extract_dir",
    "dataset.device_cache",
    "dataset.num_classes",
    "dataset.num_workers",
    "dataset.val_batch_size",
    "dataset.pixel_mean",
    "dataset.pixel_std",
    "train.accelerator",
    "train.num_gpus",
    "train.num_processes",
    "train.gpu_ids",
    "train.num_nodes",
    "train.seed",
    "train.num_epochs",
    "train.checkpoint_interval",
    "train.validation_interval",
    "train.resume_training_checkpoint_path",
    "train.results_dir",
    "train.precision",
    "train.steps_per_epoch",
    "re_ranking",
    "automl",
    "automl_policy",
)


def is_disabled(
    key: str, disabled: tuple[str, ...] | list[str] = AUTOML_DISABLED_PARAMETERS
) -> bool:
    """True when ``key`` or one of its parent sections is listed as never tunable."""
    return any(key == item or key.startswith(item + ".") for item in disabled)
