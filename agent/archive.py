"""The elite archive: generation-0 seeds and the top-k candidates the prompts show.

Seeds (Wanda, RIA, magnitude) are ordinary candidate source files under
`candidates/`; they go through the same static gate, sandbox, fitness and
tournament as LLM programs, count as generation 0 and not against `--budget`.
Wanda is the reference every report compares the winner with.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Mapping, Optional

from autoprune.agent.expression import expression_of
from autoprune.agent.rank_equivalence import rank_signature
from autoprune.agent.state import AgentState, CandidateRecord
from autoprune.sandbox.gate import declared_group

WANDA_ID = "seed-wanda"
CANDIDATES_DIR = "candidates"

SEED_SOURCES = {
    WANDA_ID: '''"""Wanda (Sun et al., 2023): weight magnitude times the input channel's L2 norm."""


def score(W, X):
    return W.abs() * X.norm.unsqueeze(0)
''',
    "seed-ria": '''"""RIA (Zhang et al., 2024): relative importance in its row and column, times sqrt of the input norm."""


def score(W, X):
    A = W.abs()
    relative = A / (A.sum(dim=1, keepdim=True) + 1e-12) + A / (A.sum(dim=0, keepdim=True) + 1e-12)
    return relative * X.norm.sqrt().unsqueeze(0)
''',
    "seed-magnitude": '''"""Magnitude pruning: the smallest |W| of the whole layer go first."""

GROUP = "layer"


def score(W, X):
    return W.abs()
''',
}

SEED_HYPOTHESES = {
    WANDA_ID: "wanda: a weight matters in proportion to |W| times the norm of the activation it multiplies",
    "seed-ria": "ria: relative importance within row and column, scaled by sqrt activation norm",
    "seed-magnitude": "magnitude: large weights matter, activations ignored",
}


def candidate_path(cid: str) -> str:
    return f"{CANDIDATES_DIR}/{cid}.py"


def write_seeds(run_dir: Path) -> tuple[list[str], dict[str, CandidateRecord]]:
    """Write the seed sources (idempotent) and return their ids and fresh records."""
    folder = Path(run_dir) / CANDIDATES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    records: dict[str, CandidateRecord] = {}
    for cid, source in SEED_SOURCES.items():
        (folder / f"{cid}.py").write_text(source, encoding="utf-8")
        records[cid] = CandidateRecord(id=cid, generation=0, origin="seed", hypothesis=cid.removeprefix("seed-"),
                                       path=candidate_path(cid), parent=None, status="written", message="",
                                       masks_path=None, nll={}, fitness=None, level=-1, reflection="")
    return list(SEED_SOURCES), records


def read_source(run_dir: Path, record: Mapping) -> str:
    return (Path(run_dir) / record["path"]).read_text(encoding="utf-8")


def select_elite(state: AgentState, k: int) -> list[str]:
    """Top-k of the leaderboard (only evaluated candidates are on it)."""
    return list(state.get("leaderboard", []))[:k]


def render_archive(state: AgentState, run_dir: Path, *, k: int, max_code_chars: int = 900) -> str:
    """The elite as prompt text: rank, fitness, hypothesis, reflection and code."""
    candidates = state.get("candidates", {})
    blocks = []
    for rank, cid in enumerate(state.get("archive", [])[:k], 1):
        rec = candidates[cid]
        fitness = rec.get("fitness")
        head = f"#{rank} {cid} (generation {rec.get('generation', 0)}, "
        head += f"perplexity {fitness:.2f} on {level_words(rec)})" if fitness is not None else "not evaluated)"
        lines = [head, f"hypothesis: {rec.get('hypothesis') or '-'}"]
        if rec.get("reflection"):
            lines.append(f"reflection: {rec['reflection']}")
        code = read_source(run_dir, rec).strip()
        lines.append("code:\n" + (code if len(code) <= max_code_chars else code[:max_code_chars] + "\n# ..."))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "The archive is empty."


def level_words(record: Mapping) -> str:
    level = record.get("level", -1)
    n = len(record.get("nll", {}).get(str(level), []))
    return f"fidelity level {level}, {n} windows"


def metric_fingerprint(source: str) -> str:
    """What a candidate computes, ignoring docstrings, comments and formatting; for a one-expression
    candidate, how it ranks weights (agent/rank_equivalence.py: `W.pow(2) * X.sq_mean` and
    `W.abs() * X.norm` share one fingerprint).

    Two sources with one fingerprint prune identically, so the second is not worth
    a sandbox run: write_code sends it back to the LLM as "already tested".
    """
    try:
        return _fingerprint(ast.parse(source), source)
    except (SyntaxError, RecursionError, MemoryError):
        return source.strip()


def _fingerprint(tree: ast.Module, source: str) -> str:
    expression = expression_of(source)
    signature = rank_signature(expression, declared_group(tree) or "row") if expression else None
    if signature is not None:
        return "ranks as " + signature
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def tested_fingerprints(state: AgentState, run_dir: Path) -> set[str]:
    """The metric fingerprints of every candidate written so far (seeds included)."""
    paths = (Path(run_dir) / record["path"] for record in state.get("candidates", {}).values())
    return {metric_fingerprint(p.read_text(encoding="utf-8")) for p in paths if p.is_file()}


def already_tested(state: AgentState, run_dir: Path, source: str) -> Optional[CandidateRecord]:
    """The earlier candidate (seeds included) that computes the same metric as `source`, if any."""
    fingerprint = metric_fingerprint(source)
    for record in state.get("candidates", {}).values():
        path = Path(run_dir) / record["path"]
        if path.is_file() and metric_fingerprint(path.read_text(encoding="utf-8")) == fingerprint:
            return record
    return None
