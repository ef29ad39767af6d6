"""The stream checks of ``test_sse_validity`` for the newer client APIs' inspectors: after
the first token a Messages or Responses stream passes through unparsed, yet an event that
is not one (garbage, a cut event, a host's error event) ends it as broken with the valid
events before it forwarded, and nothing after the stream's own end (``message_stop``,
``response.completed``) is passed on, whatever the reads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.apis.messages import MessagesInspector
from router.apis.responses import ResponsesInspector
from router.routing.sse import ProtocolViolation
from tests.fakes.hosts import HOSTS, event

Inspector = MessagesInspector | ResponsesInspector


def inspector(api: str) -> Inspector:
    if api == "messages":
        return MessagesInspector(tools=False, json=False)
    return ResponsesInspector()


def stream(api: str, tokens: int = 2) -> tuple[bytes, list[bytes], bytes]:
    host = HOSTS[api]
    return host.prelude, [host.token(f"t{i} ") for i in range(tokens)], host.end


def feed_all(insp: Inspector, reads: list[bytes]) -> tuple[bytes, ProtocolViolation | None]:
    out = b""
    try:
        for data in reads:
            out += insp.feed(data)
            if insp.done:
                break
        else:
            out += insp.leftover()
    except ProtocolViolation as exc:
        return out + exc.forward, exc
    return out, None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


BAD = {
    "messages": [
        b"data: <html>502 Bad Gateway</html>\n\n",
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {"te\n\n',
        event("error", error={"type": "overloaded_error", "message": "Overloaded"}),
    ],
    "responses": [
        b"data: <html>502 Bad Gateway</html>\n\n",
        b'event: response.output_text.delta\ndata: {"type": "response.output_text.de\n\n',
        b"data: [1, 2]\n\n",
        event("error", code="server_error", message="boom"),
        event("response.failed", response={"status": "failed", "error": {"message": "x"}}),
    ],
}
AFTER_END = [
    b"data: <html>\n\n",
    b"\xff\xfe garbage\n\n",
    b'event: ping\ndata: {"type": "ping"}\n\n',
]


@settings(max_examples=150, deadline=None)
@given(
    api=st.sampled_from(["messages", "responses"]),
    bad=st.integers(0, 4),
    cuts=st.lists(st.integers(0, 10_000), max_size=4),
)
def test_an_invalid_event_after_the_first_token_ends_the_stream_in_any_reads(
    api: str, bad: int, cuts: list[int]
) -> None:
    prelude, tokens, end = stream(api)
    wrong = BAD[api][bad % len(BAD[api])]
    good = prelude + tokens[0] + tokens[1]
    out, violation = feed_all(inspector(api), split(good + wrong + end, cuts))
    assert violation is not None, out
    assert out == good  # every valid event before the bad one, nothing of it or after


@settings(max_examples=150, deadline=None)
@given(
    api=st.sampled_from(["messages", "responses"]),
    tokens=st.integers(0, 3),
    after=st.sampled_from(AFTER_END),
    cuts=st.lists(st.integers(0, 10_000), max_size=4),
)
def test_nothing_after_the_streams_end_is_passed_on_in_any_reads(
    api: str, tokens: int, after: bytes, cuts: list[int]
) -> None:
    """Messages' ``message_stop`` and Responses' final event end the stream even when
    more follows in the same read (the first token's included: a ``message_delta`` with
    nothing said before it is the first token)."""
    prelude, parts, end = stream(api, tokens)
    whole = prelude + b"".join(parts) + end
    out, violation = feed_all(inspector(api), [*split(whole, cuts), after])
    out2, violation2 = feed_all(inspector(api), split(whole + after, cuts))
    assert violation is None and violation2 is None, (violation, violation2)
    assert out == whole and out2 == whole


@pytest.mark.parametrize("api", ["messages", "responses"])
def test_a_whole_stream_in_one_read_passes_unchanged(api: str) -> None:
    prelude, parts, end = stream(api, 5)
    whole = prelude + b"".join(parts) + end
    insp = inspector(api)
    assert insp.feed(whole) == whole
    assert insp.done and insp.usage is not None
