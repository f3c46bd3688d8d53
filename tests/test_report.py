"""Reports from run directories with known numbers: the tables' rows, columns and values, the plots'
series, the provenance README, and the column mapping."""

import math
from pathlib import Path

import matplotlib.collections
import pandas as pd
import pytest
from report_fakes import PROV, write_run
from typer.testing import CliRunner

from ablate.bench.accounting import accounting_row
from ablate.cli import app
from ablate.registry import resolve
from ablate.report import plots
from ablate.report.build import make_report
from ablate.report.columns import COLUMNS, COMMONSENSE
from ablate.report.load import load_runs, results_long
from ablate.report.tables import table1, table3


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_run(root, "table1-01-mamba", commonsense=0.41, recall=0.30, throughput=1200.0)
    write_run(root, "table1-06-llama", commonsense=0.44, recall=0.50, swde=0.30, throughput=400.0, niah=True)
    write_run(root, "table1-13-meta-tokens", recall=0.60, throughput=900.0, niah=True)
    write_run(root, "table1-13-meta-tokens", seed=1, recall=0.50, throughput=950.0, niah=True)
    write_run(root, "table3-samba", commonsense=0.50, throughput=None)
    write_run(root, "table3-samba", seed=1, commonsense=0.52, throughput=None)
    (root / ".superseded").mkdir()  # the sweep's folders are not runs
    return root


@pytest.fixture(scope="module")
def runs(root):
    return load_runs(root)


def test_loads_every_run_and_the_long_table(runs):
    assert [r.name for r in runs] == ["table1-01-mamba", "table1-06-llama", "table1-13-meta-tokens", "table1-13-meta-tokens-s1", "table3-samba", "table3-samba-s1"]
    assert [r.seed for r in runs] == [0, 0, 0, 1, 0, 1]
    long = results_long(runs)
    assert list(long.columns[:9]) == ["run", "variant", "seed", "scale", "suite", "task", "metric", "value", "stderr"]
    piqa = long[(long.run == "table1-01-mamba") & (long.task == "piqa")]
    assert piqa.metric.tolist() == ["acc"] and piqa.value.tolist() == [0.41]  # "acc,none" -> acc
    bench = long[(long.run == "table1-06-llama") & (long.suite == "bench") & (long.metric == "decode_tokens_per_s")]
    assert bench.value.tolist() == [400.0]
    final = long[(long.run == "table1-06-llama") & (long.metric == "final_loss")]
    assert final.value.iloc[0] == pytest.approx(5.0 - 0.1 * 10)


def test_table1_rows_values_and_differences(runs):
    t = table1(runs)
    f = t.frame.set_index("row")
    assert list(f.index) == [1, 6, 13]  # the paper's order, only the rows that were run
    assert f.loc[1, "general_ours"] == pytest.approx(41.0) and f.loc[1, "general_paper"] == 42.98
    assert f.loc[1, "general_diff"] == pytest.approx(41.0 - 42.98)
    assert f.loc[1, "general_tasks"] == 8
    # recall: SWDE + SQuAD-C when run (with a difference), else our synthetic tasks (no difference)
    assert f.loc[6, "recall_basis"] == "SWDE, SQuAD-C" and f.loc[6, "recall_diff"] == pytest.approx(30.0 - 39.98)
    assert f.loc[1, "recall_basis"].startswith("synthetic") and math.isnan(f.loc[1, "recall_diff"])
    # two seeds: mean and sample sd
    assert f.loc[13, "seeds"] == 2 and f.loc[13, "recall_ours"] == pytest.approx(55.0) and f.loc[13, "recall_ours_sd"] == pytest.approx(7.0711, rel=1e-3)
    assert f.loc[13, "throughput_ours"] == pytest.approx(925.0) and f.loc[13, "throughput_paper"] == 2695.8
    # not measured: NaN in the CSV, a dash in the Markdown, never a number
    assert math.isnan(f.loc[13, "general_ours"])
    row13 = next(line for line in t.markdown.splitlines() if line.startswith("| 13 "))
    assert "| – | 45.53 | – |" in row13
    # cache: the analytic count at our scale and at the paper's configuration vs the paper's column
    assert f.loc[6, "cache_mb_ours"] == pytest.approx(accounting_row(resolve("table1-06-llama", "tiny"), 8000)["cache_mb"])
    assert f.loc[6, "cache_mb_ours_paper_config"] == pytest.approx(414.72) and f.loc[6, "cache_diff_pct"] == pytest.approx(0.0)
    assert f.loc[13, "attn_ssm_paper"] == "1:5.23"
    assert "scale tiny" in t.title and "320 training tokens" in t.title and "CPU (x86_64, 2 cores)" in t.title and "A100" in t.title
    assert any("meta tokens" in n for n in t.notes)  # the variant's accounting note travels with the row


def test_table3_mean_spread_paper_and_difference(runs):
    t = table3(runs)
    f = t.frame
    assert set(f.variant) == {"table3-samba"}
    ours = f[f.source == "ours"].iloc[0]
    sd = f[f.source == "ours_sd"].iloc[0]
    paper = f[f.source == "paper"].iloc[0]
    diff = f[f.source == "diff"].iloc[0]
    assert ours["piqa"] == pytest.approx(51.0) and sd["piqa"] == pytest.approx(1.41421, rel=1e-4)
    assert paper["piqa"] == 73.23 and diff["piqa"] == pytest.approx(51.0 - 73.23)
    assert ours["wiki_ppl"] == pytest.approx(20.0)  # perplexities are not scaled
    assert ours["commonsense_avg"] == pytest.approx(51.0)  # all 8 tasks run
    assert math.isnan(ours["swde"]) and math.isnan(ours["recall_avg"])  # not run: blank
    assert paper["recall_avg"] == 36.17
    header = t.markdown.splitlines()[2]
    assert header.split(" | ")[2:5] == ["Wiki. ppl", "LMB. ppl", "SWDE"]


def test_column_map_matches_the_eval_suites():
    from ablate.evals.suites import SUITES

    for col in COLUMNS:
        suite = next((s for s in SUITES.values() if col.task in s.task_names), None)
        assert suite is not None, col.task
        if col.key != "lambada_ppl":  # the suite's headline for lambada_openai is acc; ppl rides along
            assert suite.headline(col.task) == col.metric, col
    assert len(COMMONSENSE) == 8


def test_tradeoff_plot_series(runs):
    points = plots.tradeoff_points(runs)
    fig = plots.tradeoff_figure(points, "cache_mb", "recall", "scale tiny", "CPU")
    ours_ax, paper_ax = fig.axes[:2]
    scatters = [c for c in ours_ax.collections if isinstance(c, matplotlib.collections.PathCollection)]
    assert [c.get_label() for c in scatters] == ["table1-01-mamba", "table1-06-llama", "table1-13-meta-tokens"]
    llama = scatters[1]
    cache = resolve("table1-06-llama", "tiny")
    x, y = llama.get_offsets()[0]
    assert x == pytest.approx(accounting_row(cache, 8000)["cache_mb"], rel=1e-3) and y == pytest.approx(30.0)
    # marker area follows throughput: the fastest run has the largest marker
    sizes = {c.get_label(): c.get_sizes()[0] for c in scatters}
    assert sizes["table1-01-mamba"] > sizes["table1-13-meta-tokens"] > sizes["table1-06-llama"]
    assert "cache (MB" in ours_ax.get_xlabel() and "recall" in ours_ax.get_ylabel() and "tiny" in ours_ax.get_title()
    paper = {c.get_label(): tuple(c.get_offsets()[0]) for c in paper_ax.collections if isinstance(c, matplotlib.collections.PathCollection)}
    assert paper["table1-13-meta-tokens"] == pytest.approx((40.01, 51.79))
    assert "A100" in paper_ax.get_title()
    assert fig.legends and fig.legends[0].get_title().get_text().startswith("variant")
    fig2 = plots.tradeoff_figure(points, "throughput", "general", "scale tiny", "CPU")
    xs = {c.get_label(): c.get_offsets()[0][0] for c in fig2.axes[0].collections if isinstance(c, matplotlib.collections.PathCollection)}
    assert xs == {"table1-01-mamba": 1200.0, "table1-06-llama": 400.0}  # samba has no bench, 13 no commonsense
    assert "CPU" in fig2.axes[0].get_xlabel()


def test_needle_heatmap_and_loss_curves(runs):
    by_model = {}
    for r in runs:
        by_model.setdefault(r.variant, []).extend(r.needle)
    fig = plots.needle_heatmap({k: v for k, v in by_model.items() if v}, "scale tiny")
    assert [ax.get_title() for ax in fig.axes if ax.get_images()] == ["table1-06-llama", "table1-13-meta-tokens"]
    grid = fig._ablate["grids"]["table1-06-llama"]
    assert list(grid.columns) == [64, 128, 256] and list(grid.index) == [0.0, 0.5, 1.0]
    assert grid.loc[0.5, 64] == pytest.approx(0.5) and grid.loc[1.0, 256] == pytest.approx(0.0)
    image = fig.axes[0].get_images()[0].get_array()
    assert image[0, 0] == pytest.approx(50.0)  # percent colour scale
    assert fig.axes[0].get_xlabel() == "context length (tokens)"

    fig = plots.loss_curves(runs, "scale tiny · train on CPU")
    train_ax, val_ax = fig.axes[:2]
    lines = {line.get_label(): line for line in train_ax.get_lines()}
    assert set(lines) == {r.name for r in runs}
    assert list(lines["table3-samba-s1"].get_xdata()) == [32 * s for s in range(1, 11)]
    assert lines["table3-samba-s1"].get_ydata()[-1] == pytest.approx(5.0 - 1.0 - 0.01)
    assert [list(line.get_xdata()) for line in val_ax.get_lines()][0] == [160, 320]
    assert train_ax.get_xlabel() == "training tokens" and "nats/token" in train_ax.get_ylabel()
    assert "CPU" in fig._suptitle.get_text()


def test_make_report_writes_tables_plots_and_provenance(root, tmp_path):
    out = tmp_path / "report"
    make_report(root, out, command="ablate report runs/x")
    for name in ("table1.md", "table1.csv", "table3.md", "table3.csv", "results.csv", "README.md", "report.json", "loss_curves.png",
                 "needle_heatmap.png", "accuracy_vs_cache_recall.png", "accuracy_vs_throughput_general.png"):
        assert (out / name).exists(), name
    t1 = pd.read_csv(out / "table1.csv")
    assert t1.row.tolist() == [1, 6, 13] and t1.general_paper.tolist()[:2] == [42.98, 44.08]
    assert pd.read_csv(out / "results.csv").shape[0] == len(results_long(load_runs(root)))
    readme = (out / "README.md").read_text()
    assert PROV["git_sha"] in readme and "CPU (x86_64, 2 cores)" in readme and "ablate sweep smoke" in readme and "ablate report runs/x" in readme
    assert "![accuracy vs cache recall](accuracy_vs_cache_recall.png)" in readme
    assert "| Hella. | hellaswag | acc_norm |" in readme
    assert (out / "needle_heatmap.png").read_bytes()[:4] == b"\x89PNG"

    # a second report from fewer runs removes what it no longer produces
    sub = tmp_path / "only-mamba"
    sub.mkdir()
    (sub / "table1-01-mamba").symlink_to(root / "table1-01-mamba")
    make_report(sub, out)
    assert not (out / "needle_heatmap.png").exists() and not (out / "table3.md").exists()
    assert pd.read_csv(out / "table1.csv").row.tolist() == [1]


def test_report_cli(root, tmp_path):
    res = CliRunner().invoke(app, ["report", str(root), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "table1.md").exists()
    assert (tmp_path / "r" / "README.md").read_text().startswith(f"# Report: {root.name}\n")
    res = CliRunner().invoke(app, ["report", str(root), "--out", str(tmp_path / "r"), "--title", "Report: sweep x (regenerated)"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "README.md").read_text().startswith("# Report: sweep x (regenerated)\n")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "empty-root-that-does-not-exist")])
    assert res.exit_code == 2 and "no such run root" in res.output


def test_throughput_from_a_bench_folder_fills_runs_without_their_own(tmp_path):
    """``ablate report --bench DIR``: runs with no bench.json take their variant's measurement from DIR
    (ours only, never an anchor's file); a run's own bench.json is kept; the header says the scale."""
    root, bench = tmp_path / "runs", tmp_path / "bench"
    write_run(root, "table1-01-mamba", recall=0.3, throughput=None)
    write_run(root, "table1-06-llama", recall=0.5, throughput=None)
    write_run(root, "table1-13-meta-tokens", recall=0.6, throughput=77.0)
    bench.mkdir()
    from ablate.rundir import write_json_atomic

    write_json_atomic(bench / "anchor-table1-06-llama.json", {"variant": "table1-06-llama", "kind": "transformers", "scale": "paper", "decode_tokens_per_s": 1.0})
    for variant, tps in (("table1-01-mamba", 38859.0), ("table1-06-llama", 3225.0), ("table1-13-meta-tokens", 17487.0)):
        write_json_atomic(bench / f"{variant}.json", {"variant": variant, "kind": "ablate", "scale": "paper", "decode_tokens_per_s": tps,
                                                      "protocol": {"prompt_len": 8192}, "provenance": {**PROV, "device": "NVIDIA H100 80GB HBM3 x1"}})
    rep = make_report(root, tmp_path / "rep", bench_dir=bench)
    f = rep.tables["table1"].frame.set_index("row")
    assert f.loc[1, "throughput_ours"] == 38859.0 and f.loc[6, "throughput_ours"] == 3225.0
    assert f.loc[13, "throughput_ours"] == 77.0  # its own bench wins
    assert "paper scale" in rep.tables["table1"].title and "H100" in rep.tables["table1"].title
    assert "paper scale, from table1-06-llama.json" in (tmp_path / "rep" / "README.md").read_text()
    with pytest.raises(Exception, match="no such folder"):
        make_report(root, tmp_path / "rep2", bench_dir=tmp_path / "missing")


def test_final_validation_loss_in_every_table(runs):
    """The one number a short proxy run always has: the last val_loss of metrics.jsonl (mean ± sd)."""
    f1 = table1(runs).frame.set_index("row")
    assert f1.loc[1, "val_loss_ours"] == pytest.approx(5.2 - 0.1 * 10)
    f3 = table3(runs).frame
    ours = f3[(f3.variant == "table3-samba") & (f3.source == "ours")]
    assert ours.val_loss.iloc[0] == pytest.approx(4.2) and "val loss (ours)" in table3(runs).markdown
