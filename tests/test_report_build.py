"""`build_report` and `autoprune-agent report`: Markdown + self-contained HTML + PNG figures."""

from __future__ import annotations

import json
import re

import pytest
from matplotlib.image import imread

from autoprune.agent.trace import TraceWriter
from autoprune.cli import main
from autoprune.reports import build_report
from test_report_sample import SKEW, truncate_last_line, write_sample_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("## Summary", "## Configuration and protocol", "## Winner", "## Fitness over budget", "## Verdicts",
            "## Per-block sparsity: uniform / OWL / SDSA", "## Final perplexity", "## Time and tokens")


@pytest.fixture
def sample_run(tmp_path):
    return write_sample_run(tmp_path / "run")


def test_report_has_every_section_and_the_winner_code(sample_run):
    files = build_report(sample_run)
    md = files.markdown.read_text()
    for title in SECTIONS:
        assert title in md, title
    assert SKEW.strip().splitlines()[-1].strip() in md             # the winner's code, verbatim
    assert "hypothesis `outlier-skew`: channels with outliers matter more" in md
    assert "| sdsa | 37.10 |" in md and "| wanda_uniform | 42.30 |" in md
    assert "| 0 | 0.500 | 0.470 | 0.460 |" in md                    # block 0: uniform, owl, sdsa
    assert "| c1 | rejected-static | import of 'os' is not allowed (line 1) |" in md
    assert "| write_code | 9.0 | 2700 | 750 |" in md


def test_figures_are_real_pngs_beside_the_report(sample_run):
    files = build_report(sample_run)
    assert set(files.figures) == {"fitness_over_budget", "verdicts", "block_sparsity", "time_tokens"}
    md = files.markdown.read_text()
    for name, path in files.figures.items():
        assert path.parent == files.markdown.parent == sample_run / "report"
        assert path.read_bytes()[:8] == PNG_MAGIC
        height, width = imread(path).shape[:2]
        assert width > 500 and height > 250, name
        assert f"]({path.name})" in md


def test_html_stands_alone(sample_run, tmp_path):
    out = tmp_path / "elsewhere"
    files = build_report(sample_run, out)
    page = files.html.read_text()
    assert files.html.parent == out
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert 'class="highlight"' in page                           # the winner's code, syntax highlighted
    assert "<h2>Final perplexity</h2>" in page and "<td>37.10</td>" in page
    assert "<script" not in page


def test_report_of_an_unfinished_run_says_so(tmp_path):
    run_dir = write_sample_run(tmp_path / "run", finished=False)
    md = build_report(run_dir).markdown.read_text()
    assert "The run has not finished" in md
    assert "## Final perplexity" not in md and "## Per-block sparsity" not in md
    assert "## Winner" in md and "`c2`" in md                        # best so far stands in for the winner


def test_report_of_a_truncated_trace_carries_the_notice(sample_run):
    truncate_last_line(sample_run)
    files = build_report(sample_run)
    assert files.problems and "Notice: trace.jsonl:" in files.markdown.read_text()


def test_report_of_a_run_that_has_only_started(tmp_path):
    TraceWriter(tmp_path).emit("run_started", run_id="fresh", config={"budget": 5})
    files = build_report(tmp_path)
    assert files.figures == {}
    md = files.markdown.read_text()
    assert "# autoprune run fresh" in md and "| budget | 5 |" in md


def test_cli_report_json_and_errors(sample_run, capsys):
    main(["report", str(sample_run), "--json"])                     # success returns normally
    paths = json.loads(capsys.readouterr().out)
    assert paths["html"].endswith("report.html") and len(paths["figures"]) == 4
    with pytest.raises(SystemExit) as done:
        main(["report", str(sample_run / "missing")])
    assert done.value.code == 2
    assert capsys.readouterr().err.startswith("error: no run folder")
