"""Property-based tests (hypothesis) of the parsers hostile input reaches first.

* the spec override parser: any command-line override gives a spec or one ``SpecError`` line,
  and an override of a key with its own value changes nothing;
* the file-name parsers (Market-style names for datasets and for gallery crops): any name
  gives a record within the pipeline's integer range or is declared malformed, and every
  well-formed name gives back exactly the numbers it was built from;
* the archive member checks: whatever names a tar holds, unpacking either refuses it in one
  line or writes only regular files inside its own folder.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from reidkit.config.loading import all_keys, load_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.config.times import TIME_MAX, TIME_MIN
from reidkit.data.market import parse_name
from reidkit.data.sources import resolve_dataset
from reidkit.errors import DatasetError, SpecError
from reidkit.gallery.ingest import meta_from_name
from reidkit.gallery.store import GalleryError

INT64 = 2**63
KEYS = all_keys()
DEFAULTS = ExperimentSpec().model_dump(mode="json")
# As many examples as the profile says (tests/conftest.py): 200 in the suite.
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _default(key: str) -> object:
    node: object = DEFAULTS
    for part in key.split("."):
        assert isinstance(node, dict)
        node = node[part]
    return node


LEAVES = [k for k in KEYS if not isinstance(_default(k), dict)]
yaml_values = st.one_of(
    st.text(max_size=40),
    st.integers().map(str),
    st.floats(allow_nan=True).map(str),
    st.lists(st.integers(-5, 5), max_size=4).map(lambda v: str(v).replace(" ", "")),
    st.sampled_from(["", "null", "~", "[", "{a: 1}", "!!python/object:os.system", "&a [*a]"]),
)
overrides = st.one_of(
    st.text(max_size=60),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), yaml_values),
    st.builds(lambda k, v: f"{k}={v}", st.text(max_size=20), yaml_values),
)


@FAST
@given(st.lists(overrides, max_size=3))
@example(["train.num_epochs=\x1b"])  # found by this test: PyYAML's reader error was a traceback
@example(["\n"])  # found by this test: the refusal quoted the newline, two lines
def test_any_override_gives_a_spec_or_one_line(items: list[str]) -> None:
    try:
        spec = load_spec(None, items)
    except SpecError as error:
        message = str(error)
        assert message and "\n" not in message
    else:
        assert isinstance(spec, ExperimentSpec)


@FAST
@given(st.sampled_from(LEAVES))
def test_overriding_a_key_with_its_own_value_changes_nothing(key: str) -> None:
    text = yaml.safe_dump(_default(key), default_flow_style=True).strip()
    text = text.removesuffix("\n...").strip()
    assert load_spec(None, [f"{key}={text}"]) == ExperimentSpec()


digits = st.integers(0, 10**9 - 1)


# Names near the pattern (long numbers, other digits, odd separators), and anything at all.
near_market = st.from_regex(
    r"(-1|-?[0-9\u0660-\u0669]{1,30})_c[0-9]{0,30}(s[0-9]{1,30})?([_.][0-9]{0,30})?[_.a-z]{0,8}",
    fullmatch=True,
)


@FAST
@given(st.one_of(near_market, st.text(max_size=255)))
@example("-1_c10000000000000000000")  # found by this test: beyond the 64-bit camera arrays
def test_any_file_name_parses_in_range_or_not_at_all(name: str) -> None:
    parsed = parse_name(name)
    if parsed is not None:
        pid, camid = parsed
        assert -1 <= pid < INT64 and 1 <= camid < INT64


@FAST
@given(
    pid=st.one_of(st.just(-1), digits),
    camera=st.integers(1, 10**9 - 1),
    sequence=st.one_of(st.none(), digits),
    frame=digits,
    box=st.integers(0, 99),
    suffix=st.sampled_from([".jpg", ".JPEG", ".png", ".bmp"]),
    width=st.integers(1, 6),
)
def test_market_names_give_back_their_numbers(
    pid: int, camera: int, sequence: int | None, frame: int, box: int, suffix: str, width: int
) -> None:
    written = "-1" if pid == -1 else f"{pid:0{width}d}"
    part = f"c{camera}" + (f"s{sequence}" if sequence is not None else "")
    name = f"{written}_{part}_{frame:06d}_{box:02d}{suffix}"
    assert parse_name(name) == (pid, camera)
    meta = meta_from_name(Path("/site") / name, origin=1_000.0, fps=25.0)
    assert (meta.camera, meta.track_id) == (camera, written)
    assert meta.timestamp == 1_000.0 + frame / 25.0


# File names without control characters: a newline in a name would split any message that
# quotes the name (the CLI then shows its first line); that is left to the message formatting.
file_names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/"), max_size=255
)


@FAST
@given(st.one_of(near_market, file_names))
@example("0001_c1s1_99999999999999999999_00.jpg")  # stored, then an OSError traceback on showing
def test_any_crop_name_gives_metadata_or_one_line(name: str) -> None:
    try:
        meta = meta_from_name(Path("/site") / name, origin=0.0)
    except GalleryError as error:
        assert "\n" not in str(error)
    else:
        assert 1 <= meta.camera < INT64 and TIME_MIN <= meta.timestamp < TIME_MAX


member_names = st.one_of(
    st.from_regex(r"[a-z0-9_]{1,8}(/[a-z0-9_.]{1,12}){0,3}(\.jpg)?", fullmatch=True),
    st.text(max_size=80),
    st.lists(
        st.sampled_from(["a", "..", ".", "", "b.jpg", "/", "\\", "C:", "x" * 300, "\0", "..\\x"]),
        min_size=1,
        max_size=6,
    ).map("/".join),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(member_names, st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE,
       tarfile.DIRTYPE, tarfile.SYMTYPE])), min_size=1, max_size=5))  # fmt: skip
@example([("train/\n", tarfile.SYMTYPE)])  # found by this test: the refusal was two lines
def test_any_member_names_unpack_inside_or_are_refused(members: list[tuple[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        archive = root / "data.tar"
        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, kind in members:
                info = tarfile.TarInfo(name)
                info.type = kind
                info.linkname = "../../etc/passwd" if kind == tarfile.SYMTYPE else ""
                data = b"\xff\xd8 image" if kind == tarfile.REGTYPE else b""
                info.size = len(data)
                try:
                    tar.addfile(info, io.BytesIO(data) if data else None)
                except (ValueError, UnicodeError):
                    event("tar cannot write the name")
                    return  # a name tar itself cannot write is no archive anyone can hand us
        extract = root / "extract"
        try:
            folder = resolve_dataset(archive, extract)
        except DatasetError as error:
            assert "\n" not in str(error)
            event("refused")
            return
        event("unpacked")
        inside = extract.resolve()
        assert folder.resolve().is_relative_to(inside)
        for path, dirs, files in os.walk(extract):
            for entry in [*dirs, *files]:
                full = Path(path) / entry
                assert not full.is_symlink(), full
                assert full.resolve().is_relative_to(inside), full
        assert not (root / "etc").exists()


def test_the_strategies_reach_both_outcomes() -> None:
    """The fuzzers are only worth something if they produce valid specs and refusals alike."""
    assert load_spec(None, ["train.num_epochs=3"]).train.num_epochs == 3
    with pytest.raises(SpecError):
        load_spec(None, ["train.num_epochs=-3"])
    assert parse_name("0001_c1s1_000001_00.jpg") == (1, 1) and parse_name("x.jpg") is None
