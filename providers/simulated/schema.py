"""The smallest value a JSON Schema accepts, for simulated tool calls and JSON answers.

A simulated host must answer a tool call with arguments that validate against the tool's
``parameters`` (tool-call error rates are measured on it) and a ``json_schema`` answer
with a document that validates. Each keyword is met the cheapest way: only the
``required`` properties, ``minItems`` items, the first ``enum`` value, the lower bound of
a number. Strings are ``"sim"`` cut or padded to fit their length bounds, or a fixed
value of their ``format``. ``$ref`` is followed within the document; ``pattern`` is not
satisfied (no regex inversion).
"""

from __future__ import annotations

import math
from typing import Any

_MAX_DEPTH = 16  # a self-referencing schema stops here (an optional branch, or null)
_FORMATS = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00Z",
    "email": "sim@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "hostname": "example.com",
}


def minimal(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A value valid for ``schema`` (None for an empty or unusable schema)."""
    if root is None:
        root = schema
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if "$ref" in schema:
        return minimal(_resolve(root, schema["$ref"]), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            # A non-null branch first: an answer of nulls shows nothing.
            chosen = next((o for o in options if _type(o) != "null"), options[0])
            return minimal(chosen, root, depth + 1)
    if isinstance(schema.get("allOf"), list):
        return minimal(_merge(schema), root, depth + 1)
    kind = _type(schema)
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        return _array(schema, root, depth)
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return False
    return None


def _type(schema: Any) -> str | None:
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return None


def _resolve(root: Any, ref: Any) -> Any:
    """A local reference (``#/$defs/Name``); anything else resolves to nothing."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    node = root
    for part in ref[1:].split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _merge(schema: dict[str, Any]) -> dict[str, Any]:
    """``allOf`` flattened: properties merged, required lists joined."""
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    props = dict(merged.get("properties") or {})
    required = list(merged.get("required") or [])
    for part in schema["allOf"]:
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                props.update(value)
            elif key == "required" and isinstance(value, list):
                required += [r for r in value if r not in required]
            else:
                merged.setdefault(key, value)
    if props:
        merged["properties"] = props
    if required:
        merged["required"] = required
    return merged


def _object(schema: dict[str, Any], root: Any, depth: int) -> dict[str, Any]:
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    required = schema.get("required")
    names = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
    least = schema.get("minProperties")
    if isinstance(least, int):
        names += [n for n in props if n not in names][: max(0, least - len(names))]
    out: dict[str, Any] = {}
    for name in names:
        out[name] = minimal(props.get(name, {}), root, depth + 1) if name in props else "sim"
    return out


def _array(schema: dict[str, Any], root: Any, depth: int) -> list[Any]:
    prefix = schema.get("prefixItems")
    items: list[Any] = []
    if isinstance(prefix, list):
        items = [minimal(p, root, depth + 1) for p in prefix]
    least = schema.get("minItems")
    need = least if isinstance(least, int) and least > 0 else 0
    item_schema = schema.get("items")
    while len(items) < need:
        items.append(minimal(item_schema, root, depth + 1))
    return items


def _string(schema: dict[str, Any]) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS:
        return _FORMATS[fmt]
    text = "sim"
    longest = schema.get("maxLength")
    if isinstance(longest, int):
        text = text[: max(0, longest)]
    shortest = schema.get("minLength")
    if isinstance(shortest, int) and len(text) < shortest:
        text += "x" * (shortest - len(text))
    return text


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    ex_low, ex_high = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
    step = 1 if integer else 0.5  # a step past an exclusive bound
    value: float = 0
    if low is not None:
        value = low
    if ex_low is not None and value <= ex_low:
        value = ex_low + step
    if high is not None and value > high:
        value = high
    if ex_high is not None and value >= ex_high:
        value = ex_high - step
    multiple = _bound(schema, "multipleOf")
    if multiple is not None and multiple > 0:
        value = math.ceil(value / multiple) * multiple
    if integer:
        return math.ceil(value)
    return value


def _bound(schema: dict[str, Any], key: str) -> float | None:
    """A numeric keyword's value (draft 4's boolean exclusive bounds are not numbers)."""
    value = schema.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None
