"""What one trace event may hold: the validating parser every trace reader goes through.

A run folder is input like any other (it may be edited, cut by a kill, or crafted):
each line is checked against the envelope (`v`, an integer `seq`, `ts`, a known `type`)
and the payload keys docs/trace.md names, with the types readers rely on. Extra keys
are kept (new fields are added, never renamed). A line that fails is skipped by the
reader and reported in one line; nothing downstream sees a wrong type.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

TRACE_VERSION = 1
# The closed set of event types (payload keys are documented in docs/trace.md).
EVENT_TYPES = frozenset({
    "run_started", "run_resumed", "run_finished", "run_failed",
    "node_entered", "node_left",
    "llm_request", "llm_response",
    "candidate", "verdict", "fitness", "rating", "tournament",
    "hypothesis", "insight", "baseline", "final_result", "note",
})
MAX_LINE_BYTES = 8 * 2**20          # far above any real event (prompts, candidate code); bounds memory


class Payload(BaseModel):
    """Keys readers use as strings, dicts or lists have those types. Numbers in a payload (`ppl`,
    `level`, `seconds`, token counts...) are not checked here: readers take them through
    `as_float` / `as_int`, so a wrong one reads as missing instead of costing the line."""

    model_config = ConfigDict(extra="allow", strict=True)     # JSON types as they are: no "1" for 1

    id: Optional[StrictStr] = None
    node: Optional[StrictStr] = None


class Envelope(Payload):
    v: Literal[1]
    seq: StrictInt = Field(ge=0)
    ts: float = Field(allow_inf_nan=False)
    type: Literal[tuple(sorted(EVENT_TYPES))]       # type: ignore[valid-type]


class RunStarted(Envelope):
    run_id: StrictStr
    config: Optional[dict[str, Any]] = None
    protocol: Optional[dict[str, Any]] = None
    llm: Optional[dict[str, Any]] = None


class RunResumed(RunStarted):
    run_id: Optional[StrictStr] = None
    from_seq: Optional[StrictInt] = None


class LLMRequest(Envelope):
    messages: Optional[list[dict[str, Any]]] = None
    key: Optional[StrictStr] = None


class LLMResponse(Envelope):
    text: Optional[StrictStr] = None


class Candidate(Envelope):
    origin: Optional[StrictStr] = None
    hypothesis: Union[StrictStr, dict[str, Any], None] = None
    path: Optional[StrictStr] = None
    parent: Optional[StrictStr] = None
    source: Optional[StrictStr] = None


class Verdict(Envelope):
    status: Optional[StrictStr] = None
    message: Optional[StrictStr] = None
    timings: Optional[dict[str, Any]] = None


class Rating(Envelope):
    ratings: Optional[dict[str, Any]] = None


class Tournament(Envelope):
    standings: Optional[list[dict[str, Any]]] = None


class Hypothesis(Envelope):
    name: Optional[StrictStr] = None
    statement: Optional[StrictStr] = None


class Insight(Envelope):
    candidate: Optional[StrictStr] = None
    hypothesis: Optional[StrictStr] = None
    relation: Optional[StrictStr] = None
    graph: Optional[dict[str, Any]] = None


class Baseline(Envelope):
    name: Optional[StrictStr] = None


class FinalResult(Envelope):
    winner: Union[dict[str, Any], StrictStr, None] = None
    test: Optional[dict[str, Any]] = None
    validation: Optional[dict[str, Any]] = None
    allocations: Optional[dict[str, Any]] = None
    sdsa: Optional[dict[str, Any]] = None
    export: Optional[StrictStr] = None


class RunFinished(Envelope):
    summary: Optional[dict[str, Any]] = None


class RunFailed(Envelope):
    error: Optional[StrictStr] = None


class Note(Envelope):
    text: Optional[StrictStr] = None


SCHEMAS: dict[str, type[Envelope]] = {
    "run_started": RunStarted, "run_resumed": RunResumed, "llm_request": LLMRequest, "llm_response": LLMResponse,
    "candidate": Candidate, "verdict": Verdict, "rating": Rating, "tournament": Tournament,
    "hypothesis": Hypothesis, "insight": Insight, "baseline": Baseline, "final_result": FinalResult,
    "run_finished": RunFinished, "run_failed": RunFailed, "note": Note,
}


def parse_line(raw: bytes) -> tuple[Optional[dict], str]:
    """(the event, "") or (None, why the line is unusable), for one line of trace.jsonl."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except (ValueError, RecursionError):
        return None, "not JSON"
    if not isinstance(data, dict):
        return None, f"a JSON {type(data).__name__}, not an object"
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        return None, "no known event type"
    schema = SCHEMAS.get(kind, Envelope)
    try:
        schema.model_validate(data)
    except ValidationError as exc:
        return None, describe(exc)
    except RecursionError:
        return None, "nested too deeply"
    return data, ""


def describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "line"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"
