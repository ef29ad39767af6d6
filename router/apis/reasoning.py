"""Reasoning ("thinking") requests, normalised: read in any form, sent in the host's.

Clients ask for reasoning five ways, from any client API:

=============  =================================================================
TokenLX        ``thinking: {enabled, budget_tokens, return_thoughts}``
Anthropic      ``thinking: {type: enabled | disabled | adaptive, budget_tokens}``
OpenAI chat    ``reasoning_effort: none | minimal | low | medium | high | xhigh``
Responses      ``reasoning: {effort, summary}``
OpenRouter     ``reasoning: {effort | max_tokens, exclude, enabled}``
=============  =================================================================

``parse`` reads them into one ``Reasoning``; ``apply`` writes it into the body an
endpoint gets, in the form its provider's ``reasoning`` field names (``passthrough``
leaves the body as it came). Effort and budget convert through one table (``BUDGETS``;
the public references are litellm's ``DEFAULT_REASONING_EFFORT_*_THINKING_BUDGET``,
1024/2048/4096 tokens for low/medium/high, and OpenRouter's shares of ``max_tokens``,
20/50/80%, at least 1024; ours sits between them, with Anthropic's floor of 1024):

============  =============  ============================================
effort        budget_tokens  a budget maps back to
============  =============  ============================================
minimal       1024           below 4096: ``low`` (not every OpenAI model
low           2048           takes ``minimal``)
medium        8192           4096 to 12287: ``medium``
high          16384          12288 and over: ``high``
xhigh (max)   32768          (never chosen from a budget)
============  =============  ============================================

``return_thoughts: false`` and ``exclude: true`` mean the answer comes without the
reasoning text (``show`` False): hosts that can say so are told, and the router strips
what comes anyway (``router.apis.thoughts``). Reasoning tokens are billed either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router.errors import BadRequest

FIELDS = ("thinking", "reasoning", "reasoning_effort")
FORMS = ("passthrough", "openai", "anthropic", "openrouter", "tokenlx")
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
BUDGETS = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 32768,
}
ANTHROPIC_MIN_BUDGET = 1024
# Room for the answer itself when a budget forces max_tokens up (Anthropic counts the
# thinking in max_tokens, and wants max_tokens above budget_tokens).
ANSWER_TOKENS = 4096
# Words an upstream's error names when it refuses a reasoning field it does not take.
_FIELD_WORDS = (b"thinking", b"reasoning", b"budget_tokens")


@dataclass(frozen=True, slots=True)
class Reasoning:
    """What a request asks of reasoning, whatever form it came in."""

    on: bool  # False: the client turned reasoning off
    effort: str | None = None
    budget: int | None = None
    adaptive: bool = False  # Anthropic's adaptive: the model decides how much
    show: bool = True  # False: leave the reasoning text out of the answer
    summary: str | None = None  # Responses' reasoning.summary, kept for hosts that take it

    @property
    def level(self) -> str | None:
        """The effort, given or read from the budget (None: the host's default)."""
        if self.effort is not None:
            return self.effort
        if self.budget is None:
            return None
        return effort_for(self.budget)

    @property
    def tokens(self) -> int | None:
        """The budget, given or read from the effort (None: the host's default)."""
        if self.budget is not None:
            return self.budget
        if self.effort is None:
            return None
        return BUDGETS.get(self.effort)


def effort_for(budget: int) -> str:
    if budget < 4096:
        return "low"
    if budget < 12288:
        return "medium"
    return "high"


def parse(payload: dict[str, Any]) -> Reasoning | None:
    """The request's reasoning, or None when it says nothing of it. Raises BadRequest
    for a value no host would take (an unknown effort, a budget that is not a count)."""
    thinking = payload.get("thinking")
    reasoning = payload.get("reasoning")
    effort_field = payload.get("reasoning_effort")
    if thinking is None and reasoning is None and effort_field is None:
        return None
    on: bool | None = None
    effort: str | None = None
    budget: int | None = None
    adaptive = False
    show = True
    summary: str | None = None
    if thinking is not None:
        on, adaptive, budget, show = _thinking(thinking)
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise _bad("reasoning", "must be an object")
        given = _effort(reasoning.get("effort"), "reasoning.effort")
        tokens = _count(reasoning, "max_tokens", "reasoning.max_tokens")
        enabled = reasoning.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise _bad("reasoning.enabled", "must be a boolean")
        if given == "none" or enabled is False:
            on = False if on is None else on
        elif given is not None or tokens is not None or enabled:
            on = True if on is None else on
        effort = effort or (given if given != "none" else None)
        budget = budget or tokens
        if reasoning.get("exclude") is True:
            show = False
        if isinstance(reasoning.get("summary"), str):
            summary = reasoning["summary"]
    if effort_field is not None:
        given = _effort(effort_field, "reasoning_effort")
        on = (given != "none") if on is None else on
        effort = effort or (given if given != "none" else None)
    return Reasoning(
        on=bool(on),
        effort=effort if on else None,
        budget=budget if on else None,
        adaptive=adaptive,
        show=show,
        summary=summary,
    )


def _thinking(thinking: Any) -> tuple[bool, bool, int | None, bool]:
    """``thinking`` in Anthropic's form (``type``) or TokenLX's (``enabled``): whether it is
    on, adaptive, its budget, and whether the thoughts are shown."""
    if not isinstance(thinking, dict):
        raise _bad("thinking", "must be an object")
    on: bool | None = None
    adaptive = False
    kind = thinking.get("type")
    if kind is not None:  # Anthropic's form
        if kind not in ("enabled", "disabled", "adaptive"):
            raise _bad("thinking.type", "must be 'enabled', 'disabled' or 'adaptive'")
        on, adaptive = kind != "disabled", kind == "adaptive"
    elif "enabled" in thinking:  # TokenLX's form
        if not isinstance(thinking["enabled"], bool):
            raise _bad("thinking.enabled", "must be a boolean")
        on = thinking["enabled"]
    budget = _count(thinking, "budget_tokens", "thinking.budget_tokens")
    if on is None:
        on = budget is not None
    shown = thinking.get("return_thoughts")
    if shown is not None and not isinstance(shown, bool):
        raise _bad("thinking.return_thoughts", "must be a boolean")
    return on, adaptive, budget, shown is not False


def _bad(param: str, why: str) -> BadRequest:
    return BadRequest(f"'{param}' {why}", param=param, code="invalid_value")


def _effort(value: Any, param: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in EFFORTS:
        raise _bad(param, f"must be one of {', '.join(EFFORTS)}")
    value = value.lower()
    return "xhigh" if value == "max" else value  # litellm's "max": the top effort


def _count(obj: dict[str, Any], key: str, param: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(param, "must be a non-negative integer")
    return value or None


def form_for(kind: str, configured: str | None, model: str) -> str:
    """The form an endpoint gets: the provider's ``reasoning`` field, or its kind's own.

    ``anthropic`` hosts take only Anthropic's; litellm takes OpenAI's ``reasoning_effort``
    and maps it per provider, except that Claude models get ``thinking`` as Anthropic
    writes it (litellm passes it on, and a budget survives exactly).
    """
    if kind == "anthropic":
        return "anthropic"
    if kind == "litellm":
        return "anthropic" if "claude" in model.lower() else "openai"
    return configured or "passthrough"


def apply(payload: dict[str, Any], ask: Reasoning, form: str, api: str) -> None:
    """Rewrites ``payload``'s reasoning fields in ``form`` for a body of ``api``
    (``chat``, ``completions``, ``responses`` or ``messages``), in place."""
    if form == "passthrough":
        return
    for field in FIELDS:
        payload.pop(field, None)
    if api == "messages":
        form = "anthropic"  # the only form the Messages API has
    if form == "openai":
        level = None
        if ask.on and not ask.adaptive:
            level = ask.level or "medium"  # turned on, no amount said: OpenAI's default
        if api == "responses":
            if level is not None or ask.summary is not None:
                payload["reasoning"] = {"effort": level, "summary": ask.summary}
        elif level is not None:
            payload["reasoning_effort"] = level
    elif form == "anthropic":
        payload["thinking"] = _anthropic(payload, ask, api)
    elif form == "openrouter":
        spec: dict[str, Any] = {}
        if not ask.on:
            spec["enabled"] = False
        elif ask.budget is not None:
            spec["max_tokens"] = ask.budget
        elif ask.effort is not None:
            spec["effort"] = ask.effort
        else:
            spec["enabled"] = True
        if not ask.show:
            spec["exclude"] = True
        payload["reasoning"] = spec
    elif form == "tokenlx":
        spec = {"enabled": ask.on, "return_thoughts": ask.show}
        if ask.on and ask.tokens is not None:
            spec["budget_tokens"] = ask.tokens
        payload["thinking"] = spec
    else:
        raise ValueError(f"unknown reasoning form {form!r}")


def _anthropic(payload: dict[str, Any], ask: Reasoning, api: str) -> dict[str, Any]:
    if not ask.on:
        return {"type": "disabled"}
    if ask.adaptive:
        return {"type": "adaptive", "display": "summarized" if ask.show else "omitted"}
    budget = max(ANTHROPIC_MIN_BUDGET, ask.tokens or BUDGETS["medium"])
    # Anthropic wants max_tokens above the budget (it counts the thinking in it).
    key = "max_output_tokens" if api == "responses" else "max_tokens"
    if api == "chat" and key not in payload and "max_completion_tokens" in payload:
        key = "max_completion_tokens"
    limit = payload.get(key)
    if not isinstance(limit, int) or isinstance(limit, bool):
        payload[key] = budget + ANSWER_TOKENS
    elif limit <= budget:
        payload[key] = budget + limit
    return {"type": "enabled", "budget_tokens": budget}


def rejected(body: bytes) -> bool:
    """Does an upstream's 400 say it refused a reasoning field (not the request)?"""
    lowered = body[:4096].lower()
    if lowered.find(b"signature") != -1:
        # An altered or missing signature on a thinking block the client sent back: the
        # request is at fault (Anthropic's "Invalid `signature` in `thinking` block").
        return False
    return any(lowered.find(word) != -1 for word in _FIELD_WORDS)
