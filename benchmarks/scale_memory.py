"""Peak host memory and time of prune (calibration + pruning) + perplexity as a model gets deeper.

Random-weight Llama models of one block shape at several depths (fp16), written straight to a
sharded safetensors folder (one shard per block, the same random block in every layer: the
setup itself never holds the model). Each measurement runs in a fresh child process:

- `resident`: today's path: `load_model` (the whole model in memory), `prune_model`, `perplexity`;
- `offloaded`: `open_offloaded` (autoprune.pruning.onload): blocks stay in the folder and are
  materialised one at a time for calibration + pruning and again for perplexity.

Peak RSS is the child's `ru_maxrss`. Calibration and test text are random token windows (the
numbers measure memory and time, not quality).

    python benchmarks/scale_memory.py --layers 4,8,16 --method wanda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, machine, markdown_table

NAME = "scale_memory"


def shape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--method", default="wanda", help="wanda | magnitude | sparsegpt | ...")
    p.add_argument("--nsamples", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--test-windows", type=int, default=2)


def write_random_model(folder: Path, args, layers: int) -> Path:
    """A random fp16 Llama folder of `layers` identical blocks, one shard per block."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from autoprune.models import embedded_model_dir

    if (folder / "model.safetensors.index.json").is_file():
        return folder
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=1,
                         num_attention_heads=args.heads, num_key_value_heads=args.heads, vocab_size=args.vocab,
                         max_position_embeddings=max(2048, args.seqlen), tie_word_embeddings=False)
    torch.manual_seed(0)
    one = LlamaForCausalLM._from_config(config, dtype=torch.float16).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    rest = {k: v.contiguous() for k, v in one.items() if not k.startswith("model.layers.")}
    save_file(rest, str(folder / "rest.safetensors"), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(rest, "rest.safetensors"))
    block = {k[len("model.layers.0."):]: v.contiguous() for k, v in one.items() if k.startswith("model.layers.0.")}
    for i in range(layers):
        tensors = {f"model.layers.{i}.{k}": v for k, v in block.items()}
        save_file(tensors, str(folder / f"block-{i}.safetensors"), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, f"block-{i}.safetensors"))
    config.num_hidden_layers = layers
    config.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):     # `load_model` loads one (never used here)
        (folder / name).write_bytes((embedded_model_dir() / name).read_bytes())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def windows(args, n: int, seed: int):
    from autoprune.data import WindowSet

    ids = torch.randint(0, args.vocab, (n, args.seqlen), generator=torch.Generator().manual_seed(seed))
    return WindowSet(ids, f"{n}x{args.seqlen} random tokens")


def child(args) -> dict:
    """One measurement in this (fresh) process."""
    from autoprune.evaluators.perplexity import perplexity
    from autoprune.models import load_model
    from autoprune.pruning.choices import builtin_method
    from autoprune.pruning.loop import prune_model
    from autoprune.pruning.onload import open_offloaded

    calibration, test = windows(args, args.nsamples, 1), windows(args, args.test_windows, 2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scale-work-") as work:
        if args.mode == "offloaded":
            model, onloader = open_offloaded(args.folder, work, dtype="fp16")
        else:
            model, onloader = load_model(args.folder, dtype="fp16").model, None
        loaded = time.perf_counter()
        result = prune_model(model, calibration, method=builtin_method(args.method), sparsity=0.5,
                             progress=False, onloader=onloader)
        pruned = time.perf_counter()
        ppl = perplexity(model, test, onloader=onloader)
        done = time.perf_counter()
    layers = model.config.num_hidden_layers
    return {"mode": args.mode, "layers": layers, "params": model.num_parameters(),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "seconds": round(done - started, 2), "load_s": round(loaded - started, 2),
            "prune_s": round(pruned - loaded, 2), "perplexity_s": round(done - pruned, 2),
            "s_per_block": round((done - loaded) / layers, 2), "perplexity": ppl,
            "sparsity": result.summary()["overall_sparsity"]}


def measure(args) -> list[dict]:
    rows = []
    base = Path(args.models_dir)
    for layers in [int(v) for v in args.layers.split(",")]:
        folder = write_random_model(base / f"llama-{args.hidden}x{args.intermediate}-L{layers}", args, layers)
        for mode in args.modes.split(","):
            cmd = [sys.executable, "-m", "benchmarks.scale_memory", "--child", "--mode", mode, "--folder",
                   str(folder)] + shape_flags(args)
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            if done.returncode != 0:
                raise SystemExit(f"{mode} L={layers} failed:\n{done.stderr[-2000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def rows_from(paths: list[str]) -> list[dict]:
    rows = [json.loads(line) for path in paths for line in Path(path).read_text().splitlines()
            if line.startswith("{")]
    return sorted(rows, key=lambda r: (r["mode"] != "resident", r["mode"], r["layers"]))


def shape_flags(args) -> list[str]:
    return ["--hidden", str(args.hidden), "--intermediate", str(args.intermediate), "--heads", str(args.heads),
            "--vocab", str(args.vocab), "--method", args.method, "--nsamples", str(args.nsamples),
            "--seqlen", str(args.seqlen), "--test-windows", str(args.test_windows)]


def markdown(results: dict) -> str:
    s = results["setup"]
    lines = [f"# Peak memory and time in depth: {s['method']} prune + perplexity, fp16", "",
             f"Random Llama, block shape hidden {s['hidden']}, intermediate {s['intermediate']}, {s['heads']} heads, "
             f"vocab {s['vocab']}; calibration {s['nsamples']}x{s['seqlen']} random tokens, perplexity on "
             f"{s['test_windows']}x{s['seqlen']}; sparsity 0.5, sequential. Each row is a fresh child process "
             "(peak RSS = its ru_maxrss). `resident` = whole model loaded (today's `prune`), `offloaded` = "
             "autoprune.pruning.onload, one block materialised at a time.", "",
             f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
             f"{results['machine']['memory_gib']} GiB; commit {results['commit']}.", ""]
    header = ["mode", "layers", "params (M)", "peak RSS (MB)", "total s", "load s", "prune s", "ppl s", "s / block"]
    rows = [[r["mode"], r["layers"], round(r["params"] / 1e6), r["peak_rss_mb"], r["seconds"], r["load_s"],
             r["prune_s"], r["perplexity_s"], r["s_per_block"]] for r in results["rows"]]
    lines += [markdown_table(header, rows), ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in results.get("notes", [])]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shape_args(p)
    p.add_argument("--layers", default="4,8,16")
    p.add_argument("--modes", default="resident,offloaded")
    p.add_argument("--models-dir", default=str(Path(tempfile.gettempdir()) / "autoprune-scale-models"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--note", action="append", default=[], help="a note for the Markdown report")
    p.add_argument("--from-rows", nargs="+", help="write the report from rows printed by earlier runs (JSON lines)")
    p.add_argument("--report", default=NAME, help="results file name (a smoke run should not overwrite the report)")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = rows_from(args.from_rows) if args.from_rows else measure(args)
    info = machine()
    results = {"commit": f"{info['commit']} plus uncommitted changes", "machine": info,
               "setup": {k: getattr(args, k) for k in ("hidden", "intermediate", "heads", "vocab", "method",
                                                       "nsamples", "seqlen", "test_windows")},
               "rows": rows, "notes": args.note}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.report}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.report}.md").write_text(markdown(results) + "\n")


if __name__ == "__main__":
    main()
