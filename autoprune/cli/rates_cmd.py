"""`autoprune-agent search-rates`: Self-Pruner mode (LLM-run evolutionary search of layer-wise
structured pruning rates). Parses, calls `run_rates_search`, prints."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from autoprune.cli import app
from autoprune.safe_text import terminal_safe


@app.command("search-rates")
def search_rates(
    budget: int = typer.Option(8, help="offspring vectors evaluated (generation 0 is free)"),
    target_params: float = typer.Option(0.7, help="fraction of decoder parameters kept, in (0, 1)"),
    run_dir: str = typer.Option("runs/rates", help="run folder (trace, checkpoints, exported model)"),
    model: Optional[str] = typer.Option(None, help="hub id, local folder, .gguf file, or 'embedded'"),
    dtype: str = typer.Option("fp32", help="bf16 | fp16 | fp32: the dtype the weights load in "
                                           "(statistics and refits stay float32/64)"),
    data: Optional[str] = typer.Option(None, help="data folder, 'wikitext2' (hub) or 'self'"),
    population: int = typer.Option(6, help="population kept by elitism"),
    seqlen: int = typer.Option(256, help="tokens per search-time window"),
    nsamples: int = typer.Option(32, help="calibration windows"),
    fitness_windows: int = typer.Option(4, help="validation windows per fitness evaluation"),
    eval_seqlen: int = typer.Option(512, help="tokens per final test window"),
    eval_windows: Optional[int] = typer.Option(16, help="final test windows (0 = all)"),
    low: float = typer.Option(0.0, help="lowest per-layer rate"),
    high: float = typer.Option(0.9, help="highest per-layer rate"),
    reconstruct: bool = typer.Option(True, "--reconstruct/--no-reconstruct",
                                     help="refit o_proj/down_proj on the kept inputs (least squares, calibration)"),
    importance: str = typer.Option("taylor", help="how channels and KV groups are ranked: taylor (mean of "
                                                  "(w * dL/dw)^2, one backward pass per calibration window) "
                                                  "or activation (weight x activation norms, no gradients)"),
    max_repairs: int = typer.Option(1, help="LLM repair rounds before the trusted fallback"),
    llm_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint (default: embedded)"),
    llm_model: Optional[str] = typer.Option(None, help="model name at that endpoint"),
    llm_max_tokens: int = typer.Option(256, help="cap per LLM reply"),
    proposal: str = typer.Option("auto", help="how the LLM proposes a child: vector (the whole list), edit "
                                              "(one step: parents, cut, move; applied by trusted code), "
                                              "auto (edit for the embedded model)"),
    llm_timeout: float = typer.Option(600.0, help="seconds per LLM request"),
    zeroshot: Optional[str] = typer.Option(None, help="comma-separated zero-shot tasks for the final model"),
    zeroshot_data: Optional[str] = typer.Option(None, help="local zero-shot data folder"),
    zeroshot_limit: Optional[int] = typer.Option(None, help="examples per zero-shot task"),
    seed: int = typer.Option(0, help="sampling seed"),
    device: str = typer.Option("cpu", help="where the model is pruned, scored and timed: cpu, cuda or cuda:N"),
    no_export: bool = typer.Option(False, "--no-export", help="do not save the pruned model"),
    resume: bool = typer.Option(False, "--resume", help="continue the search in --run-dir"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Self-Pruner: the LLM evolves layer-wise structured pruning rates; the model really shrinks."""
    from autoprune.agent.rates.config import RatesConfig

    config = RatesConfig(run_dir=run_dir, target_params=target_params, budget=budget, population=population,
                         model=model, dtype=dtype, data=data, seqlen=seqlen, nsamples=nsamples, fitness_windows=fitness_windows,
                         eval_seqlen=eval_seqlen, eval_windows=eval_windows or None, low=low, high=high, reconstruct=reconstruct,
                         importance=importance,
                         max_repairs=max_repairs, llm_base_url=llm_base_url, llm_model=llm_model, seed=seed, device=device,
                         llm_max_tokens=llm_max_tokens, llm_timeout_s=llm_timeout, proposal=proposal,
                         zeroshot_tasks=[t for t in (zeroshot or "").split(",") if t],
                         zeroshot_data=zeroshot_data, zeroshot_limit=zeroshot_limit, export=not no_export,
                         resume=resume)
    if resume:
        from autoprune.agent.runtime.folder import resumable_run_dir

        resumable_run_dir(config.run_dir)               # a wrong folder is answered before torch loads
    from autoprune.agent.rates.mode import run_rates_search     # torch, langgraph... once every flag is valid

    summary = run_rates_search(config)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary)


def print_summary(summary: dict) -> None:
    console = Console()
    final = summary.get("final", {})
    table = Table(title=f"search-rates: keep {summary['target_params']:.0%} of decoder parameters "
                        f"(mean rate {summary['mean_rate']:.3f})")
    for column in ("variant", "params kept", "val ppl", "test ppl", "tokens/s", "speedup"):
        table.add_column(column)
    for label, v in final.get("test", {}).items():
        table.add_row(Text(terminal_safe(label, keep_newlines=False)), f"{v.get('params_fraction', 1.0):.3f}",
                      f"{v['ppl_validation']:.2f}" if v.get("ppl_validation") else "-",
                      f"{v['test_ppl']:.2f}", f"{v['tokens_per_s']:.0f}", f"{v.get('speedup', 1.0):.2f}x")
    console.print(table)
    if final.get("without_refit"):
        console.print(f"uniform without the least-squares refit: test ppl "
                      f"{final['without_refit']['uniform']['test_ppl']:.2f}")
    console.print(f"offspring: {summary['outcomes']}  (as_is/projected = the LLM's vector used, "
                  f"llm_repaired = after a repair turn, fallback = trusted code)")
    if final.get("export"):
        console.print(Text(f"pruned model: {terminal_safe(final['export'])} "
                           "(load with autoprune.pruning.structured.load_structured_model)"))
