"""``make_report``: a run root -> a report folder (tables as Markdown + CSV, PNG figures, README.md
with provenance, report.json listing what was written).

Every file is written atomically; files a previous report wrote that this one no longer produces
(listed in the old report.json) are removed, so the folder always describes one report.
"""

from __future__ import annotations

import io
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ablate.report import plots
from ablate.report.load import attach_benches, load_runs, results_long
from ablate.report.provenance import readme
from ablate.report.tables import synthetic_table, table1, table3
from ablate.rundir import RunDirError, git_sha, read_json, write_json_atomic, write_text_atomic

MANIFEST = "report.json"


@dataclass
class Report:
    out: Path
    files: list[str] = field(default_factory=list)
    tables: dict = field(default_factory=dict)  # name -> Table
    figures: dict = field(default_factory=dict)  # file name -> Figure (closed after saving)
    warnings: list[str] = field(default_factory=list)
    runs: int = 0


def _csv(frame) -> str:
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.10g")
    return buf.getvalue()


def make_report(root: Path, out: Path, title: str | None = None, command: str | None = None, bench_dir: Path | None = None) -> Report:
    """``bench_dir``: throughput for the runs without their own bench.json, from the bench files of
    their variants there (e.g. measured at the paper's scale)."""
    root, out = Path(root), Path(out)
    sha = git_sha()  # before writing: a report regenerated into its committed folder is not the code's dirt
    report = Report(out)
    runs = load_runs(root, report.warnings)
    if not runs:
        raise RunDirError(f"{root}: no run directories (folders with run.json, bench.json or eval/)")
    if bench_dir is not None:
        attach_benches(runs, bench_dir, report.warnings)
    report.runs = len(runs)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    # tables
    csv_files = {}
    for build in (table1, table3, synthetic_table):
        t = build(runs)
        if t is None:
            continue
        report.tables[t.name] = t
        write_text_atomic(out / f"{t.name}.md", t.markdown)
        write_text_atomic(out / f"{t.name}.csv", _csv(t.frame))
        csv_files[t.name] = f"{t.name}.csv"
        written += [f"{t.name}.md", f"{t.name}.csv"]
    long = results_long(runs)
    write_text_atomic(out / "results.csv", _csv(long))
    written.append("results.csv")

    # figures
    train_ctx = plots.context(runs, "train")
    bench_devices = sorted({r.devices.get("bench") for r in runs if r.devices.get("bench")})
    figures: dict[str, object] = {}
    points = plots.tradeoff_points(runs)
    if len(points):
        for acc in ("general", "recall"):
            for x in ("cache_mb", "throughput"):
                fig = plots.tradeoff_figure(points, x, acc, train_ctx + (f" · bench on {', '.join(bench_devices)}" if bench_devices else ""), ", ".join(bench_devices))
                if fig is not None:
                    figures[f"accuracy_vs_{'cache' if x == 'cache_mb' else 'throughput'}_{acc}.png"] = fig
    needle: dict[str, list] = {}  # one panel per model: its seeds' samples pooled
    for r in runs:
        if r.needle:
            needle.setdefault(r.variant, []).extend(r.needle)
    if needle:
        fig = plots.needle_heatmap(needle, plots.context([r for r in runs if r.needle], "eval:niah"))
        if fig is not None:
            figures["needle_heatmap.png"] = fig
    fig = plots.loss_curves(runs, train_ctx)
    if fig is not None:
        figures["loss_curves.png"] = fig
    for name, fig in figures.items():
        plots.save(fig, out / name)
        written.append(name)
    report.figures = figures

    # README with provenance, then the manifest; stale files of the previous report go last
    command = command or shlex.join(["ablate", *sys.argv[1:]])  # quoted: a --title with spaces stays one argument
    text = readme(
        title=title or f"Report: {root.name}",
        root=root,
        command=command,
        git_sha=sha,
        runs=runs,
        tables=list(report.tables.values()),
        figures={Path(n).stem.replace("_", " "): n for n in figures},
        csv_files=csv_files,
        warnings=report.warnings,
    )
    write_text_atomic(out / "README.md", text)
    written.append("README.md")
    previous = []
    try:
        previous = list(read_json(out / MANIFEST).get("files", []))
    except (RunDirError, AttributeError):
        pass
    write_json_atomic(out / MANIFEST, {"root": str(root), "command": command, "git_sha": sha, "files": written, "runs": [r.name for r in runs]})
    for stale in set(previous) - set(written):
        if "/" not in stale and stale != MANIFEST:
            (out / stale).unlink(missing_ok=True)
    report.files = written + [MANIFEST]
    return report
