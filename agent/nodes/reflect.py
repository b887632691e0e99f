"""reflect: why winners won and losers lost; the lessons and evidence update the insight graph."""

from __future__ import annotations

import re

from autoprune.agent.archive import WANDA_ID
from autoprune.agent.insights import Evidence, InsightGraph
from autoprune.agent.nodes.common import ask
from autoprune.agent.services import AgentServices
from autoprune.agent.state import AgentState, is_search_candidate
from autoprune.agent.tournament import paired_wins

_LESSON = re.compile(r"LESSON\s*:\s*(.+)", re.I)


def parse_lessons(text: str, limit: int = 3) -> list[str]:
    lessons = [m.group(1).strip() for m in _LESSON.finditer(text)]
    if not lessons:
        lessons = [ln.strip(" -*#") for ln in text.splitlines() if len(ln.strip(" -*#")) > 10][:1]
    return [" ".join(lesson.split())[:240] for lesson in lessons[:limit]]


def versus_wanda(record: dict, wanda: dict) -> tuple[str, str]:
    """(relation, detail) of a verified candidate against Wanda, paired on their common windows."""
    common = [lvl for lvl in record.get("nll", {}) if lvl in wanda.get("nll", {})]
    if not common:
        return "inconclusive", "not compared with Wanda"
    level = max(common, key=int)
    mine, ref = record["nll"][level], wanda["nll"][level]
    wins, n = paired_wins(mine, ref), min(len(mine), len(ref))
    relation = "supports" if wins > n / 2 else "refutes" if wins < n / 2 else "inconclusive"
    return relation, f"beat Wanda on {wins:g}/{n} windows at level {level}"


def evidence_for(record: dict, wanda: dict) -> Evidence:
    if record.get("status") != "ok":
        return Evidence(record["id"], record.get("hypothesis", ""), record.get("status", "?"), "inconclusive",
                        None, (record.get("message") or "")[:160])
    relation, detail = versus_wanda(record, wanda)
    return Evidence(record["id"], record.get("hypothesis", ""), "ok", relation, record.get("fitness"), detail)


def results_text(state: AgentState, latest: list[dict], evidence: list[Evidence]) -> str:
    candidates = state.get("candidates", {})
    lines = ["Standings (best first):"]
    for rank, cid in enumerate(state.get("leaderboard", [])[:5], 1):
        rec = candidates[cid]
        lines.append(f"{rank}. {cid} [{rec.get('hypothesis', '')}] perplexity {rec.get('fitness', float('nan')):.2f}")
    lines.append("This generation:")
    for rec, ev in zip(latest, evidence):
        outcome = f"perplexity {rec['fitness']:.2f}, {ev.detail}" if rec.get("fitness") else f"{ev.verdict}: {ev.detail}"
        lines.append(f"- {rec['id']} [{rec.get('hypothesis', '')}]: {outcome}")
    if not latest:
        lines.append("- no candidate could be written for this hypothesis")
    return "\n".join(lines)


def reflect(state: AgentState, services: AgentServices) -> dict:
    generation = int(state.get("generation", 0))
    candidates = dict(state.get("candidates", {}))
    latest = [rec for rec in candidates.values() if rec.get("generation") == generation and is_search_candidate(rec)]
    wanda = candidates.get(WANDA_ID, {})
    evidence = [evidence_for(rec, wanda) for rec in latest]
    lessons, accounting = [], {}
    if services.budget.may_ask(state):      # at the cap, the evidence is still recorded, without a lesson
        exchange, accounting = ask(services, state, "reflect", results=results_text(state, latest, evidence))
        lessons = parse_lessons(exchange.text)
    graph = InsightGraph.from_dict(state.get("insights"))
    hypothesis = (state.get("hypothesis") or {}).get("name", "")
    for ev in evidence:
        graph.add_evidence(ev)
    for lesson in lessons:
        graph.add_lesson(hypothesis, lesson)
    for rec in latest:
        candidates[rec["id"]] = {**rec, "reflection": " ".join(lessons)}
    final = evidence[-1] if evidence else None
    services.trace.emit("insight", generation=generation, candidate=final.candidate if final else None,
                        hypothesis=hypothesis, relation=final.relation if final else "inconclusive",
                        lesson=" ".join(lessons), graph=graph.to_dict())
    return {"insights": graph.to_dict(), "candidates": candidates, **accounting}
