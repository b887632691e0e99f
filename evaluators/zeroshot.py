"""Zero-shot accuracy through lm-eval, used as a library on the in-memory (pruned) model.

Tasks come from the hub through lm-eval's own configs, or — offline — from local files
(`--zeroshot-data DIR`, e.g. shared/data/zeroshot): the same lm-eval task configs with
their dataset swapped for a normalised JSONL file, so prompts and metrics are lm-eval's.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

from autoprune.errors import BadInputError
from autoprune.evaluators.base import EvalRequest, EvalResult
from autoprune.evaluators.zeroshot_data import LOCAL_TASKS, write_local_task_file

log = logging.getLogger(__name__)
DEFAULT_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "piqa")
# lm-eval's registered names where they differ from ours
HUB_TASK_NAMES = {"rte": "sglue_rte"}


def local_task_config(task: str, data_file: Path) -> dict:
    """lm-eval's own config for `task`, reading `data_file` instead of the hub dataset."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    yaml_path = Path(lm_eval.tasks.__file__).parent / LOCAL_TASKS[task][2]
    config = dict(load_yaml(str(yaml_path), resolve_func=True))
    for key in ("tag", "group", "training_split", "test_split", "fewshot_split", "dataset_name"):
        config.pop(key, None)
    config.update(task=f"local_{task}", dataset_path="json", validation_split="validation",
                  dataset_kwargs={"data_files": {"validation": str(data_file)}})
    return config


def task_specs(tasks: list[str], data_dir: Optional[Path], work_dir: Path) -> tuple[list, dict[str, int]]:
    """lm-eval task specs and the number of examples available per task."""
    if data_dir is None:
        return [HUB_TASK_NAMES.get(t, t) for t in tasks], {}
    specs, counts = [], {}
    for task in tasks:
        path, counts[task] = write_local_task_file(task, data_dir, work_dir)
        specs.append(local_task_config(task, path))
    return specs, counts


def result_name(spec, task: str) -> str:
    return spec["task"] if isinstance(spec, dict) else spec


def zeroshot_accuracy(model, tokenizer, tasks: list[str], *, data_dir: Optional[Path] = None,
                      limit: Optional[int] = None, batch_size: int = 8) -> dict[str, dict]:
    """{task: {"acc": .., "acc_norm": .. (when the task has it), "n": examples used}}."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    unknown = [t for t in tasks if t not in LOCAL_TASKS]
    if unknown:
        raise BadInputError(f"unknown zero-shot task(s): {', '.join(unknown)} (known: {', '.join(LOCAL_TASKS)})")
    with tempfile.TemporaryDirectory(prefix="autoprune-zeroshot-") as tmp:
        specs, available = task_specs(tasks, data_dir, Path(tmp))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                  device=str(next(model.parameters()).device))
        out = lm_eval.simple_evaluate(model=lm, tasks=specs, limit=limit, num_fewshot=0,
                                      log_samples=False, bootstrap_iters=0, random_seed=0,
                                      numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    results = {}
    for task, spec in zip(tasks, specs):
        metrics = out["results"][result_name(spec, task)]
        n = out.get("n-samples", {}).get(result_name(spec, task), {}).get("effective")
        results[task] = {k.split(",")[0]: float(v) for k, v in metrics.items()
                         if k.split(",")[0] in ("acc", "acc_norm") and not k.endswith("stderr")}
        results[task]["n"] = int(n if n is not None else min(limit or available.get(task, 0), available.get(task, 0)))
    return results


class ZeroShotEvaluator:
    """Evaluator plugin: request.options = {"tasks": [...], "data_dir": DIR|None, "limit": N}."""

    name = "zeroshot"

    def evaluate(self, model, tokenizer, request: EvalRequest) -> EvalResult:
        tasks = list(request.options.get("tasks") or DEFAULT_TASKS)
        data_dir = request.options.get("data_dir")
        limit = request.options.get("limit")
        scores = zeroshot_accuracy(model, tokenizer, tasks, data_dir=Path(data_dir) if data_dir else None,
                                   limit=limit, batch_size=request.batch_size)
        metrics = {f"{task}/{k}": v for task, row in scores.items() for k, v in row.items() if k != "n"}
        protocol = {"harness": "lm-eval", "num_fewshot": 0, "source": str(data_dir or "hub"),
                    "examples": {task: row["n"] for task, row in scores.items()}}
        return EvalResult(metrics=metrics, protocol=protocol)
