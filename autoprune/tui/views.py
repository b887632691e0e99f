"""What the replay app shows, as rich renderables and table rows built from a RunView.

Pure functions of the data (no textual here), so a Python user or a test can
render the same panels without a terminal. Everything shown comes from a trace
(LLM replies, candidate code and errors): it goes through `terminal_safe` and is
never read as Rich markup (`cell` for table cells, `Text` for panels).
"""

from __future__ import annotations

from typing import Optional

from rich.console import Group
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from autoprune.reports.run_model import CandidateView, RunView, Step
from autoprune.safe_text import terminal_safe

TIMELINE_COLUMNS = ("#", "at", "node", "gen", "took", "what")
CANDIDATE_COLUMNS = ("candidate", "gen", "hypothesis", "verdict", "level", "ppl", "rating")
VERDICT_STYLE = {"ok": "green", None: "dim"}
SUMMARY_CHARS = 72      # the timeline's "what" column; the panels show everything


def cell(value: object) -> str:
    """A one-line table cell: DataTable reads str cells as markup, so brackets are escaped."""
    return escape(terminal_safe(value, keep_newlines=False))


def plain(value: object) -> Text:
    """Untrusted text as a renderable that is shown literally."""
    return Text(terminal_safe(value))


def fmt_number(value: Optional[float], digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def step_summary(view: RunView, step: Step) -> str:
    """One short phrase: what happened in this step."""
    parts = []
    for cid in step.candidate_ids:
        cand = view.candidates.get(cid)
        if cand is not None:
            parts.append(f"{cid} {cand.status or 'written'}" + (f" ppl {cand.ppl:.2f}" if cand.ppl else ""))
    if step.exchanges:
        tokens = sum(ex.prompt_tokens + ex.completion_tokens for ex in step.exchanges)
        parts.append(f"{len(step.exchanges)} LLM call{'s' if len(step.exchanges) > 1 else ''}, {tokens} tok")
    if step.standings:
        parts.append(f"standings: {', '.join(str(r.get('id', '?')) for r in step.standings[:3])}")
    parts += [phrase for phrase in map(event_phrase, step.events) if phrase]
    if not parts and not step.is_node:
        parts.append(step.node.strip("()").replace("_", " "))
    return "; ".join(parts)


def event_phrase(event: dict) -> str:
    """A few words for the events that are not candidates or LLM calls."""
    kind = event.get("type")
    if kind == "hypothesis":
        return f"hypothesis {event.get('name', '?')}"
    if kind == "baseline":
        ppl = event.get("ppl")
        return f"{event.get('name', 'baseline')} ppl {ppl:.2f}" if isinstance(ppl, (int, float)) else ""
    if kind == "insight" and event.get("hypothesis"):
        return f"insight: {event.get('relation', '?')} {event['hypothesis']}"
    if kind == "final_result":
        winner = event.get("winner")
        return f"winner {winner.get('id', '?') if isinstance(winner, dict) else winner}"
    if kind in ("run_failed", "note"):
        return str(event.get("error") or event.get("text") or kind)
    return ""


def timeline_row(view: RunView, step: Step) -> tuple[str, ...]:
    at = step.started - view.started_ts if view.started_ts is not None and step.started else 0.0
    took = "running" if step.seconds is None else f"{step.seconds:.1f}s"
    gen = "" if step.generation is None else str(step.generation)
    what = step_summary(view, step)
    what = what if len(what) <= SUMMARY_CHARS else what[: SUMMARY_CHARS - 1] + "…"
    return tuple(cell(v) for v in (str(step.index + 1), f"+{at:.0f}s", step.node, gen, took, what))


def candidate_row(cand: CandidateView) -> tuple[str, ...]:
    point = cand.best_level
    return tuple(cell(v) for v in (cand.id, "" if cand.generation is None else str(cand.generation),
                                   cand.hypothesis or "—", cand.status or "pending",
                                   "" if point is None else str(point.level),
                                   fmt_number(cand.ppl), fmt_number(cand.rating, 0)))


def step_search_text(view: RunView, step: Step) -> str:
    """Everything a search may match in a step: node, candidates, prompts, responses, messages."""
    parts = [step.node, step_summary(view, step)]
    for ex in step.exchanges:
        parts += [str(m.get("content", "")) for m in ex.messages] + [ex.text or ""]
    for cid in step.candidate_ids:
        cand = view.candidates.get(cid)
        if cand is not None:
            parts += [cand.hypothesis, cand.message, cand.source or ""]
    return "\n".join(parts).lower()


def prompt_renderable(step: Step) -> Text:
    if not step.exchanges:
        return Text(terminal_safe(f"No LLM call in step {step.index + 1} ({step.node})."), style="dim")
    text = Text()
    for n, ex in enumerate(step.exchanges, 1):
        text.append(terminal_safe(f"── call {n} ({ex.node}) ──") + "\n", style="bold")
        for message in ex.messages:
            role = message.get("role", "?") if isinstance(message, dict) else "?"
            content = message.get("content", "") if isinstance(message, dict) else message
            text.append(terminal_safe(f"[{role}]", keep_newlines=False) + "\n", style="cyan")
            text.append(terminal_safe(content) + "\n\n")
    return text


def response_renderable(step: Step) -> Text:
    if not step.exchanges:
        return Text(terminal_safe(f"No LLM call in step {step.index + 1} ({step.node})."), style="dim")
    text = Text()
    for n, ex in enumerate(step.exchanges, 1):
        tokens = f"{ex.prompt_tokens}+{ex.completion_tokens} tokens"
        took = f", {ex.seconds:.1f}s" if ex.seconds is not None else ""
        text.append(f"── response {n} ({tokens}{took}) ──\n", style="bold")
        text.append(terminal_safe(ex.text if ex.text is not None else "(waiting for the reply)") + "\n\n")
    return text


def code_renderable(view: RunView, cid: Optional[str]):
    if cid is None or cid not in view.candidates:
        return Text("No candidate selected.", style="dim")
    source = view.candidate_source(cid)
    if source is None:
        return Text(terminal_safe(f"The code of {cid} is not in the trace nor in the run folder."), style="yellow")
    cand = view.candidates[cid]
    title = Text(terminal_safe(f"{cid}  hypothesis: {cand.hypothesis or '—'}"
                               + (f"  repairs {cand.parent}" if cand.parent else ""), keep_newlines=False),
                 style="bold")
    return Group(title, Syntax(terminal_safe(source), "python", line_numbers=True, word_wrap=True))


def verdict_renderable(view: RunView, cid: Optional[str]) -> Text:
    cand = view.candidates.get(cid or "")
    if cand is None:
        return Text("No candidate selected.", style="dim")
    text = Text(terminal_safe(cand.id, keep_newlines=False), style="bold")
    text.append("  verdict: ")
    text.append(terminal_safe(cand.status or "pending (not verified yet)", keep_newlines=False),
                style=VERDICT_STYLE.get(cand.status, "bold red"))
    if cand.message:
        text.append("\n\nerror:\n", style="bold red")
        text.append(terminal_safe(cand.message))
    if cand.timings:
        text.append(terminal_safe("\n\ntimings: " + ", ".join(f"{k} {float(v):.2f}s" for k, v in cand.timings.items())))
    for point in cand.fitness.values():
        text.append(f"\nfitness level {point.level}: ppl {fmt_number(point.ppl)} on {point.nwindows or '?'} windows")
    if cand.rating is not None:
        text.append(f"\nrating: {cand.rating:.0f}")
    return text


def standings_at(view: RunView, step: Step) -> Optional[list[dict]]:
    """The tournament standings as they stood at this step (the latest at or before it)."""
    for earlier in reversed(view.steps[: step.index + 1]):
        if earlier.standings is not None:
            return earlier.standings
    return None


def standings_renderable(view: RunView, step: Step):
    standings = standings_at(view, step)
    if not standings:
        return Text("No tournament yet at this step.", style="dim")
    table = Table("rank", "candidate", "level", "rating", "ppl", "hypothesis", title="Tournament standings")
    for n, row in enumerate(standings, 1):
        rating, ppl = row.get("rating"), row.get("ppl")
        table.add_row(*(Text(terminal_safe(v, keep_newlines=False)) for v in (
            row.get("rank", n), row.get("id", row.get("candidate_id", "?")), row.get("level", ""),
            fmt_number(rating if isinstance(rating, (int, float)) else None, 0),
            fmt_number(ppl if isinstance(ppl, (int, float)) else None), row.get("hypothesis") or "")))
    return table
