"""`autoprune-agent run`: parse flags, call `run_agent`, print the summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from autoprune.cli import app
from autoprune.errors import BadInputError
from autoprune.safe_text import terminal_safe


@app.command("run")
def run(
    budget: int = typer.Option(50, help="candidate programs sent to the sandbox (seeds excluded)"),
    model: Optional[str] = typer.Option(None, help="hub id, local folder, .gguf file (default: embedded)"),
    dtype: Optional[str] = typer.Option(None, help="bf16 | fp16 | fp32: the dtype the weights load in (default "
                                                   "fp32; statistics and refits stay float32/64)"),
    sparsity: float = typer.Option(0.5, help="target fraction of weights removed, in (0, 1)"),
    pattern: str = typer.Option("unstructured", help="unstructured | 2:4 (N:M)"),
    llm_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint (default: embedded LLM)"),
    llm_model: Optional[str] = typer.Option(None, help="model name at --llm-base-url"),
    sandbox: Optional[str] = typer.Option(None, help="docker (default) | process (process: no container isolation)"),
    gpus: Optional[str] = typer.Option(None, help="all | 0,1 (default: CPU)"),
    data: Optional[str] = typer.Option(None, help="data folder, 'wikitext2' (hub) or 'self'"),
    out: Optional[Path] = typer.Option(None, help="run folder (default: runs/<time>-s<seed>)"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this folder"),
    seed: int = typer.Option(0, help="seed for calibration sampling and LLM sampling"),
    nsamples: Optional[int] = typer.Option(None, help="calibration windows (default 64)"),
    seqlen: Optional[int] = typer.Option(None, help="tokens per window (default 512)"),
    fitness_levels: Optional[str] = typer.Option(None, help="windows per fidelity level, e.g. 2,8,32"),
    test_windows: Optional[int] = typer.Option(None, help="test windows of the final evaluation (default: all)"),
    code_style: Optional[str] = typer.Option(None, help="auto | program | expression"),
    no_mutation: bool = typer.Option(False, "--no-mutation",
                                     help="never mutate a repeated expression in trusted code; ask the LLM again"),
    proposer: Optional[str] = typer.Option(None, help="llm (default) | mutation | random: who proposes candidates "
                                                      "(mutation and random make no LLM call)"),
    prompts: Optional[str] = typer.Option(None, help="prompt set to use (default gcot; see `plugins`)"),
    llm_max_tokens: Optional[int] = typer.Option(None, help="cap on each LLM reply (default 768)"),
    reconstruct: Optional[str] = typer.Option(None, "--reconstruct",
                                              help="none | obs | exact (default): the finale's refit of the "
                                                   "winner's surviving weights (the exported model)"),
    search_refit: Optional[str] = typer.Option(None, "--search-refit",
                                               help="none | obs (default) | exact: refit of the kept weights "
                                                    "inside search-time fitness (one-shot, dense XᵀX)"),
    executor: Optional[str] = typer.Option(None, help="serial | local | ray: evaluate candidates in parallel"),
    workers: Optional[int] = typer.Option(None, help="parallel workers: CPU slices or GPUs (default 1)"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster for --executor ray, e.g. 127.0.0.1:6379"),
    pipeline_depth: Optional[int] = typer.Option(None, help="candidates evaluated in the background while the LLM "
                                                            "writes the next (default 0 = one after another; 1 overlaps one batch)"),
    final_baselines: Optional[str] = typer.Option(None, help="`prune --method` baselines the finale reports on the "
                                                            "same test windows (default wanda,sparsegpt,alps; "
                                                            "cached across runs; 'none' for none)"),
    final_tasks: Optional[str] = typer.Option(None, help="zero-shot tasks for the final report, e.g. arc_easy,piqa"),
    zeroshot_data: Optional[str] = typer.Option(None, help="local zero-shot task folder (default: the hub)"),
    zeroshot_limit: Optional[int] = typer.Option(None, help="zero-shot examples per task (default: all)"),
    as_json: bool = typer.Option(False, "--json", help="print a machine-readable summary at the end"),
) -> None:
    """Search pruning metrics with the LLM agent, then prune with the winner + SDSA."""
    from autoprune.agent.config import make_config

    if resume is not None:       # what decides where prompts go and how candidates run is confirmed here
        from autoprune.agent.runtime.folder import resumable_run_dir

        resumable_run_dir(resume)                       # a wrong folder is answered before torch loads
        from autoprune.agent.run import run_agent

        confirm = {"llm_base_url": llm_base_url, "llm_model": llm_model, "sandbox": sandbox, "gpus": gpus,
                   "executor": executor, "ray_address": ray_address}
        summary = run_agent(resume=resume, live=not as_json, confirm=confirm)
    else:
        levels = parse_levels(fitness_levels) if fitness_levels else None
        config = make_config(budget=budget, model=model, dtype=dtype, sparsity=sparsity, pattern=pattern,
                             llm_base_url=llm_base_url, llm_model=llm_model, sandbox=sandbox, gpus=gpus, data=data,
                             out=out, seed=seed, calibration_samples=nsamples, seqlen=seqlen,
                             fitness_levels=levels, test_windows=test_windows, code_mode=code_style,
                             mutate_repeats=False if no_mutation else None, llm_max_tokens=llm_max_tokens, prompts=prompts,
                             proposer=proposer,
                             reconstruct=reconstruct, search_refit=search_refit, executor=executor, workers=workers,
                             ray_address=ray_address, pipeline_depth=pipeline_depth,
                             zeroshot_data=zeroshot_data, zeroshot_limit=zeroshot_limit,
                             final_baselines=comma_list(final_baselines),
                             final_tasks=[t.strip() for t in final_tasks.split(",") if t.strip()]
                             if final_tasks else None)
        from autoprune.agent.runtime.folder import check_fresh_run_dir

        check_fresh_run_dir(config.out, flag="--out", resume_hint=f"--resume {config.out}")   # before torch
        from autoprune.agent.run import run_agent       # torch, langgraph... load once every flag is valid

        summary = run_agent(config, live=not as_json)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2, default=str))
    else:
        print_summary(summary.to_dict())


def comma_list(text: Optional[str]) -> Optional[list[str]]:
    """`a,b` -> ["a", "b"]; "none" -> []; None (flag not given) -> None (the default)."""
    if text is None:
        return None
    return [] if text.strip() == "none" else [t.strip() for t in text.split(",") if t.strip()]


def parse_levels(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise BadInputError(f"--fitness-levels takes comma-separated window counts, e.g. 2,8,32, not {text!r}") from None


def fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def print_summary(s: dict) -> None:
    table = Table(title=Text(f"run {terminal_safe(s['run_id'], keep_newlines=False)}"), show_header=False)
    best = s.get("best") or {}
    rows = [("best candidate", f"{best.get('id', '-')} ({best.get('hypothesis', '')})"),
            ("best validation ppl", fmt(best.get("fitness"))), ("Wanda, same windows", fmt(s.get("wanda_fitness"))),
            ("beats Wanda", fmt(s.get("beats_wanda")))]
    rows += [(f"test ppl {k}", fmt(v)) for k, v in s.get("test", {}).items()]
    rows += [("verdicts", ", ".join(f"{k} {v}" for k, v in s.get("verdicts", {}).items()) or "-"),
             ("budget", f"{s['budget_used']}/{s['budget']} ({s.get('stop_reason') or '-'})"),
             ("time (s)", ", ".join(f"{k} {v:.1f}" for k, v in s.get("timings", {}).items())),
             ("tokens", f"{s['tokens'].get('prompt', 0)} prompt + {s['tokens'].get('completion', 0)} completion"),
             ("report", fmt(s.get("report"))), ("pruned model", fmt(s.get("export")))]
    for key, value in rows:      # hypothesis names come from the LLM: plain text, never markup
        table.add_row(key, Text(terminal_safe(value, keep_newlines=False)))
    Console().print(table)
