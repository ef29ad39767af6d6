"""OpenRouter's per-request ``provider`` object: which endpoints a request may use, in
what order, and whether it may fall back. Parsed once per request, read by the pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies import SORTS
from router.errors import BadRequest
from router.runtime import Endpoint


@dataclass(frozen=True, slots=True)
class RoutingPrefs:
    """OpenRouter's per-request ``provider`` object."""

    order: tuple[str, ...] = ()
    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    sort: str | None = None
    max_prompt: float | None = None
    max_completion: float | None = None

    @classmethod
    def parse(cls, raw: Any) -> RoutingPrefs:
        if not isinstance(raw, dict):
            raise BadRequest("'provider' must be an object", param="provider")
        known = {"order", "only", "ignore", "allow_fallbacks", "sort", "max_price"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BadRequest(
                f"unknown field(s) in 'provider': {', '.join(unknown)}", param="provider"
            )

        def ids(name: str) -> tuple[str, ...] | None:
            v = raw.get(name)
            if v is None:
                return None
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise BadRequest(
                    f"'provider.{name}' must be a list of endpoint ids", param=f"provider.{name}"
                )
            return tuple(v)

        allow = raw.get("allow_fallbacks", True)
        if not isinstance(allow, bool):
            raise BadRequest(
                "'provider.allow_fallbacks' must be a boolean", param="provider.allow_fallbacks"
            )
        sort = raw.get("sort")
        if sort is not None and sort not in SORTS:
            raise BadRequest(
                f"'provider.sort' must be one of {', '.join(SORTS)}; got {sort!r}",
                param="provider.sort",
            )
        max_prompt = max_completion = None
        mp = raw.get("max_price")
        if mp is not None:
            if not isinstance(mp, dict) or set(mp) - {"prompt", "completion"}:
                raise BadRequest(
                    "'provider.max_price' must be an object with 'prompt' and/or 'completion'",
                    param="provider.max_price",
                )
            for k, v in mp.items():
                if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
                    raise BadRequest(
                        f"'provider.max_price.{k}' must be a number >= 0",
                        param="provider.max_price",
                    )
            max_prompt, max_completion = mp.get("prompt"), mp.get("completion")
        only = ids("only")
        return cls(
            order=ids("order") or (),
            only=frozenset(only) if only is not None else None,
            ignore=frozenset(ids("ignore") or ()),
            allow_fallbacks=allow,
            sort=sort,
            max_prompt=max_prompt,
            max_completion=max_completion,
        )

    def named(self) -> set[str]:
        return set(self.order) | set(self.only or ()) | set(self.ignore)

    def admits(self, ep: Endpoint) -> bool:
        if self.only is not None and ep.id not in self.only:
            return False
        if ep.id in self.ignore:
            return False
        p_in, p_out = ep.price
        if self.max_prompt is not None and p_in > self.max_prompt:
            return False
        return not (self.max_completion is not None and p_out > self.max_completion)

    def reorder(self, by_id: Mapping[str, Endpoint], ranking: list[Endpoint]) -> list[Endpoint]:
        """``order``'s endpoints first (those in the ranking), then the rest as ranked; only
        the first when fallbacks are not allowed."""
        if self.order:
            first = [by_id[i] for i in self.order if i in by_id and by_id[i] in ranking]
            ranking = first + [e for e in ranking if e not in first]
        if not self.allow_fallbacks:
            ranking = ranking[:1]
        return ranking
