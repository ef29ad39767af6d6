"""One endpoint's last day in minute buckets: the open ``Minute`` (sums and bounded
samples), a ring of closed ones (``EndpointSeries``), and the points the model page reads
(``points``, ``recent``). ``series.SeriesBook`` fills them from finished requests.

When a request lands in a new minute, the open minute is closed into a tuple of sums and
percentiles in a ring of ``MINUTES`` slots (one per minute of the day), so memory per
endpoint is bounded whatever the traffic, and reading a day costs a pass over 1,440
tuples, on the admin request that asks. Coarser points (the 24 h view) sum the counts of
their minutes and weigh the minutes' percentiles by their answers.
"""

from __future__ import annotations

from typing import Any

from router.requestlog.records import RequestRecord

MINUTES = 1440  # a day of minute buckets per endpoint
SAMPLES = 128  # answers sampled per minute for each percentile

# A closed minute: (minute, requests, errors, served, tool_answers, tool_errors,
# output_answers, output_errors, tokens, generation_ms, busy_ms, latency p50, p95,
# e2e p50, p95, ttft p50, p95, ttft samples). Counts before the percentiles.
Closed = tuple[Any, ...]
_COUNTS = 11  # fields 1..10 are sums
FIELDS = (
    "requests",
    "errors",
    "served",
    "tool_answers",
    "tool_errors",
    "output_answers",
    "output_errors",
    "tokens",
    "generation_ms",
    "busy_ms",
)


class Minute:
    """The open minute of one endpoint: sums and bounded samples."""

    __slots__ = (
        "at",
        "busy_ms",
        "e2e",
        "errors",
        "generation_ms",
        "lat_next",
        "lat_w",
        "latency",
        "output_answers",
        "output_errors",
        "served",
        "tokens",
        "tool_answers",
        "tool_errors",
        "ttft",
        "ttft_next",
        "ttft_seen",
        "ttft_w",
    )  # no ``requests``: served + errors

    def __init__(self, at: int) -> None:
        self.at = at  # minutes since the epoch (UTC)
        self.errors = self.served = 0  # requests: their sum (counted at close)
        self.tool_answers = self.tool_errors = 0
        # Every served answer is judged: output answers are those plus broken failures.
        self.output_answers = self.output_errors = 0
        self.tokens = 0
        self.generation_ms = 0.0
        self.busy_ms = 0.0
        self.latency: list[float] = []
        self.e2e: list[float] = []
        self.ttft: list[float] = []
        self.ttft_seen = 0
        # Past SAMPLES answers: the count at which the next one is sampled (Algorithm L).
        self.lat_w = self.ttft_w = 1.0
        self.lat_next = self.ttft_next = 0

    def close(self) -> Closed:
        lat, e2e, ttft = sorted(self.latency), sorted(self.e2e), sorted(self.ttft)
        return (
            self.at,
            self.served + self.errors,
            self.errors,
            self.served,
            self.tool_answers,
            self.tool_errors,
            self.output_answers + self.served,
            self.output_errors,
            self.tokens,
            self.generation_ms,
            self.busy_ms,
            _pct(lat, 0.5),
            _pct(lat, 0.95),
            _pct(e2e, 0.5),
            _pct(e2e, 0.95),
            _pct(ttft, 0.5),
            _pct(ttft, 0.95),
            self.ttft_seen,
        )


def judged(m: Minute, rec: RequestRecord) -> None:
    """A served answer's tool calls and output, when either has something to say."""
    valid = rec.tool_calls_valid
    if valid is not None:
        m.tool_answers += 1
        if not valid:
            m.tool_errors += 1
    if rec.output_error is not None:
        m.output_errors += 1


def _pct(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class EndpointSeries:
    """One endpoint's last day: the open minute and a ring of closed ones."""

    __slots__ = ("open", "ring")

    def __init__(self) -> None:
        self.open = Minute(-1)
        self.ring: list[Closed | None] | None = None  # made at the first closed minute

    def roll(self, at: int) -> Minute:
        """Close the open minute (if it held anything) and open minute ``at``."""
        m = self.open
        if m.served or m.errors or m.busy_ms:
            if self.ring is None:
                self.ring = [None] * MINUTES
            self.ring[m.at % MINUTES] = m.close()
        self.open = m = Minute(at)
        return m

    def minutes(self, first: int, last: int) -> list[Closed]:
        """The minutes from ``first`` to ``last`` (inclusive) that hold anything, in order;
        the open one closed on the fly (it stays open)."""
        out: list[Closed] = []
        ring = self.ring
        if ring is not None:
            for at in range(max(first, last - MINUTES + 1), last + 1):
                slot = ring[at % MINUTES]
                if slot is not None and slot[0] == at:
                    out.append(slot)
        m = self.open
        if first <= m.at <= last and (m.served or m.errors or m.busy_ms):
            out = [c for c in out if c[0] != m.at] + [m.close()]
        return out


def points(s: EndpointSeries, first: int, last: int, step: int) -> dict[str, list[Any]]:
    """Columns of points from minute ``first`` to ``last``, ``step`` minutes each: ``t``
    (the point's start, Unix seconds), sums, rates and percentiles (None where no data).
    ``in_flight`` is the mean number of attempts in flight over the point."""
    n = (last - first) // step + 1
    sums = [[0.0] * n for _ in range(_COUNTS - 1)]
    weighted: list[list[float]] = [[0.0] * n for _ in range(6)]
    weights: list[list[float]] = [[0.0] * n for _ in range(6)]
    for c in s.minutes(first, last):
        i = (c[0] - first) // step
        for f in range(_COUNTS - 1):
            sums[f][i] += c[f + 1]
        for p in range(6):
            value = c[_COUNTS + p]
            if value is not None:
                w = c[17] if p >= 4 else c[3]  # TTFT percentiles weigh by TTFT samples
                weighted[p][i] += value * w
                weights[p][i] += w
    req, err, served, tool_n, tool_e, out_n, out_e, tokens, gen_ms, busy = sums
    span_ms = step * 60_000.0

    def ratio(a: list[float], b: list[float]) -> list[float | None]:
        return [round(x / y, 4) if y else None for x, y in zip(a, b, strict=True)]

    def pct(p: int) -> list[float | None]:
        return [
            round(x / w, 1) if w else None for x, w in zip(weighted[p], weights[p], strict=True)
        ]

    return {
        "t": [(first + i * step) * 60 for i in range(n)],
        "requests": [int(x) for x in req],
        "errors": [int(x) for x in err],
        "error_rate": ratio(err, req),
        "tool_call_error_rate": ratio(tool_e, tool_n),
        "output_error_rate": ratio(out_e, out_n),
        "tokens_per_s": [
            round(t * 1000.0 / g, 1) if g > 0 else None for t, g in zip(tokens, gen_ms, strict=True)
        ],
        "latency_ms_p50": pct(0),
        "latency_ms_p95": pct(1),
        "e2e_ms_p50": pct(2),
        "e2e_ms_p95": pct(3),
        "ttft_ms_p50": pct(4),
        "ttft_ms_p95": pct(5),
        "in_flight": [round(b / span_ms, 3) for b in busy],
        "served": [int(x) for x in served],
    }


def recent(s: EndpointSeries, now: float, seconds: int = 60, field: str = "requests") -> float:
    """A count (``FIELDS``) over about the last ``seconds``: whole minutes, and the oldest
    one in the proportion of it that is still within the span."""
    at = int(now) // 60
    minutes = -(-seconds // 60)  # whole minutes the span reaches into
    index = FIELDS.index(field) + 1
    into = (now - at * 60) / 60.0  # how far into the open minute we are
    total = 0.0
    for c in s.minutes(at - minutes, at):
        total += c[index] * (1.0 - into) if c[0] == at - minutes else c[index]
    return total
