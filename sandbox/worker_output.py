"""The one validating parser for every byte the sandbox worker sends back to the host.

The worker shares its uid with the supervisor, so it can forge anything that
leaves the container: the supervisor's report line, result.json, profile.json
and the mask layer table. Each is parsed here into a strict model: exact JSON
types (no int from a float, no str from a number), bounded lengths and sizes,
non-negative bounded integers, finite floats, unique names. Every failure is a
`WorkerOutputError` with a short message that names where the output is wrong
and never echoes the worker's bytes; the caller turns it into an ordinary
`invalid-output` verdict. Shapes and sparsities come from the trusted bundle
and request, never from here.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter,
                      ValidationError, model_validator)

from autoprune.sandbox import protocol as P

MAX_MESSAGE = 4000                 # characters of a worker message or crash tail the host keeps
MAX_FILES = 64                     # entries of the supervisor's file list
MAX_LAYERS = 100_000               # entries of the mask layer table / profile
MAX_STATS = 64                     # statistics per profiled layer or block
MAX_BYTES = 1 << 40                # any size or offset
MAX_INT = 1 << 53                  # any other integer (exact in a float)


class WorkerOutputError(ValueError):
    """What the worker sent is not what the protocol allows (becomes an invalid-output verdict)."""


def _keep_tail(text: str) -> str:
    return text[-MAX_MESSAGE:]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Size = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
Seconds = Annotated[float, Field(ge=-1e9, le=1e9, allow_inf_nan=False)]
Number = Union[Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)], Annotated[float, AfterValidator(_finite)]]
Tail = Annotated[str, AfterValidator(_keep_tail)]
FileName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
LayerName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,255}$")]
Key = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def _unique(names: list[str], what: str) -> None:
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate {what}")


class SupervisorReport(_Strict):
    """The supervisor's report line (information, not authority: see sandbox/supervisor.py)."""

    returncode: Optional[Annotated[int, Field(ge=-(1 << 31), le=1 << 31)]] = None
    stdout_bytes: Count = 0
    stdout_overflow: bool = False
    tail: Tail = ""
    oom_kills: Count = 0
    worker_seconds: Seconds = 0.0
    files: Annotated[list[tuple[FileName, Size]], Field(max_length=MAX_FILES)] = []

    @model_validator(mode="after")
    def _distinct_files(self) -> "SupervisorReport":
        _unique([name for name, _ in self.files], "file names")
        return self

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


class LayerEntry(_Strict):
    """One row of the mask layer table: where a layer's packed mask lies in masks.bin."""

    name: LayerName
    shape: tuple[Size, Size]          # informational: the host unpacks with the bundle's shape
    offset: Size
    nbytes: Size


class OkResult(_Strict):
    kind: Literal["ok"]
    layers: Annotated[list[LayerEntry], Field(max_length=MAX_LAYERS)]
    group: Literal["row", "layer"]
    candidate: Literal["score", "prune"] = "score"      # the contract's kind the worker ran
    timings: Annotated[dict[Key, Seconds], Field(max_length=MAX_STATS)] = {}

    @model_validator(mode="after")
    def _distinct_layers(self) -> "OkResult":
        _unique([entry.name for entry in self.layers], "layer names in the mask table")
        return self

    def layer_bytes(self, name: str, data: bytes) -> bytes:
        """The packed mask of `name`, checked to lie inside masks.bin."""
        entry = next((e for e in self.layers if e.name == name), None)
        if entry is None:
            raise WorkerOutputError(f"{name}: no mask in the output")
        if entry.offset + entry.nbytes > len(data):
            raise WorkerOutputError(f"{name}: mask bytes out of range")
        return data[entry.offset: entry.offset + entry.nbytes]


class FailedResult(_Strict):
    kind: Literal[P.KIND_REJECTED, P.KIND_CRASHED, P.KIND_INVALID, P.KIND_TOO_MUCH]
    message: Tail = ""


Stats = Annotated[dict[Key, Number], Field(max_length=MAX_STATS)]


class Profile(_Strict):
    """Score distributions (mode "profile"): per layer name and per block index (as text)."""

    layers: Annotated[dict[LayerName, Stats], Field(max_length=MAX_LAYERS)]
    blocks: Annotated[dict[Annotated[str, StringConstraints(pattern=r"^[0-9]{1,6}$")], Stats],
                      Field(max_length=MAX_LAYERS)]


_RESULT = TypeAdapter(Annotated[Union[OkResult, FailedResult], Field(discriminator="kind")])


def _where(loc: tuple) -> str:
    """A location path safe to show: worker-chosen keys are shortened and escaped."""
    parts = []
    for part in loc:
        text = str(part)
        parts.append(text if re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", text) else ascii(text[:32]))
    return ".".join(parts)


def _short(what: str, exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    where = _where(first["loc"])
    more = f" (+{exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"{what} is not valid: {where + ': ' if where else ''}{first['msg'][:200]}{more}"


def _parse(what: str, validate, data: bytes):
    try:
        return validate(data)
    except ValidationError as exc:
        raise WorkerOutputError(_short(what, exc)) from None
    except (ValueError, RecursionError, MemoryError) as exc:   # belt and braces: never a host crash
        raise WorkerOutputError(f"{what} is not valid: {type(exc).__name__}") from None


def parse_report(line: bytes) -> SupervisorReport:
    return _parse("the supervisor report", SupervisorReport.model_validate_json, line)


def parse_result(data: bytes) -> Union[OkResult, FailedResult]:
    return _parse(P.RESULT_FILE, _RESULT.validate_json, data)


def parse_profile(data: bytes) -> Profile:
    return _parse(P.PROFILE_FILE, Profile.model_validate_json, data)
