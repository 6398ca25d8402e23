"""Secrets: referenced keys resolve; secret fields and URL credentials are masked by field,
never by searching free text for a key's value."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reidkit.errors import SpecError
from reidkit.redaction import (
    RedactingFilter,
    is_reference,
    mask_url_credentials,
    redact_record,
    redact_url,
    resolve_secret,
)


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
    assert mask_url_credentials(f"cannot open '{url}': refused") == (
        f"cannot open '{expected}': refused"
    )


def test_log_records_lose_url_credentials_and_keep_words(caplog: pytest.LogCaptureFixture) -> None:
    """A library may log the URL it was given; no word of a log line is ever searched for."""
    logger = logging.getLogger("reidkit.test_redaction")
    redactor = RedactingFilter()
    handler = caplog.handler
    handler.addFilter(redactor)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            logger.info("model %s at %s", "/runs/train/model.pth", "postgresql://u:pw@h/db")
    finally:
        handler.removeFilter(redactor)
    assert caplog.messages == ["model /runs/train/model.pth at postgresql://***@h/db"]


def test_spec_records_mask_literal_keys_and_keep_references() -> None:
    spec = {
        "encryption_key": "tlt_encode",
        "automl": {"storage": "postgresql://reid:pw@db/optuna", "study_name": "s"},
        "train": {"encryption_key": "env:REID_KEY", "gpu_ids": [0, 1]},
        "model": {"encryption_key": None},
        "gallery": {"uri": "http://root:Milvus@milvus:19530", "query": ["model", "a://u:p@h"]},
        "dataset": {"encryption_key": ["a", "list"], "note": "see http://u:pw@h in the docs"},
    }
    assert redact_record(spec) == {
        "encryption_key": "***",
        "automl": {"storage": "postgresql://***@db/optuna", "study_name": "s"},
        "train": {"encryption_key": "env:REID_KEY", "gpu_ids": [0, 1]},
        "model": {"encryption_key": None},
        "gallery": {"uri": "http://***@milvus:19530", "query": ["model", "a://***@h"]},
        # A secret field is masked whatever it holds; URL credentials wherever a URL is.
        "dataset": {"encryption_key": "***", "note": "see http://***@h in the docs"},
    }
    assert spec["encryption_key"] == "tlt_encode"  # the spec itself is untouched
