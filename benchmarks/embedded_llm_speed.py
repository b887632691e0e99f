"""Tokens/s of the embedded LLM: llama.cpp (the bundled Q4_1 GGUF) vs `transformers serve` (float32).

Each backend is started exactly as a run starts it (`embedded_llm_server`), then sent the
prompts the agent's analyse and write_code nodes send with the embedded model (built-in GCoT
templates, expression style, a mid-run context: a 30-block profile and five elite entries), with
the nodes' max_tokens (agent/nodes/common.py) and the run's default temperature. Requests are
streamed so that prefill and decoding are timed apart:

  prompt tokens/s     = prompt tokens / time to the first streamed token
  completion tokens/s = (completion tokens - 1) / (time from the first to the last token)
  end-to-end tokens/s = completion tokens / whole request (what a node waits for)

Prompt tokens are counted once with the model's chat template (the same for both backends);
completion tokens come from the server's usage when it streams one, else one per streamed chunk.
Start-up is the time from spawning the server to its first answer to the readiness probe, plus
the first request. The 1-minute load average is sampled during each backend's turn: on a shared
machine other work slows both backends, so read the two columns with their load.

    python benchmarks/embedded_llm_speed.py --n 3
writes benchmarks/results/embedded_llm_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, save_results  # noqa: E402

from autoprune.agent.embedded_server import embedded_llm_server, llama_cpp_installed  # noqa: E402
from autoprune.agent.nodes.common import EXPRESSION_MAX_TOKENS, NODE_MAX_TOKENS  # noqa: E402
from autoprune.prompts import get_prompt_set  # noqa: E402

TEMPERATURE = 0.7      # agent/config.py's default
ELITE = [
    {"hypothesis": "outlier inputs need protection", "fitness": 58.3,
     "expression": "W.abs() * (X.sq_mean + X.max_abs).sqrt()", "reflection": "max_abs helps in deep blocks"},
    {"hypothesis": "wanda", "fitness": 58.0, "expression": "W.abs() * X.norm", "reflection": ""},
    {"hypothesis": "relative importance in row and column", "fitness": 59.1,
     "expression": "(W.abs() / W.abs().sum(dim=1, keepdim=True)) * X.norm.sqrt()", "reflection": ""},
    {"hypothesis": "variance of inputs carries information", "fitness": 61.4,
     "expression": "W.pow(2) * X.var", "reflection": "variance alone over-prunes early blocks"},
    {"hypothesis": "log-compressed magnitude", "fitness": 60.2,
     "expression": "torch.log1p(W.abs()) * X.norm", "reflection": ""},
]
HYPOTHESES = ["weights feeding channels with large activations matter more",
              "a weight matters relative to the other weights in its row",
              "deeper layers are more sensitive, so scale importance by depth",
              "squared weight times mean squared input approximates the loss increase"]


def profile_text() -> str:
    """A 30-block profile in the shape agent/setup.py's profile_text gives the analyse prompt."""
    from autoprune.agent.setup import profile_text as render
    return render([{"outlier_ratio": 0.002 + 0.0004 * i, "skewness": 40.0 - i, "weight_skewness": 3.0 + 0.1 * i}
                   for i in range(30)])


def agent_prompts(n: int) -> list[tuple[str, list[dict], int]]:
    """(node, messages, max_tokens) for n rounds of analyse + write_code, as a run with the embedded LLM sends."""
    prompts = get_prompt_set()
    context = {"model_name": "SmolLM2-135M-Instruct", "sparsity": 0.5, "pattern": "unstructured",
               "model_profile": profile_text(), "archive_brief": ELITE, "elite": ELITE, "archive": ELITE,
               "insights": "outlier inputs: helped (58.3); variance: hurt (61.4)", "code_style": "expression"}
    out = []
    for i in range(n):
        out.append(("analyse", prompts.render("analyse", **context), NODE_MAX_TOKENS["analyse"]))
        out.append(("write_code", prompts.render("write_code", **context, hypothesis=HYPOTHESES[i % len(HYPOTHESES)]),
                    EXPRESSION_MAX_TOKENS))
    return out


def prompt_token_counts(requests: list[tuple[str, list[dict], int]]) -> list[int]:
    from transformers import AutoTokenizer

    from autoprune.models import embedded_model_dir
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    return [len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"]) for _, messages, _ in requests]


class LoadSampler(threading.Thread):
    """The 1-minute load average every few seconds while a backend is measured."""

    def __init__(self, every: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stopped = every, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append(os.getloadavg()[0])
            self.stopped.wait(self.every)

    def summary(self) -> dict:
        self.stopped.set()
        return {"mean": round(statistics.mean(self.samples), 2), "max": round(max(self.samples), 2)}


def streamed_request(client, model: str, messages: list[dict], max_tokens: int, seed: int) -> dict:
    start = time.monotonic()
    first = None
    chunks, usage = 0, None
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, seed=seed,
                                            temperature=TEMPERATURE, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if getattr(chunk, "usage", None):
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
            first = first or time.monotonic()
            chunks += 1
    end = time.monotonic()
    completion = int(usage.completion_tokens) if usage else chunks
    return {"ttft_s": (first or end) - start, "decode_s": end - (first or end), "total_s": end - start,
            "completion_tokens": completion}


def measure(backend: str, requests: list, prompt_tokens: list[int], log_dir: Path) -> dict:
    import openai

    sampler = LoadSampler()
    sampler.start()
    spawned = time.monotonic()
    with embedded_llm_server(backend=backend, log_dir=log_dir) as server:
        ready_s = time.monotonic() - spawned
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-local", max_retries=0, timeout=900)
        rows = []
        for i, ((node, messages, max_tokens), n_prompt) in enumerate(zip(requests, prompt_tokens)):
            row = streamed_request(client, server.model, messages, max_tokens, seed=i)
            rows.append({"node": node, "max_tokens": max_tokens, "prompt_tokens": n_prompt, **row})
            print(f"{backend:12s} {node:10s} prompt {n_prompt:4d} tok, completion {row['completion_tokens']:3d} tok, "
                  f"ttft {row['ttft_s']:.2f} s, total {row['total_s']:.2f} s", flush=True)
            if i == 0:
                first_request_s = time.monotonic() - spawned
    return {"backend": server.backend, "ready_s": round(ready_s, 2), "first_request_s": round(first_request_s, 2),
            "load_1min": sampler.summary(), "requests": rows, **rates(rows)}


def rates(rows: list[dict]) -> dict:
    prompt = sum(r["prompt_tokens"] for r in rows)
    completion = sum(r["completion_tokens"] for r in rows)
    decode_tokens = sum(max(r["completion_tokens"] - 1, 0) for r in rows)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "prompt_tok_s": round(prompt / sum(r["ttft_s"] for r in rows), 1),
            "completion_tok_s": round(decode_tokens / max(sum(r["decode_s"] for r in rows), 1e-9), 1),
            "end_to_end_tok_s": round(completion / sum(r["total_s"] for r in rows), 1),
            "wall_s": round(sum(r["total_s"] for r in rows), 1)}


def markdown(data: dict) -> str:
    header = ["backend", "start-up to ready (s)", "to first reply (s)", "prompt tok/s", "completion tok/s",
              "end-to-end completion tok/s", "requests", "wall (s)", "load 1-min mean / max"]
    rows = [[r["backend"], r["ready_s"], r["first_request_s"], r["prompt_tok_s"], r["completion_tok_s"],
             r["end_to_end_tok_s"], len(r["requests"]), r["wall_s"],
             f"{r['load_1min']['mean']} / {r['load_1min']['max']}"] for r in data["backends"]]
    m = data["machine"]
    lines = [f"# Embedded LLM speed: llama.cpp vs transformers serve (commit {data['commit']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['date']}.", "",
             markdown_table(header, rows), "", "## Protocol", "", data["protocol"], "", "## Notes", "",
             *[f"- {note}" for note in data["notes"]]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3, help="rounds of (analyse, write_code) per backend")
    parser.add_argument("--backends", nargs="+", default=["llama.cpp", "transformers"])
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/autoprune-bench-embedded-llm"))
    parser.add_argument("--note", action="append", default=[], help="a line for the notes (e.g. other load)")
    args = parser.parse_args()
    if "llama.cpp" in args.backends and not llama_cpp_installed():
        sys.exit("llama-cpp-python is not installed: run scripts/setup.sh")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    requests = agent_prompts(args.n)
    prompt_tokens = prompt_token_counts(requests)
    results = [measure(b, requests, prompt_tokens, args.log_dir) for b in args.backends]
    info = machine()
    data = {"commit": info["commit"], "machine": info, "backends": results,
            "protocol": (f"{args.n} rounds of (analyse, write_code) per backend, {len(requests)} streamed requests: "
                         f"analyse max_tokens {NODE_MAX_TOKENS['analyse']}, write_code (expression style, the "
                         f"embedded LLM's) max_tokens {EXPRESSION_MAX_TOKENS}, temperature {TEMPERATURE}, seed = "
                         "request index; prompts from the built-in GCoT templates with a mid-run context "
                         f"({min(prompt_tokens)}-{max(prompt_tokens)} prompt tokens). Backends run one after the "
                         "other, each started as a run starts it (llama.cpp: Q4_1 GGUF, "
                         "n_threads = half the cores (<= 4), i.e. 1 here, OMP_WAIT_POLICY=PASSIVE, n_ctx 8192; "
                         "transformers serve: float32 on CPU)."),
            "notes": args.note}
    save_results("embedded_llm_speed", data, markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
