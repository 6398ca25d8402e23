"""Generated schemas and templates: fresh, complete, TAO-shaped; spec files validated by them."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import yaml

from reidkit.actions.validate import validate
from reidkit.config import schema
from reidkit.config.automl_meta import (
    AUTOML_DEFAULT_PARAMETERS,
    AUTOML_DISABLED_PARAMETERS,
    AUTOML_FIELDS,
    is_disabled,
)
from reidkit.config.loading import all_keys, load_spec
from reidkit.config.schema import (
    ACTIONS,
    build_schema,
    schema_node,
    template_relpath,
    validate_spec_file,
    write_schemas,
)
from reidkit.config.spec import AutomlSpec
from reidkit.engine.recorder import VALIDATION_KEYS
from reidkit.errors import SpecError
from tests.conftest import SHARED, RunMain, assert_one_line_error

TAO_SPEC = SHARED / "reference" / "tao_spec_cuhk03_resnet.yaml"
PACKAGED = Path(str(schema.PACKAGED))


def test_packaged_schemas_and_templates_are_fresh(tmp_path: Path) -> None:
    """Regenerate into tmp_path: the packaged copy must match byte for byte."""
    written = write_schemas(tmp_path)
    relative = sorted(str(p.relative_to(tmp_path)) for p in written)
    expected = sorted(
        [f"schemas/{a}.schema.json" for a in ACTIONS]
        + [f"references/spec_template_{a}.yaml" for a in ACTIONS]
        + ["schemas/manifest.json"]
    )
    assert relative == expected
    stale = [r for r in relative if (PACKAGED / r).read_bytes() != (tmp_path / r).read_bytes()]
    assert not stale, f"stale packaged files {stale}: run `reidkit schema --out src/reidkit/assets`"
    manifest = json.loads((tmp_path / "schemas" / "manifest.json").read_text())
    assert set(manifest["actions"]) == set(ACTIONS)
    for entry in manifest["actions"].values():
        assert (tmp_path / entry["schema"]).is_file() and (tmp_path / entry["template"]).is_file()


def test_schema_has_types_defaults_bounds_enums_descriptions() -> None:
    train = build_schema("train")
    assert train["additionalProperties"] is False
    base_lr = schema_node(train, "train.optim.base_lr")
    assert base_lr["type"] == "number" and base_lr["default"] == 3.5e-4
    assert base_lr["exclusiveMinimum"] == 0.0 and base_lr["maximum"] == 10.0
    assert base_lr["description"]
    backbone = schema_node(train, "model.backbone")
    assert "resnet_50" in backbone["enum"] and backbone["default"] == "resnet_50"
    assert schema_node(train, "model.input_channels")["enum"] == [3]
    # default_factory defaults are resolved too (pydantic leaves them out).
    assert schema_node(train, "train.optim.lr_steps")["default"] == [40, 70]
    nested = schema_node(train, "automl.automl_range_override")
    assert "valid_min" in nested["items"]["properties"]
    assert schema_node(train, "dataset")["default"]["batch_size"] == 64
    for action in ACTIONS:
        action_schema = build_schema(action)
        assert action in action_schema["properties"] or action == "train"
        # Every action accepts the whole TAO file; what it does not read is marked so.
        assert set(action_schema["properties"]) == set(build_schema("train")["properties"])
    export = build_schema("export")
    assert "properties" not in export["properties"]["dataset"]
    assert "ignored by export" in export["properties"]["dataset"]["description"]


def test_template_holds_the_defaults_and_loads() -> None:
    for action in ACTIONS:
        text = (PACKAGED / f"references/spec_template_{action}.yaml").read_text()
        data = yaml.safe_load(text)
        assert data == build_schema(action)["default"]
        load_spec(PACKAGED / f"references/spec_template_{action}.yaml")


def test_train_schema_carries_the_automl_metadata() -> None:
    train = build_schema("train")
    assert train["automl_default_parameters"] == list(AUTOML_DEFAULT_PARAMETERS)
    assert train["automl_disabled_parameters"] == list(AUTOML_DISABLED_PARAMETERS)
    assert "train.optim.base_lr" in train["popular"]
    batch = schema_node(train, "dataset.batch_size")
    assert batch["automl_enabled"] is True
    assert batch["valid_options"] == [32, 64, 128] and len(batch["option_weights"]) == 3
    assert batch["math_cond"] == "% depends_on == 0"
    assert batch["depends_on"] == "dataset.num_instances"
    lr = schema_node(train, "train.optim.base_lr")
    assert lr["valid_min"] < 3.5e-4 < lr["valid_max"] and lr["log_scale"] is True
    assert schema_node(train, "train.seed")["automl_enabled"] is False
    assert "automl_default_parameters" not in build_schema("evaluate")


def test_automl_metadata_is_consistent_with_the_spec() -> None:
    keys = set(all_keys())
    assert set(AUTOML_FIELDS) <= keys
    assert set(AUTOML_DEFAULT_PARAMETERS) <= set(AUTOML_FIELDS)
    assert all(item in keys for item in AUTOML_DISABLED_PARAMETERS)
    assert not [key for key in AUTOML_FIELDS if is_disabled(key)]
    assert is_disabled("automl.metric") and not is_disabled("train.optim.base_lr")
    # The metric a study optimises must be one that validation logs.
    metrics = typing.get_args(AutomlSpec.model_fields["metric"].annotation)
    assert set(metrics) <= set(VALIDATION_KEYS)


def test_tao_reference_spec_validates_for_every_action() -> None:
    for action in ACTIONS:
        assert validate_spec_file(TAO_SPEC, action) == []


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda d: d["train"]["optim"].update(base_lr="fast"), ["train.optim.base_lr", "'fast'"]),
        (lambda d: d["model"].update(bakbone="resnet_50"), ["model.bakbone", "model.backbone"]),
        (lambda d: d["dataset"].update(re_prob=1.5), ["dataset.re_prob", "1.5", "<= 1.0"]),
        (lambda d: d["model"].update(backbone="vgg"), ["model.backbone", "'vgg'", "allowed"]),
        (lambda d: d.update(automl={"metric": "loss"}), ["automl.metric", "'loss'", "cmc_rank_1"]),
        (lambda d: d.update(automl_policy="on"), ["automl_policy", "'on'", "auto"]),
        (
            lambda d: d.update(automl={"automl_enabled": True, "automl_hyperparameters": ["x.y"]}),
            ["automl.automl_hyperparameters", "'x.y'"],
        ),
    ],
)
def test_broken_copies_of_the_tao_spec_are_refused(
    tmp_path: Path, edit: typing.Callable[[dict], None], needles: list[str]
) -> None:
    data = yaml.safe_load(TAO_SPEC.read_text())
    edit(data)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as error:
        validate(broken, "train")  # the validate action: the file, then the AutoML space
    message = str(error.value)
    assert all(needle in message for needle in needles), message
    assert "\n" not in message


def test_every_broken_section_is_reported_and_bad_files_are_lines(tmp_path: Path) -> None:
    data = yaml.safe_load(TAO_SPEC.read_text())
    data["dataset"]["batch_size"] = "many"
    data["train"]["num_epochs"] = 0
    data["typo"] = 1
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    problems = validate_spec_file(spec, "evaluate")
    assert len(problems) == 3 and any("unknown key 'typo'" in p for p in problems)
    spec.write_text("model: [unclosed\n")
    assert "not valid YAML at line" in validate_spec_file(spec)[0]
    assert "does not exist" in validate_spec_file(tmp_path / "missing.yaml")[0]
    with pytest.raises(SpecError, match=r"action 'deploy'.*allowed: train, evaluate"):
        validate_spec_file(TAO_SPEC, "deploy")


def test_schema_with_an_empty_out_is_one_line(
    tmp_path: Path, run_main: RunMain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out "$DIR"`` with DIR unset: before, 17 files went into the current folder, reported
    as "wrote 17 files under ", exit 0."""
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_main("schema", "--out", ""), "--out", "empty")
    assert list(tmp_path.iterdir()) == []


def test_schema_replaces_a_linked_template_and_never_writes_through_it(tmp_path: Path) -> None:
    """A template a user linked to their own spec: before, the link was followed and the
    user's spec overwritten with the template."""
    mine = tmp_path / "my_spec.yaml"
    mine.write_text("train: {num_epochs: 7}\n")
    template = tmp_path / "out" / template_relpath("train")
    template.parent.mkdir(parents=True)
    template.symlink_to(mine)

    write_schemas(tmp_path / "out")

    assert mine.read_text() == "train: {num_epochs: 7}\n"
    assert not template.is_symlink() and "num_epochs" in template.read_text()
