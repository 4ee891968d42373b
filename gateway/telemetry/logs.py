"""Logging: one line per event, the request id in every line, JSON on demand,
and no credential in any of it.

The request id lives in a context variable set by the request middleware, so
any module's log line made while handling a request carries it without
passing it around.

Credentials are kept out of the log in two layers. First, the code paths that
see raw request bytes do not log them (gateway/transport/slow_clients.py answers and
logs malformed requests itself, naming only the kind of error). Second, the
one handler every logger reaches (root's) carries :class:`RedactingFilter`,
which scrubs anything shaped like a credential from the message, its
arguments, the exception text and the structured fields, whichever library
logged it (aiohttp.server, aiohttp.access, aiohttp.web, aiohttp.client,
asyncio, firebase-admin). The second layer is the safety net for the bytes
the first one does not know about.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

request_id_var: ContextVar[str] = ContextVar("fognode_request_id", default="-")


class _RequestIdFilter(logging.Filter):
    """Stamp the current request id on every record passing the handler.

    Handlers run synchronously in the logging call's context, so the context
    variable still holds the id of the request that logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


REDACTED = "[redacted]"

# What a credential looks like wherever it turns up in a log line: a header
# line (raw, or inside a bytes or dict repr, where the line ends in a literal
# backslash-r), a scheme and its value, an fnk_ API key, a JWT (whole, or the
# first bytes of one: every JOSE header starts with base64url '{"' = "eyJ"),
# any other three-part base64url string, and the password of a URL.
_LINE_END = r"\\r|\\n|\r|\n"  # a real line end, or one escaped in a repr
_CREDENTIAL_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        # The value of a credential header, up to the end of its line or of
        # its quoted repr, if it holds anything a credential could be (a run
        # of 8 token characters; "Bearer <token>" in a help text does not).
        re.compile(
            r"(?i)((?:proxy-)?authorization|cookie|x-api-key)(['\"]?\s*[:=]\s*['\"]?)"
            rf"(?=(?:(?!{_LINE_END}).)*?[A-Za-z0-9+/=_.~-]{{8}})"
            rf"(?:(?!{_LINE_END}|['\"]\s*[,}}\]]).)*"
        ),
        rf"\1\2{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s'\"\\]{8,}"), rf"\1\2{REDACTED}"),
    (re.compile(r"fnk_[A-Za-z0-9_\-]*"), f"fnk_{REDACTED}"),
    (re.compile(r"eyJ[A-Za-z0-9_\-=]{4,}(?:\.[A-Za-z0-9_\-=]*){0,2}"), REDACTED),
    (re.compile(r"[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]*"), REDACTED),
    (re.compile(r"(://[^/\s:@'\"]*:)[^/\s@'\"]*@"), rf"\1{REDACTED}@"),
)


def redact(text: str) -> str:
    """``text`` with everything shaped like a credential replaced."""
    for pattern, replacement in _CREDENTIAL_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes | bytearray):
        return redact(repr(bytes(value)))
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


class RedactingFilter(logging.Filter):
    """Scrub credentials from a record before any formatter sees it.

    The message is rendered once (``msg % args``) and replaced by its
    scrubbed text, so an argument can no longer carry a token past the
    filter; the exception and stack text are rendered and scrubbed the same
    way (formatters reuse ``exc_text`` when it is set).
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = _redact_value(fields)
        request_id = getattr(record, "request_id", None)
        if isinstance(request_id, str):
            record.request_id = redact(request_id)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields given via ``extra={"fields": {...}}``."""

    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "msg": record.getMessage(),
        }
        if self.process:
            entry["process"] = self.process
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_text:  # set (and scrubbed) by RedactingFilter
            entry["exc"] = record.exc_text
        elif record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(
    level: str = "INFO", fmt: str = "text", access_log: bool = True, process: str = ""
) -> None:
    """``process`` names the process in every line when there are several
    (``main`` for the supervisor, ``w1``... for the workers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.addFilter(RedactingFilter())  # after the id is stamped: it is scrubbed too
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        tag = f"{process} " if process else ""
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)-7s {tag}%(name)s [%(request_id)s] %(message)s"
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's own access log is replaced by ours (it skips cancelled requests).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("fognode.access").disabled = not access_log
