"""The worker: runs inside the container (or the process backend) on one candidate.

Loads the read-only bundle, compiles the candidate with the restricted policy and
reads its kind from the one function it defines (autoprune/pruning/contract.py's `KINDS`):
`score(W, X)`, whose scores become masks through the trusted `scores_to_mask` (or are
profiled), or `prune(W, X, sparsity, pattern)`, whose returned keep-mask is checked like
any other (`verify_mask`). Every layer gets a fresh module namespace, so nothing the
candidate computed on one layer reaches the next. The results go to the size-capped output
folder. Its verdict on its own run is only ever trusted to make a candidate's outcome worse:
the host re-verifies every mask.

    python -m autoprune.sandbox.worker --bundle DIR --input DIR --out DIR [--raw]

`--raw` (tests only) runs the candidate file as plain Python with full
builtins, so tests can prove the container's isolation without the gate.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open

from autoprune.errors import MaskError
from autoprune.pruning import contract
from autoprune.pruning.contract import TENSOR_NAMES
from autoprune.pruning.masks import SparsityPattern, pack_mask, scores_to_mask, verify_mask
from autoprune.pruning.stats import ActivationStats
from autoprune.sandbox import protocol as P
from autoprune.sandbox.policy import GuardError, candidate_globals, compile_candidate
from autoprune.sandbox.score_profile import blocks_profile, score_profile


class WorkerFailure(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Program:
    """A compiled candidate: its kind, its GROUP, and its module code (run afresh per layer)."""

    kind: contract.CandidateKind
    group: str
    code: Any
    raw: bool

    def fresh(self) -> Callable:
        """The kind's function from a new execution of the module: no state survives a layer."""
        return _execute(self.code, self.raw)[self.kind.name]


def _execute(code, raw: bool) -> dict:
    if raw:
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        exec(code, namespace)  # noqa: S102 (test-only bypass)
        return namespace
    namespace = candidate_globals()
    try:
        exec(code, namespace)  # noqa: S102 (restricted code, guarded globals)
    except GuardError as exc:
        raise WorkerFailure(P.KIND_CRASHED, blocked_message("the module body", exc)) from None
    except Exception:  # noqa: BLE001 - the candidate's own bug, reported to the LLM
        raise WorkerFailure(P.KIND_CRASHED, printable("the module body raised:\n"
                                                      + traceback.format_exc(limit=-4))) from None
    return namespace


def _kind_of(namespace: dict) -> contract.CandidateKind:
    defined = [kind for kind in contract.KINDS if callable(namespace.get(kind.name))]
    if len(defined) != 1:
        signatures = " or ".join(kind.signature for kind in contract.KINDS)
        found = "defines both " + " and ".join(k.name for k in defined) if defined else "defines no function"
        raise WorkerFailure(P.KIND_INVALID, f"the candidate {found}; define exactly one of {signatures}")
    return defined[0]


def load_program(source: str, raw: bool) -> Program:
    """Compile (with the policy unless `raw`) and run the module body once; the kind and GROUP."""
    if raw:
        code = compile(source, P.CANDIDATE_FILE, "exec")
    else:
        code, errors = compile_candidate(source, P.CANDIDATE_FILE)
        if errors:
            raise WorkerFailure(P.KIND_REJECTED, "\n".join(errors))
    namespace = _execute(code, raw)
    kind = _kind_of(namespace)
    group = namespace.get("GROUP", kind.group)
    if group not in ("row", "layer"):
        raise WorkerFailure(P.KIND_INVALID, f"GROUP must be 'row' or 'layer', got {group!r}")
    return Program(kind, group, code, raw)


def load_candidate(source: str, raw: bool):
    """Execute the candidate's module body; return (its kind's function, GROUP)."""
    program = load_program(source, raw)
    return program.fresh(), program.group


def layer_stats(stats_file, spec: dict, aliases: dict | None = None) -> ActivationStats:
    """One layer's X from the bundle (`aliases`: the manifest's, for tensors stored once for
    several layers; every layer still gets its own copy)."""
    prefix, aliases = spec["name"], aliases or {}
    keys = set(stats_file.keys())
    tensors = {k: stats_file.get_tensor(aliases.get(k, k)) for k in
               [f"{prefix}.{f}" for f in TENSOR_NAMES] if aliases.get(k, k) in keys}
    return ActivationStats.from_tensors(tensors, prefix, layer_index=spec["layer_index"],
                                        num_layers=spec["num_layers"], name=spec["short_name"],
                                        nsamples=spec.get("nsamples", 0))


MAX_MESSAGE_CHARS = 4000


def printable(text: str) -> str:
    """Candidate-made text, capped, with control characters (terminal escapes) made visible."""
    text = text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + " [...]"
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def blocked_message(where: str, exc: GuardError) -> str:
    """A run-time policy block: the candidate's line and the rule, without the guard's frames."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__)
             if f.filename == P.CANDIDATE_FILE]
    at = f" (line {lines[-1]})" if lines else ""
    return printable(f"{where} was stopped by the sandbox policy{at}: GuardError: {exc}")


def fresh_tensor(scores: torch.Tensor, name: str, what: str = "score()") -> torch.Tensor:
    """A plain, new tensor with the returned values, made by torch functions (never by the
    returned object's own, possibly replaced, methods), so every later check and the mask
    see the same data."""
    if type(scores) is not torch.Tensor:
        raise WorkerFailure(P.KIND_INVALID, f"{name}: {what} returned {type(scores).__name__}, "
                                            "expected a plain torch.Tensor shaped like W")
    # layout and dtype are data descriptors of the type: an instance cannot shadow them.
    if scores.layout is not torch.strided or scores.dtype.is_complex:
        raise WorkerFailure(P.KIND_INVALID, f"{name}: {what} must return a dense real tensor")
    return torch.clone(scores, memory_format=torch.contiguous_format)


def call_candidate(function, what: str, name: str, *args):
    """The candidate's own function on one layer; its failures become crash verdicts for the LLM."""
    try:
        return function(*args)
    except GuardError as exc:
        raise WorkerFailure(P.KIND_CRASHED, blocked_message(f"{what} on {name}", exc)) from None
    except RecursionError:
        raise WorkerFailure(P.KIND_CRASHED, f"{what} raised on {name}: RecursionError (maximum "
                                            "recursion depth exceeded); write a loop instead") from None
    except Exception:  # the candidate's own bug: report its traceback to the LLM
        raise WorkerFailure(P.KIND_CRASHED, printable(f"{what} raised on {name}:\n"
                                                      f"{traceback.format_exc(limit=-4)}")) from None


def checked_scores(score, weight: torch.Tensor, stats: ActivationStats, name: str) -> torch.Tensor:
    scores = call_candidate(score, "score()", name, torch.clone(weight), stats)  # it may write its copy
    if isinstance(scores, torch.Tensor):
        scores = fresh_tensor(scores, name)
    if not isinstance(scores, torch.Tensor):
        raise WorkerFailure(P.KIND_INVALID, f"{name}: score() returned {type(scores).__name__}, "
                                            "expected a torch.Tensor shaped like W")
    if tuple(scores.shape) != tuple(weight.shape):
        raise WorkerFailure(P.KIND_INVALID, f"{name}: score() returned shape "
                                            f"{tuple(scores.shape)}, expected {tuple(weight.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise WorkerFailure(P.KIND_INVALID, f"{name}: score() returned NaN or infinite values; "
                                            "guard divisions and logs (e.g. add 1e-8)")
    return scores


def _as_keep_mask(mask: torch.Tensor, name: str) -> torch.Tensor:
    """bool as it is; 0/1 values of another real dtype become bool; anything else is refused
    (weights, scores or probabilities are not a mask)."""
    if mask.dtype == torch.bool:
        return mask
    binary = torch.logical_or(torch.eq(mask, 0), torch.eq(mask, 1))
    if not bool(torch.all(binary)):
        raise WorkerFailure(P.KIND_INVALID, f"{name}: prune() returned {mask.dtype} values other than "
                                            "0 and 1; return the keep-mask (bool, True = keep), not "
                                            "weights or scores: trusted code refits the kept weights")
    return torch.ne(mask, 0)


def checked_mask(prune, weight: torch.Tensor, stats: ActivationStats, sparsity: float,
                 pattern: SparsityPattern, group: str, name: str) -> torch.Tensor:
    """The keep-mask a `prune` candidate returns for one layer, verified like a mask from scores."""
    mask = call_candidate(prune, "prune()", name, torch.clone(weight), stats, float(sparsity),
                          contract.pattern_argument(pattern.n, pattern.m))
    if type(mask) is not torch.Tensor:
        raise WorkerFailure(P.KIND_INVALID, f"{name}: prune() returned {type(mask).__name__}, "
                                            "expected a plain torch.Tensor: the bool keep-mask shaped like W")
    mask = fresh_tensor(mask, name, what="prune()")
    if tuple(mask.shape) != tuple(weight.shape):
        raise WorkerFailure(P.KIND_INVALID, f"{name}: prune() returned shape {tuple(mask.shape)}, "
                                            f"expected {tuple(weight.shape)} (the shape of W)")
    mask = _as_keep_mask(mask, name)
    try:
        verify_mask(mask, tuple(weight.shape), float(sparsity), group=group, pattern=pattern, name=name)
    except MaskError as exc:
        raise WorkerFailure(P.KIND_INVALID, f"prune() returned a wrong mask: {exc} (sparsity "
                                            f"{float(sparsity):g}, pattern {pattern})") from None
    return mask


class ProfileCollector:
    """Per-layer statistics, and per-block ones when a block's last layer is scored."""

    def __init__(self):
        self.layers, self.blocks = {}, {}
        self._scores, self._weights = {}, {}

    def add(self, spec: dict, scores: torch.Tensor, weight: torch.Tensor) -> None:
        self.layers[spec["name"]] = score_profile(scores)
        index = spec["layer_index"]
        if self._scores and index not in self._scores:
            self.flush()
        self._scores.setdefault(index, []).append(scores)
        self._weights.setdefault(index, []).append(weight)

    def flush(self) -> None:
        self.blocks.update(blocks_profile(self._scores, self._weights))
        self._scores, self._weights = {}, {}

    def to_json(self) -> dict:
        self.flush()
        return {"layers": self.layers, "blocks": self.blocks}


def layer_mask(program: Program, weight: torch.Tensor, stats: ActivationStats, sparsity: float,
               pattern: SparsityPattern, name: str, timings: dict) -> torch.Tensor:
    """One layer's verified keep-mask; the candidate's own time goes to timings["score"]."""
    t0 = time.perf_counter()
    function = program.fresh()
    if program.kind is contract.PRUNE:
        mask = checked_mask(function, weight, stats, sparsity, pattern, program.group, name)
        timings["score"] += time.perf_counter() - t0
        return mask
    scores = checked_scores(function, weight, stats, name)
    t1 = time.perf_counter()
    timings["score"] += t1 - t0
    mask = scores_to_mask(scores, sparsity, group=program.group, pattern=pattern)
    timings["mask"] += time.perf_counter() - t1
    return mask


def layer_profile_scores(program: Program, weight: torch.Tensor, stats: ActivationStats,
                         name: str) -> torch.Tensor:
    """What "profile" mode measures: a score program's scores; a mask program has none, so |W|."""
    if program.kind is contract.PRUNE:
        return weight.abs()
    return checked_scores(program.fresh(), weight, stats, name)


def score_layers(program: Program, bundle: Path, request: dict, out: Path) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    profile_mode = request["mode"] == "profile"
    wanted = request.get("sparsity") or {}
    pattern = SparsityPattern.parse(request.get("pattern"))
    layers, profile, offset = [], ProfileCollector(), 0
    timings = {"load": 0.0, "score": 0.0, "mask": 0.0}
    with safe_open(str(bundle / "weights.safetensors"), "pt") as wf, \
            safe_open(str(bundle / "stats.safetensors"), "pt") as sf, \
            open(out / P.MASKS_FILE, "wb") as masks_out:
        for spec in manifest["layers"]:
            name = spec["name"]
            if not profile_mode and name not in wanted:
                continue
            t0 = time.perf_counter()
            weight, stats = wf.get_tensor(name), layer_stats(sf, spec, manifest.get("aliases"))
            t1 = time.perf_counter()
            timings["load"] += t1 - t0
            if profile_mode:
                profile.add(spec, layer_profile_scores(program, weight, stats, name), weight)
                timings["score"] += time.perf_counter() - t1
                continue
            mask = layer_mask(program, weight, stats, float(wanted[name]), pattern, name, timings)
            t2 = time.perf_counter()
            data = pack_mask(mask)
            masks_out.write(data)
            layers.append({"name": name, "shape": list(weight.shape), "offset": offset, "nbytes": len(data)})
            offset += len(data)
            timings["mask"] += time.perf_counter() - t2
    if profile_mode:
        (out / P.PROFILE_FILE).write_text(json.dumps(profile.to_json()))
    return {"layers": layers, "group": program.group, "candidate": program.kind.name, "timings": timings}


def write_result(out: Path, result: dict) -> None:
    tmp = out / (P.RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, out / P.RESULT_FILE)


def wait_for_inputs(inputs: Path, seconds: float) -> float:
    """A warm container's worker imports torch first, then waits for the host to write its
    inputs (request.json last, atomically). Returns the seconds spent waiting."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + seconds
    while not (inputs / P.REQUEST_FILE).exists():
        if time.monotonic() > deadline:
            raise SystemExit("no candidate arrived")
        time.sleep(0.01)
    return time.perf_counter() - t0


def run(bundle: Path, inputs: Path, out: Path, raw: bool, spawned_at: float = 0.0,
        wait_input: float = 0.0) -> int:
    startup = time.time() - spawned_at if spawned_at else 0.0   # interpreter + torch import
    waited = wait_for_inputs(inputs, wait_input) if wait_input > 0 else 0.0
    t_start = time.perf_counter()
    request = json.loads((inputs / P.REQUEST_FILE).read_text())
    source = (inputs / P.CANDIDATE_FILE).read_text()
    torch.set_grad_enabled(False)
    try:
        program = load_program(source, raw)
        t_loaded = time.perf_counter()
        result = score_layers(program, bundle, request, out)
        result["timings"]["load_candidate"] = t_loaded - t_start
        result["timings"]["startup"] = startup
        result["timings"]["waited_for_input"] = waited
        write_result(out, {"kind": "ok", **result})
        return 0
    except WorkerFailure as failure:
        write_result(out, {"kind": failure.kind, "message": str(failure)})
        return 1
    except OSError as exc:  # ENOSPC on the capped output is the usual one
        kind = P.KIND_TOO_MUCH if getattr(exc, "errno", None) in (27, 28) else P.KIND_CRASHED
        (out / P.MASKS_FILE).unlink(missing_ok=True)  # make room for the result itself
        write_result(out, {"kind": kind, "message": f"{type(exc).__name__}: {exc}"})
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoprune.sandbox.worker")
    parser.add_argument("--bundle", default=P.BUNDLE_DIR)
    parser.add_argument("--input", default=P.INPUT_DIR)
    parser.add_argument("--out", default=P.OUTPUT_DIR)
    parser.add_argument("--raw", action="store_true", help="tests only: no restrictions")
    parser.add_argument("--spawned-at", type=float, default=0.0, help="epoch seconds (timing)")
    parser.add_argument("--wait-input", type=float, default=0.0, help="warm start: seconds")
    args = parser.parse_args(argv)
    return run(Path(args.bundle), Path(args.input), Path(args.out), args.raw, args.spawned_at,
               args.wait_input)


if __name__ == "__main__":
    sys.exit(main())
