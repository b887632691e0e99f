"""Evaluate many candidates at once: serially, on a local pool of CPU slices / GPUs, or on Ray.

Every candidate of a run goes through an executor; serial runs use the default one,
`SerialExecutor.resident` (the host's own runner and fitness service). The unit of
work is `EvaluationWorker.evaluate(task)`: run one candidate in the sandbox
(`CandidateRunner`, the one place a sandbox request is built) and, if its masks
verify, measure its fitness on the run's validation windows. A pool or Ray worker
holds its own resident dense model and fitness cache, built from a picklable
`WorkerSpec` (`WorkerSpec.from_config`: the run's settings, seed and device
included, so a `--data self` worker scores the host's windows), so the same code
runs in this process, in a pool process, or in a Ray actor on another node (with
its own Docker engine and GPU). Results come back in task order and do not depend
on which worker ran them, so parallel evaluation gives exactly the serial results.

The host trusts none of a worker's result (its own included, but there the
fitness is its own measurement and is not recomputed): `check_on_host` unpacks its masks with
the trusted bundle's shapes and runs the same `verify_masks` as every sandbox
verdict (exact sparsity, pattern, GROUP from the host's own gate), and spot-checks
its fitness: `SPOT_CHECKED_WINDOWS` of the level's windows, drawn with the OS's
randomness after the result is in, are recomputed on the host's resident model;
any disagreement makes the candidate invalid-output. A random subset, not all
windows: recomputing everything would make the host do the workers' job. A worker
that inflates every window is always caught; one that forges k of n windows is
caught with probability >= k/n per candidate (and its checked windows count with
the host's values).
"""

from __future__ import annotations

import os
import random
import threading
import time
import weakref
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

from autoprune.errors import AutopruneError, BadInputError, MaskError
from autoprune.pruning.masks import SparsityPattern, pack_mask, unpack_mask

SPOT_CHECKED_WINDOWS = 1     # fitness windows of each worker result the host recomputes
_RESIDENT_LOCKS: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()
_RESIDENT_LOCKS_GUARD = threading.Lock()


def resident_lock(model) -> threading.Lock:
    """The one lock of a resident model: fitness masks its weights in place, so whoever measures on it
    (the evaluation pipeline's thread, the graph's evaluate and finalize nodes) holds this lock."""
    with _RESIDENT_LOCKS_GUARD:
        lock = _RESIDENT_LOCKS.get(model)
        if lock is None:
            lock = _RESIDENT_LOCKS[model] = threading.Lock()
        return lock


def sandbox_limits(config):
    """The sandbox limits of a run (`config`: its RunConfig), the host's and every worker's."""
    from autoprune.sandbox.verdict import SandboxLimits

    return SandboxLimits(timeout_s=config.candidate_timeout_s, gpus=config.gpus)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to rebuild its resident state (picklable, no tensors)."""

    bundle_dir: str
    model: Optional[str] = None            # load_model spec (None = embedded default)
    dtype: str = "fp32"                    # the host's --dtype (its resident model's weights)
    data: Optional[str] = None             # load_corpus spec
    seqlen: int = 512
    levels: tuple[int, ...] = (2, 8)       # fitness windows per fidelity level
    sparsity: float = 0.5
    pattern: str = "unstructured"
    backend: str = "docker"
    limits: Optional[object] = None        # sandbox.verdict.SandboxLimits
    threads: Optional[int] = None          # torch threads of this worker (CPU slice)
    gpu: Optional[str] = None              # this worker's GPU id (its DeviceRequest)
    seed: int = 0                          # the run's --seed (a 'self' corpus depends on it)
    device: str = "cpu"                    # where the host keeps its model ("cuda": this worker's GPU)
    needs: Optional[object] = None         # data.TextNeeds: sizes a 'self' corpus like the host's
    search_refit: str = "none"             # the host's fitness refit (agent/fitness.py): the same NLLs
    calibration_samples: int = 64          # the host's calibration windows, for its XᵀX ...
    run_dir: Optional[str] = None          # ... cached in run_dir/calibration by the host (agent/setup.py)

    @classmethod
    def from_config(cls, config, bundle_dir, levels: Sequence[int]) -> "WorkerSpec":
        """The one place a run's settings become a worker's: `config` is the run's RunConfig, `levels`
        the host's fitness levels. Seed and device are the host's, so a worker of a `--data self` run
        samples the host's text and scores the host's windows."""
        from autoprune.agent.setup import run_device, text_needs

        return cls(bundle_dir=str(Path(bundle_dir).resolve()), model=config.model, dtype=config.dtype, data=config.data,
                   seqlen=config.seqlen, levels=tuple(levels), sparsity=config.sparsity, pattern=config.pattern,
                   backend=config.sandbox, limits=sandbox_limits(config), seed=config.seed, device=run_device(config),
                   needs=text_needs(config), search_refit=config.search_refit,
                   calibration_samples=config.calibration_samples, run_dir=str(Path(bundle_dir).resolve().parent))

    def model_device(self) -> str:
        """The host's device, on this worker's own GPU when it has one. `gpu` is the node's id (what
        Docker's DeviceRequest names); torch counts only the visible devices, so under
        CUDA_VISIBLE_DEVICES (set by Ray for an actor given a GPU) it is the id's place in that list."""
        if self.device.startswith("cuda") and self.gpu is not None and self.gpu.isdigit():
            visible = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
            return f"cuda:{visible.index(self.gpu) if self.gpu in visible else self.gpu}"
        return self.device


@dataclass
class SandboxOutcome:
    status: str
    message: str
    timings: dict[str, float]
    masks: Optional[dict]
    profile: Optional[dict]
    group: str
    seconds: float


class CandidateRunner:
    """Sends one candidate source to the sandbox with the run's bundle, pattern and limits
    (the one place a layer's sparsity is derived from the run's settings)."""

    def __init__(self, bundle: Any, pattern: SparsityPattern, sparsity: float, backend: str, *,
                 limits: Any = None, run: Optional[Callable] = None):
        self.bundle, self.pattern, self.sparsity, self.backend, self.limits = bundle, pattern, sparsity, backend, limits
        self._run = run

    def uniform_sparsity(self) -> dict[str, float]:
        value = self.pattern.sparsity if self.pattern.structured else self.sparsity
        return {name: value for name in self.bundle.names}

    def block_to_layer_sparsity(self, block_sparsity: list[float]) -> dict[str, float]:
        return {spec.name: block_sparsity[spec.layer_index] for spec in self.bundle.layers}

    def request(self, layer_sparsity: Optional[dict[str, float]] = None, mode: str = "masks"):
        """What a run asks of the sandbox: the layers' sparsities (uniform by default) and the pattern."""
        from autoprune.sandbox.verdict import ScoringRequest

        return ScoringRequest(sparsity=layer_sparsity or self.uniform_sparsity(), pattern=self.pattern, mode=mode)

    def run(self, source: str, *, layer_sparsity: Optional[dict[str, float]] = None,
            mode: str = "masks") -> SandboxOutcome:
        started = time.perf_counter()
        verdict = self._runner()(source, self.bundle, self.request(layer_sparsity, mode), **self._kwargs())
        return SandboxOutcome(status=verdict.status, message=verdict.message, timings=dict(verdict.timings),
                              masks=verdict.masks, profile=verdict.profile, group=getattr(verdict, "group", "row"),
                              seconds=time.perf_counter() - started)

    def _kwargs(self) -> dict:
        kwargs: dict[str, Any] = {"backend": self.backend}
        if self.limits is not None:
            kwargs["limits"] = self.limits
        return kwargs

    def _runner(self) -> Callable:
        if self._run is None:
            from autoprune.sandbox.api import run_candidate

            self._run = run_candidate
        return self._run


@dataclass(frozen=True)
class EvaluationTask:
    candidate_id: str
    source: str
    level: int = 0
    layer_sparsity: Optional[dict] = None  # None = uniform at the run's sparsity


@dataclass
class EvaluationResult:
    candidate_id: str
    status: str
    message: str
    timings: dict
    nlls: Optional[list[float]] = None                       # per fitness window, when ok
    packed_masks: dict[str, bytes] = field(default_factory=dict)
    worker: str = ""
    group: str = "row"                                       # how the scores became masks
    sandbox_s: float = 0.0                                   # wall seconds of the sandbox run
    fitness_s: float = 0.0                                   # wall seconds of the fitness windows


class EvaluationWorker:
    """One sandbox slot plus one resident model: evaluates tasks one after another. The host's own
    worker holds the run's runner and fitness service; a pool or Ray worker builds its own
    (`from_spec`)."""

    def __init__(self, runner: CandidateRunner, fitness, name: str = "host"):
        self.runner, self.fitness, self.name = runner, fitness, name

    @classmethod
    def from_spec(cls, spec: WorkerSpec) -> "EvaluationWorker":
        """The run's model, fitness windows and sandbox slot, rebuilt in this process from `spec`."""
        import torch

        from autoprune.agent.fitness import FitnessService
        from autoprune.data import fitness_windows, load_corpus
        from autoprune.models import load_model
        from autoprune.sandbox.bundle import ScoringBundle
        from autoprune.sandbox.verdict import SandboxLimits

        if spec.threads:
            torch.set_num_threads(spec.threads)
        loaded = load_model(spec.model, dtype=spec.dtype, device=spec.model_device())
        corpus = load_corpus(spec.data, model=loaded.model, tokenizer=loaded.tokenizer, seed=spec.seed,
                             needs=spec.needs)
        windows = fitness_windows(loaded.tokenizer, corpus, nwindows=max(spec.levels), seqlen=spec.seqlen)
        stats = None
        if spec.search_refit != "none":      # the host's XᵀX: a cache hit on the host's calibration file
            from autoprune.agent.setup import search_stats
            from autoprune.data import calibration_windows

            calibration = calibration_windows(loaded.tokenizer, corpus, nsamples=spec.calibration_samples,
                                              seqlen=spec.seqlen, seed=spec.seed)
            stats = search_stats(loaded.model, calibration, spec.search_refit, Path(spec.run_dir or spec.bundle_dir))
        limits = spec.limits or SandboxLimits()
        runner = CandidateRunner(ScoringBundle.open(spec.bundle_dir), SparsityPattern.parse(spec.pattern),
                                 spec.sparsity, spec.backend,
                                 limits=replace(limits, gpus=spec.gpu) if spec.gpu is not None else limits)
        name = f"pid{os.getpid()}" + (f"/gpu{spec.gpu}" if spec.gpu is not None else "")
        return cls(runner, FitnessService(loaded.model, windows, list(spec.levels), refit=spec.search_refit,
                                          stats=stats), name)

    @property
    def bundle(self):
        return self.runner.bundle

    def evaluate(self, task: EvaluationTask) -> EvaluationResult:
        """One task; a failure of this worker becomes the task's "crashed" result, not an exception
        that would take the whole batch down. A broken setup (AutopruneError: no engine, no image)
        still raises: every candidate would fail the same way."""
        try:
            return self._evaluate(task)
        except AutopruneError:
            raise
        except Exception as exc:   # noqa: BLE001 - one candidate's failure must not stop the batch
            return EvaluationResult(task.candidate_id, "crashed", worker=self.name, timings={},
                                    message=f"the evaluation worker failed: {type(exc).__name__}: {exc}"[:500])

    def _evaluate(self, task: EvaluationTask) -> EvaluationResult:
        outcome = self.runner.run(task.source, layer_sparsity=task.layer_sparsity)
        result = EvaluationResult(task.candidate_id, outcome.status, outcome.message, outcome.timings,
                                  worker=self.name, group=outcome.group, sandbox_s=outcome.seconds)
        if outcome.status == "ok":
            masks = outcome.masks
            with resident_lock(self.fitness.model):     # the sandbox run above needs no lock
                started = time.perf_counter()
                result.nlls = self.fitness.evaluate(task.candidate_id, lambda: masks, task.level)
                result.fitness_s = time.perf_counter() - started
            result.packed_masks = {name: pack_mask(mask) for name, mask in masks.items()}
        return result


@dataclass
class HostChecked:
    """A worker's result as the host accepts it: verified masks and host-checked NLLs when ok."""

    status: str
    message: str
    masks: Optional[dict] = None
    nlls: Optional[list[float]] = None


def check_on_host(result: EvaluationResult, source: str, bundle, request, fitness, *, level: int = 0,
                  spot_checks: int = SPOT_CHECKED_WINDOWS, rng: Optional[random.Random] = None) -> HostChecked:
    """Verify a worker's masks like any sandbox output and spot-check its fitness on the host
    (see the module docstring); a result that fails is invalid-output."""
    from autoprune.agent.fitness import FitnessMismatch
    from autoprune.sandbox.gate import check_source
    from autoprune.sandbox.outcome import verify_masks
    from autoprune.sandbox.verdict import STATUSES

    if result.status != "ok":
        if result.status not in STATUSES:
            return HostChecked("invalid-output", "the worker returned an unknown status")
        return HostChecked(result.status, str(result.message)[-4000:])
    gate = check_source(source, offered=bundle.offered())
    if not gate.ok:
        return HostChecked("rejected-static", gate.message)
    try:
        if result.group != gate.group:
            raise MaskError(f"the worker's GROUP {result.group!r} is not the source's {gate.group!r}")
        packed = result.packed_masks
        if not isinstance(packed, dict) or set(packed) != set(request.sparsity):
            raise MaskError("the worker's masks are not exactly the requested layers")
        masks = verify_masks({name: unpack_mask(bytes(packed[name]), bundle.layer(name).shape)
                              for name in request.sparsity}, bundle, request, gate.group)
        count = fitness.levels[level]
        checked = (rng or random.SystemRandom()).sample(range(count), min(spot_checks, count))
        nlls = fitness.accept_claimed(result.candidate_id, lambda: masks, result.nlls, level, checked)
    except (MaskError, FitnessMismatch, TypeError) as exc:
        return HostChecked("invalid-output", f"the host's check of the worker's result failed: {exc}")
    return HostChecked("ok", "", masks, nlls)


class Executor(Protocol):
    workers: int                 # tasks it runs at once (a verify visit sends at most this many)
    trusted: bool                # True only when its worker is the host's own model and fitness service

    def map(self, tasks: Sequence[EvaluationTask]) -> list[EvaluationResult]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """In this process, one task after another (the reference the others must match). The run's
    default is `resident`: its worker is the host's own runner and fitness service, so its fitness
    needs no spot check (`trusted`); built from a spec it loads its own model like any other worker."""

    def __init__(self, worker: EvaluationWorker, *, trusted: bool = False):
        self.worker, self.workers, self.trusted = worker, 1, trusted

    @classmethod
    def resident(cls, runner: CandidateRunner, fitness) -> "SerialExecutor":
        return cls(EvaluationWorker(runner, fitness), trusted=True)

    def map(self, tasks: Sequence[EvaluationTask]) -> list[EvaluationResult]:
        return [self.worker.evaluate(t) for t in tasks]

    def close(self) -> None:
        pass


_POOL_WORKER: Optional[EvaluationWorker] = None


def _init_pool_worker(specs: list[WorkerSpec], counter, worker_class: type = EvaluationWorker) -> None:
    global _POOL_WORKER
    with counter.get_lock():
        slot = counter.value
        counter.value += 1
    _POOL_WORKER = worker_class.from_spec(specs[slot % len(specs)])


def _pool_evaluate(task: EvaluationTask) -> EvaluationResult:
    assert _POOL_WORKER is not None
    return _POOL_WORKER.evaluate(task)


def slot_specs(spec: WorkerSpec, workers: int, gpus: Optional[list[str]]) -> list[WorkerSpec]:
    """One spec per slot: a GPU each when there are GPUs, else an equal CPU slice each."""
    if gpus:
        return [replace(spec, gpu=gpus[i % len(gpus)], threads=spec.threads) for i in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    cpus = max(0.5, (os.cpu_count() or 1) / workers)
    limits = spec.limits
    if limits is not None:
        limits = replace(limits, cpus=min(limits.cpus, cpus))
    return [replace(spec, threads=threads, limits=limits) for _ in range(workers)]


class LocalPoolExecutor:
    """N worker processes on this machine (spawned: no forked torch state)."""

    worker_class: type = EvaluationWorker     # what each process runs (tests put a lying one here)
    trusted = False

    def __init__(self, spec: WorkerSpec, workers: int, gpus: Optional[list[str]] = None):
        context = get_context("spawn")
        counter = context.Value("i", 0)
        self.workers = workers
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_pool_worker,
                                        initargs=(slot_specs(spec, workers, gpus), counter, self.worker_class))

    def map(self, tasks: Sequence[EvaluationTask]) -> list[EvaluationResult]:
        return list(self.pool.map(_pool_evaluate, tasks))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class SpecWorker:
    """A Ray actor: an EvaluationWorker built from the spec in the actor's own process. An actor given
    GPUs works on the ones Ray assigned it on its node (`ray.get_gpu_ids()`): they become its `gpu`,
    so its sandbox container's DeviceRequest and its model's device name exactly them."""

    def __init__(self, spec: WorkerSpec):
        import ray

        assigned = [str(i) for i in ray.get_gpu_ids()]
        if assigned:
            spec = replace(spec, gpu=",".join(assigned))
        self.node = ray.get_runtime_context().get_node_id()
        self.worker = EvaluationWorker.from_spec(spec)

    def evaluate(self, task: EvaluationTask) -> EvaluationResult:
        return self.worker.evaluate(task)

    def slot(self) -> tuple[str, Any]:
        """(this actor's node id, the sandbox limits it hands to every candidate's container)."""
        return self.node, self.worker.runner.limits


class RayExecutor:
    """The same workers as Ray actors on a cluster: each node runs its own Docker engine."""

    trusted = False

    def __init__(self, spec: WorkerSpec, workers: int, address: str, gpus_per_worker: float = 0.0):
        try:
            import ray
        except ImportError as exc:
            raise BadInputError("--executor ray needs Ray: pip install 'autoprune-agent[ray]'") from exc
        if not ray.is_initialized():
            # A loopback head keeps every connection on loopback (the driver too).
            local = {"_node_ip_address": "127.0.0.1"} if address.startswith(("127.", "localhost")) else {}
            ray.init(address=address, log_to_driver=False, include_dashboard=False, **local)
        self.ray, self.workers = ray, workers
        check_cluster_fits(ray.cluster_resources(), workers, gpus_per_worker, address)
        actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(SpecWorker)
        self.actors = [actor.remote(s) for s in slot_specs(spec, workers, None)]

    def map(self, tasks: Sequence[EvaluationTask]) -> list[EvaluationResult]:
        """A batch's results in task order. An actor that died (its node left the cluster, or its process
        was killed) is not restarted: the batch stops the run with one message, and --resume goes on."""
        futures = [self.actors[i % self.workers].evaluate.remote(t) for i, t in enumerate(tasks)]
        try:
            return self.ray.get(futures)
        except self.ray.exceptions.RayActorError as exc:
            raise AutopruneError("a Ray worker died (its node left the cluster or its process was killed); "
                                 "restart the node or lower --workers, then continue with --resume RUN_DIR: "
                                 f"{str(exc).splitlines()[0][:300]}") from exc

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


def check_cluster_fits(resources: dict, workers: int, gpus_per_worker: float, address: str) -> None:
    """Each actor holds 1 CPU (and `gpus_per_worker` GPUs) for the whole run, so more workers than the
    cluster has would wait forever for the rest: refuse with one message instead (no autoscaling)."""
    for name, each in (("CPU", 1.0), ("GPU", gpus_per_worker)):
        have = resources.get(name, 0.0)
        if each and workers * each > have:
            raise BadInputError(f"--workers {workers} needs {workers * each:g} {name}s, the Ray cluster at "
                                f"{address} has {have:g}: lower --workers or add nodes (ray start --address=...)")


def make_executor(kind: str, spec: WorkerSpec, *, workers: int = 1, ray_address: Optional[str] = None,
                  gpus: Optional[list[str]] = None) -> Executor:
    if kind == "serial" or (kind == "local" and workers == 1 and not gpus):
        return SerialExecutor(EvaluationWorker.from_spec(spec))
    if kind == "local":
        return LocalPoolExecutor(spec, workers, gpus)
    if kind == "ray":
        if not ray_address:
            raise BadInputError("--executor ray needs --ray-address (e.g. 127.0.0.1:6379 or 'auto')")
        on_gpus = bool(gpus) or (spec.limits is not None and getattr(spec.limits, "gpus", None) is not None)
        return RayExecutor(spec, workers, ray_address, gpus_per_worker=1.0 if on_gpus else 0.0)
    raise BadInputError(f"unknown executor {kind!r} (serial, local, ray)")
