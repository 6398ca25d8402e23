"""The experiment spec: typed TAO key tree, YAML loading and dotted overrides."""

from reidkit.config.spec import (
    ExperimentSpec,
    apply_overrides,
    load_spec,
    save_spec,
    spec_from_dict,
)

__all__ = ["ExperimentSpec", "apply_overrides", "load_spec", "save_spec", "spec_from_dict"]
