from __future__ import annotations

import logging

from tightfit._secrets import RedactingFilter, has_secret, redact


def test_redact() -> None:
    assert (
        redact("https://u:pw@host:5000/x?token=t0k&a=1")
        == "https://u:***@host:5000/x?token=***&a=1"
    )
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert has_secret("postgresql://user:pass@db/optuna") and not has_secret("http://host:8265")


def test_log_records_are_redacted(caplog) -> None:
    logger = logging.getLogger("tightfit.test")
    handler = caplog.handler
    handler.addFilter(RedactingFilter())
    try:
        logger.warning("connecting to %s", "https://me:topsecret@mlflow:443")
    finally:
        handler.removeFilter(handler.filters[-1])
    assert "topsecret" not in caplog.text and "me:***@mlflow" in caplog.text


def test_token_patterns_that_used_to_pass() -> None:
    leaks = [
        "https://ghp_abcdefghijklmnopqrstuvwxyz0123456789@github.com/org/repo.git",
        "https://s3.amazonaws.com/b/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=deadbeef",
        "https://acct.blob.core.windows.net/c/f?sv=2022&sig=abc%2Bdef",
        "https://login.example.com/token?client_id=app&client_secret=hunter2",
        "api-key=0123456789abcdef",
        "hf_abcdefghijklmnopqrstuvwxyz1234",
    ]
    for text in leaks:
        assert has_secret(text), text
        for secret in ("ghp_abc", "deadbeef", "abc%2Bdef", "hunter2", "0123456789abcdef", "hf_abc"):
            assert secret not in redact(text)
    for fine in ("ssh://git@github.com/org/repo", "http://127.0.0.1:8265", "runs/x/mlflow.db"):
        assert not has_secret(fine), fine


def test_every_string_of_a_config_is_checked() -> None:
    from tightfit._secrets import secret_keys

    config = {
        "model": {"kwargs": {"url": "https://u:p@host/w.pt", "pad_token": "<pad>", "n": 3}},
        "data": {"kwargs": {"hf_token": "abc", "paths": ["a", "https://x/?token=t"]}},
    }
    assert sorted(secret_keys(config)) == [
        "data.kwargs.hf_token",
        "data.kwargs.paths[1]",
        "model.kwargs.url",
    ]


def test_tracebacks_in_logs_are_redacted(caplog) -> None:
    logger = logging.getLogger("tightfit.test")
    handler = caplog.handler
    handler.addFilter(RedactingFilter())
    try:
        try:
            raise ConnectionError("cannot reach https://me:topsecret@mlflow:443/api")
        except ConnectionError:
            logger.exception("logging failed")
    finally:
        handler.removeFilter(handler.filters[-1])
    formatted = "\n".join(handler.format(r) for r in caplog.records)
    assert "topsecret" not in formatted and "me:***@mlflow" in formatted
