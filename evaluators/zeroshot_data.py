"""Local copies of the zero-shot tasks, normalised to the fields lm-eval's own task configs read.

Each reader turns the files of one task folder (see shared/data/zeroshot/PROVENANCE.md for
their formats) into records with the field names of the Hugging Face dataset lm-eval
normally downloads, so lm-eval's prompts, choices and metrics apply unchanged.
"""

from __future__ import annotations

import bz2
import json
from pathlib import Path
from typing import Callable, Iterator

from autoprune.errors import DataError

Record = dict


def read_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def read_labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def boolq(folder: Path) -> Iterator[Record]:
    for row in read_jsonl(folder / "dev.jsonl"):
        yield {"question": row["question"], "passage": row["passage"], "label": int(bool(row["answer"]))}


def rte(folder: Path) -> Iterator[Record]:
    labels = {"entailment": 0, "not_entailment": 1}
    for row in read_jsonl(folder / "val.jsonl"):
        yield {"premise": row["premise"], "hypothesis": row["hypothesis"], "label": labels[row["label"]]}


def hellaswag(folder: Path) -> Iterator[Record]:
    """The 6-lines-per-item text (llama.cpp format): 'activity: context', gold, 4 endings."""
    path = folder / "hellaswag_val_full.txt.bz2"
    lines = bz2.open(path, "rt", encoding="utf-8").read().splitlines() if path.is_file() else \
        (folder / "hellaswag_val_full.txt").read_text(encoding="utf-8").splitlines()
    for i in range(0, len(lines) - 5, 6):
        activity, _, ctx = lines[i].partition(": ")
        yield {"activity_label": activity, "ctx_a": ctx, "ctx_b": "", "endings": lines[i + 2: i + 6],
               "label": lines[i + 1].strip()}


def winogrande(folder: Path) -> Iterator[Record]:
    for row in read_jsonl(folder / "dev.jsonl"):
        yield {k: row[k] for k in ("sentence", "option1", "option2", "answer")}


def arc(file_name: str) -> Callable[[Path], Iterator[Record]]:
    def reader(folder: Path) -> Iterator[Record]:
        for row in read_jsonl(folder / file_name):
            yield {k: row[k] for k in ("id", "question", "choices", "answerKey")}
    return reader


def openbookqa(folder: Path) -> Iterator[Record]:
    for row in read_jsonl(folder / "test.jsonl"):
        choices = row["question"]["choices"]
        yield {"id": row["id"], "question_stem": row["question"]["stem"], "answerKey": row["answerKey"],
               "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]}}


def piqa(folder: Path) -> Iterator[Record]:
    labels = read_labels(folder / "valid-labels.lst")
    for row, label in zip(read_jsonl(folder / "valid.jsonl"), labels, strict=True):
        yield {"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(label)}


# task name -> (sub-folder, reader, lm-eval task config path relative to lm_eval/tasks)
LOCAL_TASKS: dict[str, tuple[str, Callable[[Path], Iterator[Record]], str]] = {
    "boolq": ("boolq", boolq, "super_glue/boolq/default.yaml"),
    "rte": ("rte", rte, "super_glue/rte/default.yaml"),
    "hellaswag": ("hellaswag", hellaswag, "hellaswag/hellaswag.yaml"),
    "winogrande": ("winogrande", winogrande, "winogrande/default.yaml"),
    "arc_easy": ("arc_easy", arc("ARC-Easy-test.jsonl"), "arc/arc_easy.yaml"),
    "arc_challenge": ("arc_challenge", arc("ARC-Challenge-test.jsonl"), "arc/arc_challenge.yaml"),
    "openbookqa": ("openbookqa", openbookqa, "openbookqa/openbookqa.yaml"),
    "piqa": ("piqa", piqa, "piqa/piqa.yaml"),
}


def write_local_task_file(task: str, data_dir: Path, out_dir: Path) -> tuple[Path, int]:
    """Normalise one task's local files into `out_dir/<task>.jsonl`; returns (path, records)."""
    if task not in LOCAL_TASKS:
        raise DataError(f"unknown zero-shot task {task!r} (known: {', '.join(LOCAL_TASKS)})")
    sub, reader, _ = LOCAL_TASKS[task]
    folder = data_dir / sub
    if not folder.is_dir():
        raise DataError(f"no local data for {task}: {folder} is missing")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{task}.jsonl"
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for record in reader(folder):
            fh.write(json.dumps(record) + "\n")
            count += 1
    return path, count
