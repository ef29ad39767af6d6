"""A level read from the last few samples, robust to an outlier or two."""

from __future__ import annotations

from collections import deque


class Recent:
    """The last few samples and their median: a level that an outlier or two do not move,
    and that a new level takes over within half the window. For decisions that cost more
    than one request when wrong (prompt-cache affinity's), where the peak rule's "believe
    trouble at once" would act on every hiccup."""

    __slots__ = ("samples",)

    def __init__(self, size: int = 8) -> None:
        self.samples: deque[float] = deque(maxlen=size)

    @property
    def median(self) -> float | None:
        s = sorted(self.samples)
        n = len(s)
        if not n:
            return None
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0
