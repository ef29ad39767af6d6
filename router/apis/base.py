"""What every client API has in common, and what each one says for itself.

A client API (chat, completions, embeddings, Messages, Responses) is one module holding
one ``ClientApi``: the path it answers on, the operation a provider is asked for, a
pydantic model of the fields its body must hold, where its model and stream flag are,
how its stream shows a first token and usage (its ``inspector``), how its errors look
and how it ends a stream that broke. The handler and the pipeline are the same for all.

Bodies are validated, never rebuilt: the pydantic model checks the parsed dict and is
thrown away, and the dict (``model`` replaced) is what goes upstream, so fields we do not
know (provider extras such as ``thinking``) pass as they came.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from providers.errors import UpstreamError
from router.errors import BadRequest, RouterError, error_body
from router.requestlog.records import Usage

JSON = "application/json"
SSE = "text/event-stream"


class Inspector(Protocol):
    """Peeks at a stream on its way through (``router.routing.sse``): ``feed`` returns
    the bytes to forward, and the fields say what it has seen so far."""

    first_token: bool
    done: bool
    usage: Usage | None
    events: int

    def feed(self, data: bytes) -> bytes: ...

    def leftover(self) -> bytes: ...

    def tool_calls_valid(self) -> bool | None: ...

    def output_error(self) -> str | None: ...


class Transform(Protocol):
    """Rewrites an answer on its way to the client: translated into the client's API, or
    its reasoning text left out. A whole answer goes through ``body``; a stream through
    ``feed``, a read's whole events at a time (what an inspector forwards)."""

    def body(self, body: bytes) -> bytes: ...

    def feed(self, data: bytes) -> bytes: ...


class Chained:
    """Two transforms, one after the other (translated, then the reasoning left out)."""

    __slots__ = ("first", "then")

    def __init__(self, first: Transform, then: Transform) -> None:
        self.first = first
        self.then = then

    def body(self, body: bytes) -> bytes:
        return self.then.body(self.first.body(body))

    def feed(self, data: bytes) -> bytes:
        out = self.first.feed(data)
        return self.then.feed(out) if out else out


class Body(BaseModel):
    """The fields of a body we check; the rest pass unchecked (``extra="ignore"``).

    Each field's ``description`` says what it must be ("a boolean"), for the message.
    """

    model_config = ConfigDict(extra="ignore")


class ClientApi:
    """One client API. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]  # as the request log and the provider field ``apis`` name it
    path: ClassVar[str]  # where clients send it
    operation: ClassVar[str]  # what a provider is asked to do (``UpstreamRequest.operation``)
    body: ClassVar[type[Body]]
    streams: ClassVar[bool] = True  # False: a ``stream`` field is ignored (embeddings)
    # Request headers passed on upstream as they came (Anthropic's version and betas).
    forwarded_headers: ClassVar[tuple[str, ...]] = ()

    def validate(self, payload: dict[str, Any]) -> None:
        """Raises ``BadRequest`` naming the first field that is missing or ill-typed."""
        try:
            # The model's own validator, as model_validate calls it: its keyword
            # handling costs a third as much again per request (4,500 instructions).
            self.body.__pydantic_validator__.validate_python(payload)
        except ValidationError as exc:
            raise _bad_field(self.body, exc) from None

    def stream_flag(self, payload: Mapping[str, Any]) -> bool:
        return self.streams and payload.get("stream") is True

    def prepare(self, payload: dict[str, Any], stream: bool) -> bool:
        """Adjusts the body before routing; returns whether the client asked for the
        usage it will see in the stream (what the router asked for itself is cut out)."""
        return False

    def wants_json(self, payload: Mapping[str, Any]) -> bool:
        """Did the request ask for a JSON answer (then an answer that is not is broken)?"""
        return False

    def inspector(
        self, payload: Mapping[str, Any], client_wants_usage: bool, json: bool
    ) -> Inspector:
        """A fresh inspector for a stream in this API's shape."""
        raise NotImplementedError(f"{self.name} has no stream")

    def inspect_body(self, body: bytes, json: bool) -> tuple[Usage | None, bool | None, str | None]:
        """Usage, tool-call validity and output error (``router.routing.sse``) of a whole
        answer; raises ``ProtocolViolation`` when it is not an answer."""
        raise NotImplementedError

    def error_body(self, exc: RouterError) -> bytes:
        """An error as this API's clients read it (OpenAI's shape unless overridden)."""
        return exc.body()

    def stream_error(self, exc: BaseException) -> bytes:
        """The event that ends a stream which broke after its first byte."""
        reason = exc.reason if isinstance(exc, UpstreamError) else "internal_error"
        message = f"upstream stream failed after it started: {reason}"
        return b"data: " + error_body(message, "upstream_error", "stream_broken") + b"\n\n"


def decode(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a ``BadRequest`` saying why it is not one."""
    if not body:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON body: {exc}", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return payload


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none"})


def _path(loc: tuple[int | str, ...]) -> list[int | str]:
    """The location without pydantic's union-member tags (``str``, ``list[any]``,
    ``TextBlock``): what is left names fields and list indices only."""
    return [part for part in loc if isinstance(part, int) or not _is_tag(part)]


def _is_tag(part: str) -> bool:
    return part in _TYPE_TAGS or "[" in part or "-" in part or part[:1].isupper()


def _param(path: list[int | str]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _bad_field(model: type[Body], exc: ValidationError) -> BadRequest:
    """pydantic's first error as OpenAI's: message, ``param`` and code."""
    err = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    path = _path(err["loc"])
    param = _param(path)
    if err["type"] == "missing":
        return BadRequest(f"missing required field {param!r}", param=param, code="missing_field")
    field = model.model_fields.get(str(path[0])) if len(path) == 1 else None
    if field is not None and field.description:
        message = f"{param!r} must be {field.description}"
    else:
        message = f"{param!r}: {err['msg']}"
    return BadRequest(message, param=param or None, code="invalid_type")
