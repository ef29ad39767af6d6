"""Routing one request: rank, attempt, retry, fail over, hedge (``pipeline``, ``attempts``),
and reading an upstream's stream as it passes (``sse``)."""
