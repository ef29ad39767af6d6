"""Client keys' limits on the request path: which routes a key may use, the token
estimate its admission reserves, and the verdict's headers (OpenAI's ``x-ratelimit-*``)
or refusal. The proxy awaits the shared state's admission and settles it itself.

A key that may not use a route gets 404 ``model_not_found``, as OpenAI answers for a
model the key has no access to: the route's existence is not disclosed, and
``/v1/models`` lists only the key's routes, so the two agree.

Tokens are reserved on admission from the request's size, without a tokenizer: the body's
bytes over four (what English text averages per token; JSON's keys and quotes add bytes
that are no prompt tokens, so the estimate tends to err high, the safe side), plus the
answer's ``max_tokens`` (or ``max_completion_tokens``, ``max_output_tokens``), or 256
when the request sets none. The answer's usage corrects the reservation afterwards.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from router.apis.base import ClientApi
from router.errors import NoEndpointAvailable, NotFound, OverLimit
from router.http.answers import LINES
from router.state.shared import Admission, SharedState, StateUnavailable, duration

if TYPE_CHECKING:
    from router.runtime import Runtime

BYTES_PER_TOKEN = 4
DEFAULT_COMPLETION_TOKENS = 256
_MAX_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def estimate_tokens(api: ClientApi, body_size: int, payload: dict[str, Any]) -> int:
    """Prompt and answer tokens to reserve for a request (see the module's docstring)."""
    prompt = body_size // BYTES_PER_TOKEN
    if not api.streams and api.operation == "embeddings":
        return prompt  # an embedding has no answer tokens
    for name in _MAX_FIELDS:
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return prompt + value
    return prompt + DEFAULT_COMPLETION_TOKENS


def check_route(routes: frozenset[str] | None, model: str) -> None:
    """404 for a route the key may not use (the same answer as for an unknown one)."""
    if routes is not None and model not in routes:
        raise NotFound(
            f"the model {model!r} does not exist or you do not have access to it",
            param="model",
        )


def unavailable(exc: StateUnavailable) -> NoEndpointAvailable:
    """The store unreachable under ``on_error: closed``: a 503."""
    return NoEndpointAvailable(str(exc), code="state_unavailable")


def verdict(admission: Admission, headers: dict[str, str]) -> None:
    """The admission's headers added to ``headers``; over a limit, ``OverLimit`` (429
    with ``Retry-After``). (Not a coroutine around ``state.admit``: the caller awaits
    the store itself, one coroutine layer fewer per request.)"""
    if admission.rate:
        headers[LINES] = admission.rate
    if not admission.admitted:
        retry = max(admission.retry_after_s, 0.001)
        headers["Retry-After"] = str(math.ceil(retry))
        headers["retry-after-ms"] = str(math.ceil(retry * 1000))
        raise OverLimit(_message(admission), code=admission.code or "rate_limit_exceeded")


def _message(admission: Admission) -> str:
    quota = admission.quota
    name = quota.name if quota else "?"
    limit = admission.limit
    wait = f"retry after {duration(admission.retry_after_s)}"
    if limit == "day" and quota and quota.day_usd is not None:
        return f"key {name!r} has spent its daily budget of ${quota.day_usd:g}; {wait}"
    if limit == "month" and quota and quota.month_usd is not None:
        return f"key {name!r} has spent its monthly budget of ${quota.month_usd:g}; {wait}"
    if limit == "rpm" and quota and quota.rpm is not None:
        return f"key {name!r} is over its limit of {quota.rpm} requests per minute; {wait}"
    if limit == "tpm" and quota and quota.tpm is not None:
        return f"key {name!r} is over its limit of {quota.tpm} tokens per minute; {wait}"
    if limit == "concurrent" and quota and quota.concurrent is not None:
        return f"key {name!r} has {quota.concurrent} requests in flight, its limit; {wait}"
    return f"key {name!r} is over a limit; {wait}"


async def add_budgets(state: SharedState, runtime: Runtime | None, result: dict[str, Any]) -> None:
    """``/admin/usage``: each budgeted key's remaining budget beside its usage."""
    keys = runtime.keys.values() if runtime is not None else ()
    quotas = [k.quota for k in keys if k.quota is not None and k.quota.budgeted]
    if not quotas:
        return
    from router.requestlog.usage import budgets

    try:
        spent = await state.spent(q.name for q in quotas)
    except StateUnavailable as exc:
        result["budgets"] = None
        result["budgets_error"] = str(exc)
        return
    views = result["budgets"] = budgets(quotas, spent, time.time())
    if result.get("group_by") == "key":
        for group in result["groups"]:
            if group["key"] in views:
                group["budget"] = views[group["key"]]
