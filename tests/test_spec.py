"""The spec: TAO files load unchanged; bad keys, types and ranges fail with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reidkit.config.loading import apply_overrides, load_spec, save_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import SpecError
from tests.conftest import RunMain, assert_one_line_error

TAO_SPEC = Path(__file__).resolve().parents[2] / "shared/reference/tao_spec_cuhk03_resnet.yaml"


def test_defaults_follow_tao() -> None:
    spec = ExperimentSpec()
    assert spec.model.backbone == "resnet_50"
    assert (spec.model.input_height, spec.model.input_width) == (256, 128)
    assert spec.dataset.num_classes == 751
    assert spec.train.optim.base_lr == pytest.approx(3.5e-4)
    assert spec.train.optim.lr_steps == [40, 70]
    assert spec.re_ranking.k1 == 20 and spec.re_ranking.k2 == 6


@pytest.mark.skipif(not TAO_SPEC.is_file(), reason="shared TAO reference spec not present")
def test_tao_reference_spec_loads_unchanged() -> None:
    spec = load_spec(TAO_SPEC)
    assert spec.dataset.num_classes == 743
    assert spec.train.num_epochs == 120
    assert spec.re_ranking.re_ranking is True
    assert spec.encryption_key == "nvidia_tao"


def test_dotted_overrides_parse_yaml_values(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("model:\n  backbone: resnet_18\n")
    spec = load_spec(
        path,
        [
            "train.num_epochs=30",
            "train.optim.lr_steps=[20,25]",
            "dataset.batch_size=32",
            "model.input_height=384",
        ],
    )
    assert spec.model.backbone == "resnet_18"
    assert spec.train.num_epochs == 30
    assert spec.train.optim.lr_steps == [20, 25]
    assert spec.dataset.batch_size == 32
    assert spec.model.input_height == 384


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.optim.base_lrr=1e-3", "did you mean 'train.optim.base_lr'"),
        ("modle.backbone=resnet_18", "did you mean 'model.backbone'"),
        ("model.backbone=resnet_51", "allowed: 'resnet_18'"),
        ("dataset.prob=1.5", "must be <= 1"),
        ("train.num_epochs=many", "'train.num_epochs': got 'many'"),
        ("dataset.batch_size=30", "multiple of num_instances 4"),
        ("train.optim.name=Adamm", "not a torch.optim optimizer"),
        ("train.optim.lr_steps=[70,40]", "strictly increasing"),
        ("model.backbone.depth=50", "'model.backbone' is a value"),
        ("train.num_epochs", "must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(None, [override])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_key_in_file_is_refused_with_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"train": {"optim": {"warmup_iter": 3}}}))
    with pytest.raises(
        SpecError, match=r"unknown key 'train.optim.warmup_iter'.*'train.optim.warmup_iters'"
    ):
        load_spec(path)


def test_broken_yaml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec(path)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_a_spec_path_that_is_a_folder_or_a_device_says_what_it_is(
    tmp_path: Path, run_main: RunMain
) -> None:
    """Before, "does not exist": the user looked for a missing file that was there."""
    folder = tmp_path / "spec.yaml"
    folder.mkdir()
    for action in (["validate"], ["train"]):
        result = run_main(*action, "-e", str(folder))
        assert_one_line_error(result, str(folder), "is a folder, not a file")
    assert_one_line_error(run_main("validate", "-e", "/dev/null"), "is a character device")


def test_save_round_trip_and_apply_overrides(tmp_path: Path) -> None:
    spec = apply_overrides(ExperimentSpec(), {"model.feat_dim": 128, "train.seed": 7})
    save_spec(spec, tmp_path / "experiment.yaml")
    again = load_spec(tmp_path / "experiment.yaml")
    assert again == spec
    assert again.digest() == spec.digest()
    assert again.digest() != ExperimentSpec().digest()


def test_action_dirs_follow_tao_layout() -> None:
    spec = load_spec(None, ["results_dir=out", "evaluate.results_dir=elsewhere"])
    assert spec.action_dir("train") == Path("out/train")
    assert spec.action_dir("evaluate") == Path("elsewhere")


@pytest.mark.parametrize(
    "override",
    [
        # Each passed the spec and then failed its action, with a traceback unless noted.
        "dataset.val_batch_size=9223372036854775808",  # train: torch's batch sampler
        "evaluate.batch_size=1000000000000000000000000000000",
        "inference.batch_size=9223372036854775808",
        "train.seed=9223372036854775808",  # train: numpy takes 0..2**32-1
        "train.seed=4294967296",
        "automl.seed=4294967296",  # automl: optuna's samplers take 0..2**32-1
        "train.id_warmup_epochs=inf",  # train: round(inf) in the sampler
        "train.freeze_backbone_epochs=.inf",
        "train.optim.center_lr=1e308",  # train: overflows the centers' float32 optimizer
        "gallery.fps=1e-300",  # gallery add: crop times past what a clock can print
        "gallery.fps=inf",  # gallery add: every crop silently stamped time_origin
        # train: every input nan (mean) or 0 (std); stopped at the loss, blaming the lr
        "dataset.pixel_mean=[.nan,0.45,0.4]",
        "dataset.pixel_std=[0.2,.inf,0.2]",
        "gallery.cameras=[]",  # gallery search: no camera searched, no hits, exit 0
    ],
)
def test_values_that_crashed_an_action_are_refused(override: str) -> None:
    key = override.split("=", 1)[0]
    with pytest.raises(SpecError) as info:
        load_spec(None, [override])
    message = str(info.value)
    assert f"'{key}'" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "override",
    [
        "train.seed=0",
        "train.seed=4294967295",
        "automl.seed=4294967295",  # later trials' seeds wrap round
        "dataset.val_batch_size=65536",
        "train.optim.center_lr=10",
        "train.id_warmup_epochs=10000",
        "gallery.fps=0.001",
        "gallery.fps=1000",
    ],
)
def test_bounds_keep_the_values_in_use(override: str) -> None:
    load_spec(None, [override])


@pytest.mark.parametrize(
    "override",
    [
        "dataset.num_classes=true",  # a one-class model, trained without a word
        "train.num_epochs=false",
        "model.last_stride=true",  # Literal[1, 2]: lax mode matches true to 1
        "dataset.pixel_mean=[0.5,true,0.4]",
        "train.optim.base_lr=true",
        "gallery.cameras=[1,false]",
    ],
)
def test_a_boolean_for_a_number_is_refused(override: str) -> None:
    """pydantic read ``true`` as 1 wherever a number belongs; OmegaConf (TAO) refuses it."""
    key = override.split("=", 1)[0]
    with pytest.raises(SpecError, match=rf"'{key}'.*a number, not true/false"):
        load_spec(None, [override])


def test_numbers_written_as_text_and_real_booleans_still_load(tmp_path: Path) -> None:
    """As OmegaConf reads a TAO spec: ``"3"`` for an int is 3; boolean keys take booleans."""
    spec = tmp_path / "spec.yaml"
    spec.write_text('train:\n  num_epochs: "3"\nmodel:\n  with_flip_feature: true\n')
    loaded = load_spec(spec, [])
    assert loaded.train.num_epochs == 3 and loaded.model.with_flip_feature is True


def test_unquoted_yaml_dates_and_times_are_times_in_utc() -> None:
    """YAML reads ``2026-03-02`` unquoted as a date and ``2026-03-02T08:00:00Z`` as a datetime;
    both are the times they say (a date: its midnight, UTC). The date was refused as "not a
    valid string"."""
    spec = load_spec(
        None,
        [
            "gallery.start=2026-03-02",
            "gallery.end=2026-03-02T08:00:00Z",
            "gallery.time_origin=2020-01-01",
        ],
    )
    assert spec.gallery.start == "2026-03-02T00:00:00+00:00"
    assert spec.gallery.end == "2026-03-02T08:00:00+00:00"
    assert spec.gallery.time_origin == "2020-01-01T00:00:00+00:00"
