"""The insight graph: hypotheses linked to the measured evidence that supports or refutes them.

Two kinds of edge, both decided by trusted analysis (agent/evidence.py), never by the LLM:
- findings: "adding X.var", "X.norm -> X.max_abs", ... with the paired NLL effect and its
  95 % interval over every archive pair differing in that one ingredient (replaced as a
  whole after each tournament: the archive only grows, so the newest estimate is the best);
- evidence: one candidate's outcome against Wanda (paired effect on common windows) for the
  named hypothesis the LLM proposed when it was written.
Lessons are the LLM's words about the hypothesis it proposed, recorded only after
agent/lesson_filter.py let them through; they never decide a direction. `render()` turns the graph into the short text
block the next prompts show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Evidence:
    candidate: str
    hypothesis: str
    verdict: str
    relation: str                  # "supports" | "refutes" | "inconclusive"
    fitness: Optional[float] = None
    detail: str = ""


@dataclass
class InsightGraph:
    hypotheses: dict[str, str] = field(default_factory=dict)        # name -> statement
    evidence: list[Evidence] = field(default_factory=list)
    lessons: dict[str, list[str]] = field(default_factory=dict)     # hypothesis -> lessons (filtered words)
    findings: list[dict] = field(default_factory=list)              # evidence.Finding.to_dict(), strongest first

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "InsightGraph":
        data = data or {}
        return cls(hypotheses=dict(data.get("hypotheses", {})),
                   evidence=[Evidence(**e) for e in data.get("evidence", [])],
                   lessons={k: list(v) for k, v in data.get("lessons", {}).items()},
                   findings=[dict(f) for f in data.get("findings", [])])

    def to_dict(self) -> dict:
        return {"hypotheses": dict(self.hypotheses),
                "evidence": [vars(e).copy() for e in self.evidence],
                "lessons": {k: list(v) for k, v in self.lessons.items()},
                "findings": [dict(f) for f in self.findings]}

    def add_hypothesis(self, name: str, statement: str) -> None:
        self.hypotheses.setdefault(name, statement)

    def add_evidence(self, evidence: Evidence) -> None:
        self.hypotheses.setdefault(evidence.hypothesis, "")
        self.evidence = [e for e in self.evidence if e.candidate != evidence.candidate] + [evidence]

    def set_findings(self, findings: list[dict]) -> None:
        self.findings = [dict(f) for f in findings]

    def add_lesson(self, hypothesis: str, lesson: str) -> None:
        """Record an already-filtered lesson (agent/lesson_filter.py) about a hypothesis."""
        lesson = " ".join(lesson.split())
        if lesson and lesson not in self.lessons.get(hypothesis, []):
            self.lessons.setdefault(hypothesis, []).append(lesson)

    def all_lessons(self) -> list[str]:
        return [lesson for lessons in self.lessons.values() for lesson in lessons]

    def tally(self, hypothesis: str) -> dict[str, int]:
        counts = {"supports": 0, "refutes": 0, "inconclusive": 0}
        for e in self.evidence:
            if e.hypothesis == hypothesis:
                counts[e.relation] = counts.get(e.relation, 0) + 1
        return counts

    def render(self, max_findings: int = 5, max_hypotheses: int = 5, max_lessons: int = 1) -> str:
        """The text block prompts show: measured findings first, then the latest hypotheses."""
        if not self.hypotheses and not self.findings:
            return "No hypotheses tested yet."
        lines = []
        decided = [f for f in self.findings if f.get("relation") != "inconclusive"][:max_findings]
        if decided:
            lines.append("Measured (paired validation NLL on common windows, with minus without):")
            for f in decided:
                verb = "helps" if f["relation"] == "supports" else "hurts"
                lines.append(f"- {f['name']} {verb}: perplexity {f['ppl_change_pct']:+.1f}% "
                             f"(95% CI NLL {f['ci_low']:+.3f} to {f['ci_high']:+.3f}, {f['pairs']} pairs)")
        for name in list(self.hypotheses)[::-1][:max_hypotheses]:
            t = self.tally(name)
            lines.append(f"- {name}: {self.hypotheses[name] or '(no statement)'} "
                         f"[vs Wanda: better {t['supports']}x, worse {t['refutes']}x, unclear {t['inconclusive']}x]")
            lines += [f"    lesson: {lesson}" for lesson in self.lessons.get(name, [])[-max_lessons:]]
        return "\n".join(lines)
