"""The experiment spec: the typed TAO key tree (:mod:`.spec`) and reading it (:mod:`.loading`)."""

from reidkit.config.loading import apply_overrides, load_spec, save_spec, spec_from_dict
from reidkit.config.spec import ExperimentSpec

__all__ = ["ExperimentSpec", "apply_overrides", "load_spec", "save_spec", "spec_from_dict"]
