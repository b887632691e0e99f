"""The perplexity protocol shared by prune_baselines, reconstruction and allocation: its flags, the
model with its calibration / validation / test windows, and resumable result files (written after
each configuration, so a killed benchmark continues where it stopped)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


def add_protocol_args(p: argparse.ArgumentParser, *, data_required: bool = False) -> None:
    """--model, --data, --nsamples, --seqlen, --eval-windows, --seed (16×512 calibration, 16 test windows)."""
    p.add_argument("--model", default=None)
    p.add_argument("--data", required=data_required, help="WikiText-2 folder (wiki.valid.tokens, wiki.test.raw)")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)


@dataclass
class ProtocolInputs:
    loaded: Any                  # autoprune.models.LoadedModel
    calibration: Any             # WindowSet: random windows of the first half of validation
    test: Any                    # WindowSet: the first --eval-windows test windows
    validation: Optional[Any]    # WindowSet of the second half of validation, when asked for

    @property
    def model(self):
        return self.loaded.model


def load_inputs(args: argparse.Namespace, *, validation_windows: int = 0) -> ProtocolInputs:
    from autoprune.data import calibration_windows, fitness_windows, load_corpus, test_windows
    from autoprune.models import load_model

    loaded = load_model(args.model)
    corpus = load_corpus(args.data)
    calibration = calibration_windows(loaded.tokenizer, corpus, nsamples=args.nsamples, seqlen=args.seqlen,
                                      seed=args.seed)
    test = test_windows(loaded.tokenizer, corpus, nwindows=args.eval_windows, seqlen=args.seqlen)
    validation = (fitness_windows(loaded.tokenizer, corpus, nwindows=validation_windows, seqlen=args.seqlen)
                  if validation_windows else None)
    return ProtocolInputs(loaded, calibration, test, validation)


def read_partial(path: Path) -> dict:
    """The results measured so far ({"runs": {...}, ...}), or an empty result file."""
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}}


def write_atomic(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def write_report(paths: list[Path], out: Path, merge: Callable[[list[Path]], dict],
                 markdown: Callable[[dict], str]) -> None:
    """Merge partial result files into `out` (.json + .md), keeping the notes already written there."""
    results = merge(paths)
    if out.is_file():
        results["notes"] = json.loads(out.read_text()).get("notes", [])
    write_atomic(out, results)
    out.with_suffix(".md").write_text(markdown(results))


def notes_lines(results: dict) -> list[str]:
    """The Markdown "Notes" section of a result file (empty without notes)."""
    return ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]] if results.get("notes") else []


def measure_or_report(args: argparse.Namespace, measure: Callable[[argparse.Namespace], None],
                      merge: Callable[[list[Path]], dict], markdown: Callable[[dict], str]) -> None:
    """`--report A.json B.json` merges partial files into --out; otherwise measure (needs --data)."""
    if args.report:
        write_report(args.report, args.out, merge, markdown)
        return
    if not args.data:
        raise SystemExit("--data is required to measure")
    measure(args)
