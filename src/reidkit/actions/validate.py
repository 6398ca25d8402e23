"""``reidkit validate``: check a spec file for an action without running anything (no torch)."""

from __future__ import annotations

from pathlib import Path

from reidkit.config.loading import read_yaml_mapping, spec_from_dict
from reidkit.config.schema import validate_spec_file
from reidkit.errors import ReidkitError, SpecError


def validate(path: str | Path, action: str = "train") -> None:
    """Raise the first problem of ``path`` for ``action`` as a one-line :class:`SpecError`.

    For train with AutoML enabled, the search space is checked too (against the packaged train
    schema), as the train action would before its first trial.
    """
    problems = validate_spec_file(path, action)
    if problems:
        raise SpecError(problems[0])
    spec = spec_from_dict(read_yaml_mapping(Path(path)), source=str(path))
    if action == "train" and spec.automl.automl_enabled:
        from reidkit.automl.space import check_automl_spec  # optuna only when AutoML is on

        try:
            check_automl_spec(spec)
        except ReidkitError as error:
            raise SpecError(f"{path}: {error}") from None
