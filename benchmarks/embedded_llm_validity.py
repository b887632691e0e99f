"""How often does the embedded 135M model write a valid candidate? (expression vs program mode)

Starts the embedded server (`transformers serve`, CPU, float32), asks for N
candidates per mode with the built-in GCoT templates, turns each reply into a
candidate with `agent.codegen`, and checks it with the real static gate
(`sandbox.gate.check_source`) plus a trial call: the gate-compiled candidate is
executed with the sandbox policy's guarded globals on random tensors shaped
like a real layer, and its output must be finite and shaped like W.
Optionally one repair turn per failure (`--repairs 1`).

    python benchmarks/embedded_llm_validity.py --n 20 --program-n 8
writes benchmarks/results/embedded_llm_validity.{json,md}.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from autoprune.agent.codegen import CandidateFormatError, candidate_from_reply, repair_prompt
from autoprune.agent.embedded_server import embedded_llm_server
from autoprune.agent.llm import LLMClient
from autoprune.prompts import get_prompt_set
from autoprune.pruning.stats import ActivationStats
from autoprune.sandbox.gate import check_source
from autoprune.sandbox.policy import candidate_globals, compile_candidate

HYPOTHESES = [
    "weights feeding channels with large activations matter more",
    "outlier input channels (large max_abs) must be protected",
    "a weight matters relative to the other weights in its row",
    "channels with high activation variance carry information",
    "deeper layers are more sensitive, so scale importance by depth",
    "squared weight times mean squared input approximates the loss increase",
    "combine magnitude with the square root of the input norm",
    "small inputs with large weights still matter through the mean activation",
    "log-compressed weight magnitude times input norm is more robust",
    "importance is weight magnitude normalised per column times input norm",
]
RESULTS = Path(__file__).parent / "results"


def trial_call(source: str) -> str:
    """'' when the candidate runs on random layer-shaped inputs; else the error for repair."""
    gate = check_source(source)
    if not gate.ok:
        return gate.message
    code, _ = compile_candidate(source)
    namespace = candidate_globals()
    out_f, in_f = 24, 40
    W = torch.randn(out_f, in_f)
    acts = torch.randn(64, in_f) * torch.linspace(0.1, 5, in_f)
    X = ActivationStats(norm=acts.norm(dim=0), sq_mean=acts.pow(2).mean(0), mean=acts.mean(0),
                        var=acts.var(0), max_abs=acts.abs().amax(0), layer_index=3, num_layers=30,
                        name="q_proj")
    try:
        exec(code, namespace)  # noqa: S102 - policy-compiled, guarded globals, our own model's output
        result = namespace["score"](W, X)
    except Exception as exc:  # the candidate's crash is the measurement
        return f"score(W, X) raised {type(exc).__name__}: {exc}"
    if not isinstance(result, torch.Tensor) or tuple(result.shape) != (out_f, in_f):
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        return f"score(W, X) returned {shape}, expected a tensor shaped like W {(out_f, in_f)}"
    if not torch.isfinite(result).all():
        return "score(W, X) returned NaN or inf; guard divisions and logs (add 1e-8, use log1p)"
    return ""


def one_candidate(llm: LLMClient, prompts, style: str, hypothesis: str, seed: int, repairs: int,
                  max_tokens: int) -> dict:
    # example_offset rotates the few-shot pool, as the agent does per candidate.
    messages = prompts.render("write_code", code_style=style, hypothesis=hypothesis, example_offset=seed)
    record = {"style": style, "hypothesis": hypothesis, "seed": seed, "attempts": []}
    for attempt in range(repairs + 1):
        reply = llm.chat(messages, node="write_code" if attempt == 0 else "repair", temperature=0.7,
                         max_tokens=max_tokens, seed=seed + attempt)
        try:
            source = candidate_from_reply(reply.text, style, hypothesis=hypothesis)
            error = trial_call(source)
        except CandidateFormatError as exc:
            source, error = "", str(exc)
        record["attempts"].append({"reply": reply.text, "valid": not error, "error": error[:300],
                                   "completion_tokens": reply.completion_tokens,
                                   "prompt_tokens": reply.prompt_tokens, "seconds": reply.seconds})
        if not error:
            record["source"] = source
            break
        messages = repair_messages(prompts, style, hypothesis, reply.text, source, error)
    record["valid_first_try"] = record["attempts"][0]["valid"]
    record["valid"] = record["attempts"][-1]["valid"]
    return record


def repair_messages(prompts, style: str, hypothesis: str, reply: str, source: str, error: str) -> list:
    if style == "expression":
        expression = reply.strip().strip("`").replace("python\n", "").strip()[:200]
        return prompts.render("repair", code_style=style, hypothesis=hypothesis, expression=expression,
                              error=error.splitlines()[0][:300])
    return prompts.render("repair", code_style=style, error=error, source=source or reply[:1500])


def expression_key(source: str) -> str:
    """The scoring code without comments/docstrings, to count distinct candidates."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            node.body = [b for b in node.body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
    return ast.unparse(tree)


def summarise(records: list[dict]) -> dict:
    attempts = [a for r in records for a in r["attempts"]]
    tokens = sum(a["completion_tokens"] for a in attempts)
    seconds = sum(a["seconds"] for a in attempts)
    distinct = {expression_key(r["source"]) for r in records if r["valid"]}
    return {"n": len(records), "distinct_valid": len(distinct), "valid_first_try": sum(r["valid_first_try"] for r in records),
            "valid_after_repair": sum(r["valid"] for r in records), "calls": len(attempts),
            "prompt_tokens_mean": round(statistics.mean(a["prompt_tokens"] for a in attempts), 1),
            "completion_tokens": tokens, "seconds": round(seconds, 1),
            "completion_tokens_per_s": round(tokens / seconds, 2) if seconds else None,
            "seconds_per_call_median": round(statistics.median(a["seconds"] for a in attempts), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12, help="expression-mode candidates")
    ap.add_argument("--program-n", type=int, default=3, help="program-mode candidates (long replies)")
    ap.add_argument("--repairs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--rescore", action="store_true",
                    help="no LLM: re-extract and re-check the replies stored in OUT/embedded_llm_validity.json "
                         "with the current extractor (after codegen changes)")
    args = ap.parse_args(argv)
    if args.rescore:
        return rescore(args.out)
    prompts = get_prompt_set("gcot")
    plan = [("expression", args.n, 48), ("program", args.program_n, 128)]
    records, started = [], time.perf_counter()
    with embedded_llm_server() as server:
        llm = LLMClient(server.base_url, server.model, timeout=300, max_retries=1)
        for style, n, max_tokens in plan:
            for i in range(n):
                rec = one_candidate(llm, prompts, style, HYPOTHESES[i % len(HYPOTHESES)], 1000 + i,
                                    args.repairs, max_tokens)
                records.append(rec)
                print(f"{style:10s} {i + 1:2d}/{n} valid={rec['valid']} first={rec['valid_first_try']}",
                      file=sys.stderr, flush=True)
    result = {"benchmark": "embedded_llm_validity", "model": "SmolLM2-135M-Instruct (embedded, CPU, float32)",
              "server": "transformers serve", "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "wall_seconds": round(time.perf_counter() - started, 1), "repairs_allowed": args.repairs,
              "summary": {style: summarise([r for r in records if r["style"] == style]) for style, _, _ in plan},
              "records": records}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "embedded_llm_validity.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    (args.out / "embedded_llm_validity.md").write_text(to_markdown(result), encoding="utf-8")
    print(to_markdown(result))
    return 0


def rescore(out: Path) -> int:
    """Same stored replies, current extraction + gate + trial call: what a codegen change buys."""
    path = out / "embedded_llm_validity.json"
    result = json.loads(path.read_text(encoding="utf-8"))
    rescored = {}
    for style in result["summary"]:
        recs = [r for r in result["records"] if r["style"] == style]
        valid = []
        for r in recs:
            errors = []
            for a in r["attempts"]:
                try:
                    errors.append(trial_call(candidate_from_reply(a["reply"], style, hypothesis=r["hypothesis"])))
                except CandidateFormatError as exc:
                    errors.append(str(exc))
            valid.append((not errors[0], any(not e for e in errors)))
        rescored[style] = {"n": len(recs), "valid_first_try": sum(v[0] for v in valid),
                           "valid_after_repair": sum(v[1] for v in valid)}
    result["rescored_with_current_extractor"] = rescored
    for style in result["summary"]:   # the distinct count follows the current expression_key
        recs = [r for r in result["records"] if r["style"] == style and r["valid"]]
        result["summary"][style]["distinct_valid"] = len({expression_key(r["source"]) for r in recs})
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    (out / "embedded_llm_validity.md").write_text(to_markdown(result), encoding="utf-8")
    print(to_markdown(result))
    return 0


def to_markdown(result: dict) -> str:
    lines = ["# Embedded LLM candidate validity", "",
             f"{result['model']} through {result['server']}; {result['machine']}; "
             f"wall {result['wall_seconds']} s; up to {result['repairs_allowed']} repair turn(s).",
             "Valid = passes the static gate and a trial call returns a finite tensor shaped like W.",
             *([result["note"]] if result.get("note") else []), "",
             "| mode | n | valid first try | valid after repair | distinct valid | calls | mean prompt tokens "
             "| completion tokens | tok/s | median s/call |", "|---|---|---|---|---|---|---|---|---|---|"]
    for style, s in result["summary"].items():
        lines.append(f"| {style} | {s['n']} | {s['valid_first_try']}/{s['n']} | {s['valid_after_repair']}/{s['n']} "
                     f"| {s['distinct_valid']} | {s['calls']} | {s['prompt_tokens_mean']} | {s['completion_tokens']} "
                     f"| {s['completion_tokens_per_s']} | {s['seconds_per_call_median']} |")
    if "rescored_with_current_extractor" in result:
        lines += ["", "The same replies re-checked with the current extractor (`--rescore`, no new LLM calls):", "",
                  "| mode | valid first try | valid after repair |", "|---|---|---|"]
        for style, s in result["rescored_with_current_extractor"].items():
            lines.append(f"| {style} | {s['valid_first_try']}/{s['n']} | {s['valid_after_repair']}/{s['n']} |")
    valid = [r["source"].split("s = ", 1)[-1].split("\n")[0] for r in result["records"]
             if r["valid"] and r["style"] == "expression"]
    if valid:
        lines += ["", "Valid expressions written by the model:", ""] + [f"- `{v}`" for v in valid[:12]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
