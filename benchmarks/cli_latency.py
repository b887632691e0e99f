"""How fast the CLI answers `--help`, `--version` and bad flags or paths (issue: a CLI that answers at once).

Protocol: each command runs as a fresh process (`.venv/bin/autoprune-agent ...`, as a user
types it), 5 times after one untimed warm-up run (file cache); the median wall time and the
median CPU time (user + system of the process: what the command costs, nearly independent
of other load) are reported with the exit code and the number of output lines. Target:
every one under 1 s wall on an idle machine. The load average at the start is recorded.

    .venv/bin/python benchmarks/cli_latency.py            # -> benchmarks/results/cli_latency.{json,md}
    .venv/bin/python benchmarks/cli_latency.py --baseline-tree /tmp/old  # also an older source tree
                                                          # (laid out as installed: /tmp/old/autoprune/...)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import git_commit, markdown_table, save_results  # noqa: E402

CLI = Path(sys.executable).with_name("autoprune-agent")
TARGET_S = 1.0
COMMANDS = {
    "--help": ["--help"],
    "--version": ["--version"],
    "prune --sparsity 0": ["prune", "--method", "wanda", "--sparsity", "0"],
    "prune --model /nonexistent": ["prune", "--method", "wanda", "--sparsity", "0.5", "--model", "/nonexistent"],
    "prune --data /nonexistent": ["prune", "--method", "wanda", "--sparsity", "0.5", "--data", "/nonexistent"],
    "prune --method bogus": ["prune", "--method", "bogus", "--sparsity", "0.5"],
    "prune --method missing.py": ["prune", "--method", "missing.py", "--sparsity", "0.5"],
    "prune bad flag": ["prune", "--bogus"],
    "eval /nonexistent": ["eval", "/nonexistent"],
    "eval bad flag": ["eval", "--bogus", "x"],
    "run --budget 0": ["run", "--budget", "0"],
    "run bad flag": ["run", "--bogus"],
    "run --model /nonexistent": ["run", "--model", "/nonexistent"],
    "run --resume /nonexistent": ["run", "--resume", "/nonexistent"],
    "search-rates bad flag": ["search-rates", "--bogus"],
    "search-rates --target-params 1.5": ["search-rates", "--target-params", "1.5"],
    "search-rates --device tpu": ["search-rates", "--device", "tpu"],
    "search-rates --model /nonexistent": ["search-rates", "--model", "/nonexistent"],
    "sandbox bad flag": ["sandbox", "check", "--bogus"],
}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_once(argv: list[str], tree: Path | None) -> tuple[float, float, int, int]:
    """(wall s, CPU s, exit code, output lines) of one fresh process."""
    command, env, cwd = [str(CLI), *argv], None, None
    if tree is not None:       # the same entry point, importing `autoprune` from that tree (run there: `-c` puts
        command = [sys.executable, "-c", "import sys; from autoprune.cli import main; main(sys.argv[1:])", *argv]
        env, cwd = {**os.environ, "PYTHONPATH": str(tree)}, tree     # the working folder first on sys.path)
    cpu, started = children_cpu_s(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    seconds, cpu = time.perf_counter() - started, children_cpu_s() - cpu
    return seconds, cpu, done.returncode, len((done.stdout + done.stderr).strip().splitlines())


def measure(argv: list[str], runs: int, tree: Path | None = None) -> dict:
    time_once(argv, tree)                             # warm-up: file cache, .pyc
    samples = [time_once(argv, tree) for _ in range(runs)]
    wall, cpu = [s[0] for s in samples], [s[1] for s in samples]
    return {"argv": argv, "median_s": round(statistics.median(wall), 3), "median_cpu_s": round(statistics.median(cpu), 3),
            "runs_s": [round(s, 3) for s in wall], "exit_code": samples[-1][2], "output_lines": samples[-1][3]}


def machine() -> dict:
    """CPU and load, without importing torch (this benchmark measures what importing costs)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
            "python": sys.version.split()[0], "commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def to_markdown(data: dict) -> str:
    base = data.get("baseline", {}).get("commands", {})
    header = ["command", "wall s", "CPU s", "exit", "lines", f"< {TARGET_S:.0f} s"]
    header += ["before: wall s", "before: CPU s", "before: exit", "before: lines"] if base else []
    rows = []
    for name, r in data["commands"].items():
        row = [f"`autoprune-agent {' '.join(r['argv'])}`", f"{r['median_s']:.2f}", f"{r['median_cpu_s']:.2f}",
               r["exit_code"], r["output_lines"], "yes" if r["median_s"] < TARGET_S else "**no**"]
        if base:
            b = base[name]
            row += [f"{b['median_s']:.2f}", f"{b['median_cpu_s']:.2f}", b["exit_code"], b["output_lines"]]
        rows.append(row)
    m = data["machine"]
    lines = ["# CLI latency: `--help`, `--version`, bad flags and paths", "",
             f"{m['cpu']}, {m['cores']} cores, load average {m['load_average_1m']} at the start; "
             f"commit {m['commit']}, {m['date']}.", "", f"Protocol: {data['protocol']}", ""]
    if base:
        lines += [f"Before: {data['baseline']['label']}.", ""]
    return "\n".join(lines + [markdown_table(header, rows)])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--baseline-tree", type=Path, help="also measure `autoprune` imported from this folder")
    p.add_argument("--baseline-label", default="an older source tree", help="what the baseline tree is")
    args = p.parse_args(argv)
    data = {"machine": machine(),
            "protocol": f"each command as a fresh process, 1 untimed warm-up then {args.runs} timed runs, "
                        "median wall and median CPU (user + system) time",
            "target_s": TARGET_S,
            "commands": {name: measure(cmd, args.runs) for name, cmd in COMMANDS.items()}}
    if args.baseline_tree:
        data["baseline"] = {"label": args.baseline_label,
                            "commands": {name: measure(cmd, args.runs, args.baseline_tree)
                                         for name, cmd in COMMANDS.items()}}
    save_results("cli_latency", data, to_markdown(data))
    print(to_markdown(data))


if __name__ == "__main__":
    main()
