"""After its first token a stream passes through unparsed, yet an event that is not one
(garbage, a cut event, a JSON value that is no object, a host's error event) must end
it as broken, with every valid event before it still forwarded, whatever the reads."""
# See BAD below for the one kind of malformed event the cheap checks let through.

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.apis.chat import ChatInspector
from router.routing.sse import ProtocolViolation


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def delta(content: str) -> bytes:
    return event({"choices": [{"index": 0, "delta": {"content": content}}]})


HEAD = [delta("one "), delta("two ")]
END = [
    event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    b"data: [DONE]\n\n",
]
BAD = [
    b"data: <html><body>502 Bad Gateway</body></html>\n\n",
    b'data: {"choices": [{"delta": {"content": "cut\n\n',
    b"data: [1, 2]\n\n",
    b"data: 42\n\n",
    b'data: "text"\n\n',
    b'data: {"error": {"message": "overloaded"}}\n\n',
    b'data:{"error":"rate limited"}\n\n',
    b'data: {"choices": [], "error": {"code": 500}}\n\n',
    b'data: {"object": "error", "message": "out of memory", "type": "InternalError"}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],'
    b' "error": {"code": 502, "message": "Provider disconnected"}}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "error"}]}\n\n',
]
# Not caught, by design: an event that ends in "}" and carries no "error" key passes
# unparsed (``data: {not json}``); parsing every event would cost each token a parse.
FINE = [
    b": keep-alive\n\n",  # a comment
    b"event: ping\ndata: {}\n\n",
    b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]} \n\n',  # trailing space
    b'data: {"choices":\ndata: [{"index": 0, "delta": {"content": "b"}}]}\n\n',  # two lines
    b'data: {"choices": [{"index": 0, "delta": {"content": "says \\"error\\": x"}}]}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {"content": "}\\n\\n"}}]}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {"content": "an \\"error\\" here"}}]}\n\n',
    b'data: {"error": null, "choices": [{"index": 0, "delta": {"content": "c"}}]}\n\n',
]


def feed_all(reads: list[bytes]) -> tuple[bytes, ProtocolViolation | None]:
    """What went to the client, and the violation that ended the stream, if any."""
    insp = ChatInspector(client_wants_usage=True)
    out = b""
    try:
        for data in reads:
            out += insp.feed(data)
        out += insp.leftover()
    except ProtocolViolation as exc:
        return out + exc.forward, exc
    return out, None


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("together", [False, True])
def test_an_invalid_event_after_the_first_token_ends_the_stream(bad: bytes, together: bool) -> None:
    after = [delta("three ")]
    reads = [*HEAD, bad, *after, *END]
    if together:  # the valid events and the bad one in one read
        reads = [HEAD[0], b"".join([HEAD[1], *after, bad, *END])]
    out, violation = feed_all(reads)
    assert violation is not None
    assert b"<html>" not in out and b"cut" not in out and b"[DONE]" not in out
    # Every valid event before the bad one went out, whole, and nothing after it.
    assert out.startswith(HEAD[0] + HEAD[1])
    assert out.endswith(b"\n\n")
    for ev in out.split(b"\n\n")[:-1]:
        assert "error" not in json.loads(ev[5:])


@pytest.mark.parametrize("fine", FINE)
def test_valid_sse_that_is_not_the_usual_shape_passes(fine: bytes) -> None:
    out, violation = feed_all([*HEAD, fine, *END])
    assert violation is None
    assert out.endswith(b"data: [DONE]\n\n")


def test_a_stream_cut_in_the_middle_of_its_last_event_is_not_passed_on() -> None:
    out, violation = feed_all([*HEAD, b'data: {"choices": [{"delta": {"content": "cu'])
    assert violation is not None and b"cu" not in out
    out, violation = feed_all([*HEAD, b"data: [DONE]"])  # [DONE] without its blank line
    assert violation is None and out.endswith(b"data: [DONE]\n\n")


@settings(max_examples=150, deadline=None)
@given(
    bad=st.sampled_from(BAD),
    fine=st.lists(st.sampled_from(FINE), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
)
def test_any_split_into_reads_gives_the_same_verdict(
    bad: bytes, fine: list[bytes], cuts: list[int]
) -> None:
    whole = b"".join([*HEAD, *fine, bad, *END])
    out, violation = feed_all(splits(whole, cuts))
    assert violation is not None
    assert out.startswith(HEAD[0] + HEAD[1])
    assert bad not in out and b"[DONE]" not in out

    good = b"".join([*HEAD, *fine, *END])
    out, violation = feed_all(splits(good, cuts))
    assert violation is None and out == good


@pytest.mark.parametrize(
    "after", [b"\xff\xfe garbage\n\n", delta("late "), b"data: <html>\n\n", b"data: [DONE]\n\n"]
)
@pytest.mark.parametrize("first_read", [False, True])
def test_nothing_after_done_is_passed_on(after: bytes, first_read: bool) -> None:
    """[DONE] ends the stream even when more follows it in the same read."""
    tail = END[0] + END[1] + after
    reads = [HEAD[0] + HEAD[1] + tail] if first_read else [*HEAD, tail]
    insp = ChatInspector(client_wants_usage=True)
    out = b""
    for data in reads:
        out += insp.feed(data)
        if insp.done:
            break
    assert insp.done
    assert out == HEAD[0] + HEAD[1] + END[0] + END[1]
