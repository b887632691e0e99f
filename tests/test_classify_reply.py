"""write_code's one classifier: an LLM reply is a candidate or a reasoned rejection, never an exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune.agent.archive import SEED_SOURCES, fingerprint_of, metric_fingerprint, known_metrics, write_seeds
from autoprune.agent.nodes.write_code import Candidate, Rejection, classify_reply

TESTED = {metric_fingerprint(source): {"id": cid, "status": "ok", "fitness": 41.5}
          for cid, source in SEED_SOURCES.items()}


def classify(text: str, style: str = "expression", **kwargs):
    return classify_reply(text, style=style, hypothesis="rms: inputs with large RMS matter", tested=TESTED, **kwargs)


def test_a_new_metric_is_a_candidate_with_its_fingerprint():
    verdict = classify("```python\nW.abs() * X.max_abs\n```")
    assert isinstance(verdict, Candidate) and verdict.origin == "llm" and verdict.parent is None
    assert "X.max_abs" in verdict.source and verdict.fingerprint == metric_fingerprint(verdict.source)
    assert verdict.fingerprint not in TESTED


def test_a_metric_that_ranks_like_a_tested_one_is_a_rejection_naming_it():
    verdict = classify("```python\nW.pow(2) * X.sq_mean\n```")        # ranks exactly like Wanda
    assert isinstance(verdict, Rejection) and verdict.repeats["id"] == "seed-wanda"
    assert "seed-wanda" in verdict.reason and "perplexity 41.5" in verdict.reason and "DIFFERENT" in verdict.reason
    assert "X.sq_mean" in verdict.source                              # what a trusted mutation starts from


def test_garbage_and_empty_replies_are_rejections_with_the_repair_instruction():
    for text in ("I think weights are important.", "", "```python\n```"):
        verdict = classify(text)
        assert isinstance(verdict, Rejection) and verdict.repeats is None and verdict.source == ""
        assert "expression" in verdict.reason, text
    program = classify("Here you go: def score(W):", style="program")
    assert isinstance(program, Rejection) and "score(W, X)" in program.reason


def test_a_failed_llm_call_is_a_rejection_saying_so():
    verdict = classify("", call_error="timed out after 3 retries")
    assert isinstance(verdict, Rejection) and "LLM call failed" in verdict.reason and "timed out" in verdict.reason


def test_a_program_reply_is_classified_like_an_expression():
    fresh = classify("```python\nimport torch\n\ndef score(W, X):\n    return W.abs() * X.var.unsqueeze(0)\n```",
                     style="program")
    assert isinstance(fresh, Candidate) and "def score" in fresh.source
    again = classify(f"```python\n{SEED_SOURCES['seed-magnitude']}\n```", style="program")
    assert isinstance(again, Rejection) and again.repeats["id"] == "seed-magnitude"


FRAGMENTS = st.sampled_from(["W", "X.norm", "X.max_abs", "X.var", "X.name", "abs()", "torch.log1p(", "(", ")", "*",
                             "+", "/", "**", ".sqrt()", "1e-8", "```python\n", "```", "\n", "def score(W, X):\n",
                             "    return ", "import os\n", "GROUP = 'layer'\n", "lambda", "[", "]", "'", '"""'])
REPLIES = st.one_of(st.text(max_size=300), st.lists(FRAGMENTS, max_size=40).map("".join),
                    st.lists(FRAGMENTS, max_size=25).map(lambda parts: "```python\n" + "".join(parts) + "\n```"))


@settings(max_examples=300, deadline=None)
@given(text=REPLIES, style=st.sampled_from(["expression", "program"]))
def test_no_llm_reply_makes_the_classifier_raise(text, style):
    verdict = classify(text, style=style)
    assert isinstance(verdict, (Candidate, Rejection))
    if isinstance(verdict, Candidate):
        assert verdict.fingerprint == metric_fingerprint(verdict.source) and verdict.fingerprint not in TESTED
    else:
        assert verdict.reason.strip()


def test_fingerprints_are_stored_once_and_read_back(tmp_path):
    """Seeds carry their fingerprint from the start; a record without one (an older run folder)
    gets it from its file, and a record whose file is gone and has none is skipped."""
    seed_ids, records = write_seeds(tmp_path)
    assert all(records[cid]["fingerprint"] == metric_fingerprint(SEED_SOURCES[cid]) for cid in seed_ids)
    (tmp_path / records["seed-ria"]["path"]).unlink()             # the stored fingerprint is what counts
    old = {k: v for k, v in records["seed-magnitude"].items() if k != "fingerprint"}
    gone = {"id": "g001-a0", "path": "candidates/g001-a0.py"}
    state = {"candidates": {**records, "seed-magnitude": old, "g001-a0": gone}}
    assert fingerprint_of(old, tmp_path) == records["seed-magnitude"]["fingerprint"]
    assert fingerprint_of(gone, tmp_path) is None
    assert {rec["id"] for rec in known_metrics(state, tmp_path).values()} == set(seed_ids)
