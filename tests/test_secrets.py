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
