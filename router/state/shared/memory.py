"""Shared state for one process: the default, and Redis's fallback under ``on_error: open``.

The same arithmetic as the Lua scripts of ``redis_store``, on dicts: GCRA for rpm and tpm
(one "theoretical arrival time" per key and limit), a count of slots in use per key,
spend per key and UTC day/month, bindings with an expiry. Every table is bounded: rate
state and spend by the number of configured keys, bindings by ``max_bindings`` (expired
ones are swept first, then the oldest go).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from router.state.clock import Clock
from router.state.shared import (
    BUDGET_EXCEEDED,
    PERIOD_S,
    RATE_LIMITED,
    Admission,
    Quota,
    SharedState,
    Spend,
    budget_windows,
    duration,
)

MAX_BINDINGS = 100_000
_SLOT = "slot"


def gcra(tat: float, now: float, limit: int, cost: float) -> tuple[float, float]:
    """(the new arrival time if admitted, seconds over the limit: > 0 means refuse).

    The bucket holds ``limit`` units per PERIOD_S, refilled continuously; ``tat`` is when
    it would be whole again. A request of ``cost`` fits while that stays within a period.
    """
    new = (tat if tat > now else now) + cost * PERIOD_S / limit
    return new, new - now - PERIOD_S


def window(kind: str, tat: float, now: float, limit: int) -> str:
    """The bucket as OpenAI's headers show it (``kind``: requests or tokens): its limit,
    units left now, and how long until it is whole again."""
    ahead = tat - now
    if ahead <= 0.0:
        remaining, reset = limit, "0ms"
    else:
        # + 0.01: a Unix time holds ~0.2 us, so "whole units" can come out a hair short.
        remaining = int((PERIOD_S - ahead) * limit / PERIOD_S + 0.01)  # int() floors
        reset = duration(ahead)
    return (
        f"x-ratelimit-limit-{kind}: {limit}\r\n"
        f"x-ratelimit-remaining-{kind}: {remaining if remaining > 0 else 0}\r\n"
        f"x-ratelimit-reset-{kind}: {reset}\r\n"
    )


class MemoryState(SharedState):
    """Everything in this process's dicts; exact for one process, nothing shared."""

    mode = "memory"

    def __init__(self, clock: Clock = time.time, *, max_bindings: int = MAX_BINDINGS) -> None:
        super().__init__()
        self.clock = clock  # Unix time: budgets follow the calendar
        self.max_bindings = max_bindings
        self._req: dict[str, float] = {}
        self._tok: dict[str, float] = {}
        self._busy: dict[str, int] = {}
        # name -> [day id, USD that day, month id, USD that month]: one entry per key.
        self._spend: dict[str, list[Any]] = {}
        self._bindings: dict[str, tuple[str, float]] = {}
        self._windows = ("", 0.0, "", 0.0)  # budget_windows(), valid until the day ends

    # -- admission --------------------------------------------------------------------

    def windows(self, now: float) -> tuple[str, float, str, float]:
        """``budget_windows(now)``, computed once a day."""
        windows = self._windows
        if not windows[1] - 86400.0 <= now < windows[1]:
            windows = self._windows = budget_windows(now)
        return windows

    async def admit(
        self, quota: Quota | None, tokens: int = 0, binding_key: str | None = None
    ) -> Admission:
        return self.admit_now(quota, tokens, binding_key)

    def admit_now(
        self, quota: Quota | None, tokens: int = 0, binding_key: str | None = None
    ) -> Admission:
        """``admit`` without a coroutine (Redis's local fallback calls this)."""
        now = self.clock()
        out = Admission(quota)
        if binding_key is not None:
            out.binding = self._get(binding_key, now)
        if quota is None:
            return out
        name, rpm, tpm, concurrent = quota.name, quota.rpm, quota.tpm, quota.concurrent
        if quota.day_usd is not None or quota.month_usd is not None:
            day, day_end, month, month_end = self.windows(now)
            spent = self._spend.get(name)
            if spent is not None:
                if quota.day_usd is not None and spent[0] == day and spent[1] >= quota.day_usd:
                    return self._refuse(out, BUDGET_EXCEEDED, "day", day_end - now, now)
                if (
                    quota.month_usd is not None
                    and spent[2] == month
                    and spent[3] >= quota.month_usd
                ):
                    return self._refuse(out, BUDGET_EXCEEDED, "month", month_end - now, now)
        req_new = tok_new = 0.0
        cost = 0
        if rpm is not None:
            req_new, over = gcra(self._req.get(name, 0.0), now, rpm, 1)
            if over > 0:
                return self._refuse(out, RATE_LIMITED, "rpm", over, now)
        if tpm is not None:
            cost = tokens if tokens < tpm else tpm  # larger than tpm: needs a whole bucket
            tok_new, over = gcra(self._tok.get(name, 0.0), now, tpm, cost)
            if over > 0:
                return self._refuse(out, RATE_LIMITED, "tpm", over, now)
        if concurrent is not None:
            busy = self._busy.get(name, 0)
            if busy >= concurrent:
                # No telling when a slot frees: a second is what OpenAI's clients wait.
                return self._refuse(out, RATE_LIMITED, "concurrent", 1.0, now)
            self._busy[name] = busy + 1
            out.lease = _SLOT  # slots are counted here, not named
        if rpm is not None:
            self._req[name] = req_new
            out.rate = window("requests", req_new, now, rpm)
        if tpm is not None:
            self._tok[name] = tok_new
            out.rate += window("tokens", tok_new, now, tpm)
            out.reserved = cost
        return out

    def _refuse(
        self, out: Admission, code: str, limit: str, retry_after: float, now: float
    ) -> Admission:
        quota = out.quota
        assert quota is not None
        out.admitted = False
        out.code = code
        out.limit = limit
        out.retry_after_s = retry_after
        if quota.rpm is not None:
            out.rate = window("requests", self._req.get(quota.name, 0.0), now, quota.rpm)
        if quota.tpm is not None:
            out.rate += window("tokens", self._tok.get(quota.name, 0.0), now, quota.tpm)
        return out

    # -- after the request ------------------------------------------------------------

    def settle(self, admission: Admission, tokens_used: int | None, cost_usd: float) -> None:
        quota = admission.quota
        if quota is None or not admission.admitted:
            return
        name = quota.name
        if admission.lease is not None:
            self._busy[name] = max(0, self._busy.get(name, 0) - 1)
            admission.lease = None  # settled once
        if quota.tpm is not None and tokens_used is not None:
            self.correct_tokens(name, quota.tpm, tokens_used - admission.reserved)
        if cost_usd > 0 and quota.budgeted:
            self.charge(name, cost_usd)

    def correct_tokens(self, name: str, tpm: int, delta: int) -> None:
        """Move the tpm bucket by ``delta`` tokens (negative: give some back)."""
        if not delta:
            return
        now = self.clock()
        tat = self._tok.get(name, now)
        if delta > 0 and tat < now:
            tat = now  # a whole bucket takes the debt from now on
        self._tok[name] = tat + delta * PERIOD_S / tpm

    def charge(self, name: str, cost_usd: float) -> None:
        windows = self.windows(self.clock())
        spent = self._spend.get(name)
        if spent is None:
            spent = self._spend[name] = [windows[0], 0.0, windows[2], 0.0]
        if spent[0] != windows[0]:  # a new day (and perhaps month) began
            spent[0], spent[1] = windows[0], 0.0
            if spent[2] != windows[2]:
                spent[2], spent[3] = windows[2], 0.0
        spent[1] += cost_usd
        spent[3] += cost_usd

    async def spent(self, names: Iterable[str]) -> dict[str, Spend]:
        day, _, month, _ = self.windows(self.clock())
        out = {}
        for name in names:
            found = self._spend.get(name)
            if found is None:
                out[name] = Spend()
            else:
                out[name] = Spend(
                    found[1] if found[0] == day else 0.0, found[3] if found[2] == month else 0.0
                )
        return out

    # -- bindings ---------------------------------------------------------------------

    def _get(self, key: str, now: float) -> str | None:
        found = self._bindings.get(key)
        if found is None:
            return None
        if found[1] <= now:
            del self._bindings[key]
            return None
        return found[0]

    async def get(self, key: str) -> str | None:
        return self._get(key, self.clock())

    async def set(self, key: str, value: str, ttl_s: float) -> None:
        self.bind(key, value, ttl_s)

    async def delete(self, key: str) -> None:
        self.unbind(key)

    def bind(self, key: str, value: str, ttl_s: float) -> None:
        bindings = self._bindings
        now = self.clock()
        bindings.pop(key, None)  # re-inserted last: the dict's order is the age order
        if len(bindings) >= self.max_bindings:
            for k in [k for k, (_, until) in bindings.items() if until <= now]:
                del bindings[k]
            while len(bindings) >= self.max_bindings:
                del bindings[next(iter(bindings))]
        bindings[key] = (value, now + ttl_s)

    def unbind(self, key: str) -> None:
        self._bindings.pop(key, None)

    # -- cooldowns --------------------------------------------------------------------

    def cool(self, scope: str, until: float, reason: str) -> None:
        known = self._cools.get(scope)
        if known is None or known[0] < until:
            self._cools[scope] = (until, reason)
