"""Run folders as data (`load_run` -> `RunView`) and reports built from them (`build_report`)."""

from autoprune.reports.run_data import RunViewBuilder, load_run
from autoprune.reports.run_model import CandidateView, RunView, Step

__all__ = ["CandidateView", "RunView", "RunViewBuilder", "Step", "load_run", "build_report", "REPORT_DIR",
           "REPORT_FILE"]

# Where a run's report goes: RUN_DIR/report/report.md (+ report.html and the PNGs beside it).
REPORT_DIR = "report"
REPORT_FILE = "report.md"


def __getattr__(name: str):
    # matplotlib is imported only when a report is built, not when replay loads a run.
    if name == "build_report":
        from autoprune.reports.build import build_report

        return build_report
    raise AttributeError(name)
