"""`autoprune-agent run --budget 50` on the embedded default: what a user gets on this machine.

Runs the real CLI (embedded SmolLM2-135M-Instruct as the LLM on loopback, Docker
sandbox, embedded model as the model to prune) and reads the run folder it leaves:

* wall time and its split (LLM, sandbox, fitness, finale),
* valid-candidate rate: LLM programs the sandbox accepted / programs sent (the budget),
  plus the replies that never became a program (no usable code, already tested),
* best validation fitness of an LLM candidate vs Wanda on the same windows,
* final test perplexity of winner + SDSA vs Wanda + uniform vs Wanda + OWL.

Protocol: the run's defaults (64×512 calibration windows from the first half of
WikiText-2 validation, fitness levels 2/8/32 windows of the second half) and the
first `--test-windows`×512 windows of the test split for the final table.

    python benchmarks/agent_run.py --data ../shared/data/wikitext-2 --budget 50 --test-windows 64
    python benchmarks/agent_run.py --summarize RUN_DIR     # only re-read a finished run
writes benchmarks/results/agent_run.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, markdown_table, save_results  # noqa: E402

from autoprune.runlog.trace_file import read_trace  # noqa: E402


def run_cli(args: argparse.Namespace, run_dir: Path) -> float:
    cli = str(Path(sys.executable).with_name("autoprune-agent"))
    command = [cli, "run", "--budget", str(args.budget), "--data", args.data,
               "--test-windows", str(args.test_windows), "--out", str(run_dir), "--json"]
    if run_dir.exists():
        command = [cli, "run", "--resume", str(run_dir), "--json"]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def llm_reply_outcomes(events: list[dict]) -> Counter:
    """What became of each write_code reply: a program sent, a trusted mutation of a repeat (also a
    program sent), no usable code, or already tested (sent back to the LLM)."""
    outcomes = Counter()
    for event in events:
        if event["type"] == "candidate" and event.get("origin") == "llm":
            outcomes["program"] += 1
        elif event["type"] == "candidate" and event.get("origin") == "mutation":
            outcomes["repeat, mutated into a program"] += 1
        elif event["type"] == "note" and "no usable code" in event.get("text", ""):
            outcomes["already tested" if "already tested" in event["text"] else "no usable code"] += 1
    return outcomes


def candidate_expression(source: str) -> str:
    """The `s = ...` line of a template-shaped candidate (the whole score body otherwise)."""
    lines = [line.strip() for line in source.splitlines() if line.strip().startswith("s = ")]
    return lines[0][4:] if lines else source.strip().splitlines()[-1]


def describe_candidate(events: list[dict], candidate_id: str | None) -> dict:
    """Origin, parent and scoring expression of one candidate, read from its trace event."""
    event = next((e for e in events if e["type"] == "candidate" and e["id"] == candidate_id), None)
    if event is None:
        return {"origin": "seed" if str(candidate_id).startswith("seed-") else "unknown"}
    return {"origin": event.get("origin"), "parent": event.get("parent"),
            "expression": candidate_expression(event.get("source", ""))}


def summarize(run_dir: Path) -> dict:
    events = read_trace(run_dir).events
    finished = [e for e in events if e["type"] == "run_finished"]
    if not finished:
        raise SystemExit(f"{run_dir} has not finished (no run_finished event)")
    summary = finished[-1]["summary"]
    final = next(e for e in reversed(events) if e["type"] == "final_result")
    llm_verdicts = Counter(e["status"] for e in events
                           if e["type"] == "verdict" and e.get("submitted") is not None)
    sent = sum(llm_verdicts.values())
    return {
        "run_dir": str(run_dir), "summary": summary, "final": {k: v for k, v in final.items() if k != "v"},
        "llm_verdicts": dict(llm_verdicts), "sent": sent,
        "valid_rate": llm_verdicts.get("ok", 0) / sent if sent else 0.0,
        "reply_outcomes": dict(llm_reply_outcomes(events)),
        "hypotheses": len([e for e in events if e["type"] == "hypothesis"]),
        "best_candidate": describe_candidate(events, (summary.get("best_llm") or {}).get("id")),
    }


def best_candidate_line(described: dict) -> str:
    if not described.get("expression"):
        return ""
    parent = f" of {described['parent']}" if described.get("parent") else ""
    return f"Best search candidate: `{described['expression']}` (origin {described['origin']}{parent})."


def markdown(result: dict) -> str:
    s, final = result["summary"], result["final"]
    t = s["timings"]
    test = s["test"]
    best = s.get("best_llm") or {}
    lines = [
        f"# `autoprune-agent run --budget {s.get('budget', result.get('budget'))}` on the embedded default", "",
        f"Machine: {result['machine']['cpu']} ({result['machine']['cores']} cores, "
        f"{result['machine']['memory_gib']} GiB), "
        f"torch {result['machine']['torch']}, no GPU. Commit {result['commit']}.", "",
        f"Command: `{result['command']}`", "",
        "Protocol: calibration 64×512 windows (first half of WikiText-2 validation); fitness levels "
        "2 / 8 / 32 windows of 512 (second half of validation, same windows for every candidate); "
        f"final test perplexity on {final.get('test_protocol', 'the test split')}. "
        "LLM: the embedded SmolLM2-135M-Instruct served by `transformers serve` on loopback (CPU, fp32); "
        "model pruned: the same SmolLM2-135M-Instruct; sandbox: Docker.", "",
        "## Time", "",
        markdown_table(["wall", "LLM", "sandbox", "fitness", "LLM calls", "tokens (prompt / completion)"],
                       [[f"{t['wall']:.0f} s", f"{t['llm']:.0f} s", f"{t['sandbox']:.0f} s",
                         f"{t['fitness']:.0f} s", s["llm_calls"],
                         f"{s['tokens']['prompt']} / {s['tokens']['completion']}"]]), "",
        "(The finale's sandbox runs, validation and test evaluations are inside `wall`; `sandbox` and "
        "`fitness` count the search.)", "",
        "## Candidates", "",
        f"Programs sent to the sandbox: {result['sent']} (the budget); verdicts "
        f"{json.dumps(result['llm_verdicts'])}; valid-candidate rate {result['valid_rate']:.0%} "
        "(`duplicate` = accepted by the sandbox but its masks equal an earlier candidate's, so not evaluated).",
        f"write_code replies: {json.dumps(result['reply_outcomes'])} (programs and mutated repeats cost budget).", "",
        "## Validation fitness (search)", "",
        markdown_table(["", "ppl", "windows", "paired wins vs Wanda"],
                       [["best search candidate " + str(best.get("id")), f"{best.get('ppl_validation', float('nan')):.2f}",
                         best.get("nwindows"), best.get("paired_wins_vs_wanda")],
                        ["Wanda, same windows", f"{best.get('wanda_ppl_same_windows') or float('nan'):.2f}",
                         best.get("nwindows"), ""]]), "",
        best_candidate_line(result.get("best_candidate") or {}), "",
        f"Overall winner: {s['best']['id']} (beats Wanda: {s['beats_wanda']}).", "",
        "## Final test perplexity", "",
        markdown_table(["variant", "test ppl"], [[k, f"{v:.2f}"] for k, v in test.items() if v is not None]), "",
    ]
    return "\n".join(lines + ["## What limits the result", "", result.get("notes", ""), ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/wikitext-2")
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--test-windows", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("/tmp/autoprune-bench-agent-run"))
    parser.add_argument("--summarize", type=Path, help="only read this finished run folder")
    parser.add_argument("--notes", default="", help="what limits the result (written into the Markdown)")
    parser.add_argument("--commit", default=None, help="the commit the run used (default: HEAD now)")
    parser.add_argument("--name", default="agent_run", help="results file name under benchmarks/results/")
    args = parser.parse_args()
    run_dir = args.summarize or args.out
    if not args.summarize:
        run_cli(args, run_dir)
    result = summarize(run_dir)
    from common import git_commit
    result.update(machine=machine(), commit=args.commit or git_commit(), notes=args.notes, budget=args.budget,
                  command=f"autoprune-agent run --budget {args.budget} --data {args.data} "
                          f"--test-windows {args.test_windows} --json")
    save_results(args.name, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
