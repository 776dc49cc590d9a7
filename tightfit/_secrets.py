"""Keep credentials out of configs, logs, MLflow params and manifests."""

from __future__ import annotations

import logging
import re

_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]+):(?P<pw>[^/@\s]+)@"
)
_QUERY = re.compile(
    r"(?i)(?P<key>[?&](?:token|access_token|password|passwd|secret|api_key|apikey|key)=)[^&\s#]+"
)


def has_secret(text: str) -> bool:
    """True if ``text`` holds a password in a URI or a token-like query parameter."""
    return bool(_USERINFO.search(text) or _QUERY.search(text))


def redact(text: str) -> str:
    """``https://u:p@host/?token=t`` -> ``https://u:***@host/?token=***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _QUERY.sub(lambda m: f"{m['key']}***", text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts credentials from every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if has_secret(message):
            record.msg, record.args = redact(message), None
        return True
