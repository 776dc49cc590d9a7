"""Keep credentials out of configs, logs, tracebacks, MLflow params and manifests.

What counts as a credential, in any string:

- a URI's user information: ``scheme://user:password@host``, and ``http(s)://TOKEN@host``
  (a bare user name on an ssh or git URI, ``ssh://git@host``, is not one);
- a query or ``key=value`` parameter whose name is a credential's: ``token``, ``password``,
  ``secret``, ``client_secret``, ``api_key`` / ``api-key``, ``sig`` / ``signature``,
  ``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``, ...;
- a token with a well-known prefix: GitHub (``ghp_``, ``github_pat_``), GitLab (``glpat-``),
  Hugging Face (``hf_``), OpenAI-style (``sk-``), Slack (``xox?-``), AWS access keys (``AKIA``).

And, in a mapping of keyword arguments, a non-empty value under a key named like one
(:func:`secret_keys`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]+):(?P<pw>[^/@\s]+)@"
)
# http(s)://TOKEN@host: a token as the user name, no password (GitHub, GitLab, Azure DevOps)
_TOKEN_USER = re.compile(r"(?P<scheme>(?i:https?)://)(?P<user>[^/@:\s]+)@")
_NAMES = (
    r"token|access_token|refresh_token|id_token|auth_token|password|passwd|pwd|secret|"
    r"client_secret|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|key|"
    r"sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|"
    r"x-goog-signature|x-goog-credential|credential|credentials|auth"
)
_PARAM = re.compile(rf"(?i)(?P<key>(?:^|[?&;,\s])(?:{_NAMES})=)[^&;,\s#]+")
_PREFIXED = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,}|"
    r"hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})\b"
)
# keyword-argument names whose string value is a credential (not pad_token, max_tokens, ...)
_SECRET_KEY = re.compile(
    r"(?i)^(?:.*[_-])?(?:password|passwd|secret|client[_-]?secret|api[_-]?key|apikey|"
    r"access[_-]?key|secret[_-]?key|private[_-]?key|credentials?)$"
    r"|^(?:(?:hf|auth|access|api|bearer|refresh|github|gitlab|hub)[_-]?)?token$"
)


def has_secret(text: str) -> bool:
    """True if ``text`` holds a credential (see the module's docstring)."""
    return bool(
        _USERINFO.search(text)
        or _TOKEN_USER.search(text)
        or _PARAM.search(text)
        or _PREFIXED.search(text)
    )


def redact(text: str) -> str:
    """``https://u:p@host/?token=t`` -> ``https://u:***@host/?token=***``; ``https://T@h`` ->
    ``https://***@h``; prefixed tokens -> ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _TOKEN_USER.sub(lambda m: m[0] if m["user"] == "***" else f"{m['scheme']}***@", text)
    text = _PARAM.sub(lambda m: f"{m['key']}***", text)
    return _PREFIXED.sub("***", text)


def secret_keys(value: Any, path: str = "") -> Iterator[str]:
    """The paths of every credential in a nested config value: strings that hold one, and
    non-empty strings under keys named like one (``password``, ``api_key``, ``token``, ...)."""
    if isinstance(value, dict):
        for k, v in value.items():
            where = f"{path}.{k}" if path else str(k)
            if isinstance(v, str) and v and _SECRET_KEY.match(str(k)):
                yield where
            else:
                yield from secret_keys(v, where)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from secret_keys(v, f"{path}[{i}]")
    elif isinstance(value, str) and has_secret(value):
        yield path


class RedactingFilter(logging.Filter):
    """A logging filter that redacts credentials from every record it passes, traceback and
    stack text included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if has_secret(message):
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and has_secret(record.exc_text):
            record.exc_text = redact(record.exc_text)
        if record.stack_info and has_secret(record.stack_info):
            record.stack_info = redact(record.stack_info)
        return True
