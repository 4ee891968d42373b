"""The subtle parts behind the operator's pages, one at a time.

Session tokens and CSRF tokens (auth/sessions), the sign-in slow-down
(auth/throttle), the per-minute activity ring and the latest errors
(gateway/activity), the words of a pull's progress (web/status), and the
usage report read from a real usage store (gateway/status.usage_report).
Clocks are injected: nothing here waits for time to pass.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from fognode.auth.principal import Principal
from fognode.auth.sessions import (
    FORM_LIFETIME,
    MAX_REVOKED,
    SessionSigner,
    load_or_create_key,
)
from fognode.auth.throttle import FailureThrottle
from fognode.gateway.pages.status import usage_report
from fognode.gateway.telemetry.activity import MAX_MESSAGE, Activity, ActivityView, merged
from fognode.models.progress import PullProgress
from fognode.usage.record import Outcome, UsageRecord
from fognode.usage.sqlite_store import SqliteStore
from fognode.web.status import human_bytes, pull_update
from fognode.workers.messages import codec
from tests.support.clock import Clock

ADMIN = Principal(uid="apikey:operator", kind="api_key", is_admin=True)
KEY = bytes(range(32))


# --- sessions ---------------------------------------------------------------------


def test_a_session_token_says_who_signed_in_and_nothing_else_passes() -> None:
    clock = Clock()
    signer = SessionSigner(KEY, lifetime=600, clock=clock)
    token, session = signer.issue(ADMIN)
    opened = signer.open(token)
    assert opened == session and opened.principal() == ADMIN
    assert opened.issued == pytest.approx(clock.now, abs=1)

    assert signer.open(None) is None and signer.open("") is None
    assert signer.open(token[:-2] + ("AA" if not token.endswith("AA") else "BB")) is None
    # Signed with another key (another node): refused.
    assert SessionSigner(bytes(32), lifetime=600, clock=clock).open(token) is None
    # A form token is not a session, though the key is the same.
    _, form_token = signer.form()
    assert signer.open(form_token) is None

    clock.now += 599
    assert signer.open(token) is not None
    clock.now += 2
    assert signer.open(token) is None  # expired


def test_sign_out_revokes_that_session_only_and_the_list_stays_bounded() -> None:
    clock = Clock()
    signer = SessionSigner(KEY, lifetime=600, clock=clock)
    token, session = signer.issue(ADMIN)
    other, _ = signer.issue(ADMIN)
    signer.revoke(session)
    assert signer.open(token) is None and signer.open(other) is not None
    # Expired revocations are dropped as new ones come; there are never more than the cap.
    clock.now += 601
    for _ in range(MAX_REVOKED + 5):
        signer.revoke(signer.issue(ADMIN)[1])
    assert len(signer._revoked) == MAX_REVOKED


def test_csrf_tokens_belong_to_their_session() -> None:
    signer = SessionSigner(KEY, lifetime=600)
    _, mine = signer.issue(ADMIN)
    _, theirs = signer.issue(ADMIN)
    token = signer.csrf_token(mine)
    assert signer.csrf_ok(mine, token)
    assert not signer.csrf_ok(theirs, token)
    assert not signer.csrf_ok(mine, None) and not signer.csrf_ok(mine, "")
    assert not signer.csrf_ok(mine, token[:-1])


def test_the_sign_in_form_token_matches_its_cookie_and_expires() -> None:
    clock = Clock()
    signer = SessionSigner(KEY, lifetime=600, clock=clock)
    nonce, token = signer.form()
    other_nonce, _ = signer.form()
    assert signer.form_ok(nonce, token)
    assert not signer.form_ok(other_nonce, token)  # another browser's cookie
    assert not signer.form_ok(None, token) and not signer.form_ok(nonce, None)
    clock.now += FORM_LIFETIME + 1
    assert not signer.form_ok(nonce, token)


def test_the_session_key_is_made_private_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "session-key"
    key = load_or_create_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key  # kept across restarts
    path.chmod(0o644)
    assert load_or_create_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "readable by others" in caplog.text
    path.write_text("not hex\n")
    with pytest.raises(ValueError, match="delete it"):
        load_or_create_key(path)


# --- the sign-in slow-down -----------------------------------------------------------


def test_each_failure_doubles_the_wait_up_to_the_cap() -> None:
    clock = Clock()
    throttle = FailureThrottle(first_delay=1, max_delay=60, clock=clock)
    assert throttle.retry_after("10.0.0.7") == 0
    waits = []
    for _ in range(9):
        throttle.attempt("10.0.0.7")
        waits.append(throttle.retry_after("10.0.0.7"))
        clock.now += waits[-1]
        assert throttle.retry_after("10.0.0.7") == 0
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    # Someone else is not slowed down by it.
    assert throttle.retry_after("10.0.0.8") == 0
    # A success forgets the failures.
    throttle.attempt("10.0.0.7")
    throttle.succeeded("10.0.0.7")
    assert throttle.retry_after("10.0.0.7") == 0 and len(throttle) == 0


def test_a_burst_of_attempts_gets_one_try() -> None:
    throttle = FailureThrottle(first_delay=1, clock=Clock())
    assert throttle.retry_after("10.0.0.7") == 0
    throttle.attempt("10.0.0.7")  # checked now; its answer is not known yet
    assert throttle.retry_after("10.0.0.7") == 1  # the burst's others wait


def test_the_throttle_memory_is_bounded() -> None:
    clock = Clock()
    throttle = FailureThrottle(first_delay=1, max_delay=10, max_clients=3, clock=clock)
    for n in range(5):
        throttle.attempt(f"10.0.0.{n}")
        clock.now += 0.1
    assert len(throttle) == 3
    assert throttle.retry_after("10.0.0.0") == 0  # the longest quiet was dropped
    assert throttle.retry_after("10.0.0.4") > 0
    # Quiet for twice the longest wait: forgotten.
    clock.now += 20
    assert throttle.retry_after("10.0.0.4") == 0 and len(throttle) == 0
    # A huge failure count does not overflow.
    for _ in range(2000):
        throttle.attempt("10.0.0.9")
    assert throttle.retry_after("10.0.0.9") == 10


# --- activity ----------------------------------------------------------------------


def record(activity: Activity, status: int, **kwargs: object) -> None:
    fields: dict[str, object] = {
        "method": "POST",
        "route": "/v1/chat/completions",
        "status": status,
        "request_id": f"rid-{status}",
        "uid": "apikey:phone",
        "failure": None,
    }
    activity.record(**(fields | kwargs))  # type: ignore[arg-type]


def test_requests_and_errors_are_counted_per_minute() -> None:
    clock = Clock(1_800_000_000.0 - 1_800_000_000.0 % 60)  # the start of a minute
    activity = Activity(minutes=3, clock=clock)
    record(activity, 200)
    record(activity, 404)
    record(activity, 499)  # the client left: a request, not an error
    record(activity, 200, failure="The upstream broke off the response")  # in-band
    clock.now += 60
    record(activity, 503)
    minutes = activity.per_minute()
    assert [(m.requests, m.client_errors, m.server_errors) for m in minutes] == [
        (0, 0, 0),
        (4, 1, 1),
        (1, 0, 1),
    ]
    assert minutes[-1].start == clock.now
    # Three minutes on, the ring has wrapped: old counts are not read as new.
    clock.now += 180
    record(activity, 200)
    assert [m.requests for m in activity.per_minute()] == [0, 0, 1]


def test_the_latest_errors_are_bounded_newest_first_and_scrubbed() -> None:
    activity = Activity(errors=3, clock=Clock())
    for status in (400, 401, 403, 404):
        record(activity, status)
    assert [e.status for e in activity.latest_errors()] == [404, 403, 401]
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
    record(activity, 502, failure=f"upstream said: Bearer {token}; " + "x" * 500)
    latest = activity.latest_errors()[0]
    assert token not in latest.message and "[redacted]" in latest.message
    assert len(latest.message) == MAX_MESSAGE
    record(activity, 500, route="/status/live")
    activity.not_counted("/status/live")
    record(activity, 500, route="/status/live")
    assert [e.route for e in activity.latest_errors()].count("/status/live") == 1


def test_the_nodes_activity_is_every_workers_summed() -> None:
    """Two workers' views, read a moment apart across a minute's turn: the
    minutes are summed by their start (the latest ones, as many as a view
    holds), the latest errors interleaved newest first and bounded, the live
    counts added; and a view crosses a worker's channel (JSON) unchanged."""
    start = 1_800_000_000.0 - 1_800_000_000.0 % 60
    clock = Clock(start + 59.5)
    first, second = Activity(minutes=3, errors=2, clock=clock), Activity(minutes=3, clock=clock)
    record(first, 200)
    record(first, 404, request_id="a")
    clock.now += 0.2
    record(second, 503, request_id="b")
    clock.now += 0.1
    record(first, 401, request_id="c")
    early = ActivityView(first.per_minute(), first.latest_errors(), 1, 2, 3, [2, 0])
    clock.now += 0.5  # the next minute, before the second worker answers
    record(second, 200)
    late = ActivityView(second.per_minute(), second.latest_errors(), 4, 5, None, [1, 4])
    wire = codec(ActivityView)
    late = wire.decode(json.loads(json.dumps(wire.encode(late))))
    node = merged([early, late], errors=2)
    assert [
        (m.start - start, m.requests, m.client_errors, m.server_errors) for m in node.minutes
    ] == [
        (-60, 0, 0, 0),
        (0, 4, 2, 1),
        (60, 1, 0, 0),
    ]
    assert [e.request_id for e in node.errors] == ["c", "b"]
    assert (node.active_streams, node.in_flight, node.connections) == (5, 7, 3)
    assert node.upstreams == [3, 4]
    assert merged([]) == ActivityView([], [], 0, 0, None, [])


# --- the words of a pull ----------------------------------------------------------------


def test_a_pull_reads_as_bytes_of_bytes_and_ends_at_100() -> None:
    progress = PullProgress()
    progress.update({"status": "pulling manifest"})
    assert pull_update(progress)["percent"] == 0 and pull_update(progress)["text"] == (
        "pulling manifest"
    )
    digest = "sha256:" + "ab" * 32
    progress.update({"status": "pulling abababababab", "digest": digest, "total": 2_000_000})
    progress.update(
        {"status": "pulling abababababab", "digest": digest, "total": 2_000_000, "completed": 5e5}
    )
    update = pull_update(progress)
    assert update["percent"] == 25.0
    assert update["text"] == "pulling abababababab: 500.0 KB of 2.0 MB (25%)"
    progress.update(
        {"status": "pulling abababababab", "digest": digest, "total": 2_000_000, "completed": 2e6}
    )
    progress.update({"status": "writing manifest"})
    assert pull_update(progress)["text"] == "writing manifest"
    progress.update({"status": "success"})
    assert pull_update(progress) | {"text": ""} == {
        "status": "success",
        "completed": 2_000_000,
        "total": 2_000_000,
        "percent": 100.0,
        "done": True,
        "text": "",
    }
    assert [human_bytes(n) for n in (0, 999, 1000, 1_321_082_688, 4e12)] == [
        "0 B",
        "999 B",
        "1.0 KB",
        "1.3 GB",
        "4.0 TB",
    ]


# --- usage, when accounting runs ---------------------------------------------------------


async def test_the_usage_report_sums_today_per_user(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "usage.sqlite3")
    await store.open()
    now = time.time()

    def used(uid: str, at: float, prompt: int, completion: int, outcome: Outcome) -> UsageRecord:
        return UsageRecord(
            uid, "llama3.2:1b", "http://ollama", "/v1/chat/completions", at, at + 1,
            prompt, completion, outcome, False, f"rid-{uid}-{at}",
        )  # fmt: skip

    try:
        await store.write(
            [
                used("apikey:ward-3", now - 5, 10, 20, Outcome.COMPLETED),
                used("apikey:ward-3", now - 4, 1, 2, Outcome.COMPLETED),
                used("apikey:ward-3", now - 3, 0, 0, Outcome.REJECTED),
                used("firebase-uid-7", now - 2, 5, 5, Outcome.COMPLETED),
                used("apikey:ward-3", now - 2 * 86400, 1000, 1000, Outcome.COMPLETED),
            ]
        )
        since, rows = await usage_report(lambda: store)()
    finally:
        await store.close()
    assert since <= now - 5 < since + 86400
    assert [
        (r.uid, r.requests, r.rejected, r.prompt_tokens, r.completion_tokens) for r in rows
    ] == [
        ("apikey:ward-3", 2, 1, 11, 22),
        ("firebase-uid-7", 1, 0, 5, 5),
    ]
