"""No credential in a log line: the scrubbing itself (issue 11, defect 1), on
sample lines and records; `fognode serve` end to end is in
tests/system/test_log_hygiene.py."""

from __future__ import annotations

import logging
import sys

import pytest

from fognode.gateway.telemetry.logs import JsonFormatter, RedactingFilter, redact
from tests.support.secrets import ADMIN_KEY, FORGED_JWT, OPAQUE, leaks


@pytest.mark.parametrize(
    "text",
    [
        "b'GET / HTTP/1.1\\r\\nAuthorization: Bearer SECRET-VALUE\\x01MORE\\r\\nHost: x'",
        "{'Authorization': 'Bearer SECRET-VALUE', 'Host': 'x'}",
        "Got more than 8190 bytes when reading: b'Bearer SECRET-VALUE...'",
        "proxy-authorization: Basic SECRET-VALUE",
        "Cookie: session=SECRET-VALUE",
    ],
)
def test_redact_removes_credentials_in_the_shapes_they_are_logged_in(text: str) -> None:
    scrubbed = redact(text)
    assert "SECRET" not in scrubbed and "VALUE" not in scrubbed and "MORE" not in scrubbed
    assert "[redacted]" in scrubbed


def test_redact_removes_keys_tokens_and_url_passwords_anywhere() -> None:
    for secret in (ADMIN_KEY, FORGED_JWT, FORGED_JWT[:100], FORGED_JWT.rsplit(".", 1)[0] + "."):
        assert not leaks(redact(f"model {secret} not found"))
    assert (
        redact("http://fognode:hunter2@10.0.0.5:11434")
        == "http://fognode:[redacted]@10.0.0.5:11434"
    )
    ordinary = "GET /v1/chat/completions 200 fognode.gateway.middleware bearer token expired"
    assert redact(ordinary) == ordinary


def test_the_filter_scrubs_arguments_exceptions_and_fields() -> None:
    try:
        raise ValueError(f"bad header: Authorization: Bearer {OPAQUE}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "from %s: %r", ("x", ADMIN_KEY), exc_info
    )
    record.fields = {"path": f"/v1/models/{ADMIN_KEY}"}
    record.request_id = FORGED_JWT
    assert RedactingFilter().filter(record)
    assert not leaks(JsonFormatter().format(record))
    assert not leaks(logging.Formatter("%(message)s %(request_id)s").format(record))
