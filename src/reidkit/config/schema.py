"""JSON schemas, a manifest and spec templates, generated from the pydantic spec models.

TAO ships, per action, ``schemas/<action>.schema.json`` (types, defaults, bounds, enums,
descriptions; the train schema also carries the AutoML metadata) and
``references/spec_template_<action>.yaml`` built from the schema's defaults; its tools and its
AutoML read those files, not the code. reidkit generates the same files from
:mod:`reidkit.config.spec` and :mod:`reidkit.config.automl_meta` so they can never drift by hand,
ships them inside the package (``reidkit/assets``), and a test fails when the packaged copy is
stale. Regenerate with ``reidkit schema --out src/reidkit/assets``.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from reidkit.config.automl_meta import (
    AUTOML_DEFAULT_PARAMETERS,
    AUTOML_DISABLED_PARAMETERS,
    AUTOML_FIELDS,
)
from reidkit.config.loading import read_yaml_mapping, spec_from_dict
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import ReidkitError, SpecError
from reidkit.outputs import atomic_open, make_folder

ACTIONS = ("train", "evaluate", "inference", "export", "gallery", "serve", "associate", "adapt")

_COMMON = ("results_dir", "encryption_key", "model_name")
# The top-level keys each action reads. Every action accepts the whole TAO file (one spec drives
# them all), so the sections it ignores stay allowed, described as read by the others.
ACTION_KEYS: dict[str, tuple[str, ...]] = {
    "train": (*_COMMON, "model", "dataset", "train", "re_ranking", "automl", "automl_policy"),
    "evaluate": (*_COMMON, "model", "dataset", "evaluate", "re_ranking"),
    "inference": (*_COMMON, "model", "dataset", "inference", "re_ranking"),
    "export": (*_COMMON, "model", "export"),
    "gallery": (*_COMMON, "model", "gallery", "re_ranking"),
    "serve": (*_COMMON, "serve"),
    "associate": (*_COMMON, "model", "dataset", "associate"),
    "adapt": (*_COMMON, "model", "dataset", "train", "adapt"),
}

# Where the generated files ship; a module attribute so tests can point it at a copy.
PACKAGED: Traversable = resources.files("reidkit") / "assets"

_DROPPED = ("title", "$defs")  # pydantic's per-field titles only repeat the key names


def schema_relpath(action: str) -> str:
    return f"schemas/{action}.schema.json"


def template_relpath(action: str) -> str:
    return f"references/spec_template_{action}.yaml"


def build_schema(action: str) -> dict[str, Any]:
    """The JSON schema of one action: the sections it reads in full, with defaults everywhere."""
    _check_action(action)
    full = ExperimentSpec.model_json_schema()
    defaults = ExperimentSpec().model_dump(mode="json")
    read = ACTION_KEYS[action]
    properties: dict[str, Any] = {}
    for key, node in full["properties"].items():
        if key in read:
            properties[key] = _complete(_inline(node, full["$defs"]), defaults[key])
        else:
            users = ", ".join(a for a in ACTIONS if key in ACTION_KEYS[a])
            properties[key] = {
                "type": "object",
                "description": f"Read by {users}; accepted and ignored by {action}.",
            }
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"reidkit {action} experiment spec",
        "description": f"{(ExperimentSpec.__doc__ or '').strip()} Keys read by {action}.",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "default": {key: defaults[key] for key in read},
    }
    if action == "train":
        _add_automl_metadata(schema)
    return schema


def write_schemas(out: Path) -> list[Path]:
    """Write every action's schema and template plus ``schemas/manifest.json`` under ``out``."""
    out = Path(out)
    written: list[Path] = []
    manifest: dict[str, Any] = {"generator": "reidkit.config.schema", "actions": {}}
    for action in ACTIONS:
        schema = build_schema(action)
        written.append(_write(out / schema_relpath(action), _json_text(schema)))
        written.append(_write(out / template_relpath(action), _template_text(action, schema)))
        manifest["actions"][action] = {
            "schema": schema_relpath(action),
            "template": template_relpath(action),
            "keys": list(ACTION_KEYS[action]),
            "automl": action == "train",
        }
    written.append(_write(out / "schemas" / "manifest.json", _json_text(manifest)))
    return written


def packaged_schema(action: str) -> dict[str, Any]:
    """The schema shipped in the package (what AutoML searches); raises when missing or broken."""
    return _load_packaged(schema_relpath(action), json.loads)


def packaged_template(action: str) -> dict[str, Any]:
    """The spec template shipped in the package; raises when missing or broken."""
    return _load_packaged(template_relpath(action), yaml.safe_load)


def schema_node(schema: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The schema node of a dotted key, or None when the schema has no such key."""
    node: dict[str, Any] = schema
    for part in key.split("."):
        child = node.get("properties", {}).get(part)
        if child is None:
            return None
        node = child
    return node


def validate_spec_file(path: str | Path, action: str = "train") -> list[str]:
    """Check a YAML spec for ``action`` without running anything; one line per problem.

    Each top-level key is validated on its own so that one run reports a problem per section
    (pydantic's messages, shaped by :func:`reidkit.config.loading.spec_from_dict`). An empty
    list means the spec is valid. The AutoML search space is checked by the validate action,
    which sits above both this module and :mod:`reidkit.automl`.
    """
    _check_action(action)
    path = Path(path)
    try:
        data = read_yaml_mapping(path)
    except SpecError as error:
        return [str(error)]
    problems: list[str] = []
    for key, value in data.items():
        try:
            spec_from_dict({key: value}, source=str(path))
        except SpecError as error:
            problems.append(str(error))
    if problems:
        return problems
    try:
        spec_from_dict(data, source=str(path))
    except ReidkitError as error:
        problems.append(str(error))
    return problems


def _check_action(action: str) -> None:
    if action not in ACTIONS:
        raise SpecError(f"action '{action}' has no schema; allowed: {', '.join(ACTIONS)}")


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace ``$ref``s by their definitions so every node is readable where it stands."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs)
    out = {k: _inline(v, defs) for k, v in node.items() if k not in _DROPPED}
    if "const" in out and "enum" not in out:
        out["enum"] = [out["const"]]  # TAO tools read choices from "enum" only
    return out


def _complete(node: dict[str, Any], default: Any) -> dict[str, Any]:
    """Put the model's resolved default on every node (pydantic omits ``default_factory`` ones)."""
    node["default"] = default
    if isinstance(default, dict):
        for key, child in node.get("properties", {}).items():
            _complete(child, default[key])
    return node


def _add_automl_metadata(schema: dict[str, Any]) -> None:
    schema["automl_default_parameters"] = list(AUTOML_DEFAULT_PARAMETERS)
    schema["automl_disabled_parameters"] = list(AUTOML_DISABLED_PARAMETERS)
    schema["popular"] = [key for key, meta in AUTOML_FIELDS.items() if meta.popular]
    for key, node in _leaves(schema):
        if key.split(".")[0] in ACTION_KEYS["train"]:
            node["automl_enabled"] = False
    for key, meta in AUTOML_FIELDS.items():
        node = schema_node(schema, key)
        if node is None:
            raise RuntimeError(f"automl_meta names '{key}', which the spec does not have")
        node.update(meta.schema_entries())


def _leaves(node: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for key, child in node.get("properties", {}).items():
        dotted = f"{prefix}{key}"
        if "properties" in child:
            out.extend(_leaves(child, dotted + "."))
        else:
            out.append((dotted, child))
    return out


def _json_text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def _template_text(action: str, schema: dict[str, Any]) -> str:
    header = (
        f"# reidkit {action} spec template: every key {action} reads, at its default.\n"
        f"# Generated from the spec models with `reidkit schema`; do not edit by hand.\n"
    )
    return header + yaml.safe_dump(schema["default"], sort_keys=False)


def _write(path: Path, text: str) -> Path:
    """Write ``path`` whole or not at all, replacing (never writing through) a link there: a
    template linked to the user's own spec must not overwrite that spec."""
    make_folder(path.parent)
    with atomic_open(path) as handle:
        handle.write(text)
    return path


def _load_packaged(relpath: str, parse: Any) -> dict[str, Any]:
    target = PACKAGED / relpath
    if not target.is_file():
        raise ReidkitError(f"packaged file '{relpath}' is missing; reinstall reidkit")
    try:
        data = parse(target.read_text())
    except (ValueError, yaml.YAMLError):
        raise ReidkitError(f"packaged file '{relpath}' does not parse; reinstall reidkit") from None
    if not isinstance(data, dict):
        raise ReidkitError(f"packaged file '{relpath}' does not hold a mapping; reinstall reidkit")
    return data
