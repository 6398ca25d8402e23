"""Bad input that once gave a traceback now gives one line (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RunMain, assert_one_line_error


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--ids", "0"], "--ids 0 is outside 2..9999"),
        (["--height", "-5"], "--height -5 is outside 16..2048"),
        (["--seed", "-1"], "--seed -1 is outside"),
    ],
)
def test_bad_dataset_synth_arguments(
    tmp_path: Path, flags: list[str], needle: str, run_main: RunMain
) -> None:
    result = run_main("dataset", "synth", "--out", str(tmp_path / "d"), *flags)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "d").exists()


def test_non_utf8_and_alias_bomb_specs(tmp_path: Path, run_main: RunMain) -> None:
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("results_dir: /tmp/caf\xe9\n".encode("latin-1"))
    assert_one_line_error(run_main("validate", "-e", str(latin), "train"), "is not UTF-8 text")
    bomb = tmp_path / "bomb.yaml"
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb.write_text("\n".join(lines) + "\n")
    assert_one_line_error(run_main("train", "-e", str(bomb)), "expands to more than 100000 values")


def test_a_spec_section_given_twice_is_one_line(tmp_path: Path, run_main: RunMain) -> None:
    """YAML keeps the last of two equal keys: a ``train:`` pasted twice dropped the first
    section's keys and ``validate`` said "valid". Merge keys (``<<``) may still repeat."""
    spec = tmp_path / "twice.yaml"
    spec.write_text("train:\n  num_epochs: 3\nmodel:\n  backbone: resnet_18\ntrain:\n  seed: 5\n")
    assert_one_line_error(
        run_main("validate", "-e", str(spec), "train"),
        "gives key 'train' twice (again at line 5); keep one",
    )
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  optim:\n    base_lr: 0.1\n    base_lr: 0.2\n")
    assert_one_line_error(
        run_main("validate", "-e", str(nested), "train"), "key 'train.optim.base_lr' twice"
    )


def test_results_dir_that_is_a_file(tmp_path: Path, run_main: RunMain) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("x")
    spec = tmp_path / "spec.yaml"
    spec.write_text("{}\n")
    result = run_main("evaluate", "-e", str(spec), f"results_dir={blocker}")
    assert_one_line_error(result, f"'{blocker / 'evaluate'}'")
