"""A replica's share of a key's limits, held for a second: admissions without a round trip.

Far from its limits, asking Redis about every request of a key is most of what limits
cost (a round trip, and an event-loop wake for its answer). So an admission that goes to
Redis also asks for an allowance: some requests, tokens and concurrency slots, reserved
in the shared buckets as requests are, which this replica then admits from on its own
for up to ``ALLOWANCE_S``, and the right to charge up to 1/``SHARE`` of the key's
budgets meanwhile. ``scripts.ADMIT`` grants it only while every limit stays at most half
used with it reserved, so the limits still hold for all replicas together, exactly:
what a replica admits from an allowance was reserved in the shared buckets first; and
near a limit (more than half used) none is granted, and every request goes to Redis,
one atomic admission each, as before. When an allowance ends (spent, expired, or its
key reloaded) what is left is given back in the next write: requests and tokens to
their buckets, unused slots freed, the slots of its requests still in flight made to
live as long as any request's (until then they expire in ``SLOT_HOLD_S``).

What it costs: a key may be refused while another replica still holds unused units of
its allowance (at most 1/``SHARE`` of rpm and tpm and 1/``SLOT_SHARE`` of concurrent per
replica, for at most ``ALLOWANCE_S``, and only when a burst takes the key from under
half its limit to all of it within that second); never admitted over. (Slots are shared
more coarsely: teams' concurrency limits are tens, and a share of 1/64 would leave every
such key a round trip per request.) A budget is checked at the grant (at
most half spent) and locally against the allowance's share after it, and charged the
actual cost as before (batched, a few milliseconds later). The ``x-ratelimit-remaining-*``
headers of a request admitted from an allowance are this replica's view: the shared
bucket at the grant, less what this replica admitted since.

Sizes adapt per key: an allowance asks for twice the requests of the last one when that
one ran out within three quarters of its time, half when it lapsed with most unused;
tokens for that many requests of the size seen, slots for twice the requests this
replica held in flight at once (each capped at its share of the limit; a limit too
small for one unit gets no allowance: a key with ``rpm: 10`` always goes to Redis).
"""

from __future__ import annotations

from router.state.shared import PERIOD_S, Admission, Quota
from router.state.shared.memory import window

ALLOWANCE_S = 1.0
# An allowance's slots expire in Redis this soon unless its end makes those in use
# long-lived (the slot lifetime of any request): a grant whose answer was lost, or a
# replica that died, holds them seconds, not the ten minutes of a request's slot.
SLOT_HOLD_S = 5.0
SHARE = 64
SLOT_SHARE = 16
FIRST = 8  # requests an allowance asks for first
_INF = float("inf")
_new = object.__new__


class Sizes:
    """What the next allowance of a key asks for, learned from the last ones, and its
    limits' caps for slots, worked out once per ``Quota``."""

    __slots__ = ("quota", "requests", "slot_cap", "slots", "tokens_each", "unshared")

    def __init__(self) -> None:
        self.requests = FIRST
        self.slots = 2
        self.tokens_each = 0
        self.quota: Quota | None = None
        self.unshared = False  # a limit too small for one unit: never an allowance
        self.slot_cap = 0

    def caps(self, quota: Quota) -> None:
        self.quota = quota
        self.slot_cap = (quota.concurrent or 0) // SLOT_SHARE
        self.unshared = (
            (quota.rpm is not None and quota.rpm < SHARE)
            or (quota.tpm is not None and quota.tpm < SHARE)
            or (quota.concurrent is not None and self.slot_cap < 1)
        )


def ask(quota: Quota, sizes: Sizes, tokens: int) -> tuple[int, int, int] | None:
    """(requests, tokens, slots) to ask for, or None when a limit is too small to share."""
    if sizes.quota is not quota:
        sizes.caps(quota)
    if sizes.unshared:
        return None
    requests = sizes.requests
    if quota.rpm is not None:
        requests = min(requests, quota.rpm // SHARE)
    asked_tokens = 0
    if quota.tpm is not None:
        asked_tokens = min(quota.tpm // SHARE, requests * max(tokens, sizes.tokens_each))
        if asked_tokens < tokens:
            return None  # not even one request of this size would fit
    slots = 0
    if quota.concurrent is not None:
        slots = min(sizes.slots, sizes.slot_cap)
    return requests, asked_tokens, slots


class Allowance:
    """One grant: admits locally while it has requests, tokens, a free slot and budget,
    until ``until`` (local Unix time)."""

    __slots__ = (
        "asked",
        "budget",
        "current",
        "free",
        "granted_at",
        "members",
        "peak",
        "quota",
        "req_tat",
        "requests",
        "shift",
        "slots",
        "spent",
        "tok_tat",
        "tokens",
        "tokens_used",
        "until",
    )

    def __init__(
        self, quota: Quota, asked: tuple[int, int, int], lease_id: str, granted: str, now: float
    ) -> None:
        redis_now, req_tat, tok_tat = (float(x) for x in granted.split(","))
        shift = self.shift = now - redis_now  # the grant's times are Redis's clock
        self.quota = quota
        self.asked = asked
        self.requests, self.tokens, self.slots = asked
        self.req_tat = req_tat + shift
        self.tok_tat = tok_tat + shift
        self.members = [f"{lease_id}.{i}" for i in range(self.slots, 0, -1)]
        self.free = list(self.members)
        self.peak = 0
        self.spent = 0.0
        shares = [b / SHARE for b in (quota.day_usd, quota.month_usd) if b is not None]
        self.budget = min(shares) if shares else _INF
        self.tokens_used = 0
        self.granted_at = now
        self.until = now + ALLOWANCE_S
        self.current = True

    def admit(self, tokens: int, now: float) -> Admission | None:
        """An admission from this allowance, or None when it cannot give one (the caller
        then asks Redis)."""
        if now >= self.until or self.requests <= 0 or self.spent >= self.budget:
            return None
        quota = self.quota
        tpm = quota.tpm
        cost = 0
        if tpm is not None:
            cost = tokens if tokens < tpm else tpm
            if cost > self.tokens:
                return None
        free = self.free
        if quota.concurrent is not None and not free:
            return None
        out = _new(Admission)  # no __init__ call: every request makes one
        out.quota = quota
        out.allowance = self
        if quota.concurrent is not None:
            out.lease = free.pop()
            busy = self.slots - len(free)
            if busy > self.peak:
                self.peak = busy
        self.requests -= 1
        rpm = quota.rpm
        rate = ""
        # The bucket as if the allowance's unused units were not taken; at least this
        # request's own (its units were reserved at the grant and may have come back).
        if rpm is not None:
            unit = PERIOD_S / rpm
            tat = self.req_tat - self.requests * unit
            rate = window("requests", tat if tat > now + unit else now + unit, now, rpm)
        if tpm is not None:
            self.tokens -= cost
            self.tokens_used += cost
            out.reserved = cost
            own = now + cost * PERIOD_S / tpm
            tat = self.tok_tat - self.tokens * PERIOD_S / tpm
            rate += window("tokens", tat if tat > own else own, now, tpm)
        out.rate = rate
        return out

    def could_admit(self, tokens: int) -> bool:
        """Whether any allowance could admit a request of ``tokens`` (one of more than
        its share of tpm goes to Redis, and this allowance stays for the next ones)."""
        tpm = self.quota.tpm
        return tpm is None or min(tokens, tpm) <= tpm // SHARE

    def settle(self, admission: Admission, tokens_used: int | None, cost_usd: float) -> None:
        """A request admitted from this allowance ended while it is current: its slot
        comes back, its tokens are corrected within the allowance, its cost counted
        against the allowance's share (the store charges it to the budgets)."""
        lease = admission.lease
        if lease is not None:
            self.free.append(lease)
            admission.lease = None  # settled once
        if tokens_used is not None and self.quota.tpm is not None:
            delta = tokens_used - admission.reserved
            self.tokens -= delta
            self.tokens_used += delta
        self.spent += cost_usd

    def resize(self, sizes: Sizes, now: float) -> None:
        """The next allowance's sizes, from how this one went (called as it ends)."""
        used = self.asked[0] - self.requests
        if used <= 0:
            sizes.requests = FIRST
        elif self.requests <= 0 and now - self.granted_at < ALLOWANCE_S * 0.75:
            sizes.requests = min(self.asked[0] * 2, 1 << 20)  # ran out early
        elif used * 2 < self.asked[0]:
            sizes.requests = max(used, FIRST)  # lapsed with most of it unused
        if used > 0 and self.tokens_used > 0:
            sizes.tokens_each = -(-self.tokens_used // used)  # ceil
        sizes.slots = max(2, self.peak * 2)
