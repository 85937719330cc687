"""Structured outputs: an answer's JSON schema sent as `response_format` in the form the endpoint takes.

| `structured_outputs` | `response_format` sent | servers |
|---|---|---|
| `json_schema` | `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` | OpenAI, vLLM, llama.cpp |
| `json_object_schema` | `{"type": "json_object", "schema": ...}` | older llama.cpp servers |
| `json_object` | `{"type": "json_object"}` (JSON, any shape) | Ollama, most OpenAI-compatible servers |
| `none` | nothing | any server |

OpenAI's strict mode takes a subset of JSON Schema: every object lists all its properties as required and allows
no others, and `$ref`s to `$defs` are allowed; `strict_schema` rewrites a pydantic schema that way (refs inlined,
titles dropped), which llama.cpp's grammar converter reads too.
"""

from __future__ import annotations

from typing import Any, Literal

StructuredOutputs = Literal["json_schema", "json_object_schema", "json_object", "none"]
MODES: tuple[str, ...] = ("json_schema", "json_object_schema", "json_object", "none")


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (a pydantic JSON schema) with `$ref`s inlined, titles and descriptions (docstrings) dropped, and
    every object closed: all its properties required, no other property allowed."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
        out = {k: walk(v) for k, v in node.items() if k not in ("title", "description", "$defs")}
        if out.get("type") == "object" and "properties" in out:
            out["required"] = list(out["properties"])
            out["additionalProperties"] = False
        return out

    return walk(schema)


def response_format(mode: str, name: str, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `response_format` request field for `mode` (see the table above), None for "none" or no schema."""
    if mode == "none" or schema is None:
        return None
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": strict_schema(schema), "strict": True}}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": strict_schema(schema)}
    if mode == "json_object":
        return {"type": "json_object"}
    raise ValueError(f"structured_outputs must be one of {', '.join(MODES)}, got {mode!r}")


def format_mode(value: Any) -> str:
    """Which mode a request's `response_format` field is in (the inverse of `response_format`); raises
    ValueError for a field that is none of them."""
    if value is None:
        return "none"
    if not isinstance(value, dict):
        raise ValueError("response_format must be an object")
    kind = value.get("type")
    if kind == "json_schema" and isinstance(value.get("json_schema"), dict) and "schema" in value["json_schema"]:
        return "json_schema"
    if kind == "json_object":
        return "json_object_schema" if "schema" in value else "json_object"
    if kind == "text":
        return "none"
    raise ValueError(f"response_format type {kind!r} is not one of json_schema, json_object, text")


def request_schema(value: Any) -> dict[str, Any] | None:
    """The JSON schema carried by a `response_format` field, None when it carries none."""
    if not isinstance(value, dict):
        return None
    if value.get("type") == "json_schema":
        return (value.get("json_schema") or {}).get("schema")
    return value.get("schema")
