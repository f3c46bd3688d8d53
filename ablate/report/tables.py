"""Run records -> pandas tables in the shapes of the paper's Table 1 and Table 3, ours beside the
paper's figures and the difference, as Markdown and CSV.

Ours are means over seeds (with the sample standard deviation when there are two or more); a number
we did not measure is NaN in the CSV and "–" in the Markdown, never filled in. The paper's figures
come from each variant's ``paper:`` mapping (see variants/*.yaml for their sources).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

import pandas as pd

from ablate.report.columns import BY_KEY, COLUMNS, COMMONSENSE, RECALL, SYNTHETIC, TABLE3_COLUMNS, TABLE3_ORDER, label
from ablate.report.load import RunRecord, metric_name, uses_fixture

CACHE_SEQ_LEN = 8000  # the paper's "8k" cache column fits 8000 tokens (ablate/bench/accounting.py)
DASH = "–"

TABLE1_PAPER = (
    "paper: 300M-parameter models trained on 100B tokens (FineWeb, sequence 1k, window 256); throughput in tokens/s "
    "on an NVIDIA A100 at 8k tokens, batch 128; cache in MB (10^6 bytes) for 8000 tokens in FP16"
)
TABLE3_PAPER = "paper: ~1B-parameter models trained on 100B tokens of SmolLM-Corpus with one recipe; lm-evaluation-harness, zero-shot"


@dataclass
class Table:
    name: str
    title: str  # the header line: what ours were measured at and what the paper's were
    frame: pd.DataFrame  # numeric, for the CSV
    markdown: str
    notes: list[str] = field(default_factory=list)


# ---- per-run scores -----------------------------------------------------------------------------
def run_scores(run: RunRecord) -> dict[str, float]:
    """Column key -> our value for one run (accuracies in percent), plus the averages."""
    found: dict[tuple[str, str], tuple[float, bool]] = {}
    # results on offline fixtures first, so that a real result for the same task replaces them
    for data in sorted(run.evals.values(), key=lambda d: not d.get("fixtures")):
        for res in data.get("results", []):
            if isinstance(res, dict) and isinstance(res.get("value"), (int, float)):
                task = str(res.get("task"))
                found[(task, metric_name(res.get("metric", "")))] = (float(res["value"]), bool(data.get("fixtures")) and uses_fixture(task))
    scores: dict = {}
    fixture_keys = set()
    for col in COLUMNS:
        v, fixture = found.get((col.task, col.metric), (None, False))
        if v is not None and math.isfinite(v):
            scores[col.key] = v * col.scale
            if fixture:
                fixture_keys.add(col.key)
    cs = [scores[k] for k in COMMONSENSE if k in scores]
    if cs:
        scores["commonsense_avg"] = statistics.fmean(cs)
        scores["commonsense_n"] = len(cs)
    rc = [scores[k] for k in RECALL if k in scores]
    if len(rc) == len(RECALL):
        scores["recall_avg"] = statistics.fmean(rc)
    syn = [scores[k] for k in SYNTHETIC if k in scores]
    if syn:
        scores["synthetic_recall_avg"] = statistics.fmean(syn)
    if run.bench and isinstance(run.bench.get("decode_tokens_per_s"), (int, float)):
        scores["throughput"] = float(run.bench["decode_tokens_per_s"])
    val = [m["val_loss"] for m in run.metrics if isinstance(m.get("val_loss"), (int, float)) and math.isfinite(m["val_loss"])]
    if val:
        scores["val_loss"] = float(val[-1])  # the trainer evaluates at the end: the final model's
    # an average is on fixtures when any of its parts is
    for avg, parts in (("commonsense_avg", COMMONSENSE), ("recall_avg", RECALL)):
        if avg in scores and fixture_keys & set(parts):
            fixture_keys.add(avg)
    # Table 1's recall column: the paper's tasks (SWDE, SQuAD-C) measured on real data; else our
    # synthetic tasks (generated locally, so real measurements); else the paper's tasks on fixtures
    if "recall_avg" in scores and "recall_avg" not in fixture_keys:
        scores["recall"], scores["recall_basis"] = scores["recall_avg"], RECALL_PAPER
    elif "synthetic_recall_avg" in scores:
        scores["recall"], scores["recall_basis"] = scores["synthetic_recall_avg"], RECALL_SYNTHETIC
    elif "recall_avg" in scores:
        scores["recall"], scores["recall_basis"] = scores["recall_avg"], RECALL_PAPER
        fixture_keys.add("recall")
    scores["fixture_keys"] = fixture_keys
    return scores


RECALL_PAPER = "SWDE, SQuAD-C"
RECALL_SYNTHETIC = "synthetic (phonebook, MQAR)"


VAL_LOSS_LEGEND = (
    "val loss: the final validation cross-entropy (nats per token) on the held-out part of the training corpus; "
    "comparable between runs that share a corpus and tokenizer (one sweep), not with the paper"
)

FIXTURE_MARK = "†"
FIXTURE_LEGEND = (
    f"{FIXTURE_MARK} scored on offline fixtures (a few rows written by us standing in for the hub dataset, evals/fixtures/): "
    "they test the pipeline, the numbers mean nothing"
)


def frame_has_fixtures(rows: list[dict]) -> bool:
    return any(r.get("general_fixtures") or r.get("recall_fixtures") for r in rows)


def _fixture_keys(per_run: list[dict]) -> set:
    return set().union(*(s.get("fixture_keys", set()) for s in per_run)) if per_run else set()


def _group(runs: list[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[(r.variant, r.scale)].append(r)
    return groups


def _agg(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample sd or NaN, n)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, 0
    sd = statistics.stdev(vals) if len(vals) > 1 else math.nan
    return statistics.fmean(vals), sd, len(vals)


def _paper_value(paper: dict, key: str) -> float:
    v = paper.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _resolve(variant: str, scale: str):
    from ablate.config import ConfigError
    from ablate.registry import resolve

    try:
        return resolve(variant, scale or "tiny")
    except ConfigError:
        return None


# ---- formatting ---------------------------------------------------------------------------------
def fmt(v, digits: int = 2, sd=None, thousands: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return DASH
    if isinstance(v, str):
        return v or DASH
    s = f"{v:,.{digits}f}" if thousands else f"{v:.{digits}f}"
    if sd is not None and isinstance(sd, float) and math.isfinite(sd):
        s += f" ± {sd:.{digits}f}"
    return s


def fmt_diff(v, digits: int = 2, suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return DASH
    return f"{v:+.{digits}f}{suffix}"


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of a frame of strings (no optional dependency)."""
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row.tolist()) + " |")
    return "\n".join(lines)


def _scale_context(runs: list[RunRecord]) -> str:
    scales = sorted({r.scale for r in runs if r.scale})
    tokens = sorted({r.train_tokens for r in runs if r.train_tokens})
    seeds = sorted({r.seed for r in runs})
    train_dev = sorted({r.devices.get("train") for r in runs if r.devices.get("train")})
    bench_dev = sorted({r.devices.get("bench") for r in runs if r.devices.get("bench")})
    tok = DASH if not tokens else (f"{tokens[0]:,}" if len(tokens) == 1 else f"{tokens[0]:,}–{tokens[-1]:,}")
    parts = [
        f"ours: scale {', '.join(scales) or DASH}",
        f"{tok} training tokens per run",
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}",
        f"trained on {', '.join(train_dev) or DASH}",
        f"throughput measured on {', '.join(bench_dev) or DASH}",
    ]
    borrowed = sorted({f"{r.bench.get('scale', '?')} scale" for r in runs if r.bench and r.bench_source})
    if borrowed:
        # proxy models' decode speed says nothing of the paper's; the variant's own bench at its size does
        parts[-1] += f" (the variants at {', '.join(borrowed)}, untrained weights: `ablate report --bench`)"
    protocols = {tuple(sorted((r.bench.get("protocol") or {}).items())) for r in runs if r.bench}
    if len(protocols) == 1:
        p = dict(next(iter(protocols)))
        parts.append(f"bench prompt {p.get('prompt_len', '?')} + {p.get('gen_tokens', '?')} generated tokens, batch {p.get('batch', p.get('batch_requested', '?'))}, {p.get('dtype', '?')}")
    return "; ".join(parts)


# ---- Table 1 ------------------------------------------------------------------------------------
def table1(runs: list[RunRecord]) -> Table | None:
    """The design roadmap: one row per Table 1 variant that was run, in the paper's order."""
    from ablate.bench.accounting import accounting_row

    rows, display, notes = [], [], []
    entries = []
    for (variant, scale), group in _group(runs).items():
        v = _resolve(variant, scale)
        if v is None or "row" not in v.paper:
            continue
        entries.append((int(v.paper["row"]), variant, scale, v, group))
    if not entries:
        return None
    for row_no, variant, scale, v, group in sorted(entries, key=lambda e: (e[0], e[2])):
        per_run = [run_scores(r) for r in group]
        fx = _fixture_keys(per_run)
        ours_acc = accounting_row(v, CACHE_SEQ_LEN)
        paper_cfg = _resolve(variant, "paper")
        paper_acc = accounting_row(paper_cfg, CACHE_SEQ_LEN) if paper_cfg is not None else {}
        gen, gen_sd, gen_n = _agg([s.get("commonsense_avg") for s in per_run])
        n_tasks = max((s.get("commonsense_n", 0) for s in per_run), default=0)
        bases = [s["recall_basis"] for s in per_run if "recall_basis" in s]
        basis = max(set(bases), key=bases.count) if bases else ""  # the seeds agree unless their suites differ
        rec, rec_sd, _ = _agg([s.get("recall") for s in per_run if s.get("recall_basis") == basis])
        thr, thr_sd, _ = _agg([s.get("throughput") for s in per_run])
        vl, vl_sd, _ = _agg([s.get("val_loss") for s in per_run])
        p = v.paper
        rec_row = {
            "row": row_no,
            "configuration": v.description,
            "variant": variant,
            "scale": scale,
            "seeds": len(group),
            "params": ours_acc["params"],
            "attn_ssm_ours": ours_acc["attn_ssm"],
            "attn_ssm_paper": str(p.get("attn_ssm_ratio", "")),
            "val_loss_ours": vl,
            "val_loss_ours_sd": vl_sd,
            "general_ours": gen,
            "general_ours_sd": gen_sd,
            "general_tasks": n_tasks,
            "general_fixtures": "commonsense_avg" in fx,
            "general_paper": _paper_value(p, "general"),
            "general_diff": gen - _paper_value(p, "general"),
            "recall_ours": rec,
            "recall_ours_sd": rec_sd,
            "recall_basis": basis,
            "recall_fixtures": "recall" in fx,
            "recall_paper": _paper_value(p, "recall"),
            "recall_diff": rec - _paper_value(p, "recall") if basis == RECALL_PAPER else math.nan,
            "throughput_ours": thr,
            "throughput_paper": _paper_value(p, "throughput"),
            "cache_mb_ours": float(ours_acc["cache_mb"]),
            "cache_mb_ours_paper_config": float(paper_acc.get("cache_mb", math.nan)),
            "cache_mb_paper": _paper_value(p, "cache_mb"),
        }
        rec_row["cache_diff_pct"] = 100 * (rec_row["cache_mb_ours_paper_config"] - rec_row["cache_mb_paper"]) / rec_row["cache_mb_paper"] if rec_row["cache_mb_paper"] else math.nan
        rows.append(rec_row)
        mark = ""
        note = "; ".join(f"{k.removesuffix('_note')}: {val}" for k, val in p.items() if k.endswith("_note"))
        if note:
            notes.append(f"row {row_no} ({variant}): {note}")
            mark = f" [{len(notes)}]"
        display.append({
            "#": row_no,
            "configuration": v.description + mark,
            "attn:mamba ours": rec_row["attn_ssm_ours"],
            "attn:mamba paper": rec_row["attn_ssm_paper"] or DASH,
            "val loss ours": fmt(vl, 3, sd=vl_sd),
            "general ours": fmt(gen, sd=gen_sd) + (f" ({n_tasks}/8)" if 0 < n_tasks < 8 else "") + (FIXTURE_MARK if "commonsense_avg" in fx and math.isfinite(gen) else ""),
            "general paper": fmt(rec_row["general_paper"]),
            "general Δ": (fmt_diff(rec_row["general_diff"]) + (FIXTURE_MARK if "commonsense_avg" in fx else "")) if n_tasks == 8 else DASH,
            "recall ours": fmt(rec, sd=rec_sd) + (" (synthetic)" if basis.startswith("synthetic") else "") + (FIXTURE_MARK if "recall" in fx else ""),
            "recall paper": fmt(rec_row["recall_paper"]),
            "recall Δ": fmt_diff(rec_row["recall_diff"]) + (FIXTURE_MARK if "recall" in fx and math.isfinite(rec_row["recall_diff"]) else ""),
            "tok/s ours": fmt(thr, 1, thousands=True),
            "tok/s paper (A100)": fmt(rec_row["throughput_paper"], 1, thousands=True),
            f"cache MB ours ({scale})": fmt(rec_row["cache_mb_ours"]),
            "cache MB ours (paper config)": fmt(rec_row["cache_mb_ours_paper_config"]),
            "cache MB paper": fmt(rec_row["cache_mb_paper"]),
            "cache Δ%": fmt_diff(rec_row["cache_diff_pct"], 1),
        })
    frame = pd.DataFrame(rows)
    # general Δ is only meaningful over the paper's 8 tasks; keep it NaN otherwise
    frame.loc[frame["general_tasks"] < 8, "general_diff"] = math.nan
    title = f"Table 1 (design roadmap). {_scale_context([r for e in entries for r in e[4]])}. {TABLE1_PAPER}."
    legend = [
        "general: commonsense accuracy (%), mean of the 8 tasks (n/8 when fewer were run; Δ only over all 8); "
        "recall: mean of SWDE and SQuAD-C (%) or, marked 'synthetic', of our phonebook and MQAR tasks (4-way, chance 25%; no Δ)",
        VAL_LOSS_LEGEND,
        f"tok/s: decode throughput; ours on the device named above at our scale, the paper's on an A100 at 300M (not comparable in absolute terms); "
        f"cache: analytic FP16 bytes for one sequence of {CACHE_SEQ_LEN} tokens (ablate/bench/accounting.py) at our scale and at the paper's configuration; "
        "Δ% compares the latter with the paper; ours ± = sample sd over seeds",
    ]
    if frame_has_fixtures(rows):
        legend.append(FIXTURE_LEGEND)
    md = _markdown_block(title, pd.DataFrame(display), legend, notes)
    return Table("table1", title, frame, md, legend + notes)


# ---- Table 3 ------------------------------------------------------------------------------------
def table3(runs: list[RunRecord]) -> Table | None:
    """The apple-to-apple comparison: per model three lines (ours, paper, Δ) over the paper's columns."""
    entries = []
    for (variant, scale), group in _group(runs).items():
        v = _resolve(variant, scale)
        if v is None or v.paper.get("table") != 3:
            continue
        order = TABLE3_ORDER.index(variant) if variant in TABLE3_ORDER else len(TABLE3_ORDER)
        entries.append((order, variant, scale, v, group))
    if not entries:
        return None
    rows, display, notes = [], [], []
    for _, variant, scale, v, group in sorted(entries, key=lambda e: (e[0], e[1], e[2])):
        per_run = [run_scores(r) for r in group]
        fx = _fixture_keys(per_run)
        ours, sds = {}, {}
        for key in TABLE3_COLUMNS:
            ours[key], sds[key], _ = _agg([s.get(key) for s in per_run])
        n_cs = max((s.get("commonsense_n", 0) for s in per_run), default=0)
        if n_cs < len(COMMONSENSE):  # an average over fewer tasks is not the paper's average
            ours["commonsense_avg"] = sds["commonsense_avg"] = math.nan
        vl, vl_sd, _ = _agg([s.get("val_loss") for s in per_run])
        paper = {k: _paper_value(v.paper, k) for k in TABLE3_COLUMNS}
        diff = {k: ours[k] - paper[k] for k in TABLE3_COLUMNS}
        model = v.description.split(" (")[0]
        base = {"model": model, "variant": variant, "scale": scale, "seeds": len(group)}
        fixtures_row = {k: float(k in fx and math.isfinite(ours[k])) for k in TABLE3_COLUMNS}
        rows += [{**base, "source": "ours", **ours, "val_loss": vl}, {**base, "source": "ours_sd", **sds, "val_loss": vl_sd},
                 {**base, "source": "ours_on_fixtures", **fixtures_row}, {**base, "source": "paper", **paper}, {**base, "source": "diff", **diff}]
        mark = ""
        if v.paper.get("note"):
            notes.append(f"{model}: {v.paper['note']}")
            mark = f" [{len(notes)}]"
        seeds = f"{len(group)} seed{'s' if len(group) > 1 else ''}"
        display.append({"model": model + mark, "": f"ours ({scale}, {seeds})",
                        **{label(k): fmt(ours[k], sd=sds[k]) + (FIXTURE_MARK if k in fx and math.isfinite(ours[k]) else "") for k in TABLE3_COLUMNS},
                        "val loss (ours)": fmt(vl, 3, sd=vl_sd)})
        display.append({"model": "", "": "paper (1B)", **{label(k): fmt(paper[k]) for k in TABLE3_COLUMNS}, "val loss (ours)": DASH})
        display.append({"model": "", "": "Δ", **{label(k): fmt_diff(diff[k]) + (FIXTURE_MARK if k in fx and math.isfinite(diff[k]) else "") for k in TABLE3_COLUMNS},
                        "val loss (ours)": DASH})
    frame = pd.DataFrame(rows, columns=["model", "variant", "scale", "seeds", "source", *TABLE3_COLUMNS, "val_loss"])
    title = f"Table 3 (apple-to-apple). {_scale_context([r for e in entries for r in e[4]])}. {TABLE3_PAPER}."
    legend = [
        "accuracies in %, perplexities as is (lower is better); "
        + "; ".join(f"{BY_KEY[k].label} = {BY_KEY[k].task} {BY_KEY[k].metric}" for k in TABLE3_COLUMNS if k in BY_KEY)
        + "; Recall avg = mean of SWDE and SQuAD-C; CS avg = mean of the 8 commonsense tasks (only when all 8 were run); "
        "ours = mean ± sample sd over seeds; Δ = ours − paper",
        VAL_LOSS_LEGEND,
    ]
    if any(r["source"] == "ours_on_fixtures" and any(r[k] for k in TABLE3_COLUMNS) for r in rows):
        legend.append(FIXTURE_LEGEND)
    md = _markdown_block(title, pd.DataFrame(display), legend, notes)
    return Table("table3", title, frame, md, legend + notes)


# ---- synthetic recall (our own tasks; no paper figures) ----------------------------------------
def synthetic_table(runs: list[RunRecord]) -> Table | None:
    rows, display = [], []
    for (variant, scale), group in sorted(_group(runs).items()):
        per_run = [run_scores(r) for r in group]
        vals = {k: _agg([s.get(k) for s in per_run]) for k in (*SYNTHETIC, "synthetic_recall_avg")}
        if not any(n for _, _, n in vals.values()):
            continue
        vl, vl_sd, _ = _agg([s.get("val_loss") for s in per_run])
        rows.append({"variant": variant, "scale": scale, "seeds": len(group), **{k: m for k, (m, _, _) in vals.items()}, **{f"{k}_sd": s for k, (_, s, _) in vals.items()},
                     "val_loss": vl, "val_loss_sd": vl_sd})
        display.append({"variant": variant, "scale": scale, "seeds": len(group), **{label(k) if k in BY_KEY else "avg": fmt(m, sd=s) for k, (m, s, _) in vals.items()},
                        "val loss": fmt(vl, 3, sd=vl_sd)})
    if not rows:
        return None
    title = f"Synthetic recall (ours only: 4-way multiple choice, chance 25%). {_scale_context([r for g in _group(runs).values() for r in g])}."
    md = _markdown_block(title, pd.DataFrame(display), ["accuracy in %; ours = mean ± sample sd over seeds", VAL_LOSS_LEGEND], [])
    return Table("synthetic_recall", title, pd.DataFrame(rows), md, [])


def _markdown_block(title: str, frame: pd.DataFrame, legend: list[str], notes: list[str]) -> str:
    parts = [f"**{title}**", "", to_markdown(frame), ""]
    parts += [f"- {line}" for line in legend]
    parts += [f"- [{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(parts) + "\n"
