"""Report figures (matplotlib, Agg): the paper's Figure 9 trade-off shape, the needle heatmap (Figure
10) and loss curves. Every function returns its Figure, so tests can inspect the series; ``save``
writes the PNG. Every figure names its units, the scale and the device in its labels or title.

Series are labelled: each trade-off scatter carries the variant's name (``PathCollection.get_label``),
each loss line the run's name, each heatmap panel the model (``Axes.get_title``).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ablate.report.load import RunRecord  # noqa: E402
from ablate.report.tables import CACHE_SEQ_LEN, _resolve, run_scores  # noqa: E402

SIZE_MIN, SIZE_MAX = 110.0, 600.0
ACC_LABELS = {
    "general": "commonsense accuracy (%)",
    "recall": "recall accuracy (%)",
}
AXIS_LABELS = {
    "cache_mb": f"cache (MB, FP16, {CACHE_SEQ_LEN} tokens, analytic)",
    "throughput": "decode throughput (tokens/s)",
}
SIZE_LABELS = {"cache_mb": "cache MB", "throughput": "tokens/s"}


def short_name(variant: str) -> str:
    """table1-13-meta-tokens -> 13 meta-tokens; table3-samba -> samba (legends stay narrow)."""
    parts = variant.split("-")
    if parts[0] == "table1" and len(parts) > 2:
        return f"{parts[1]} {'-'.join(parts[2:])}"
    if parts[0] == "table3" and len(parts) > 1:
        return "T3 " + "-".join(parts[1:])
    return variant


def _colors(names: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def context(runs: list[RunRecord], stage: str = "train") -> str:
    scales = sorted({r.scale for r in runs if r.scale})
    # eval:niah also matches eval:niah.fixtures (the result file of a run with offline fixtures)
    devices = sorted({d for r in runs for k, d in r.devices.items() if k == stage or k.startswith(stage + ".")})
    return f"scale {', '.join(scales) or '?'} · {stage} on {', '.join(devices) or 'unknown device'}"


# ---- Figure 9: accuracy vs cache / throughput ----------------------------------------------------
def tradeoff_points(runs: list[RunRecord]) -> pd.DataFrame:
    """One row per (variant, scale): our accuracy, analytic cache and measured throughput (means over
    seeds), and the paper's figures where the variant records them."""
    from ablate.bench.accounting import cache_bytes

    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in runs:
        groups.setdefault((r.variant, r.scale), []).append(r)
    rows = []
    for (variant, scale), group in groups.items():
        v = _resolve(variant, scale)
        scores = [run_scores(r) for r in group]

        def mean(key):
            vals = [s[key] for s in scores if key in s]
            return float(np.mean(vals)) if vals else math.nan

        general = mean("commonsense_avg")
        recall = mean("recall")  # the same choice of tasks as Table 1 (tables.run_scores)
        basis = "synthetic" if any(s.get("recall_basis", "").startswith("synthetic") for s in scores) else "SWDE, SQuAD-C"
        fixtures = set().union(*(s.get("fixture_keys", set()) for s in scores))
        paper = v.paper if v is not None else {}
        rows.append({
            "variant": variant,
            "label": short_name(variant),
            "scale": scale,
            "general": general,
            "recall": recall,
            "recall_basis": basis,
            "general_fixtures": "commonsense_avg" in fixtures,
            "recall_fixtures": "recall" in fixtures,
            "cache_mb": cache_bytes(v.config, CACHE_SEQ_LEN).mb if v is not None else math.nan,
            "throughput": mean("throughput"),
            "paper_general": _num(paper.get("general", paper.get("commonsense_avg"))),
            "paper_recall": _num(paper.get("recall", paper.get("recall_avg"))),
            "paper_cache_mb": _num(paper.get("cache_mb")),
            "paper_throughput": _num(paper.get("throughput")),
        })
    order = lambda name: (0, int(name.split("-")[1])) if name.startswith("table1-") and name.split("-")[1].isdigit() else (1, 0)  # noqa: E731
    return pd.DataFrame(rows).sort_values("variant", key=lambda s: s.map(lambda n: order(n) + (n,))).reset_index(drop=True) if rows else pd.DataFrame()


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _sizes(values: pd.Series) -> tuple[np.ndarray, float]:
    """Marker areas proportional to value / max (so sizes compare within a panel)."""
    vmax = float(np.nanmax(values)) if values.notna().any() else math.nan
    if not math.isfinite(vmax) or vmax <= 0:
        return np.full(len(values), (SIZE_MIN + SIZE_MAX) / 3), math.nan
    frac = (values.fillna(0).to_numpy(dtype=float) / vmax).clip(0, 1)
    return SIZE_MIN + (SIZE_MAX - SIZE_MIN) * frac, vmax


def _log_axis(ax) -> None:
    """A log x axis with plain-number ticks at 1, 2, 5 x 10^k (readable over any range)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.4g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)


def _tag(variant: str) -> str:
    """The text inside a marker: the Table 1 row number, else the short name."""
    parts = variant.split("-")
    return parts[1] if parts[0] == "table1" and len(parts) > 1 else short_name(variant).removeprefix("T3 ")


def tradeoff_figure(points: pd.DataFrame, x: str, acc: str, ours_context: str, device: str = "") -> Figure | None:
    """Accuracy (``acc``: general | recall) against ``x`` (cache_mb | throughput), marker size the other
    one; left panel ours, right panel the paper's figures (when any variant has them)."""
    size_key = "throughput" if x == "cache_mb" else "cache_mb"
    if not len(points):
        return None
    ours = points[points[[acc, x]].notna().all(axis=1) & (points[x] > 0)]
    if ours.empty:
        return None
    pa, px, ps = f"paper_{acc}", f"paper_{x}", f"paper_{size_key}"
    paper = points[points[[pa, px]].notna().all(axis=1) & (points[px] > 0)]
    panels = [("ours", ours, acc, x, size_key)] + ([("paper", paper, pa, px, ps)] if len(paper) else [])
    colors = _colors(list(points["variant"]))
    # constrained layout with legends "outside right": nothing overlaps the data, whatever the labels
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels) + 2.4, 5.0), squeeze=False, layout="constrained")
    recall_basis = set(ours["recall_basis"]) if acc == "recall" else set()
    size_handles, size_labels = [], []
    for ax, (who, df, ycol, xcol, scol) in zip(axes[0], panels):
        sizes, smax = _sizes(df[scol])
        for (_, row), s in zip(df.iterrows(), sizes):
            ax.scatter(row[xcol], row[ycol], s=s, color=colors[row["variant"]], alpha=0.8, edgecolors="black", linewidths=0.6, label=row["variant"])
            tag = _tag(row["variant"])
            if len(tag) <= 3:  # a row number fits inside the marker; a name goes beside it
                ax.annotate(tag, (row[xcol], row[ycol]), fontsize=7, ha="center", va="center")
            else:
                ax.annotate(tag, (row[xcol], row[ycol]), xytext=(8, 8), textcoords="offset points", fontsize=7)
        _log_axis(ax)
        size_name = SIZE_LABELS[scol.removeprefix("paper_")]
        if who == "ours":
            xlabel = AXIS_LABELS[xcol]
            if xcol == "throughput" and device:
                xlabel = f"decode throughput (tokens/s, {device})"
            ylabel = ACC_LABELS[acc]
            if acc == "recall" and recall_basis == {"synthetic"}:
                ylabel = "recall accuracy (%, synthetic phonebook + MQAR)"
            if df[f"{acc}_fixtures"].any():  # say so on the axis: these numbers test the pipeline only
                ylabel = ylabel.replace(")", ", offline fixtures)", 1)
            ax.set_title(f"ours: {ours_context}", fontsize=9)
        else:
            xlabel = "paper's cache column (MB, FP16, 8k tokens)" if xcol == "paper_cache_mb" else "paper's throughput (tokens/s, A100, 8k, batch 128)"
            ylabel = "paper's " + ACC_LABELS[acc].replace("commonsense accuracy (%)", "commonsense accuracy (%, 8 tasks)").replace("recall accuracy (%)", "recall accuracy (%, SWDE + SQuAD-C)")
            ax.set_title("paper (Table 1): 300M params, 100B tokens, A100", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.margins(x=0.15, y=0.15)
        if math.isfinite(smax):
            for f in (0.25, 1.0):
                size_handles.append(Line2D([], [], marker="o", linestyle="", markersize=math.sqrt(SIZE_MIN + (SIZE_MAX - SIZE_MIN) * f),
                                           color="lightgray", markeredgecolor="black"))
                size_labels.append(f"{who}: {smax * f:,.3g} {size_name}")
        else:
            ax.text(0.98, 0.02, f"marker size: no {size_name} measured", transform=ax.transAxes, ha="right", va="bottom", fontsize=7)
    what = "cache size" if x == "cache_mb" else "throughput"
    fig.suptitle(f"{'Commonsense' if acc == 'general' else 'Recall'} accuracy vs {what} (Figure 9 shape); marker area = {'throughput' if size_key == 'throughput' else 'cache MB'}", fontsize=11)
    handles = [Line2D([], [], marker="o", linestyle="", color=colors[v], markeredgecolor="black", label=short_name(v)) for v in points["variant"]]
    fig.legend(handles=handles + size_handles, labels=[h.get_label() for h in handles] + size_labels, loc="outside right center",
               fontsize=8, title="variant / marker area", title_fontsize=8, frameon=False, labelspacing=1.5)
    fig._ablate = {"kind": "tradeoff", "x": x, "acc": acc, "variants": list(ours["variant"]), "paper_variants": list(paper["variant"])}
    return fig


# ---- needle heatmap -----------------------------------------------------------------------------
def needle_grid(records: list[dict]) -> pd.DataFrame:
    """Accuracy (0-1) by depth (rows) x context length (columns)."""
    df = pd.DataFrame(records)
    return df.pivot_table(index="depth", columns="length", values="correct", aggfunc="mean").sort_index().sort_index(axis=1)


def needle_heatmap(by_model: dict[str, list[dict]], title_context: str) -> Figure | None:
    """One panel per model: needle depth (rows) x context length in tokens (columns), accuracy colour."""
    models = [m for m, recs in by_model.items() if recs]
    if not models:
        return None
    grids = {m: needle_grid(by_model[m]) for m in models}
    ncols = 2 if len(models) == 4 else min(3, len(models))  # 2 x 2 rather than 3 + 1
    nrows = math.ceil(len(models) / ncols)
    widest = max(g.shape[1] for g in grids.values())
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.1 * widest * ncols + 2.2, 0.55 * max(g.shape[0] for g in grids.values()) * nrows + 2.4), squeeze=False, layout="constrained")
    image = None
    for ax, m in zip(axes.flat, models):
        g = grids[m]
        image = ax.imshow(g.to_numpy(dtype=float) * 100, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(g.shape[1]), [f"{int(c):,}" for c in g.columns], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(g.shape[0]), [f"{d:.0%}" for d in g.index], fontsize=8)
        for (i, j), val in np.ndenumerate(g.to_numpy(dtype=float)):
            if math.isfinite(val):
                # white on the dark ends of the colour map, black in the light middle
                ax.text(j, i, f"{val * 100:.0f}", ha="center", va="center", fontsize=7, color="white" if val < 0.2 or val > 0.85 else "black")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("needle depth (% of context)")
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    fig.suptitle(f"Needle in a haystack: accuracy (%) by length × depth (Figure 10 shape); {title_context}", fontsize=10)
    fig.colorbar(image, ax=[a for a in axes.flat if a.get_visible()], label="accuracy (%)", shrink=0.9)
    fig._ablate = {"kind": "needle", "models": models, "grids": grids}
    return fig


# ---- loss curves --------------------------------------------------------------------------------
def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    return pd.Series(values).rolling(window, min_periods=1).mean().to_numpy()


def loss_curves(runs: list[RunRecord], title_context: str) -> Figure | None:
    """Train loss (left) and validation loss (right) against training tokens, one line per run."""
    runs = [r for r in runs if any("loss" in m for m in r.metrics)]
    if not runs:
        return None
    colors = _colors([r.name for r in runs])
    has_val = any("val_loss" in m for r in runs for m in r.metrics)
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(13.5 if has_val else 8.5, 4.8), squeeze=False, layout="constrained")
    ax_train = axes[0][0]
    windows = []
    for r in runs:
        pts = [(m["tokens"], m["loss"]) for m in r.metrics if isinstance(m.get("loss"), (int, float)) and isinstance(m.get("tokens"), (int, float))]
        if not pts:
            continue
        x, y = map(np.asarray, zip(*pts))
        window = max(1, len(pts) // 50)  # a rolling mean only once there are hundreds of points
        windows.append(window)
        ax_train.plot(x, _smooth(y, window), color=colors[r.name], label=r.name, linewidth=1.4)
        if has_val:
            vpts = [(m["tokens"], m["val_loss"]) for m in r.metrics if isinstance(m.get("val_loss"), (int, float)) and isinstance(m.get("tokens"), (int, float))]
            if vpts:
                vx, vy = map(np.asarray, zip(*vpts))
                axes[0][1].plot(vx, vy, color=colors[r.name], label=r.name, marker="o", markersize=4, linewidth=1.4)
    smooth_note = f" (rolling mean of {max(windows)} steps)" if windows and max(windows) > 1 else ""
    ax_train.set_title("train loss" + smooth_note, fontsize=9)
    ax_train.set_ylabel("cross-entropy (nats/token)")
    axes_used = [ax_train] + ([axes[0][1]] if has_val else [])
    if has_val:
        axes[0][1].set_title("validation loss (held-out documents)", fontsize=9)
        axes[0][1].set_ylabel("cross-entropy (nats/token)")
    for ax in axes_used:
        ax.set_xlabel("training tokens")
        ax.grid(True, alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    fig.suptitle(f"Loss curves; {title_context}", fontsize=10)
    handles, labels = ax_train.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, title="run", title_fontsize=8, frameon=False)
    fig._ablate = {"kind": "loss", "runs": [r.name for r in runs]}
    return fig


def save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    tmp.replace(path)  # a reader never sees a half-written image
    plt.close(fig)
    return path
