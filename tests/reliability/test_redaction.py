"""Secrets: referenced keys resolve, URL credentials and keys are masked in text and logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reidkit.errors import SpecError
from reidkit.redaction import RedactingFilter, is_reference, redact, redact_url, resolve_secret


def test_secret_from_value_environment_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_secret("tlt_encode", "encryption_key") == "tlt_encode"
    assert resolve_secret(None, "encryption_key") is None
    monkeypatch.setenv("REID_KEY", "from-env")
    assert resolve_secret("env:REID_KEY", "encryption_key") == "from-env"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\nignored\n")
    assert resolve_secret(f"file:{key_file}", "encryption_key") == "from-file"
    assert is_reference("env:REID_KEY") and not is_reference("tlt_encode")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("env:REID_UNSET_KEY", "environment variable 'REID_UNSET_KEY', which is not set"),
        ("file:/nonexistent/key", "cannot read key file '/nonexistent/key' (No such file"),
    ],
)
def test_missing_secret_sources_are_one_line(value: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        resolve_secret(value, "encryption_key")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://reid:s3cr%40t@db.example:5432/optuna",
            "postgresql://***@db.example:5432/optuna",
        ),
        ("mysql+pymysql://root@localhost/db", "mysql+pymysql://***@localhost/db"),
        ("sqlite:////tmp/study.db", "sqlite:////tmp/study.db"),
        ("redis://:pw@host:6379/0", "redis://***@host:6379/0"),
    ],
)
def test_url_credentials_are_masked(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert redact(f"cannot open '{url}': refused", ()) == f"cannot open '{expected}': refused"


def test_log_records_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("reidkit.test_redaction")
    redactor = RedactingFilter()
    redactor.add("tlt_encode", None)
    handler = caplog.handler
    handler.addFilter(redactor)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            logger.info("key %s at %s", "tlt_encode", "postgresql://u:pw@h/db")
    finally:
        handler.removeFilter(redactor)
    assert caplog.messages == ["key *** at postgresql://***@h/db"]


def test_spec_records_mask_literal_keys_and_keep_references() -> None:
    from reidkit.redaction import redact_record

    spec = {
        "encryption_key": "tlt_encode",
        "automl": {"storage": "postgresql://reid:pw@db/optuna", "study_name": "s"},
        "train": {"encryption_key": "env:REID_KEY", "gpu_ids": [0, 1]},
        "model": {"encryption_key": None},
    }
    assert redact_record(spec) == {
        "encryption_key": "***",
        "automl": {"storage": "postgresql://***@db/optuna", "study_name": "s"},
        "train": {"encryption_key": "env:REID_KEY", "gpu_ids": [0, 1]},
        "model": {"encryption_key": None},
    }
    assert spec["encryption_key"] == "tlt_encode"  # the spec itself is untouched
