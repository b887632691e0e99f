"""The run's checkpointer: LangGraph's SqliteSaver with a serializer that revives only the project's types.

`checkpoints.sqlite` is part of the run folder, and a run folder is input: LangGraph's
default serializer imports and calls whatever `(module, name)` a msgpack value names,
so a crafted checkpoint naming `os.system` or `subprocess.Popen` would run it on
`--resume`. The project's states (agent/state.py, agent/rates/state.py) hold only
builtins (dicts, lists, strings, numbers), so the allow-list is a handful of
containers LangGraph itself writes. Every value is first scanned without constructing
anything; one that names any other type (or is stored as pickle or LangChain JSON)
stops the resume with one clear error.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Optional

import ormsgpack
from langgraph.checkpoint.serde import jsonplus
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from autoprune.errors import TraceError
from autoprune.safe_text import terminal_safe

CHECKPOINTS = "checkpoints.sqlite"
# (module, name) pairs a checkpoint may construct: the containers msgpack has no native form for.
PROJECT_TYPES = frozenset({
    ("builtins", "set"), ("builtins", "frozenset"), ("collections", "deque"),
    ("datetime", "datetime"), ("datetime", "timezone"), ("datetime", "timedelta"), ("uuid", "UUID"),
})
PROJECT_METHODS = frozenset({("datetime", "datetime", "fromisoformat")})
STORED_FORMATS = ("null", "bytes", "bytearray", "msgpack")
CONSTRUCTORS = (jsonplus.EXT_CONSTRUCTOR_SINGLE_ARG, jsonplus.EXT_CONSTRUCTOR_POS_ARGS,
                jsonplus.EXT_CONSTRUCTOR_KW_ARGS, jsonplus.EXT_PYDANTIC_V1, jsonplus.EXT_PYDANTIC_V2)


def named_types(blob: bytes) -> set[tuple[str, ...]]:
    """Every type or method a msgpack value would construct or call, found without constructing any."""
    found: set[tuple[str, ...]] = set()

    def scan(code: int, data: bytes) -> None:
        inner = ormsgpack.unpackb(data, ext_hook=scan, option=ormsgpack.OPT_NON_STR_KEYS)
        if code == jsonplus.EXT_DELTA_SNAPSHOT:
            return None
        named = isinstance(inner, (list, tuple)) and len(inner) >= 3 and all(isinstance(p, str) for p in inner[:2])
        if code in CONSTRUCTORS and named:
            found.add((inner[0], inner[1]))
        elif code == jsonplus.EXT_METHOD_SINGLE_ARG and named and len(inner) >= 4 and isinstance(inner[3], str):
            found.add((inner[0], inner[1], inner[3]))
        else:
            found.add(("msgpack extension", str(code)))
        return None

    ormsgpack.unpackb(blob, ext_hook=scan, option=ormsgpack.OPT_NON_STR_KEYS)
    return found


class ProjectSerializer(JsonPlusSerializer):
    """JsonPlusSerializer that refuses, before constructing anything, a value naming a type outside
    PROJECT_TYPES (LangGraph's own strict mode would silently hand back the raw payload instead)."""

    def __init__(self) -> None:
        super().__init__(allowed_msgpack_modules=tuple(PROJECT_TYPES), allowed_json_modules=None)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, blob = data
        if kind not in STORED_FORMATS:
            raise refused(f"a value stored as {str(kind)[:40]!r}")
        if kind == "msgpack":
            try:
                names = named_types(blob)
            except Exception as exc:  # noqa: BLE001 - any decoding failure of the file is the same problem
                raise refused(f"an unreadable value ({type(exc).__name__})") from None
            foreign = sorted(n for n in names if n not in PROJECT_TYPES and n not in PROJECT_METHODS)
            if foreign:
                raise refused("a value naming " + ", ".join(".".join(n) for n in foreign[:3]))
        return super().loads_typed(data)


def refused(what: str) -> TraceError:
    return TraceError(f"{CHECKPOINTS} holds {what}, which is not one of the project's own types: the run "
                      "folder was tampered with or written by another tool; it cannot be resumed")


def checked_state(values: dict, schema: type, run_dir: Optional[Path] = None) -> dict:
    """`values` of a resumed checkpoint, refused with one clear error unless they have the shape of
    `schema` (the graph's TypedDict) and every candidate file they name lies inside `run_dir`."""
    from pydantic import TypeAdapter, ValidationError

    try:
        TypeAdapter(schema).validate_python(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p)[:40] for p in first.get("loc", ()))[:160]
        raise TraceError(f"{CHECKPOINTS} holds a state whose {terminal_safe(where) or 'top level'} is not what the "
                         f"project writes ({first.get('type', 'invalid')}): the run folder was tampered "
                         "with; it cannot be resumed") from None
    root = run_dir.resolve() if run_dir is not None else None
    for record in (values.get("candidates") or {}).values() if root is not None else ():
        for key in ("path", "masks_path"):
            name = record.get(key)
            if name and not (root / name).resolve().is_relative_to(root):
                raise TraceError(f"{CHECKPOINTS} names a candidate file outside the run folder "
                                 f"({terminal_safe(name)[:80]!r}); it cannot be resumed")
    return values


def project_checkpointer(conn: sqlite3.Connection):
    """A SqliteSaver on `conn` that reads back only what the project writes."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    return SqliteSaver(conn, serde=ProjectSerializer())
