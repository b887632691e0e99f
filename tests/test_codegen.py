"""From messy LLM replies to candidates the real static gate accepts."""

from __future__ import annotations

import pytest
import torch

from autoprune.agent.codegen import (
    CandidateFormatError, candidate_from_reply, extract_candidate, repair_prompt, resolve_code_style,
)
from autoprune.agent.expression import clean_expression, extract_expression, validate_expression
from autoprune.pruning.stats import ActivationStats
from autoprune.sandbox.gate import check_source
from autoprune.sandbox.policy import candidate_globals, compile_candidate


def run_candidate_in_process(source: str) -> torch.Tensor:
    """Gate-compile and call score() with the sandbox policy's guarded globals."""
    assert check_source(source).ok, check_source(source).message
    code, _ = compile_candidate(source)
    namespace = candidate_globals()
    exec(code, namespace)  # noqa: S102 - test-authored candidates under the sandbox policy
    acts = torch.randn(32, 12)
    X = ActivationStats(norm=acts.norm(dim=0), sq_mean=acts.pow(2).mean(0), mean=acts.mean(0),
                        var=acts.var(0), max_abs=acts.abs().amax(0), layer_index=2, num_layers=4)
    return namespace["score"](torch.randn(8, 12), X)


PROSE_THEN_FENCE = """Sure! Here is a metric inspired by Wanda.

```python
import torch
from typing import Any
from autoprune.pruning.stats import ActivationStats

def score(W: torch.Tensor, X: ActivationStats) -> torch.Tensor:
    # magnitude times input norm
    return W.abs() * X.norm
```

This works because large inputs amplify weights."""

TWO_BLOCKS = """First attempt:
```python
def helper(a):
    return a
```
Refined:
```py
def score(W, X):
    return W.abs() * math.sqrt(2) * X.norm.sqrt()
```"""

UNFENCED = """The idea: scale by the variance.
import torch
def score(W, X):
    return W.pow(2) * X.var
That's it, enjoy!"""

TRUNCATED = """```python
import torch

def score(W, X):
    a = W.abs()
    return a * X.norm

def score_extra(W, X):
    return (W.abs() * X.norm + X.va"""

RENAMED = """```python
import torch

def outlier_aware_score(W, X):
    return W.abs() * (X.sq_mean + X.max_abs).sqrt()
```"""


@pytest.mark.parametrize("reply", [PROSE_THEN_FENCE, TWO_BLOCKS, UNFENCED, TRUNCATED, RENAMED])
def test_messy_program_replies_become_gate_valid_candidates(reply):
    source = extract_candidate(reply)
    assert "def score(W" in source
    assert "typing" not in source and "autoprune" not in source
    out = run_candidate_in_process(source)
    assert out.shape == (8, 12) and torch.isfinite(out).all()


def test_missing_imports_are_added():
    source = extract_candidate(TWO_BLOCKS)
    assert source.startswith("import math\nimport torch\n") or source.startswith("import math\n")


@pytest.mark.parametrize("reply,needle", [
    ("I think magnitude pruning is best.", "no Python code"),
    ("```python\nx = 1\n```", "def score(W, X)"),
    ("```python\ndef score(W, X):\n    return (W.abs(\n```", "does not parse"),
])
def test_unusable_program_replies_raise_with_repair_message(reply, needle):
    with pytest.raises(CandidateFormatError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        extract_candidate(reply)


@pytest.mark.parametrize("reply,expected", [
    ("```python\nW.abs() * X.norm\n```", "W.abs() * X.norm"),
    ("return W.abs() * X.norm()", "W.abs() * X.norm"),
    ("Expression: torch.abs(W) * np.sqrt(X['sq_mean']);", "torch.abs(W) * torch.sqrt(X.sq_mean)"),
    ("Here you go:\n`W.pow(2) * X.var`\nBecause variance matters.", "W.pow(2) * X.var"),
    ("```python\ndef score(W, X):\n    return W.abs() * X.max_abs\n```", "W.abs() * X.max_abs"),
])
def test_expression_extraction_fixes_small_model_habits(reply, expected):
    assert extract_expression(reply) == expected


@pytest.mark.parametrize("expr,needle", [
    ("W.abs() * X.nrm", "X has no field"),
    ("foo * W", "unknown name"),
    ("os.system('x')", "not"),
    ("torch.load('w') * W", "torch.load"),
    ("W.__class__", "underscore"),
    ("[w for w in W]", "not allowed"),
    ("X.norm.cuda()", "cuda"),
    ("1.0 + 2", "must use W"),
    ("X.norm * X.max_abs", "whole input channels"),
    ("W.norm.unsqueeze(1) * X.norm", "For the input channels' norm use X.norm"),     # seen in a budget-50 run
    ("W.abs * X.norm", "is a method"),
])
def test_expression_validation_rejects_with_hint(expr, needle):
    with pytest.raises(CandidateFormatError, match=needle):
        validate_expression(expr)


@pytest.mark.parametrize("expr", [
    "W.abs() * X.norm",
    "(W.abs() / W.abs().sum(dim=1, keepdim=True) + W.abs() / W.abs().sum(dim=0, keepdim=True)) * X.norm.sqrt()",
    "W.sum() * X.norm",                          # per-channel, broadcast to W's shape
    "W.abs() * X.norm * (1 + X.layer_index / X.num_layers)",
    "W.T.T.abs() * X.norm",                      # properties are not calls
    "W.abs().max(dim=1, keepdim=True).values * 0 + W.abs() * X.norm",
    "torch.log1p(W.abs()) * X.max_abs.clamp(min=1e-6).sqrt() * math.pi",
])
def test_wrapped_expressions_pass_the_gate_and_run(expr):
    source = candidate_from_reply(f"```python\n{expr}\n```", "expression", hypothesis='say "hi" \\ there')
    out = run_candidate_in_process(source)
    assert out.shape == (8, 12) and torch.isfinite(out).all()


def test_expression_reply_without_expression_raises():
    with pytest.raises(CandidateFormatError, match="Write ONE Python expression"):
        candidate_from_reply("I like pruning.", "expression")


def test_repair_prompt_carries_error_and_source():
    text = repair_prompt("Line 3: import of 'numpy' is not allowed", "import numpy\ndef score(W, X): ...")
    assert "import of 'numpy'" in text and "```python\nimport numpy" in text and "def score(W, X)" in text


def test_code_style_resolution():
    assert resolve_code_style("auto", embedded_llm=True) == "expression"
    assert resolve_code_style("auto", embedded_llm=False) == "program"
    assert resolve_code_style("program", embedded_llm=True) == "program"
    with pytest.raises(ValueError):
        resolve_code_style("poetry", embedded_llm=True)  # type: ignore[arg-type]


@pytest.mark.parametrize("reply,expected", [
    # real replies of the embedded model (benchmarks/results/embedded_llm_validity.json)
    ("```python\nW.pow(2) * X.sq_mean = X.sq_mean * X.sq_mean\n```", "W.pow(2) * X.sq_mean"),
    ("```python\nW.abs() * (X.sq_mean + X.max_abs).sqrt() + W.abs() * (X.sq_mean + X.max_abs) * (1.0 /",
     "W.abs() * (X.sq_mean + X.max_abs).sqrt() + W.abs() * (X.sq_mean + X.max_abs)"),
    ("```python\nscore = W.abs() * X.var\n```", "W.abs() * X.var"),
])
def test_expression_salvages_assignments_and_cut_off_replies(reply, expected):
    assert extract_expression(reply) == expected


def test_comparison_is_not_mistaken_for_assignment():
    assert extract_expression("`torch.where(W.abs() >= 0.1, W.abs(), W.abs() * 0.5) * X.norm`").startswith("torch.where")
