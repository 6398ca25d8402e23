"""Reading a spec: YAML files, dotted overrides, and one-line errors for everything wrong.

Overrides look like ``train.optim.base_lr=1e-3`` or ``train.optim.lr_steps=[40,70]``; the value
is parsed as YAML so numbers, booleans and lists need no extra quoting. Every problem becomes a
:class:`~reidkit.errors.SpecError` naming the key, the value given and what is allowed, with the
nearest valid key for a typo.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from reidkit.config.spec import ExperimentSpec
from reidkit.errors import SpecError, did_you_mean
from reidkit.oserrors import special_file_kind
from reidkit.outputs import atomic_open
from reidkit.redaction import redact_record
from reidkit.yamlsafe import load_yaml_file, load_yaml_text

# A dotted spec key: identifiers joined by dots (what every field name is).
_DOTTED_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def load_spec(
    path: str | os.PathLike[str] | None, overrides: list[str] | None = None
) -> ExperimentSpec:
    """Read a YAML spec (or start from defaults when ``path`` is None) and apply dotted overrides.

    Overrides look like ``train.optim.base_lr=1e-3`` or ``train.optim.lr_steps=[40,70]``; the
    value is parsed as YAML so numbers, booleans and lists need no extra quoting.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(Path(path))
    for item in overrides or []:
        key, value = _parse_override(item)
        _check_key_path(key)
        _set_dotted(data, key, value)
    return spec_from_dict(data, source=str(path) if path else "spec")


def spec_from_dict(data: dict[str, Any], source: str = "spec") -> ExperimentSpec:
    """Validate a plain dict as a spec, turning pydantic's report into one clear line."""
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: {_describe(exc)}") from None


def apply_overrides(spec: ExperimentSpec, overrides: dict[str, Any]) -> ExperimentSpec:
    """A copy of ``spec`` with dotted keys replaced (used by AutoML trials and tests).

    Keys the user never set stay unset in the copy, so the copy still tells an explicit
    setting from a default (:func:`reidkit.data.preprocessing.spec_settings` relies on it).
    """
    data = spec.model_dump(mode="json", exclude_unset=True)
    for key, value in overrides.items():
        _check_key_path(key)
        _set_dotted(data, key, value)
    return spec_from_dict(data)


def save_spec(spec: ExperimentSpec, path: Path) -> None:
    """Write the resolved spec as YAML, atomically, so a crash never leaves half a file.

    A literal ``encryption_key`` and URL credentials are written as ``***``; ``env:`` and
    ``file:`` references stay, so a spec written with them can be run again as it is.
    """
    with atomic_open(path) as handle:
        yaml.safe_dump(redact_record(spec.model_dump(mode="json")), handle, sort_keys=False)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML spec file; problems name the file (and the line)."""
    if not path.is_file():
        raise SpecError(f"spec file '{path}' {_not_a_file(path)}; pass a YAML file with -e")
    data = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(
            f"spec file '{path}' must hold a mapping of keys at its top level, "
            f"not a {type(data).__name__}"
        )
    return data


def _not_a_file(path: Path) -> str:
    """What stands at a spec path that is no regular file: "does not exist" for a folder or a
    device sent the user looking for a file that is there. Only ``stat`` looks at it."""
    if path.is_dir():
        return "is a folder, not a file"
    kind = special_file_kind(path)
    return f"is {kind}, not a regular file" if kind else "does not exist"


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep:
        raise SpecError(f"override {item!r} must look like section.key=value")
    if not _DOTTED_KEY.fullmatch(key.strip()):  # quoted without its value: it may be a secret
        raise SpecError(f"override key {key.strip()!r} is not a spec key; write section.key=value")
    try:
        value = load_yaml_text(raw, source=f"override '{key}'") if raw.strip() else None
    except SpecError:
        value = raw  # not YAML: the plain string, which validation then judges
    return key.strip(), value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def _fields_of(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """Field name -> nested section model (or None for a leaf)."""
    out: dict[str, type[BaseModel] | None] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        nested = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
        out[name] = nested
    return out


def all_keys(model: type[BaseModel] = ExperimentSpec, prefix: str = "") -> list[str]:
    """Every dotted key of the spec tree, leaves and sections."""
    keys: list[str] = []
    for name, nested in _fields_of(model).items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        if nested is not None:
            keys.extend(all_keys(nested, dotted + "."))
    return keys


def _check_key_path(key: str) -> None:
    """Refuse an override of a key that does not exist, suggesting the nearest valid one."""
    model: type[BaseModel] | None = ExperimentSpec
    for depth, part in enumerate(key.split(".")):
        fields = _fields_of(model) if model is not None else {}
        if part not in fields:
            prefix = ".".join(key.split(".")[:depth])
            raise SpecError(_unknown_key_message(key, prefix, model))
        model = fields[part]


def _unknown_key_message(key: str, prefix: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return f"unknown key '{key}': '{prefix}' is a value, not a section"
    where = f"section '{prefix}'" if prefix else "the spec's top level"
    return f"unknown key '{key}' in {where}{did_you_mean(key, all_keys())}"


def _describe(exc: ValidationError) -> str:
    """One line for the first validation problem: key, value given, what is allowed."""
    error = exc.errors()[0]
    location = ".".join(str(p) for p in error["loc"] if not isinstance(p, int))
    if error["type"] == "extra_forbidden":
        return f"unknown key '{location}'{did_you_mean(location, all_keys())}"
    given = redact_record(error.get("input"), location)  # a secret field is quoted as ***
    allowed = _allowed(error)
    message = error["msg"].removeprefix("Value error, ")
    label = f"key '{location}'" if location else "spec"
    if error["type"] == "value_error" and isinstance(given, dict):
        return f"{label}: {message}"
    return f"{label}: got {given!r}; {allowed or message}"


def _allowed(error: dict[str, Any]) -> str:
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind == "literal_error":
        return f"allowed: {ctx.get('expected')}"
    bounds = {
        "greater_than": "must be > {gt}",
        "greater_than_equal": "must be >= {ge}",
        "less_than": "must be < {lt}",
        "less_than_equal": "must be <= {le}",
        "too_short": "needs at least {min_length} items",
        "too_long": "allows at most {max_length} items",
    }
    if kind in bounds:
        return bounds[kind].format(**ctx)
    return ""
