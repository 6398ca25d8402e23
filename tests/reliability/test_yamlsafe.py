"""Bounded YAML: alias bombs, odd encodings and syntax errors give one line, quickly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from reidkit.errors import SpecError
from reidkit.yamlsafe import load_yaml_file, load_yaml_text

REFERENCE_SPEC = Path(__file__).parents[2] / "src/reidkit/assets/references"


def _billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_billion_laughs())
    assert path.stat().st_size < 1300  # expands to 9**9 = 387 million strings
    started = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_yaml_file(path)
    assert time.perf_counter() - started < 2
    assert f"spec file '{path}' expands to more than 100000 values" in str(info.value)


def test_moderate_aliases_still_load_like_pyyaml() -> None:
    text = "base: &b {lr: 0.1, ids: [1, 2]}\ntrain: *b\nmerged: {<<: *b, lr: 0.2}\n"
    text += "twice: {<<: *b, <<: {ids: [3]}}\n"  # merge keys may repeat
    assert load_yaml_text(text, source="x") == yaml.safe_load(text)


def test_every_shipped_template_loads_like_pyyaml() -> None:
    for path in sorted(REFERENCE_SPEC.glob("*.yaml")):
        assert load_yaml_file(path) == yaml.safe_load(path.read_text()), path


def test_self_containing_alias_is_refused() -> None:
    with pytest.raises(SpecError, match="alias that contains itself"):
        load_yaml_text("a: &a [1, *a]\n", source="spec file 'x'")


def test_non_utf8_spec_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("results_dir: /tmp/caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match=r"is not UTF-8 text \(byte 0xe9 at offset 21\)"):
        load_yaml_file(path)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbfresults_dir: /tmp/r\n")
    assert load_yaml_file(bom) == {"results_dir": "/tmp/r"}


def test_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  num_epochs: 3\n bad indent: [\n")
    with pytest.raises(SpecError) as info:
        load_yaml_file(path)
    message = str(info.value)
    assert message.startswith(f"spec file '{path}' is not valid YAML at line 3, column 2")
    assert "\n" not in message


def test_deep_nesting_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="nested too deeply to be a spec"):
        load_yaml_text("[" * 5000 + "]" * 5000, source="spec file 'x'")
    with pytest.raises(SpecError, match=r"cannot read spec file '.*missing\.yaml'"):
        load_yaml_file(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_yaml_file(tmp_path)  # a folder
    assert load_yaml_text("", source="x") is None
