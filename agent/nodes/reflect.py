"""reflect: measured evidence updates the insight graph; the LLM may explain it in a lesson.

The direction of every edge comes from agent/evidence.py (paired NLL effects on common
windows, with their intervals). The LLM is shown those findings and the comparable standings
and asked why; its lesson is attached to the hypothesis it proposed, as words, never as an
edge. A lesson that restates the prompt, repeats an earlier one or repeats itself is
dropped (agent/lesson_filter.py) and the drop is traced. Runs without an LLM (`--proposer
mutation|random`) record the evidence and ask nothing.
"""

from __future__ import annotations

import re

from autoprune.agent.archive import WANDA_ID
from autoprune.agent.evidence import comparable_ranking, measured_findings, versus_reference
from autoprune.agent.insights import Evidence, InsightGraph
from autoprune.agent.lesson_filter import rejection
from autoprune.agent.nodes.common import ask, prompt_context
from autoprune.agent.population import verified_sources
from autoprune.agent.services import AgentServices
from autoprune.agent.state import AgentState, is_search_candidate

_LESSON = re.compile(r"LESSON\s*:\s*(.+)", re.I)


def parse_lessons(text: str, limit: int = 3) -> list[str]:
    lessons = [m.group(1).strip() for m in _LESSON.finditer(text)]
    if not lessons:
        lessons = [ln.strip(" -*#") for ln in text.splitlines() if len(ln.strip(" -*#")) > 10][:1]
    return [" ".join(lesson.split())[:240] for lesson in lessons[:limit]]


def evidence_for(record: dict, wanda: dict) -> Evidence:
    """A candidate's outcome against Wanda: the paired NLL effect on common windows and its interval."""
    if record.get("status") != "ok":
        return Evidence(record["id"], record.get("hypothesis", ""), record.get("status", "?"), "inconclusive",
                        None, (record.get("message") or "")[:160])
    effect = versus_reference(record, wanda) if record["id"] != WANDA_ID else None
    if effect is None:
        return Evidence(record["id"], record.get("hypothesis", ""), "ok", "inconclusive", record.get("fitness"),
                        "not compared with Wanda")
    detail = (f"NLL vs Wanda {effect.mean:+.4f} (95% CI {effect.low:+.4f} to {effect.high:+.4f}) "
              f"on {effect.windows} common windows")
    return Evidence(record["id"], record.get("hypothesis", ""), "ok", effect.relation, record.get("fitness"), detail)


def results_text(state: AgentState, latest: list[dict], evidence: list[Evidence], findings: list[dict]) -> str:
    candidates = state.get("candidates", {})
    n, ranked = comparable_ranking(candidates, state.get("leaderboard", [])[:5])
    lines = [f"Standings (validation perplexity on the same {n} windows, best first):"]
    lines += [f"{rank}. {cid}: {ppl:.2f}" for rank, (cid, ppl) in enumerate(ranked, 1)]
    lines.append("This generation:")
    for rec, ev in zip(latest, evidence):
        outcome = ev.detail if rec.get("status") == "ok" else f"{ev.verdict}: {ev.detail}"
        lines.append(f"- {rec['id']}: {outcome}")
    if not latest:
        lines.append("- no candidate could be written for this hypothesis")
    decided = [f for f in findings if f["relation"] != "inconclusive"][:3]
    if decided:
        lines.append("Measured effects (negative NLL difference = lower perplexity):")
        lines += [f"- {f['name']}: {f['mean_nll_diff']:+.4f} ({f['relation']} 'it helps')" for f in decided]
    return "\n".join(lines)


def explained_lessons(state: AgentState, services: AgentServices, results: str,
                      graph: InsightGraph) -> tuple[list[str], dict]:
    """The LLM's lessons that pass the filter, and the call's accounting (none without an LLM)."""
    if services.config.proposer != "llm" or not services.budget.may_ask(state):
        return [], {}
    exchange, accounting = ask(services, state, "reflect", results=results)
    messages = services.prompts.render("reflect", **prompt_context(services, state), results=results)
    prompt = "\n".join(m["content"] for m in messages)
    kept: list[str] = []
    for lesson in parse_lessons(exchange.text):
        why = rejection(lesson, prompt=prompt, earlier=graph.all_lessons() + kept)
        if why is None:
            kept.append(lesson)
        else:
            services.trace.emit("note", text=f"reflect: lesson not recorded ({why}): {lesson[:120]}")
    return kept, accounting


def reflect(state: AgentState, services: AgentServices) -> dict:
    generation = int(state.get("generation", 0))
    candidates = dict(state.get("candidates", {}))
    latest = [rec for rec in candidates.values() if rec.get("generation") == generation and is_search_candidate(rec)]
    evidence = [evidence_for(rec, candidates.get(WANDA_ID, {})) for rec in latest]
    findings = [f.to_dict() for f in measured_findings(candidates, verified_sources(candidates, services.run_dir))]
    graph = InsightGraph.from_dict(state.get("insights"))
    for ev in evidence:
        graph.add_evidence(ev)
    graph.set_findings(findings)
    lessons, accounting = explained_lessons(state, services, results_text(state, latest, evidence, findings), graph)
    hypothesis = (state.get("hypothesis") or {}).get("name", "")
    for lesson in lessons:
        graph.add_lesson(hypothesis, lesson)
    for rec in latest:
        candidates[rec["id"]] = {**rec, "reflection": " ".join(lessons)}
    final = evidence[-1] if evidence else None
    services.trace.emit("insight", generation=generation, candidate=final.candidate if final else None,
                        hypothesis=hypothesis, relation=final.relation if final else "inconclusive",
                        lesson=" ".join(lessons), graph=graph.to_dict())
    return {"insights": graph.to_dict(), "candidates": candidates, **accounting}
