"""scan.json's JSON Schema, generated from the types the stages declare.

Each stage's `run` names its result type (a TypedDict; the diff's is `ModelDiff` as JSON,
`stage.JsonOf`); this module turns those annotations into JSON Schema (draft 2020-12), in the
document's own fields (`document.Document`, the one declaration of the layout). The generated schema ships beside this module as `scan.schema.json`
(`python -m aimri.scanner.schema` rewrites it; a test keeps the two equal and validates a real
scan against it). Floats may be null: `_io.finite` writes NaN and infinities as null.
Not here: validation (any JSON Schema validator reads the file).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    Required,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from aimri.scanner.document import SCAN_SCHEMA, Document
from aimri.scanner.stage import JsonOf, Registered
from aimri.scanner.stages import BUILTIN

SCHEMA_FILE = Path(__file__).with_name("scan.schema.json")
_SCALARS: dict[Any, dict[str, Any]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": ["number", "null"]},
    str: {"type": "string"},
    type(None): {"type": "null"},
    Any: {},
    object: {},
}


def schema_of(tp: Any) -> dict[str, Any]:
    """The JSON Schema of what `tp` becomes in JSON (TypedDicts and dataclasses as objects)."""
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    origin, args = get_origin(tp), get_args(tp)
    json_of = [m for m in getattr(tp, "__metadata__", ()) if isinstance(m, JsonOf)]
    if origin is Annotated and json_of:
        (j,) = json_of
        return _object({**j.before, **_fields(j.source), **j.after}, None)
    if origin in (Required, NotRequired):
        return schema_of(args[0])
    if origin in (Union, types.UnionType):
        return {"anyOf": [schema_of(a) for a in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, Sequence):
        return {"type": "array", "items": schema_of(args[0]) if args else {}}
    if origin in (dict, Mapping):
        return {"type": "object", "additionalProperties": schema_of(args[1]) if args else {}}
    if is_typeddict(tp):
        hints = get_type_hints(tp, include_extras=True)
        return _object(hints, sorted(tp.__required_keys__))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _object(_fields(tp), None)
    raise TypeError(f"no JSON Schema for {tp!r}: type the stage's result with JSON-able types")


def _fields(dc: type) -> dict[str, Any]:
    """A dataclass's fields and their types."""
    hints = get_type_hints(dc)
    return {f.name: hints[f.name] for f in dataclasses.fields(dc)}


def _object(fields: dict[str, Any], required: list[str] | None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {k: schema_of(v) for k, v in fields.items()},
        "required": sorted(fields) if required is None else required,
    }


def stage_schema(stage: Registered) -> dict[str, Any]:
    """What `stage.run` returns, from its annotation."""
    assert stage.run is not None, f"{stage.name} runs nothing"
    return schema_of(get_type_hints(stage.run, include_extras=True)["return"])


def scan_schema(registry: Sequence[Registered] = BUILTIN) -> dict[str, Any]:
    """scan.json's schema: `Document`'s, for aimri's own stages (`stages.BUILTIN`) or another
    registry's; a scan always says what it removed from its folder (`storage`)."""
    doc = schema_of(Document)
    stages = {st.name: stage_schema(st) for st in registry}
    doc["properties"] |= {
        "schema_version": {"const": SCAN_SCHEMA},
        "kind": {"const": "aimri.scanner"},
        "stages": {"type": "object", "properties": stages, "required": list(stages)},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"aimri scan.json, schema_version {SCAN_SCHEMA}",
        **doc,
        "required": sorted([*doc["required"], "storage"]),
    }


def render() -> str:
    return json.dumps(scan_schema(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    SCHEMA_FILE.write_text(render())
    sys.stdout.write(f"wrote {SCHEMA_FILE}\n")
