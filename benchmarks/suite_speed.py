"""Wall and CPU seconds of chosen tests (issue: the suite must fit CI's ~25 min on 2 cores).

Protocol: the tests run in one pytest process (`-p suite_speed`: this file is also the plugin);
for each test, wall time of its whole protocol (setup, call, teardown) and CPU time = user + system
of the pytest process plus the children it waited for (the CLI legs, sandbox workers). CPU time is
what the test costs, nearly independent of other load; wall time is what CI waits, and on a loaded
machine it is several times the CPU time. The load average at the start is recorded per label.

    .venv/bin/python benchmarks/suite_speed.py --label after tests/test_x.py::test_y ...
    .venv/bin/python benchmarks/suite_speed.py --label before --from-tsv /tmp/rows.tsv   # rows this
        # plugin wrote earlier (SUITE_SPEED_TSV=/tmp/rows.tsv pytest -p suite_speed ...) on another tree
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TSV_ENV = "SUITE_SPEED_TSV"


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    wall, cpu = time.perf_counter(), cpu_seconds()
    yield
    with open(os.environ[TSV_ENV], "a", encoding="utf-8") as out:
        out.write(f"{item.nodeid}\t{time.perf_counter() - wall:.1f}\t{cpu_seconds() - cpu:.1f}\n")


def read_tsv(path: Path) -> dict[str, dict]:
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        nodeid, wall, cpu = line.split("\t")
        rows[nodeid.split("::", 1)[-1]] = {"nodeid": nodeid, "wall_s": float(wall), "cpu_s": float(cpu)}
    return rows


def measure(tests: list[str], tsv: Path) -> None:
    env = {**os.environ, TSV_ENV: str(tsv), "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE),
                                                                                      os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "suite_speed", *tests],
                   cwd=HERE.parent, env=env, check=False)


def report(results: dict) -> str:
    from common import markdown_table

    labels = list(results["runs"])
    names = sorted({name for run in results["runs"].values() for name in run["tests"]},
                   key=lambda n: -max(r["tests"].get(n, {}).get("cpu_s", 0) for r in results["runs"].values()))
    cell = lambda run, n: (f"{run['tests'][n]['wall_s']:.0f} / {run['tests'][n]['cpu_s']:.0f}"  # noqa: E731
                           if n in run["tests"] else "-")
    rows = [[n, *(cell(results["runs"][label], n) for label in labels)] for n in names]
    loads = ", ".join(f"{label}: load {run['load']}" for label, run in results["runs"].items())
    return "\n".join([
        "# Slow tests: wall / CPU seconds", "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; commit "
        f"{results['machine']['commit']} plus uncommitted changes. {loads} (1-min average at the start: the "
        "machine was shared with other engineers' tests, so wall times are inflated several-fold; CPU "
        "seconds are the comparable measure).", "",
        markdown_table(["test", *(f"{label} (wall / CPU s)" for label in labels)], rows), "",
        *(f"- {note}" for note in results.get("notes", [])), "",
        "Protocol: `benchmarks/suite_speed.py` (docstring)."])


def main() -> None:
    sys.path.insert(0, str(HERE))
    from common import load_results, machine, save_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--from-tsv", type=Path, help="rows written earlier by this plugin, instead of running")
    parser.add_argument("--load", type=float, help="with --from-tsv: the load average when those rows ran")
    parser.add_argument("--note", action="append", default=[], help="a line for the report (what limits a result)")
    parser.add_argument("tests", nargs="*", help="pytest arguments (after --: node ids, -m, -k ...)")
    args = parser.parse_args()
    load = args.load if args.load is not None else round(os.getloadavg()[0], 1)
    tsv = args.from_tsv
    if tsv is None:
        tsv = Path(f"/tmp/suite_speed_{args.label}_{os.getpid()}.tsv")
        measure(args.tests, tsv)
    results = load_results("suite_speed") or {"runs": {}}
    results["machine"] = machine()
    run = results["runs"].setdefault(args.label, {"load": load, "tests": {}})
    run["tests"].update(read_tsv(tsv))
    results.setdefault("notes", []).extend(args.note)
    save_results("suite_speed", results, report(results))


if __name__ == "__main__":
    main()
