"""Zero-shot accuracy (lm-eval, local task files) of the dense embedded model and pruned models.

    python benchmarks/zeroshot.py --data ../shared/data/zeroshot --limit 200 \
        [--model LABEL=MODEL_DIR ...]

Each --model is a saved model folder (e.g. from `autoprune-agent prune --out DIR`); "dense"
is always measured. Results accumulate in benchmarks/results/zeroshot.{json,md}; a label
already measured with the same limit is skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_results, machine, markdown_table, save_results  # noqa: E402

from autoprune.evaluators.zeroshot import DEFAULT_TASKS, zeroshot_accuracy  # noqa: E402
from autoprune.models import load_model  # noqa: E402

NAME = "zeroshot"


def measure(label: str, spec: str | None, data: Path, limit: int) -> dict:
    loaded = load_model(spec)
    start = time.perf_counter()
    scores = zeroshot_accuracy(loaded.model, loaded.tokenizer, list(DEFAULT_TASKS), data_dir=data,
                               limit=limit, batch_size=16)
    return {"label": label, "model": loaded.source, "limit": limit, "scores": scores,
            "seconds": round(time.perf_counter() - start, 1)}


def render(data: dict) -> str:
    header = ["model"] + [f"{t} (n)" for t in DEFAULT_TASKS] + ["mean acc"]
    rows = []
    for entry in data["entries"]:
        s = entry["scores"]
        cells = [f"{s[t]['acc']:.3f} ({s[t]['n']})" for t in DEFAULT_TASKS]
        mean = sum(s[t]["acc"] for t in DEFAULT_TASKS) / len(DEFAULT_TASKS)
        rows.append([entry["label"], *cells, f"{mean:.3f}"])
    m = data["machine"]
    return "\n\n".join([
        "# Zero-shot accuracy (lm-eval 0-shot, local task files)",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu']}; "
        f"torch {m['torch']}, transformers {m['transformers']}, commit {m['commit']}, {m['date']}.",
        "Protocol: lm-eval's own task configs (prompts, choices, acc) with the dataset swapped for the "
        "local copies in shared/data/zeroshot (see its PROVENANCE.md); the first N examples of each "
        "split (N in brackets). HellaSwag contexts come from a preprocessed text file and differ "
        "slightly from lm-eval's preprocessing. `acc` shown; `acc_norm` is in the JSON.",
        markdown_table(header, rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--model", action="append", default=[], help="LABEL=MODEL_DIR")
    args = parser.parse_args()
    data = load_results(NAME) or {"entries": []}
    data["machine"] = machine()
    wanted = [("dense", None)] + [tuple(m.split("=", 1)) for m in args.model]
    for label, spec in wanted:
        if any(e["label"] == label and e["limit"] == args.limit for e in data["entries"]):
            continue
        data["entries"] = [e for e in data["entries"] if e["label"] != label]
        data["entries"].append(measure(label, spec, args.data, args.limit))
        save_results(NAME, data, render(data))
        print(f"{label}: done", flush=True)


if __name__ == "__main__":
    main()
