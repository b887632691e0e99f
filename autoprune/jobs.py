"""`prune` and `eval` jobs end to end: load, calibrate, prune, evaluate, export.

The CLI calls `run_prune_job` / `run_eval_job` and only prints what they return;
a Python user gets the same result dicts. A job sits above the boxes it drives
(the pruning core, the sandbox for `--method FILE.py`, the evaluators), so it
lives here and not in `autoprune/pruning` (docs/architecture.md, layers).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

from autoprune.data import calibration_windows, load_corpus, test_windows
from autoprune.errors import BadInputError, ModelLoadError, SandboxError
from autoprune.evaluators.baseline_cache import baseline_key
from autoprune.evaluators.baselines import BaselineEvaluator
from autoprune.models import EMBEDDED, EMBEDDED_NAME, LoadedModel, cache_root, first_line, load_model, torch_dtype
from autoprune.pruning.calibration import collect_activation_stats, target_linears
from autoprune.pruning.config import EvalConfig, PruneConfig
from autoprune.pruning.export import export_pruned_model, read_summary
from autoprune.pruning.loop import check_pattern_fits_model, plan_block_sparsity, prune_model
from autoprune.pruning.choices import builtin_method
from autoprune.pruning.methods import PrecomputedMasks
from autoprune.pruning.offload_check import check_offload


def evaluate_perplexity(model, windows, progress: bool) -> float:
    from autoprune.evaluators.perplexity import perplexity

    return perplexity(model, windows, show_progress=progress)


def stats_cache_dir(config: PruneConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir else cache_root() / "calibration"


def candidate_masks(config: PruneConfig, loaded: LoadedModel, calibration) -> PrecomputedMasks:
    """Run an untrusted candidate file in the sandbox; its verified masks become the method."""
    try:
        from autoprune.sandbox.api import run_candidate
        from autoprune.sandbox.bundle import write_scoring_bundle
        from autoprune.sandbox.verdict import ScoringRequest
    except ImportError as exc:
        raise SandboxError(f"the sandbox is not available in this installation ({exc})") from exc
    model = loaded.model
    stats = collect_activation_stats(model, calibration, cache_dir=stats_cache_dir(config), progress=config.progress)
    if config.sparsity_pattern.structured:
        block_sparsity = [config.sparsity_pattern.sparsity] * (1 + max(i for i, _ in target_linears(model).values()))
    else:
        block_sparsity, _ = plan_block_sparsity(model, config.sparsity, config.allocation, stats=stats,
                                                hyper=config.allocation_hyper)
    layer_sparsity = {name: block_sparsity[index] for name, (index, _) in target_linears(model).items()}
    source = Path(config.method).expanduser().read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="autoprune-bundle-") as folder:
        bundle = write_scoring_bundle(model, stats, folder)
        request = ScoringRequest(sparsity=layer_sparsity, pattern=config.sparsity_pattern, mode="masks")
        verdict = run_candidate(source, bundle, request, backend=config.sandbox)
    if not verdict.ok or verdict.masks is None:
        raise BadInputError(f"candidate {config.method}: {verdict.status}: {verdict.message}")
    return PrecomputedMasks(verdict.masks, layer_sparsity, group=verdict.group, name=Path(config.method).stem)


def quiet_transformers() -> None:
    """Our own progress bars replace transformers' weight-loading ones."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def job_windows(config: PruneConfig, tokenizer, corpus):
    """(calibration, test) windows of a prune job."""
    calibration = calibration_windows(tokenizer, corpus, nsamples=config.nsamples, seqlen=config.seqlen,
                                      seed=config.seed)
    return calibration, test_windows(tokenizer, corpus, nwindows=config.eval_windows, seqlen=config.seqlen)


def job_summary(result, name: str, source: str, calibration, test, seqlen: int, perplexities: dict,
                cached: dict) -> dict:
    return {**result.summary(), "model": name, "model_source": source,
            "protocol": {"calibration": calibration.description, "test": test.description,
                         "seqlen": seqlen, "test_windows": len(test)},
            "perplexity": perplexities, "perplexity_cached": cached}


def run_prune_job(config: PruneConfig) -> dict:
    """Prune with `config`; returns perplexities, per-layer sparsity, timings and protocol."""
    check_offload(config)
    if config.offload:
        return run_offloaded_prune_job(config)
    started = time.perf_counter()
    quiet_transformers()
    loaded = load_model(config.model, dtype=config.dtype)
    check_pattern_fits_model(loaded.model, config.sparsity_pattern)
    corpus = load_corpus(config.data, model=loaded.model, tokenizer=loaded.tokenizer, seed=config.seed)
    calibration, test = job_windows(config, loaded.tokenizer, corpus)
    baselines = BaselineEvaluator(loaded.model, calibration, test, progress=config.progress)
    cached = {}
    dense_ppl = None
    if config.eval_dense:
        dense = baselines.dense()
        dense_ppl, cached["dense"] = dense.perplexity, dense.cached
    method = (candidate_masks(config, loaded, calibration) if config.is_candidate_file
              else builtin_method(config.method))
    model_info = baselines.model_info if not config.is_candidate_file else None    # the dense weights' digest
    result = prune_model(loaded.model, calibration, method=method, sparsity=config.sparsity,
                         pattern=config.sparsity_pattern, allocation=config.allocation, mode=config.mode,
                         reconstruct=config.reconstruct, allocation_hyper=config.allocation_hyper,
                         progress=config.progress, cache_dir=stats_cache_dir(config))
    pruned_ppl, cached["pruned"] = pruned_perplexity(config, result, model_info, baselines)
    summary = job_summary(result, loaded.name, loaded.source, calibration, test, config.seqlen,
                          {"dense": dense_ppl, "pruned": pruned_ppl}, cached)
    if config.out:
        summary["exported_to"] = str(export_pruned_model(loaded.model, loaded.tokenizer, config.out, summary))
    summary["wall_s"] = time.perf_counter() - started
    return summary


def run_offloaded_prune_job(config: PruneConfig) -> dict:
    """`run_prune_job` with the decoder blocks left in the model folder (autoprune.pruning.onload):
    dense perplexity, calibration + pruning, pruned perplexity and the export each materialise one
    block at a time. The pruned blocks wait in a work folder, removed at the end: inside --out when
    given (the export's disk), else under the cache root (a model's size; /tmp may be a tmpfs)."""
    from autoprune.pruning.export import export_offloaded_model
    from autoprune.pruning.onload import offload_folder, open_offloaded

    started = time.perf_counter()
    quiet_transformers()
    method = builtin_method(config.method)
    check_offload(config, method)
    folder = offload_folder(config.model)
    tokenizer = load_tokenizer(folder)
    out = Path(config.out).expanduser() if config.out else None
    work_parent = out if out is not None else cache_root() / "offload"
    work_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".autoprune-offload-", dir=work_parent) as work:
        _, onloader = open_offloaded(folder, work, dtype=config.dtype)
        summary = offloaded_prune(config, method, onloader, tokenizer, folder)
        if out is not None:
            summary["exported_to"] = str(export_offloaded_model(onloader, tokenizer, out, summary))
            summary["offload"]["stages"]["export"] = onloader.take_peaks()
    summary["wall_s"] = time.perf_counter() - started
    return summary


def offloaded_prune(config: PruneConfig, method, onloader, tokenizer, folder: Path) -> dict:
    """Dense perplexity (while the blocks still come from the folder), calibration + pruning and pruned
    perplexity of an offloaded model; `offload.stages` has each stage's most blocks / block bytes in
    memory at once."""
    from autoprune.evaluators.perplexity import perplexity

    model = onloader.model
    check_pattern_fits_model(model, config.sparsity_pattern)
    corpus = load_corpus(config.data, tokenizer=tokenizer, seed=config.seed)    # no model: never 'self'
    calibration, test = job_windows(config, tokenizer, corpus)
    onloader.take_peaks()
    stages, dense_ppl = {}, None
    if config.eval_dense:
        dense_ppl = perplexity(model, test, onloader=onloader, show_progress=config.progress)
        stages["dense_perplexity"] = onloader.take_peaks()
    result = prune_model(model, calibration, method=method, sparsity=config.sparsity,
                         pattern=config.sparsity_pattern, allocation=config.allocation, mode=config.mode,
                         reconstruct=config.reconstruct, allocation_hyper=config.allocation_hyper,
                         progress=config.progress, onloader=onloader)
    stages["calibration_pruning"] = onloader.take_peaks()
    pruned_ppl = perplexity(model, test, onloader=onloader, show_progress=config.progress)
    stages["perplexity"] = onloader.take_peaks()
    name = EMBEDDED_NAME if config.model in (None, "", EMBEDDED) else folder.name
    summary = job_summary(result, name, str(folder), calibration, test, config.seqlen,
                          {"dense": dense_ppl, "pruned": pruned_ppl}, {"dense": False, "pruned": False})
    summary["offload"] = {"layers": len(onloader), "skeleton_bytes": onloader.skeleton_bytes(), "stages": stages}
    return summary


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    from autoprune.models import first_line

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the tokenizer in {folder}: {first_line(exc)}") from exc


def pruned_perplexity(config: PruneConfig, result, model_info: Optional[dict], baselines) -> tuple[float, bool]:
    """(test perplexity of the pruned model, served from the cross-run cache): a built-in method's result
    is the same for the same dense weights, windows and settings; a candidate file's is always measured."""
    def measure() -> float:
        return evaluate_perplexity(baselines.model, baselines.test, config.progress)

    if model_info is None:
        return measure(), False
    key = baseline_key(model_info, baselines.test, baselines.calibration, method=config.method,
                       sparsity=result.target_sparsity, pattern=result.pattern, allocation=config.allocation,
                       allocation_hyper=config.allocation_hyper, reconstruct=result.reconstruct, mode=config.mode)
    return baselines.cache.perplexity(key, measure)


def evaluated_model(config: EvalConfig) -> LoadedModel:
    """The model `eval` measures: a compressed-tensors sparse checkpoint (`prune --export-format
    compressed-tensors`) is decompressed by our reader, anything else loads as usual."""
    from autoprune.pruning.compressed_export import is_compressed_checkpoint, load_compressed_model

    if not config.model or not is_compressed_checkpoint(config.model):
        return load_model(config.model, dtype=config.dtype)
    from transformers import AutoTokenizer

    folder = Path(config.model).expanduser()
    model = load_compressed_model(folder, dtype=torch_dtype(config.dtype))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder}: no usable tokenizer ({first_line(exc)})") from None
    return LoadedModel(model=model, tokenizer=tokenizer, name=folder.name, source=str(folder))


def run_eval_job(config: EvalConfig) -> dict:
    """Test perplexity (task `wikitext2`) and zero-shot accuracy (lm-eval tasks) of a saved model."""
    quiet_transformers()
    loaded = evaluated_model(config)
    result = {"model": loaded.name, "model_source": loaded.source, "perplexity": None, "protocol": {},
              "sparsity": measured_sparsity(loaded.model), "pruning_summary": prune_summary_of(config.model)}
    plugins = plugin_evaluator_tasks(config.tasks)
    needs_text = "wikitext2" in config.tasks or plugins
    corpus = load_corpus(config.data, model=loaded.model, tokenizer=loaded.tokenizer, seed=config.seed) \
        if needs_text else None
    if "wikitext2" in config.tasks:
        test = test_windows(loaded.tokenizer, corpus, nwindows=config.windows, seqlen=config.seqlen)
        result["perplexity"] = evaluate_perplexity(loaded.model, test, config.progress)
        result["protocol"] = {"test": test.description, "seqlen": config.seqlen, "test_windows": len(test)}
    if plugins:
        result["evaluators"] = run_plugin_evaluators(plugins, loaded, corpus, config)
    zeroshot_tasks = [t for t in config.tasks if t != "wikitext2" and t not in plugins]
    if zeroshot_tasks:
        from autoprune.evaluators.zeroshot import zeroshot_accuracy

        data_dir = Path(config.zeroshot_data) if config.zeroshot_data else None
        result["zeroshot"] = zeroshot_accuracy(loaded.model, loaded.tokenizer, zeroshot_tasks,
                                               data_dir=data_dir, limit=config.zeroshot_limit)
        result["protocol"]["zeroshot"] = {"harness": "lm-eval 0-shot", "source": str(data_dir or "hub"),
                                          "limit": config.zeroshot_limit}
    return result


# Evaluators with their own task names in `eval --tasks` (perplexity is `wikitext2`, zero-shot tasks are lm-eval's).
BUILTIN_TASK_EVALUATORS = ("perplexity", "zeroshot")


def plugin_evaluator_tasks(tasks: list[str]) -> list[str]:
    """The task names that are installed evaluators (entry-point group autoprune.evaluators)."""
    from autoprune.evaluators.registry import available_evaluators

    installed = set(available_evaluators()) - set(BUILTIN_TASK_EVALUATORS)
    return [t for t in tasks if t in installed]


def run_plugin_evaluators(names: list[str], loaded, corpus, config: EvalConfig) -> dict:
    """Each evaluator on the test split, with the same windows setting as perplexity."""
    from autoprune.evaluators.base import EvalRequest
    from autoprune.evaluators.registry import get_evaluator

    request = EvalRequest(corpus=corpus, split="test", seqlen=config.seqlen, nwindows=config.windows)
    return {name: get_evaluator(name).evaluate(loaded.model, loaded.tokenizer, request).to_dict()
            for name in names}


def measured_sparsity(model) -> float:
    from autoprune.adapters import linear_weight

    layers = [linear_weight(m) for _, m in target_linears(model).values()]
    zeros = sum(int((w == 0).sum()) for w in layers)
    return zeros / max(sum(w.numel() for w in layers), 1)


def prune_summary_of(model_dir: Optional[str]) -> Optional[dict]:
    if not model_dir or not Path(model_dir).is_dir():
        return None
    summary = read_summary(model_dir)
    return None if summary is None else {k: summary.get(k) for k in ("method", "allocation", "pattern",
                                                                      "target_sparsity", "perplexity")}
