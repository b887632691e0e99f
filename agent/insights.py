"""The insight graph: hypotheses linked to the evidence that supports or refutes them.

Nodes are hypotheses (named, with a statement) and evidence (one candidate's
outcome: verdict, fitness, paired result against Wanda). An edge says whether
the evidence supports or refutes the hypothesis. Reflections attach lessons to
hypotheses. `render()` turns the graph into the short text block the next
prompts show, so what the search learnt steers what it tries next.
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
    lessons: dict[str, list[str]] = field(default_factory=dict)     # hypothesis -> lessons

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "InsightGraph":
        data = data or {}
        return cls(hypotheses=dict(data.get("hypotheses", {})),
                   evidence=[Evidence(**e) for e in data.get("evidence", [])],
                   lessons={k: list(v) for k, v in data.get("lessons", {}).items()})

    def to_dict(self) -> dict:
        return {"hypotheses": dict(self.hypotheses),
                "evidence": [vars(e).copy() for e in self.evidence],
                "lessons": {k: list(v) for k, v in self.lessons.items()}}

    def add_hypothesis(self, name: str, statement: str) -> None:
        self.hypotheses.setdefault(name, statement)

    def add_evidence(self, evidence: Evidence) -> None:
        self.hypotheses.setdefault(evidence.hypothesis, "")
        self.evidence = [e for e in self.evidence if e.candidate != evidence.candidate] + [evidence]

    def add_lesson(self, hypothesis: str, lesson: str) -> None:
        lesson = " ".join(lesson.split())
        if lesson and lesson not in self.lessons.get(hypothesis, []):
            self.lessons.setdefault(hypothesis, []).append(lesson)

    def tally(self, hypothesis: str) -> dict[str, int]:
        counts = {"supports": 0, "refutes": 0, "inconclusive": 0}
        for e in self.evidence:
            if e.hypothesis == hypothesis:
                counts[e.relation] = counts.get(e.relation, 0) + 1
        return counts

    def render(self, max_hypotheses: int = 8, max_lessons: int = 2) -> str:
        """The text block prompts show: most recent hypotheses first, with their score and lessons."""
        if not self.hypotheses:
            return "No hypotheses tested yet."
        lines = []
        for name in list(self.hypotheses)[::-1][:max_hypotheses]:
            t = self.tally(name)
            best = min((e.fitness for e in self.evidence if e.hypothesis == name and e.fitness is not None),
                       default=None)
            score = f"supported {t['supports']}x, refuted {t['refutes']}x"
            score += f", best ppl {best:.2f}" if best is not None else ""
            lines.append(f"- {name}: {self.hypotheses[name] or '(no statement)'} [{score}]")
            for lesson in self.lessons.get(name, [])[-max_lessons:]:
                lines.append(f"    lesson: {lesson}")
        return "\n".join(lines)
