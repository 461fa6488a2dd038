"""The OpenAPI document Litestar serves at ``/schema/openapi.json``, from the msgspec structs.

The handlers read raw bodies and decode them with msgspec themselves (faster than Litestar's
signature model, and with OpenAI-style 400/422 errors), so Litestar cannot see the bodies in
their signatures. ``body_operation`` puts them back: an ``Operation`` class whose request body
is the JSON Schema that msgspec derives from the same structs the decoders use.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import OpenAPIMediaType, Operation, Reference, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType


__all__ = ["body_operation", "openapi_config"]

_REF = "#/components/schemas/{name}"
_KEYS = {"$ref": None, "anyOf": "any_of", "oneOf": "one_of", "allOf": "all_of", "minLength": "min_length",
         "maxLength": "max_length", "minItems": "min_items", "maxItems": "max_items",
         "exclusiveMinimum": "exclusive_minimum", "exclusiveMaximum": "exclusive_maximum",
         "additionalProperties": "additional_properties"}  # fmt: skip


def _schema(node: Any) -> Any:
    """A JSON Schema dict (as msgspec writes it) as Litestar's Schema objects."""
    if isinstance(node, list):
        return [_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return Reference(ref=node["$ref"])
    kwargs: dict[str, Any] = {}
    for key, value in node.items():
        name = _KEYS.get(key, key)
        if name == "type":
            value = [OpenAPIType(v) for v in value] if isinstance(value, list) else OpenAPIType(value)
        elif name == "properties":
            value = {k: _schema(v) for k, v in value.items()}
        elif name in ("items", "contains", "any_of", "one_of", "all_of") or (name == "additional_properties" and isinstance(value, dict)):
            value = _schema(value)
        kwargs[name] = value
    return Schema(**kwargs)


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with every ``$ref`` replaced by its definition (our structs are not recursive).
    Inline because Litestar fills ``components/schemas`` from its own registry only."""
    if isinstance(node, list):
        return [_inline(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _inline(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    return {k: _inline(v, defs) for k, v in node.items()}


def _body_schema(struct: type[msgspec.Struct], fields: dict[str, dict[str, Any]]) -> Schema:
    (ref,), defs = msgspec.json.schema_components([struct], ref_template=_REF)
    body = _inline(ref, defs)
    for field, extra in fields.items():
        body["properties"][field] = {**body["properties"][field], **extra}
    return _schema(body)


def openapi_config(version: str = "0.1.0") -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Turnout",
        version=version,
        description="An adaptive LLM router with an OpenAI-compatible API.",
        path="/schema",
    )


def body_operation(struct: type[msgspec.Struct], fields: dict[str, dict[str, Any]] | None = None) -> type[Operation]:
    """An Operation class whose request body is ``struct`` (JSON, required). ``fields`` adds
    JSON Schema keywords to fields: what the struct alone cannot say (the models of this
    deployment, the user message a chat needs)."""
    schema = _body_schema(struct, fields or {})
    body = RequestBody(required=True, content={"application/json": OpenAPIMediaType(schema=schema)})

    class _WithBody(Operation):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.request_body = body

    _WithBody.__name__ = f"{struct.__name__}Operation"
    return _WithBody
