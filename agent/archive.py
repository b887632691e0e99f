"""The elite archive: generation-0 seeds and the top-k candidates the prompts show.

Seeds (Wanda, RIA, magnitude, SparseGPT's OBS saliency when the run collected
X.hinv_diag, and when its bundle carries X.gram the mask programs of agent/mask_seeds.py:
SparseGPT's own mask selection and an ALPS-class ADMM one) are ordinary candidate source files under
`candidates/`; they go through the same static gate, sandbox, fitness and
tournament as LLM programs, count as generation 0 and not against `--budget`.
Wanda is the reference every report compares the winner with.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

from autoprune.agent.expression import expression_of
from autoprune.agent.mask_seeds import MASK_SEED_HYPOTHESES, MASK_SEED_SOURCES
from autoprune.agent.rank_equivalence import rank_signature
from autoprune.agent.state import AgentState, CandidateRecord
from autoprune.pruning import contract
from autoprune.sandbox.gate import declared_group
from autoprune.sandbox.parser_lock import parse as parse_python

WANDA_ID = "seed-wanda"
SPARSEGPT_ID = "seed-sparsegpt"
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
    SPARSEGPT_ID: '''"""SparseGPT (Frantar & Alistarh, 2023): the one-shot OBS saliency w² / [(XᵀX + λI)⁻¹]_jj."""


def score(W, X):
    return W**2 / X.hinv_diag
''',
    **MASK_SEED_SOURCES,
}

SEED_HYPOTHESES = {
    WANDA_ID: "wanda: a weight matters in proportion to |W| times the norm of the activation it multiplies",
    "seed-ria": "ria: relative importance within row and column, scaled by sqrt activation norm",
    "seed-magnitude": "magnitude: large weights matter, activations ignored",
    SPARSEGPT_ID: "sparsegpt: a weight matters by the loss increase of removing it alone (OBS saliency)",
    **MASK_SEED_HYPOTHESES,
}


def candidate_path(cid: str) -> str:
    return f"{CANDIDATES_DIR}/{cid}.py"


def seed_sources(**offered: bool) -> dict[str, str]:
    """The seeds whose every X field the run offers (`offered`: `contract.available`'s flags)."""
    names = {s.name for s in contract.available(**offered)}
    return {cid: source for cid, source in SEED_SOURCES.items()
            if set(re.findall(r"\bX\.(\w+)", source)) <= names}


def write_seeds(run_dir: Path, **offered: bool) -> tuple[list[str], dict[str, CandidateRecord]]:
    """Write the seed sources the run can score (idempotent) and return their ids and fresh records."""
    folder = Path(run_dir) / CANDIDATES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    records: dict[str, CandidateRecord] = {}
    sources = seed_sources(**offered)
    for cid, source in sources.items():
        (folder / f"{cid}.py").write_text(source, encoding="utf-8")
        records[cid] = CandidateRecord(id=cid, generation=0, origin="seed", hypothesis=cid.removeprefix("seed-"),
                                       path=candidate_path(cid), parent=None, status="written", message="",
                                       masks_path=None, nll={}, fitness=None, level=-1, reflection="",
                                       fingerprint=metric_fingerprint(source))
    return list(sources), records


def read_source(run_dir: Path, record: Mapping) -> str:
    return (Path(run_dir) / record["path"]).read_text(encoding="utf-8")


def select_elite(leaderboard: Sequence[str], k: int) -> list[str]:
    """Top-k of the leaderboard (only evaluated candidates are on it)."""
    return list(leaderboard)[:k]


def metric_fingerprint(source: str) -> str:
    """What a candidate computes, ignoring docstrings, comments and formatting; for a one-expression
    candidate, how it ranks weights (agent/rank_equivalence.py: `W.pow(2) * X.sq_mean` and
    `W.abs() * X.norm` share one fingerprint).

    Two sources with one fingerprint prune identically, so the second is not worth
    a sandbox run: write_code sends it back to the LLM as "already tested". Computed once per
    candidate, when it is written, and stored in its record (`fingerprint`).
    """
    try:
        return _fingerprint(parse_python(source), source)
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


def fingerprint_of(record: Mapping, run_dir: Path) -> Optional[str]:
    """The metric fingerprint stored in the record when it was written; a record from before
    fingerprints were stored gets one from its file (None when the file is gone)."""
    if record.get("fingerprint"):
        return record["fingerprint"]
    path = Path(run_dir) / record["path"]
    return metric_fingerprint(path.read_text(encoding="utf-8")) if path.is_file() else None


def known_metrics(state: AgentState, run_dir: Path) -> dict[str, CandidateRecord]:
    """Every candidate written so far (seeds included) by its metric fingerprint (the first of each)."""
    tested: dict[str, CandidateRecord] = {}
    for record in state.get("candidates", {}).values():
        fingerprint = fingerprint_of(record, run_dir)
        if fingerprint is not None:
            tested.setdefault(fingerprint, record)
    return tested
