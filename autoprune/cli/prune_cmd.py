"""`autoprune-agent prune` and `autoprune-agent eval`: parse, call one library function, print."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from autoprune.cli import app


@app.command("prune")
def prune(
    method: str = typer.Option(..., help="wanda | magnitude | sparsegpt | alps | ria | pruner-zero | FILE.py"),
    sparsity: float = typer.Option(..., help="target fraction of weights removed, in (0, 1)"),
    pattern: str = typer.Option("unstructured", help="unstructured | 2:4 | 4:8 (N:M)"),
    allocation: str = typer.Option("uniform", help="uniform | owl | sdsa (layer-wise sparsity)"),
    model: Optional[str] = typer.Option(None, help="hub id, local folder, .gguf file, or 'embedded'"),
    dtype: str = typer.Option("fp32", help="bf16 | fp16 | fp32: the dtype the weights load in "
                                           "(statistics and refits stay float32/64)"),
    data: Optional[str] = typer.Option(None, help="data folder, 'wikitext2' (hub) or 'self'"),
    nsamples: int = typer.Option(16, help="calibration windows"),
    seqlen: int = typer.Option(512, help="tokens per window"),
    eval_windows: Optional[int] = typer.Option(None, help="test windows for perplexity (default: all)"),
    mode: str = typer.Option("sequential", help="sequential | one-shot calibration"),
    reconstruct: str = typer.Option("none", "--reconstruct",
                                     help="weights for the mask: none | obs (OBS update) | exact (least-squares optimum)"),
    seed: int = typer.Option(0, help="calibration sampling seed"),
    out: Optional[str] = typer.Option(None, help="export the pruned model (safetensors) here"),
    export_format: str = typer.Option("dense", "--export-format", help="dense | compressed-tensors (the --out "
                                      "checkpoint: sparse-24-bitmask when 2:4, else sparse-bitmask)"),
    sandbox: str = typer.Option("docker", help="sandbox backend for FILE.py: docker | process"),
    offload: bool = typer.Option(False, "--offload", help="keep the decoder blocks in the model folder and load "
                                 "one at a time (memory: one block; sequential, built-in methods)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Prune a model with a baseline metric, SparseGPT, or a candidate file."""
    from autoprune.pruning.config import PruneConfig, make_config
    from autoprune.pruning.compressed_export import check_export_format, compress_checkpoint
    from autoprune.pruning.offload_check import check_offload

    config = make_config(PruneConfig, method=method, sparsity=sparsity, pattern=pattern, allocation=allocation,
                         model=model, dtype=dtype, data=data, nsamples=nsamples, seqlen=seqlen, eval_windows=eval_windows,
                         mode=mode, reconstruct=reconstruct, seed=seed, out=out, sandbox=sandbox,
                         progress=not as_json, offload=offload)
    check_offload(config)                       # before torch: what needs the whole model is refused at once
    check_export_format(export_format, config.out)
    if config.is_candidate_file:
        gate_candidate_file(config.method)      # milliseconds, before the model is even loaded
    from autoprune.jobs import run_prune_job     # torch and the rest load only now that every flag is valid

    result = run_prune_job(config)
    if export_format != "dense":                # the dense export, rewritten shard by shard
        result["export"] = compress_checkpoint(config.out, config.pattern)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        print_prune_result(result)


def gate_candidate_file(path: str) -> None:
    """The sandbox's static gate on a candidate file: a rejected file costs no model load."""
    from pathlib import Path

    from autoprune.errors import BadInputError
    from autoprune.sandbox.gate import check_source

    try:
        source = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"candidate {path}: cannot read it ({exc})") from None
    gate = check_source(source)
    if not gate.ok:
        raise BadInputError(f"candidate {path}: rejected-static: " + " ".join(gate.message.split()))


@app.command("eval")
def evaluate(
    model_dir: str = typer.Argument(..., help="model folder (e.g. from prune --out), hub id or .gguf"),
    dtype: str = typer.Option("fp32", help="bf16 | fp16 | fp32: the dtype the weights load in"),
    data: Optional[str] = typer.Option(None, help="data folder, 'wikitext2' (hub) or 'self'"),
    seqlen: int = typer.Option(512, help="tokens per window"),
    windows: Optional[int] = typer.Option(None, help="test windows (default: all)"),
    tasks: str = typer.Option("wikitext2", help="comma list: wikitext2, zero-shot tasks (boolq, rte, hellaswag, "
                              "winogrande, arc_easy, arc_challenge, openbookqa, piqa) and installed "
                              "evaluator plugins (e.g. latency)"),
    zeroshot_data: Optional[str] = typer.Option(None, help="local zero-shot folder (default: the hub)"),
    limit: Optional[int] = typer.Option(None, help="zero-shot examples per task (default: all)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Test-split perplexity and zero-shot accuracy (lm-eval) of a model."""
    from autoprune.pruning.config import EvalConfig, make_config

    config = make_config(EvalConfig, model=model_dir, dtype=dtype, data=data, seqlen=seqlen, windows=windows,
                         progress=not as_json, tasks=[t.strip() for t in tasks.split(",") if t.strip()],
                         zeroshot_data=zeroshot_data, zeroshot_limit=limit)
    from autoprune.jobs import run_eval_job      # torch loads only now that every flag is valid

    result = run_eval_job(config)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        print_eval_result(result)


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_prune_result(result: dict) -> None:
    table = Table(title=f"{result['model']}: {result['method']} ({result['allocation']}, {result['pattern']})")
    for column in ("", "value"):
        table.add_column(column)
    ppl = result["perplexity"]
    rows = [("dense perplexity", fmt(ppl["dense"])), ("pruned perplexity", fmt(ppl["pruned"])),
            ("target sparsity", fmt(result["target_sparsity"], 4)),
            ("measured sparsity", fmt(result["overall_sparsity"], 4)),
            ("block sparsity", " ".join(f"{s:.3f}" for s in result["block_sparsity"])),
            ("mode", result["mode"] + ("" if result["reconstruct"] == "none"
                                       else f" + {result['reconstruct']} reconstruction")),
            ("prune time (s)", fmt(result["timings"]["total_s"], 1)),
            ("peak memory (MiB)", fmt(result["peak_rss_mb"], 0)),
            ("calibration", result["protocol"]["calibration"]), ("test", result["protocol"]["test"])]
    for stage, peaks in result.get("offload", {}).get("stages", {}).items():
        rows.append((f"offload: {stage.replace('_', ' ')}",
                     f"{peaks['max_blocks']} block(s), {peaks['peak_block_bytes'] / 2**20:.1f} MiB at most"))
    if result.get("exported_to"):
        rows.append(("exported to", result["exported_to"]))
    if result.get("export"):
        rows.append(("export format", f"compressed-tensors {result['export']['sparsity_format']}"))
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def print_eval_result(result: dict) -> None:
    table = Table(title=result["model"])
    table.add_column("")
    table.add_column("value")
    if result["perplexity"] is not None:
        table.add_row("perplexity", fmt(result["perplexity"]))
        table.add_row("test", result["protocol"]["test"])
    for task, scores in result.get("zeroshot", {}).items():
        table.add_row(f"{task} acc (n={scores['n']})", fmt(scores["acc"], 3))
    for name, outcome in result.get("evaluators", {}).items():
        for metric, value in outcome["metrics"].items():
            table.add_row(f"{name}: {metric}", fmt(value, 4))
    table.add_row("sparsity (target linears)", fmt(result["sparsity"], 4))
    if result.get("pruning_summary"):
        table.add_row("pruned with", f"{result['pruning_summary']['method']} / {result['pruning_summary']['allocation']}")
    Console().print(table)
