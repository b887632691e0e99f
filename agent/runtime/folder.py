"""The run folder: a fresh run gets an empty one, a resumed run one that holds a run (config.json)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from autoprune.runlog.trace_file import TRACE_FILE, read_trace
from autoprune.errors import BadInputError
from autoprune.pruning.config import check_output_folder

CONFIG_FILE = "config.json"


def fresh_run_dir(folder: Optional[Path], *, seed: int, flag: str, resume_hint: str) -> Path:
    """`folder` (created; refused unless empty), or runs/<utc time>-s<seed> when None."""
    if folder is not None:
        folder = Path(folder).expanduser()
        check_fresh_run_dir(folder, flag=flag, resume_hint=resume_hint)
    else:
        folder = Path("runs") / f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_fresh_run_dir(folder: Optional[Path], *, flag: str, resume_hint: str) -> None:
    """A fresh run's folder is new or empty (the CLI asks before torch loads; `fresh_run_dir` again)."""
    check_output_folder(folder, flag=flag, hint=f"use {resume_hint} to continue it")


def resumable_run_dir(folder: Path) -> Path:
    folder = Path(folder).expanduser()
    if not (folder / CONFIG_FILE).is_file():
        raise BadInputError(f"{folder} is not a run folder (no {CONFIG_FILE}): nothing to resume")
    return folder


def original_run_id(run_dir: Path) -> str:
    """The id the run started with (its checkpoint thread), even if the folder was renamed since."""
    if (run_dir / TRACE_FILE).is_file():
        for event in read_trace(run_dir).events:
            if event["type"] == "run_started":
                return str(event["run_id"])
    return run_dir.name
