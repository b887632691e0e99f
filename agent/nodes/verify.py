"""verify: queued candidates into the run's evaluation pipeline, then the host's checks of their results.

One path for every run: the executor (`agent/executors.py`; serial runs use the host's own
worker, `SerialExecutor.resident`) runs each candidate in the sandbox, whose `run_candidate`
verifies every mask (shape, exact sparsity, N:M pattern), and measures its level-0 fitness;
the pipeline (`agent/pipeline.py`) runs it in the background, at most `--pipeline-depth`
batches ahead, so the LLM writes the next candidate meanwhile (depth 0: at once, in this
visit). A visit sends as many candidates as the executor runs at once (one when serial) and
records, oldest first, the verdicts that may not stay in flight; the checkpoint after this node
holds those verdicts and names the rest (`in_flight`), which a resumed run sends again. The host
verifies every mask again and spot-checks worker fitness (`executors.check_on_host`; its own
fitness it does not recompute). Whatever raises on the host for one candidate becomes its
"crashed" verdict, so a run never stays stuck on it. LLM candidates count against `--budget`
when sent; seeds do not. A failure of the current hypothesis keeps its exact message for the
repair turn of write_code.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch

from autoprune.agent.archive import read_source
from autoprune.agent.executors import (SPOT_CHECKED_WINDOWS, EvaluationResult, EvaluationTask, HostChecked,
                                      SandboxOutcome, check_on_host)
from autoprune.agent.mask_files import differing_fraction, load_packed, save_masks
from autoprune.agent.services import AgentServices
from autoprune.agent.state import AgentState, add_count, add_timings, is_search_candidate, with_candidate
from autoprune.errors import AutopruneError, MaskError
from autoprune.pruning.masks import pack_mask


def check_masks(outcome: SandboxOutcome, services: AgentServices) -> None:
    """Every bundle layer has a mask of its shape. (`run_candidate` already ran `verify_mask`
    on each one, sparsity and pattern included; this guards what the fitness service will index.)"""
    masks = outcome.masks or {}
    for spec in services.sandbox.bundle.layers:
        if spec.name not in masks:
            raise MaskError(f"no mask for {spec.name}")
        if tuple(masks[spec.name].shape) != tuple(spec.shape) or masks[spec.name].dtype != torch.bool:
            raise MaskError(f"{spec.name}: mask {tuple(masks[spec.name].shape)} is not a bool mask of {spec.shape}")


# Masks that differ on fewer weights than this prune alike (e.g. |W|·‖X‖ vs W²·mean(x²),
# which rank weights the same up to float rounding): not worth a fitness evaluation.
NEAR_DUPLICATE = 1e-3


def packed_masks(masks: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Every layer's keep-mask bit-packed once (the form mask files store), for digests and comparisons."""
    return {name: np.frombuffer(pack_mask(mask), dtype=np.uint8) for name, mask in masks.items()}


def masks_digest(packed: dict[str, np.ndarray]) -> str:
    """One hash of every layer's packed keep-mask: equal digests prune identically."""
    digest = hashlib.sha256()
    for name in sorted(packed):
        digest.update(name.encode("utf-8"))
        digest.update(packed[name].tobytes())
    return digest.hexdigest()


def twin_of(state: AgentState, run_dir: Path, packed: dict[str, np.ndarray], digest: str) -> str | None:
    """Why these masks are not worth evaluating: an earlier candidate prunes (almost) the same weights.
    Exact twins are found by digest among all candidates; near twins among those whose masks are kept."""
    candidates = state.get("candidates", {})
    exact = next((cid for cid, rec in candidates.items()
                  if rec.get("mask_digest") == digest and rec.get("status") == "ok"), None)
    if exact is not None:
        return f"it removes exactly the same weights as {exact} (identical masks)"
    for cid, rec in candidates.items():
        path = Path(run_dir) / rec["masks_path"] if rec.get("masks_path") else None
        if rec.get("status") == "ok" and path is not None and path.is_file():
            fraction = differing_fraction(packed, load_packed(path))
            if fraction < NEAR_DUPLICATE:
                return f"it removes almost the same weights as {cid} (masks differ on {fraction:.4%} of weights)"
    return None


DUPLICATE_HINT = ("so it was not evaluated. A factor that is constant within a row or layer, or a monotone "
                  "transform of the whole score (squaring, sqrt, log), does not change which weights are "
                  "removed: change how the weights of one row compare with each other.")


def verify(state: AgentState, services: AgentServices) -> dict:
    """Send the next queued candidates to the evaluation pipeline (as many as the executor runs at
    once), then record the verdicts of those that must not stay in flight, oldest first (see
    `in_flight_after`). The checkpoint after this node holds every verdict recorded here and names
    the candidates still in flight: a kill loses at most those, and the resumed run sends them again."""
    pipeline = services.evaluation()
    queue = list(state.get("queue", []))
    step = VerifyStep(state, services, queue=queue[pipeline.executor.workers:])
    pipeline.ensure_sent([step.task(cid) for cid in step.view.get("in_flight") or []])
    pipeline.send([step.task(cid) for cid in queue[:pipeline.executor.workers] if step.may_send(cid)])
    spot_checks = 0 if pipeline.trusted else SPOT_CHECKED_WINDOWS
    keep = in_flight_after(step.view, services, pipeline.capacity, had_queue=bool(queue))
    while len(step.view.get("in_flight") or []) > keep:
        cid = step.view["in_flight"][0]
        finished = pipeline.collect(cid)
        task = step.task(cid)
        step.record(cid, sandbox_outcome(lambda: checked_outcome(finished.result, task, services, spot_checks)),
                    ran=(finished.started, finished.finished))
        step.merge(timings=add_timings(step.view, fitness=finite_seconds(finished.result.fitness_s)))
    return step.update


def in_flight_after(view: AgentState, services: AgentServices, capacity: int, *, had_queue: bool) -> int:
    """How many candidates may stay in flight after this visit: the pipeline's capacity while the graph
    goes on writing (search phase, budget left); none when it will not (seeds, budget spent) or when it
    came here to wait (nothing queued: reflect or the finale needs the results)."""
    writes_on = had_queue and view.get("phase") == "search" and services.budget.can_submit(view)
    return capacity if writes_on else 0


def host_failure(exc: Exception) -> SandboxOutcome:
    """The failed verdict of a candidate whose check raised on the host: recorded like any verdict, so
    the run goes on (and `--resume` does not retry it forever)."""
    message = (f"the host failed while running this candidate ({type(exc).__name__}: {str(exc)[:300]}); "
               "this is a bug in autoprune-agent, not in the candidate")
    return SandboxOutcome(status="crashed", message=message, timings={}, masks=None, profile=None,
                          group="row", seconds=0.0)


def sandbox_outcome(run) -> SandboxOutcome:
    """`run()`, or its failure as this candidate's verdict. A broken setup (AutopruneError: no engine,
    no image) still stops the run: every candidate would fail the same way."""
    try:
        return run()
    except AutopruneError:
        raise
    except Exception as exc:   # noqa: BLE001 - one candidate must never leave the run stuck
        return host_failure(exc)


def finite_seconds(value) -> float:
    """A duration a worker reported, as a number the trace can hold (0 when it is not one)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def checked_outcome(result: EvaluationResult, task: EvaluationTask, services: AgentServices,
                    spot_checks: int) -> SandboxOutcome:
    """A worker's result after the host's own checks (masks verified, fitness spot-checked);
    nothing of it is used unchecked, its timings included."""
    runner = services.sandbox
    if result.candidate_id != task.candidate_id:
        checked = HostChecked("invalid-output", "the worker answered another task")
    else:
        checked = check_on_host(result, task.source, runner.bundle, runner.request(), services.fitness, level=0,
                                spot_checks=spot_checks)
    timings = {str(k)[:64]: finite_seconds(v) for k, v in dict(result.timings).items()}
    return SandboxOutcome(status=checked.status, message=checked.message, timings=timings, masks=checked.masks,
                          profile=None, group=result.group if checked.masks else "row",
                          seconds=finite_seconds(result.sandbox_s))


class VerifyStep:
    """Sends candidates and records their verdicts one at a time into the node's update (budget,
    counts, timings)."""

    def __init__(self, state: AgentState, services: AgentServices, *, queue: list[str]):
        self.services, self.view = services, dict(state)
        self.update: dict = {"queue": queue}

    def task(self, cid: str) -> EvaluationTask:
        return EvaluationTask(cid, read_source(self.services.run_dir, self.view["candidates"][cid]), level=0)

    def may_send(self, cid: str) -> bool:
        """Seeds always; LLM candidates while the budget has room, counted as sent now (else marked
        not-sent). A sent candidate joins `in_flight`."""
        record = self.view["candidates"][cid]
        if is_search_candidate(record):
            if not self.services.budget.can_send(self.view):
                self.merge(candidates=with_candidate(self.view, cid, status="not-sent", message="budget spent"))
                return False
            sent = int(self.view.get("budget_used", 0)) + 1
            self.merge(budget_used=sent, candidates=with_candidate(self.view, cid, sent=sent))
        self.merge(in_flight=list(self.view.get("in_flight") or []) + [cid])
        return True

    def record(self, cid: str, outcome: SandboxOutcome, ran: tuple[float, float] = (0.0, 0.0)) -> str:
        """One collected candidate's verdict (`ran`: when its evaluation started and ended). A failure
        of the current generation goes back to write_code for repair; one the search has moved past
        (the pipeline let the LLM write on) is evidence for reflect only."""
        record = self.view["candidates"][cid]
        is_llm = is_search_candidate(record)
        status, message, masks_path, digest = self._checked(cid, outcome)
        self.services.trace.emit("verdict", id=cid, status=status, message=message, group=outcome.group,
                                 timings={k: round(v, 4) for k, v in outcome.timings.items()},
                                 submitted=record.get("sent") if is_llm else None,
                                 budget_used=int(self.view.get("budget_used", 0)),
                                 started=round(ran[0], 3), finished=round(ran[1], 3))
        self.merge(budget_used=int(self.view.get("budget_used", 0)),      # the update always names it
                   verdicts=add_count(self.view.get("verdicts", {}), status),
                   timings=add_timings(self.view, sandbox=outcome.seconds),
                   in_flight=[c for c in self.view.get("in_flight") or [] if c != cid],
                   candidates=with_candidate(self.view, cid, status=status, message=message,
                                             masks_path=masks_path, group=outcome.group, mask_digest=digest))
        if status == "ok":
            self.merge(pending_evals=list(self.view.get("pending_evals", [])) + [[cid, 0]])
        elif is_llm and record.get("generation") == self.view.get("generation"):
            self.merge(last_error=f"{status}: {message}", repairs=int(self.view.get("repairs", 0)) + 1,
                       current=cid)
        return status

    def _checked(self, cid: str, outcome: SandboxOutcome) -> tuple[str, str, str | None, str | None]:
        """(status, message, masks path, digest): host checks, duplicates, masks saved when new."""
        if outcome.status != "ok":
            return outcome.status, outcome.message, None, None
        try:
            check_masks(outcome, self.services)
            packed = packed_masks(outcome.masks)
            digest = masks_digest(packed)
            twin = twin_of(self.view, self.services.run_dir, packed, digest)
            if twin is not None:
                return "duplicate", f"{twin}, {DUPLICATE_HINT}", None, digest
            masks_path = f"candidates/{cid}.masks.safetensors"
            save_masks(self.services.run_dir / masks_path, outcome.masks)
            return "ok", "", masks_path, digest
        except MaskError as exc:
            return "invalid-output", f"host mask check failed: {exc}", None, None

    def merge(self, **changes) -> None:
        """Apply changes to the node's update and to the view later checks read."""
        self.update.update(changes)
        self.view.update(changes)
