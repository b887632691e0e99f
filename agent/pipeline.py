"""The bounded evaluation pipeline: the run's executor evaluates while the graph writes on.

One background thread per run owns the run's executor (`agent/executors.py`: the host's resident
worker for serial runs, a process pool or Ray actors otherwise) and runs the batches the verify
node sends, in the order sent; verify collects each result at a later visit and records it on
the graph's thread like any verdict. Nothing of a result reaches the state (and so the
checkpoint) before it is collected: a kill loses what was in flight, and the resumed run, which
finds those ids in the state's `in_flight`, sends them again (`ensure_sent`).

Depth 0 runs every batch at once on the caller's thread: today's sequential run, no thread.
The resident model is masked in place by fitness, so its users hold `executors.resident_lock`
(the worker around its fitness windows; the graph's evaluate and finalize nodes): the sandbox
run of the next candidate overlaps the graph's promotions, their fitness never does. With the
embedded LLM server on this machine the pipeline gives torch the cores the server leaves
(1 of 2 here: `llm_threads`), so the two do not fight over a core while both work.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Optional, Sequence

from autoprune.agent.executors import EvaluationResult, EvaluationTask, Executor

CLOSE_WAIT_S = 30.0      # what a closing run grants the candidate being evaluated


@dataclass(frozen=True)
class Finished:
    """One task's result and when its batch ran (wall-clock seconds, as the trace's `ts`)."""

    result: EvaluationResult
    started: float
    finished: float


def torch_threads_beside(llm_threads: int) -> int:
    """Torch threads that leave `llm_threads` cores to a local LLM server (at least one)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - llm_threads)


class EvaluationPipeline:
    """Batches of tasks run in the background, at most `depth` batches of the executor's size ahead of
    the graph. `send` starts a batch; `collect` waits for one task's result."""

    def __init__(self, executor: Executor, *, depth: int, torch_threads: Optional[int] = None):
        self.executor, self.depth, self.torch_threads = executor, depth, torch_threads
        self._futures: dict[str, Future] = {}
        self._jobs: "queue.Queue[Optional[tuple[list[EvaluationTask], list[Future]]]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._closing = threading.Event()

    @property
    def capacity(self) -> int:
        """Candidates that may stay in flight while the graph writes the next ones."""
        return self.depth * self.executor.workers

    @property
    def trusted(self) -> bool:
        return self.executor.trusted

    def send(self, tasks: Sequence[EvaluationTask]) -> None:
        futures = [Future() for _ in tasks]
        self._futures.update({t.candidate_id: f for t, f in zip(tasks, futures)})
        if not tasks:
            return
        if self.depth == 0:
            self._run(list(tasks), futures)
            return
        self._start()
        self._jobs.put((list(tasks), futures))

    def ensure_sent(self, tasks: Sequence[EvaluationTask]) -> None:
        """Send the tasks this pipeline has not seen: in flight when the run was killed, so the resumed
        state names them but no result of theirs exists."""
        self.send([t for t in tasks if t.candidate_id not in self._futures])

    def collect(self, candidate_id: str) -> Finished:
        """The task's result, waiting for it; what the executor raised (a broken setup) is raised here."""
        return self._futures.pop(candidate_id).result()

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """No new batch starts; the one running now gets `wait_s` to finish (its sandbox removes its
        container), then the run goes on ending without it (the thread is a daemon)."""
        if self._thread is not None:
            self._closing.set()
            self._jobs.put(None)
            self._thread.join(timeout=wait_s)
            self._thread = None

    def _start(self) -> None:
        if self._thread is None:    # a fresh queue and flag: a closed thread still finishing keeps its own
            self._jobs, self._closing = queue.Queue(), threading.Event()
            self._thread = threading.Thread(target=self._work, args=(self._jobs, self._closing),
                                            name="autoprune-evaluation", daemon=True)
            self._thread.start()

    def _work(self, jobs: queue.Queue, closing: threading.Event) -> None:
        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)
        while (job := jobs.get()) is not None:
            if closing.is_set():
                for future in job[1]:
                    future.cancel()
                continue
            self._run(*job)

    def _run(self, tasks: list[EvaluationTask], futures: list[Future]) -> None:
        started = time.time()
        try:
            results = self.executor.map(tasks)
        except BaseException as exc:  # noqa: BLE001 - raised again on the graph's thread, by collect
            for future in futures:
                future.set_exception(exc)
            return
        finished = time.time()
        for future, result in zip(futures, results):
            future.set_result(Finished(result, started, finished))
