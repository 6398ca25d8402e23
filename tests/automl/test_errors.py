"""Every user-fixable AutoML problem is one SpecError line, raised before any trial starts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reidkit.actions.automl import automl as run_automl
from reidkit.automl import check_automl_spec
from reidkit.config.loading import apply_overrides, load_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import SpecError
from tests.conftest import tiny_overrides


@pytest.fixture
def spec(synth_root: Path, tmp_path: Path) -> ExperimentSpec:
    return load_spec(
        None,
        [*tiny_overrides(synth_root, tmp_path / "results"), "automl.automl_enabled=true"],
    )


def _tune(spec: ExperimentSpec, keys: list[str], ranges: list[dict] | None) -> ExperimentSpec:
    overrides = {
        "automl.automl_hyperparameters": keys,
        "automl.automl_range_override": ranges or [],
    }
    return apply_overrides(spec, overrides)


def test_default_search_space_comes_from_the_packaged_schema(spec: ExperimentSpec) -> None:
    space = {param.key: param for param in check_automl_spec(spec)}
    assert "train.optim.base_lr" in space and space["train.optim.base_lr"].log
    # The schema offers 32/64/128; 128 / 8 instances = 16 identities > the 12 train ids here.
    assert space["dataset.batch_size"].options == (32, 64)
    assert space["model.label_smooth"].options == (True, False)
    # Keys without AutoML metadata are searched over their enum, or a range the user gives.
    tuned = _tune(
        spec,
        ["model.neck_feat", "train.optim.momentum", "train.optim.lr_steps"],
        [{"parameter": "train.optim.momentum", "valid_min": 0.5, "valid_max": 0.99}],
    )
    space = {param.key: param for param in check_automl_spec(tuned)}
    assert space["model.neck_feat"].options == ("after", "before")
    assert (space["train.optim.momentum"].low, space["train.optim.momentum"].high) == (0.5, 0.99)
    assert space["train.optim.lr_steps"].decode("[20, 40]") == [20, 40]


@pytest.mark.parametrize(
    ("keys", "ranges", "needles"),
    [
        (
            ["train.optim.base_rl"],
            None,
            ["unknown key 'train.optim.base_rl'", "'train.optim.base_lr'"],
        ),
        (["train.seed"], None, ["'train.seed' cannot be tuned", "automl_disabled_parameters"]),
        (["dataset.train_dataset_dir"], None, ["cannot be tuned"]),
        (["train.optim"], None, ["'train.optim' is a section"]),
        (["evaluate.batch_size"], None, ["'evaluate.batch_size' is not read by train"]),
        ([], None, ["automl.automl_hyperparameters: got []"]),
        (
            ["train.optim.base_lr"],
            [{"parameter": "train.optim.base_lr", "valid_min": 1e-3, "valid_max": 1e-4}],
            ["range [0.001, 0.0001] is empty or inverted"],
        ),
        (
            ["dataset.re_prob"],
            [{"parameter": "dataset.re_prob", "valid_min": 0.5, "valid_max": 0.5}],
            ["'dataset.re_prob' range [0.5, 0.5] is empty"],
        ),
        (
            ["dataset.re_prob"],
            [{"parameter": "dataset.re_prob", "valid_options": []}],
            ["valid_options is empty"],
        ),
        (
            ["dataset.re_prob"],
            [{"parameter": "dataset.re_prob", "valid_min": 0.2, "valid_max": 1.5}],
            ["'dataset.re_prob' search value 1.5 is refused", "<= 1.0"],
        ),
        (
            ["dataset.batch_size"],
            [{"parameter": "dataset.batch_size", "valid_options": [16, 30]}],
            ["option 30 is not a multiple of 'dataset.num_instances' 4"],
        ),
        (
            ["dataset.batch_size", "dataset.num_instances"],
            [{"parameter": "dataset.num_instances", "valid_options": [4, 3]}],
            ["'dataset.batch_size' option 32 is not a multiple of 'dataset.num_instances' 3"],
        ),
        (
            ["train.optim.weight_decay"],
            [{"parameter": "train.optim.weight_decay", "valid_min": 0.0, "valid_max": 0.01}],
            ["log scale; valid_min must be > 0"],
        ),
        (
            ["train.optim.momentum"],
            None,
            ["'train.optim.momentum' has no search range; give valid_min and valid_max"],
        ),
        (
            ["train.optim.base_lr"],
            [{"parameter": "dataset.re_prob", "valid_min": 0.1, "valid_max": 0.2}],
            ["'dataset.re_prob' is not tuned"],
        ),
    ],
)
def test_bad_search_spaces_are_refused_before_any_trial(
    spec: ExperimentSpec, keys: list[str], ranges: list[dict] | None, needles: list[str]
) -> None:
    bad = _tune(spec, keys, ranges)
    with pytest.raises(SpecError) as caught:
        run_automl(bad)
    message = str(caught.value)
    assert "\n" not in message
    assert all(needle in message for needle in needles), message
    assert not bad.action_dir("automl").exists()


def test_a_metric_that_is_never_logged_is_refused(synth_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"automl\.metric.*'loss'.*cmc_rank_1"):
        load_spec(None, [*tiny_overrides(synth_root, tmp_path), "automl.metric=loss"])


def test_a_spec_that_can_never_score_a_trial_is_refused(spec: ExperimentSpec) -> None:
    with pytest.raises(SpecError, match=r"set dataset\.query_dataset_dir"):
        run_automl(apply_overrides(spec, {"dataset.query_dataset_dir": None}))
    with pytest.raises(SpecError, match=r"train\.validation_interval 5 exceeds"):
        run_automl(
            apply_overrides(spec, {"train.validation_interval": 5, "automl.automl_max_epochs": 3})
        )


def test_an_unusable_storage_is_refused(spec: ExperimentSpec) -> None:
    bad = apply_overrides(spec, {"automl.storage": "nosuchdb://host/study"})
    with pytest.raises(SpecError, match=r"automl\.storage: cannot open 'nosuchdb://host/study'"):
        run_automl(bad)


def test_a_database_that_is_not_an_optuna_study_is_one_line(spec: ExperimentSpec) -> None:
    """Another program's SQLite file with a ``studies`` table of its own: before, optuna's
    StorageInternalError traceback, exit 1."""
    other = Path(spec.results_dir).parent / "inventory.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE studies (code TEXT, title TEXT)")
        db.execute("INSERT INTO studies VALUES ('S1', 'kept')")
    bad = apply_overrides(spec, {"automl.storage": f"sqlite:///{other}"})
    with pytest.raises(
        SpecError, match=r"automl\.storage: cannot open .*inventory\.db.*study_name"
    ):
        run_automl(bad)
    with sqlite3.connect(other) as db:
        assert db.execute("SELECT * FROM studies").fetchall() == [("S1", "kept")]


def test_search_space_respects_the_number_of_identities(spec: ExperimentSpec) -> None:
    """The default space drew batch 128 x 4 (32 ids) for an 8-identity set and stopped."""
    from reidkit.automl.space import identities_problem

    eight = apply_overrides(spec, {"dataset.num_classes": 8})
    space = {param.key: param for param in check_automl_spec(eight)}
    assert space["dataset.batch_size"].options == (32, 64)  # 128 / 8 = 16 > 8 always
    assert space["dataset.num_instances"].options == (4, 8)  # 32 / 2 = 16 > 8 always
    assert identities_problem({"dataset.batch_size": 64, "dataset.num_instances": 8}, eight) is None
    problem = identities_problem({"dataset.batch_size": 64, "dataset.num_instances": 4}, eight)
    assert problem == (
        "dataset.batch_size 64 / dataset.num_instances 4 needs 16 identities per batch "
        "but the train set has 8"
    )
    with pytest.raises(SpecError, match=r"no dataset.batch_size / dataset.num_instances comb"):
        check_automl_spec(apply_overrides(spec, {"dataset.num_classes": 3}))
    fixed = _tune(apply_overrides(spec, {"dataset.num_classes": 3}), ["train.optim.base_lr"], None)
    with pytest.raises(SpecError, match="needs 4 identities per batch but the train set has 3"):
        check_automl_spec(fixed)  # the spec's own batch 16 / 4 cannot train either
