"""The search space of a study, read from the packaged train schema and checked up front.

TAO's AutoML takes its parameters, ranges, options and conditions from the train schema; so does
reidkit (:func:`reidkit.config.schema.packaged_schema`). Every user-fixable problem (a key that
does not exist or must not be tuned, an empty or inverted range, a range outside what the spec
accepts, options that break a ``math_cond``, a spec that can never score a trial) is raised as a
one-line :class:`~reidkit.errors.SpecError` here, before any trial trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import optuna

from reidkit.config.automl_meta import MULTIPLE_OF_DEPENDENCY, is_disabled
from reidkit.config.loading import all_keys
from reidkit.config.schema import packaged_schema, schema_node
from reidkit.config.spec import AutomlRangeOverride, ExperimentSpec
from reidkit.errors import SpecError, did_you_mean

_HYPER = "automl.automl_hyperparameters"
_OVERRIDE = "automl.automl_range_override"


@dataclass(frozen=True)
class SearchParam:
    """One tuned key: a numeric range or a list of options, and the condition it must keep."""

    key: str
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    options: tuple[Any, ...] = ()
    math_cond: str | None = None
    depends_on: str | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        """Draw this parameter for a trial (a retried trial gets its original value back)."""
        if self.kind == "float":
            return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        # optuna stores only scalar choices; list options (lr_steps) travel as their repr.
        encoded = {_encode(option): option for option in self.options}
        return encoded[trial.suggest_categorical(self.key, list(encoded))]

    def decode(self, stored: Any) -> Any:
        """The spec value of a value optuna stored for this parameter."""
        if self.kind != "categorical":
            return stored
        return {_encode(option): option for option in self.options}.get(stored, stored)


def check_automl_spec(
    spec: ExperimentSpec, schema: dict[str, Any] | None = None
) -> list[SearchParam]:
    """The study's search space; raises SpecError for anything that would break a trial."""
    if schema is None:
        schema = packaged_schema("train")
    automl = spec.automl
    if not (spec.dataset.query_dataset_dir and spec.dataset.test_dataset_dir):
        raise SpecError(
            "AutoML scores trials on the query/gallery split: set dataset.query_dataset_dir and "
            "dataset.test_dataset_dir"
        )
    if spec.train.validation_interval > automl.automl_max_epochs:
        raise SpecError(
            f"train.validation_interval {spec.train.validation_interval} exceeds "
            f"automl.automl_max_epochs {automl.automl_max_epochs}: no trial would ever be scored; "
            "lower it or raise the budget"
        )
    keys = _tuned_keys(spec, schema)
    overrides = _overrides_by_key(automl.automl_range_override, keys)
    params = [_param(key, _tunable_node(key, schema), overrides.get(key)) for key in keys]
    _check_conditions(params, spec)
    return params


def _tuned_keys(spec: ExperimentSpec, schema: dict[str, Any]) -> list[str]:
    keys = spec.automl.automl_hyperparameters
    if keys is None:
        return list(schema.get("automl_default_parameters", []))
    if not keys:
        raise SpecError(f"{_HYPER}: got []; list the keys to tune, or null for the schema defaults")
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise SpecError(f"{_HYPER}: '{repeated[0]}' is listed twice; list each key once")
    return list(keys)


def _overrides_by_key(
    entries: list[AutomlRangeOverride], keys: list[str]
) -> dict[str, AutomlRangeOverride]:
    out: dict[str, AutomlRangeOverride] = {}
    for entry in entries:
        if entry.parameter in out:
            raise SpecError(f"{_OVERRIDE}: '{entry.parameter}' appears twice; keep one entry")
        if entry.parameter not in keys:
            raise SpecError(
                f"{_OVERRIDE}: '{entry.parameter}' is not tuned; tuned keys: {', '.join(keys)}"
            )
        out[entry.parameter] = entry
    return out


def _tunable_node(key: str, schema: dict[str, Any]) -> dict[str, Any]:
    if key not in all_keys():
        raise SpecError(f"{_HYPER}: unknown key '{key}'{did_you_mean(key, all_keys())}")
    if is_disabled(key, schema.get("automl_disabled_parameters", [])):
        raise SpecError(
            f"{_HYPER}: '{key}' cannot be tuned (it is in the train schema's "
            "automl_disabled_parameters: paths, devices, seeds and budgets)"
        )
    node = schema_node(schema, key)
    if node is None:
        raise SpecError(f"{_HYPER}: '{key}' is not read by train; tune train keys only")
    if "properties" in node:
        raise SpecError(f"{_HYPER}: '{key}' is a section; name a key inside it")
    return node


def _param(key: str, node: dict[str, Any], override: AutomlRangeOverride | None) -> SearchParam:
    kind = _json_type(node)
    conditions = {"math_cond": node.get("math_cond"), "depends_on": node.get("depends_on")}
    options, low, high = _declared_range(key, node, kind, override)
    if options is not None:
        if not options:
            raise SpecError(f"{_OVERRIDE}: '{key}' valid_options is empty; list at least one")
        for option in options:
            _check_fits(key, node, option)
        return SearchParam(key, "categorical", options=tuple(options), **conditions)
    if low is None or high is None:
        raise SpecError(
            f"{_OVERRIDE}: '{key}' has no search range; give valid_min and valid_max"
            + (" or valid_options" if kind in ("integer", "number") else "")
        )
    if not low < high:
        raise SpecError(
            f"{_OVERRIDE}: '{key}' range [{low}, {high}] is empty or inverted; "
            "valid_min must be below valid_max"
        )
    if kind not in ("integer", "number"):
        raise SpecError(f"{_OVERRIDE}: '{key}' is a {kind}; give valid_options, not a range")
    if kind == "integer" and not (float(low).is_integer() and float(high).is_integer()):
        raise SpecError(f"{_OVERRIDE}: '{key}' is an integer; got range [{low}, {high}]")
    for end in (low, high):
        _check_fits(key, node, int(end) if kind == "integer" else end)
    log = bool(node.get("log_scale"))
    if log and low <= 0:
        raise SpecError(f"{_OVERRIDE}: '{key}' is searched on a log scale; valid_min must be > 0")
    return SearchParam(
        key, "int" if kind == "integer" else "float", low=low, high=high, log=log, **conditions
    )


def _declared_range(
    key: str, node: dict[str, Any], kind: str, override: AutomlRangeOverride | None
) -> tuple[list[Any] | None, float | None, float | None]:
    """(options, low, high): the override wins, then the schema's AutoML range, then its type."""
    if override is not None:
        if override.valid_options is not None:
            if override.valid_min is not None or override.valid_max is not None:
                raise SpecError(
                    f"{_OVERRIDE}: '{key}' gives both valid_options and a range; keep one"
                )
            return list(override.valid_options), None, None
        if override.valid_min is not None or override.valid_max is not None:
            low = override.valid_min if override.valid_min is not None else node.get("valid_min")
            high = override.valid_max if override.valid_max is not None else node.get("valid_max")
            return None, low, high
    if "valid_options" in node:
        return list(node["valid_options"]), None, None
    if "valid_min" in node or "valid_max" in node:
        return None, node.get("valid_min"), node.get("valid_max")
    if "enum" in node:
        return list(node["enum"]), None, None
    if kind == "boolean":
        return [True, False], None, None
    return None, None, None


def _json_type(node: dict[str, Any]) -> str:
    """The node's JSON type, ignoring the ``null`` of an optional key."""
    if "type" in node:
        return str(node["type"])
    types = [item.get("type") for item in node.get("anyOf", []) if item.get("type") != "null"]
    return str(types[0]) if len(types) == 1 else "value"


def _check_fits(key: str, node: dict[str, Any], value: Any) -> None:
    problem = _misfit(node, value)
    if problem:
        raise SpecError(
            f"{_OVERRIDE}: '{key}' search value {value!r} is refused by the spec: {problem}"
        )


def _misfit(node: dict[str, Any], value: Any) -> str | None:
    """Why the schema node refuses ``value`` (None when it accepts it)."""
    kind = _json_type(node)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    expected = {
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": is_number,
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
        "array": isinstance(value, list),
    }.get(kind, True)
    if not expected:
        return f"must be a {kind}"
    if "enum" in node and value not in node["enum"]:
        return f"allowed: {node['enum']}"
    if kind == "array":
        return next((p for p in (_misfit(node.get("items", {}), v) for v in value) if p), None)
    if is_number:
        bounds = (
            ("minimum", lambda v, b: v >= b, ">="),
            ("exclusiveMinimum", lambda v, b: v > b, ">"),
            ("maximum", lambda v, b: v <= b, "<="),
            ("exclusiveMaximum", lambda v, b: v < b, "<"),
        )
        for name, holds, sign in bounds:
            if name in node and not holds(value, node[name]):
                return f"must be {sign} {node[name]}"
    return None


def _check_conditions(params: list[SearchParam], spec: ExperimentSpec) -> None:
    """Every combination of options must keep every ``math_cond`` (no trial may be invalid)."""
    tuned = {param.key: param for param in params}
    base = spec.model_dump(mode="json")
    for param in params:
        if param.math_cond is None:
            continue
        if param.math_cond != MULTIPLE_OF_DEPENDENCY or param.depends_on is None:
            raise RuntimeError(f"unsupported math_cond {param.math_cond!r} on {param.key}")
        dependency = tuned.get(param.depends_on)
        if dependency is not None and dependency.kind != "categorical":
            raise SpecError(
                f"{_OVERRIDE}: '{param.depends_on}' must be given as valid_options because "
                f"'{param.key}' must stay a multiple of it"
            )
        divisors = dependency.options if dependency else (_lookup(base, param.depends_on),)
        if param.kind != "categorical":
            raise SpecError(
                f"{_OVERRIDE}: '{param.key}' must stay a multiple of '{param.depends_on}'; "
                "give valid_options, not a range"
            )
        for option in param.options:
            for divisor in divisors:
                if option % divisor:
                    raise SpecError(
                        f"{_OVERRIDE}: '{param.key}' option {option} is not a multiple of "
                        f"'{param.depends_on}' {divisor} (math_cond '{param.math_cond}')"
                    )


def _lookup(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def _encode(option: Any) -> Any:
    return repr(option) if isinstance(option, list) else option
