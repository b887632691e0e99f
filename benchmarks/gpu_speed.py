"""Speed on a GPU: dense vs structurally pruned (uniform rates and the searched rates of
`results/self_pruner.json`) vs 2:4 semi-structured sparse, for the embedded SmolLM2-135M and a
Llama-3-8B-shaped model.

Speed depends on layer sizes and dtype, not on weight values, so every model is built from its
config with random weights (a GPU machine here cannot reach the hub; the perplexities of the same
rate vectors are in self_pruner.md). Structured variants get the per-layer sizes of their rate
vectors exactly as the exported models do (`structure_for_rates` + `resize_to_structure`). The
2:4 variant masks every decoder linear to 2:4 by magnitude and swaps it for PyTorch's
semi-structured sparse tensor (`convert_linears_to_2to4`).

Protocol (eager PyTorch, no torch.compile): prefill = median tokens/s of one forward pass of
batch × 512 random tokens; decode = median generated tokens/s of greedy generation with the KV
cache (batch 1, 128-token prompt). The variants of one model are measured in interleaved rounds
and the best round is kept.

    python benchmarks/gpu_speed.py                   # needs a CUDA device
    python benchmarks/gpu_speed.py --models smollm2-135m --rounds 2
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, load_results, machine, markdown_table, save_results  # noqa: E402

from autoprune.evaluators.latency import (convert_linears_to_2to4, decode_tokens_per_second,  # noqa: E402
                                          tokens_per_second)
from autoprune.pruning.masks import SparsityPattern, scores_to_mask  # noqa: E402
from autoprune.pruning.param_budget import mean_rate_for_params  # noqa: E402
from autoprune.adapters import adapter_for  # noqa: E402
from autoprune.pruning.structured import (LayerStructure, decoder_parameter_count,  # noqa: E402
                                          resize_to_structure, structure_for_rates)

NAME = "gpu_speed"
KEEP = (0.7, 0.5)


def llama3_8b_shape():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                       tie_word_embeddings=False)


def smollm2_config():
    from transformers import AutoConfig

    from autoprune.models import embedded_model_dir

    return AutoConfig.from_pretrained(embedded_model_dir())


MODELS = {"smollm2-135m": smollm2_config, "llama-3-8b-shape": llama3_8b_shape}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--prefill-batches", default="1,16", help="batch sizes of the 512-token prefill")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--decode-repeats", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kernel-tokens", default="8192,16", help="tokens per linear in the kernel table")
    return parser.parse_args(argv)


def build(config, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def structured(dense, structure: list[LayerStructure]):
    model = copy.deepcopy(dense)
    resize_to_structure(model, [asdict(s) for s in structure])
    return model.eval()


def two_four(dense):
    """Every decoder linear masked to 2:4 by magnitude, then run on the sparse tensor cores."""
    model = copy.deepcopy(dense)
    pattern = SparsityPattern(2, 4)
    adapter = adapter_for(model)
    with torch.no_grad():                       # the same linears convert_linears_to_2to4 converts
        for block in adapter.blocks(model):
            for module in adapter.linears(block).values():
                module.weight.mul_(scores_to_mask(module.weight.abs(), 0.5, pattern=pattern).to(module.weight))
    conversion = convert_linears_to_2to4(model)
    if conversion["skipped"]:
        print(f"2:4: {len(conversion['skipped'])} linears stay dense: {conversion['skipped']}", flush=True)
    return model.eval(), conversion


def searched_rates(model_name: str) -> dict[str, list[float]]:
    """The rate vectors of the committed Self-Pruner benchmark (for the model it was run on)."""
    path = RESULTS / "self_pruner.json"
    if model_name != "smollm2-135m" or not path.is_file():
        return {}
    runs = json.loads(path.read_text())["runs"]
    return {f"{run['target_params']:.0%} searched": run["final"]["test"]["searched"]["rates"] for run in runs}


def variants(model_name: str, dense) -> tuple[dict, dict]:
    models, notes = {"dense": dense}, {}
    layers = dense.config.num_hidden_layers
    searched = searched_rates(model_name)
    for keep in KEEP:
        rate, kept = mean_rate_for_params(dense, keep)
        uniform = structure_for_rates(dense, [rate] * layers)
        models[f"{keep:.0%} uniform"] = structured(dense, uniform)
        notes[f"{keep:.0%} uniform"] = f"uniform rate {rate:.3f} keeps {kept:.3f}"
        if f"{keep:.0%} searched" in searched:
            found = structure_for_rates(dense, searched[f"{keep:.0%} searched"])
            models[f"{keep:.0%} searched"] = structured(dense, found)
            notes[f"{keep:.0%} searched"] = ("rates from self_pruner.json" + (
                ": the same layer sizes as uniform, so the gap between the two rows is noise" if found == uniform
                else ""))
    models["2:4"], conversion = two_four(dense)
    notes["2:4"] = f"{conversion['converted']} linears on semi-structured sparse kernels"
    return models, notes


def measure(models: dict, args) -> dict:
    """Interleaved rounds; the best round of each measure (interference only ever slows one down)."""
    batches = [int(b) for b in args.prefill_batches.split(",")]
    best: dict[str, dict[str, float]] = {name: {} for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            for batch in batches:
                value = tokens_per_second(model, seqlen=512, batch_size=batch, repeats=args.repeats,
                                          warmup=2)["tokens_per_s"]
                key = f"prefill_b{batch}"
                best[name][key] = max(best[name].get(key, 0.0), value)
            value = decode_tokens_per_second(model, prompt_len=128, new_tokens=args.new_tokens,
                                             repeats=args.decode_repeats)["tokens_per_s"]
            best[name]["decode_b1"] = max(best[name].get("decode_b1", 0.0), value)
    return best


def cuda_ms(fn, iterations: int = 50) -> float:
    """Mean milliseconds of `fn` on the GPU (CUDA events, after a warm-up)."""
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iterations


def sparse_backends(weight: torch.Tensor) -> dict:
    """The 2:4 weight on each semi-structured backend PyTorch has (cuSPARSELt, CUTLASS)."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    backends = {}
    for name, force_cutlass in (("2:4 cuSPARSELt", False), ("2:4 CUTLASS", True)):
        SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
        try:
            backends[name] = to_sparse_semi_structured(weight)
        except (RuntimeError, ValueError) as exc:
            print(f"{name}: {str(exc).splitlines()[0]}", flush=True)
        finally:
            SparseSemiStructuredTensor._FORCE_CUTLASS = False
    return backends


def timed_linear(x: torch.Tensor, weight, name: str):
    """Milliseconds of one F.linear, or None where this GPU lacks the kernel (CUTLASS 2:4 is sm_8x only)."""
    try:
        return cuda_ms(lambda: torch.nn.functional.linear(x, weight))
    except RuntimeError as exc:
        print(f"{name}: {str(exc).splitlines()[0]}", flush=True)
        return None


def linear_kernels(args) -> list[dict]:
    """One linear of the 8B shape, alone: dense vs 2:4 kernels, for a prefill-sized and a
    decode-sized token count (what the model-level 2:4 rows are made of)."""
    dtype = getattr(torch, args.dtype)
    shapes = {"gate/up 4096->14336": (14336, 4096), "down 14336->4096": (4096, 14336), "q/o 4096->4096": (4096, 4096)}
    rows = []
    for label, (out_features, in_features) in shapes.items():
        weight = torch.randn(out_features, in_features, device="cuda", dtype=dtype)
        weight *= scores_to_mask(weight.abs(), 0.5, pattern=SparsityPattern(2, 4)).to(weight)
        weights = {"dense": weight, **sparse_backends(weight)}
        for tokens in (int(t) for t in args.kernel_tokens.split(",")):
            x = torch.randn(tokens, in_features, device="cuda", dtype=dtype)
            times = {name: timed_linear(x, w, name) for name, w in weights.items()}
            times = {name: t for name, t in times.items() if t is not None}
            rows.append({"linear": label, "tokens": tokens, **{f"{k} ms": round(v, 4) for k, v in times.items()},
                         **{f"{k} speedup": round(times["dense"] / v, 3) for k, v in times.items() if k != "dense"}})
    return rows


def run_model(model_name: str, args) -> dict:
    dtype = getattr(torch, args.dtype)
    dense = build(MODELS[model_name](), dtype)
    models, notes = variants(model_name, dense)
    speed = measure(models, args)
    result = {}
    for name, model in models.items():
        entry = {"decoder_params": decoder_parameter_count(model) if name != "2:4" else None, "note": notes.get(name, "")}
        for key, value in speed[name].items():
            entry[key] = round(value, 1)
            entry[f"{key}_speedup"] = round(value / speed["dense"][key], 3)
        result[name] = entry
    result["dense"]["decoder_params"] = decoder_parameter_count(dense)
    del models, dense
    gc.collect()
    torch.cuda.empty_cache()
    return result


def reading(results: dict) -> str:
    """What the numbers say, computed from them (a re-run cannot leave a stale sentence)."""
    lines = []
    for model_name, rows in results["models"].items():
        dense_ms = 512 / rows["dense"]["prefill_b1"] * 1e3
        structured = {k: v for k, v in rows.items() if k not in ("dense", "2:4")}
        best = max(structured, key=lambda k: structured[k]["prefill_b16_speedup"])
        at_b16 = ", ".join(f"{k} {v['prefill_b16_speedup']:.2f}x" for k, v in structured.items())
        decode = [v["decode_b1_speedup"] for v in structured.values()]
        lines.append(f"- {model_name}: one 512-token forward takes {dense_ms:.1f} ms dense; structured pruning at "
                     f"batch 16 gives {at_b16} (best: {best}); decoding {min(decode):.2f}-{max(decode):.2f}x. "
                     f"2:4 kernels: {rows['2:4']['prefill_b16_speedup']:.2f}x at batch 16, "
                     f"{rows['2:4']['decode_b1_speedup']:.2f}x decoding.")
    lines.append("- Where a row's time barely moves with the model's size (batch 1, decoding, the 135M model) the "
                 "forward pass is bound by per-kernel host overhead of eager PyTorch, not by the GPU: removing "
                 "parameters cannot show there without CUDA graphs or torch.compile.")
    kernels = results.get("kernels") or []
    small = [r for r in kernels if r["tokens"] <= 64 and "2:4 cuSPARSELt ms" in r]
    if small:
        lines.append(f"- A 2:4 linear costs at least {min(r['2:4 cuSPARSELt ms'] for r in small):.2f} ms per call "
                     f"whatever its size (dense: {min(r['dense ms'] for r in small):.3f} ms at {small[0]['tokens']} "
                     "tokens), so the sparse model is slower wherever calls are small; it wins only on large "
                     "prefill matmuls with a wide output (see the kernel table).")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    p, m = results["protocol"], results["machine"]
    sections = [
        "# GPU speed: structured pruning (uniform and searched rates) and 2:4 kernels vs dense",
        f"Machine: {m['gpu']}, torch {m['torch']}, transformers {m['transformers']}, commit {m['commit']}. "
        f"Protocol: {p['dtype']}, eager PyTorch; prefill = median tokens/s of one forward pass of "
        f"batch × {p['seqlen']} random tokens (batches {p['prefill_batches']}); decode = median generated "
        f"tokens/s of greedy generation, batch 1, {p['prompt_len']}-token prompt, {p['new_tokens']} new tokens, "
        f"KV cache; variants measured in {p['rounds']} interleaved rounds, best round kept. Weights are random "
        "(speed depends only on shapes); perplexities of these rate vectors: self_pruner.md. 2:4 = every decoder "
        "linear masked 2:4 by magnitude and run through torch.sparse.to_sparse_semi_structured."]
    for model_name, variants_ in results["models"].items():
        keys = [k for k in next(iter(variants_.values())) if k.startswith(("prefill_b", "decode_b")) and "speedup" not in k]
        header = ["variant", "decoder params"] + [h for k in keys for h in (f"{k} tok/s", "speedup")] + ["note"]
        rows = []
        for name, v in variants_.items():
            params = f"{v['decoder_params'] / 1e6:.2f}M" if v.get("decoder_params") else "(2:4, half of the weights)"
            rows.append([name, params] + [c for k in keys for c in (f"{v[k]:.0f}", f"{v[k + '_speedup']:.2f}x")]
                        + [v.get("note", "")])
        sections += [f"## {model_name}", markdown_table(header, rows)]
    kernels = results.get("kernels")
    sections += ["## Reading", reading(results)]
    if kernels:
        columns = [k for k in kernels[0] if k not in ("linear", "tokens")]
        sections += ["## One linear of the 8B shape: dense vs the 2:4 kernels (CUDA events, mean of 50 calls)",
                     markdown_table(["linear", "tokens"] + columns,
                                    [[r["linear"], r["tokens"]] + [r.get(c, "-") for c in columns] for r in kernels])]
    return "\n\n".join(sections)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_speed needs a CUDA device (this machine has none)")
    names = [n.strip() for n in args.models.split(",") if n.strip()]     # --models "" : the kernel table only
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}", file=sys.stderr)
        sys.exit(2)
    protocol = {"dtype": args.dtype, "seqlen": 512, "prefill_batches": args.prefill_batches, "prompt_len": 128,
                "new_tokens": args.new_tokens, "repeats": args.repeats, "decode_repeats": args.decode_repeats,
                "rounds": args.rounds}
    results = {"machine": machine(), "protocol": protocol, "models": {}}
    earlier = load_results(NAME)
    if earlier.get("protocol") == protocol and earlier.get("machine", {}).get("gpu") == results["machine"]["gpu"]:
        results["models"] = earlier.get("models", {})      # other models of the same protocol stay
    for name in names:
        started = time.perf_counter()
        print(f"{name} ...", flush=True)
        results["models"][name] = run_model(name, args)
        print(json.dumps(results["models"][name], indent=1), f"\n{name}: {time.perf_counter() - started:.0f} s",
              flush=True)
        save_results(NAME, results, markdown(results))      # after each model: a killed run keeps what it has
    results["kernels"] = linear_kernels(args)
    save_results(NAME, results, markdown(results))


if __name__ == "__main__":
    main()
