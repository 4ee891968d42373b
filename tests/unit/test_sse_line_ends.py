"""SSE line ends across the relay's two readers: the usage counter, then the framer.

The SSE specification ends a line with CR LF, LF or a lone CR, and an upstream
may mix them and split its bytes anywhere. Whatever it does, the client (read
here by the SpeziLLMFog app's decoder, which dispatches an event on every
blank line) gets the same events, the counter the same figures, and a usage
chunk the gateway asked for on the client's behalf never reaches a client
that did not ask for it.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from fognode.gateway.pipeline.compat import ChunkEditor
from fognode.gateway.pipeline.sse import SseFramer
from fognode.usage.counter import BodyKind, TokenCounter
from tests.support.spezillmfog_client import SwiftSseDecoder

LINE_ENDS = (b"\n", b"\r\n", b"\r")
WORDS = ("The", " sky", ' "is"', " blue\\", "")
USAGE = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}


def chunk(**fields: object) -> bytes:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return json.dumps(dict(base, **fields), separators=(",", ":")).encode()


def content(text: str) -> bytes:
    return chunk(choices=[{"index": 0, "delta": {"content": text}, "finish_reason": None}])


def the_stream(words: list[str], with_usage: bool) -> list[list[bytes]]:
    """The events of a stream, each as its lines (a comment between some)."""
    events = [[b"data: " + content(word)] for word in words]
    events.append([b"data: " + chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])])
    if with_usage:
        events.append([b": a comment", b"data: " + chunk(choices=[], usage=USAGE)])
    events.append([b"data: [DONE]"])
    return events


def written(events: list[list[bytes]], ends: list[bytes]) -> bytes:
    """The events with the line ends drawn for each line (blank lines included)."""
    out, index, previous = [], 0, b""
    for event in events:
        for line in [*event, b""]:
            end = ends[index % len(ends)]
            if previous == b"\r" and not line and end == b"\n":
                end = b"\r"  # CR then LF is one line end (CR LF): no blank line
            out.append(line + end)
            index, previous = index + 1, end
    return b"".join(out)


def relay(raw: bytes, cuts: list[int], *, strip: bool) -> tuple[bytes, TokenCounter]:
    """The upstream's bytes cut into chunks, through the counter and the framer as relay.py does."""
    counter = TokenCounter(BodyKind.SSE, strip_usage_chunk=strip)
    framer = SseFramer(ChunkEditor("m"))
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    out = []
    for piece in pieces:
        if not piece:
            continue
        passed = counter.feed(piece)
        if passed:
            out.append(framer.feed(passed))
        counter.delivered()
    rest = counter.finish()
    out.append((framer.feed(rest) if rest else b"") + framer.flush())
    counter.delivered()
    return b"".join(out), counter


@settings(max_examples=400, deadline=None)
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=5),
    ends=st.lists(st.sampled_from(LINE_ENDS), min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=14),
    with_usage=st.booleans(),
    strip=st.booleans(),
)
def test_any_split_of_any_line_ends_gives_the_same_events_and_counts(
    words: list[str], ends: list[bytes], cuts: list[int], with_usage: bool, strip: bool
) -> None:
    raw = written(the_stream(words, with_usage), ends)
    out, counter = relay(raw, cuts, strip=strip)
    reference, _ = relay(written(the_stream(words, with_usage), [b"\n"]), [], strip=strip)

    decoder = SwiftSseDecoder()
    events = decoder.feed(out)
    # Every event the app dispatches has data: an empty one would end its stream.
    assert all(e.data is not None for e in events), out
    assert decoder.finished  # [DONE] arrived
    assert [e.data for e in events] == [e.data for e in SwiftSseDecoder().feed(reference)]
    chunks = [json.loads(e.data or "") for e in events]
    assert "".join(
        c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]
    ) == "".join(words)
    usage_relayed = any(c["choices"] == [] for c in chunks)
    assert usage_relayed == (with_usage and not strip)  # asked for by the gateway: removed
    assert counter.content_chunks == sum(1 for w in words if w)
    assert counter.completion_figure == (USAGE["completion_tokens"] if with_usage else None)
    assert counter.stripped == (1 if with_usage and strip else 0)


def test_crlf_events_read_together_with_an_lf_one_are_told_apart() -> None:
    """The case that reached a client: several CR LF events in one read, the last
    ending in LF only; the usage chunk among them is still taken out."""
    events = the_stream(["The"], with_usage=True)
    raw = b"".join(line + b"\r\n" for event in events[:-1] for line in [*event, b""])
    raw += b"data: [DONE]\n\n"
    out, counter = relay(raw, [], strip=True)
    assert b'"choices":[]' not in out and counter.stripped == 1
    assert counter.completion_figure == USAGE["completion_tokens"]
