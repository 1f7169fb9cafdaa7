"""The report of a group evaluation (``group_evaluation``): the tables ``evaluate_mvp.py --group`` prints and
``reports/<group_id>/report.html``.

The page: the verdict line at the top; the aggregate over seeds x folds; every fold's Sharpe ratios with their
intervals; the stitched out-of-sample curves with the fold boundaries marked, the agent as its median seed with the
band of all seeds; the metrics and statistics of the stitched curves. Tables, charts and the page itself come from
``report_mvp``, as in a run's report.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from evaluation_records import AGENT
from group_evaluation import GroupEvaluation
from report_mvp import (
    COLORS,
    LABELS,
    STYLE,
    date_axis,
    format_metrics,
    format_statistics,
    interval_text,
    intervals_figure,
    line_style,
    statistics_notes,
    statistics_section,
    write_page,
)


def _shape(doc: Mapping[str, Any]) -> str:
    seeds, folds = len(doc["seeds"]), len(doc["folds"])
    return f"{doc['kind'].replace('_', '-')}, {seeds} seed{'s' * (seeds != 1)} x {folds} fold{'s' * (folds != 1)}"


def _fold_name(entry: Mapping[str, Any]) -> str:
    name = "test" if entry["fold"] is None else f"fold {entry['fold']}"
    return f"{name}: {entry['start']} .. {entry['end']}"


def fold_table(doc: Mapping[str, Any]) -> pd.DataFrame:
    """Sharpe ratio with its block-bootstrap interval: one row per agent seed and baseline, one column per fold."""
    columns = {}
    for entry in doc["folds"]:
        column = {f"agent, seed {seed}": interval_text(i, "{:.2f}") for seed, i in entry["agent_sharpe"].items()}
        column |= {LABELS.get(b, b): interval_text(i, "{:.2f}") for b, i in entry["sharpe"].items()}
        columns[_fold_name(entry)] = column
    return pd.DataFrame(columns)


def aggregate_table(doc: Mapping[str, Any]) -> pd.DataFrame:
    """Per policy: IQM of its per-fold Sharpe ratios (the agent over seeds x folds) with the stratified-bootstrap
    interval, the agent's probability of improvement over it, and its stitched Sharpe (the agent: median seed)."""
    aggregate, stitched = doc["aggregate"], doc["stitched"]["policies"]
    rows = {}
    for policy, iqm in aggregate["iqm_sharpe"].items():
        better = aggregate["improvement"].get(policy)
        rows[LABELS.get(policy, policy)] = {
            "IQM Sharpe": interval_text(iqm, "{:.2f}"),
            "P(agent > this)": interval_text(better, "{:.2f}") if better else "",
            "stitched Sharpe": interval_text(stitched[policy]["sharpe"], "{:.2f}"),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def seeds_line(doc: Mapping[str, Any]) -> str:
    """Every seed's stitched Sharpe, the median seed (the agent of the stitched statistics) marked."""
    stitched = doc["stitched"]
    chosen = str(stitched["agent_seed"])
    values = ", ".join(f"seed {seed}{' (median)' * (seed == chosen)} {sharpe:.2f}"
                       for seed, sharpe in stitched["seed_sharpes"].items())  # fmt: skip
    return f"stitched Sharpe by seed: {values}"


def print_summary(result: GroupEvaluation, out: TextIO) -> None:
    """The verdict, the per-fold and aggregate tables, each seed's stitched Sharpe, the stitched metrics and
    statistics, and the verdict again."""
    doc = result.document
    period = doc["stitched"]["period"]
    print(f"group {doc['group_id']} ({_shape(doc)}): {', '.join(doc['symbols'])}; out of sample {period['start']} .. "
          f"{period['end']}, {period['sessions']} stitched sessions", file=out)  # fmt: skip
    print(f"verdict: {doc['verdict']['text']}", file=out)
    boot = doc["bootstrap"]
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(f"\nSharpe per fold ({boot['level']:.0%} {boot['kind']} block-bootstrap intervals):", file=out)
        print(fold_table(doc).to_string(), file=out)
        print("\nover seeds x folds (IQM: stratified bootstrap; P: probability of improvement, Agarwal et al. 2021):",
              file=out)  # fmt: skip
        print(aggregate_table(doc).to_string(), file=out)
        print(seeds_line(doc), file=out)
        print("\nstitched curves (each fold's segment chained in date order; the agent: the median seed):", file=out)
        print(format_metrics(result.stitched.metrics).to_string(), file=out)
        print(format_statistics(doc["stitched"]).to_string(), file=out)
    for line in statistics_notes(doc["stitched"]):
        print(line, file=out)
    print(f"verdict: {doc['verdict']['text']}", file=out)


def equity_figure(result: GroupEvaluation) -> Figure:
    """Stitched cumulative returns; the agent is the median seed, the band spans every seed's curve, dotted lines
    mark where a fold starts."""
    fig, ax = plt.subplots(figsize=(11, 5.5), layout="constrained")
    start = result.stitched.traces[AGENT]["net_worth"].iloc[0]
    seeds = pd.DataFrame({seed: c["net_worth"] for (p, seed), c in result.curves.items() if p == AGENT}) / start - 1.0
    ax.fill_between(seeds.index, seeds.min(axis=1), seeds.max(axis=1), color=COLORS[AGENT], alpha=0.15, linewidth=0,
                    label=f"agent, {seeds.shape[1]} seeds: min .. max")  # fmt: skip
    for policy, trace in result.stitched.traces.items():
        growth = trace["net_worth"] / trace["net_worth"].iloc[0] - 1.0
        name = LABELS.get(policy, policy) + (f", median seed {result.document['stitched']['agent_seed']}"
                                             if policy == AGENT else "")  # fmt: skip
        ax.plot(growth.index, growth, label=f"{name}: {growth.iloc[-1]:+.1%}", **line_style(policy))
    for k, fold in enumerate(result.folds[1:]):
        ax.axvline(pd.Timestamp(fold.baselines.start), color="#555555", linestyle=":", linewidth=1.2,
                   label="fold boundary" if k == 0 else None)  # fmt: skip
    ax.axhline(0.0, color="black", linewidth=0.8, zorder=1)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    date_axis(ax, "Cumulative return (after costs)")
    ax.set_title(f"Stitched out-of-sample equity curves, {result.stitched.start} to {result.stitched.end}")
    ax.legend(loc="upper left", frameon=True)
    return fig


def _error_bar(interval: Mapping[str, float | None]) -> tuple[float, float]:
    """Lengths below and above the estimate (none negative: a bootstrap interval need not contain the estimate)."""
    estimate = interval["estimate"]
    assert estimate is not None
    low, high = (estimate if v is None else v for v in (interval["low"], interval["high"]))
    return max(estimate - low, 0.0), max(high - estimate, 0.0)


def folds_figure(doc: Mapping[str, Any]) -> Figure:
    """Every fold's Sharpe ratios with their intervals: one point per agent seed, one per baseline; the dashed line
    is the agent's IQM over seeds x folds."""
    fig, ax = plt.subplots(figsize=(11, 5), layout="constrained")
    folds = doc["folds"]
    series: dict[tuple[str, str | None], list[tuple[int, Any]]] = {}
    for policy, seed in [(AGENT, str(seed)) for seed in doc["seeds"]] + [(b, None) for b in folds[0]["sharpe"]]:
        defined = [(k, e["agent_sharpe"][seed] if seed else e["sharpe"][policy]) for k, e in enumerate(folds)]
        if shown := [(k, i) for k, i in defined if i["estimate"] is not None]:
            series[policy, seed] = shown  # cash, its Sharpe undefined on every fold, is left out
    width = 0.8 / len(series)
    for j, ((policy, seed), shown) in enumerate(series.items()):
        xs = [k - 0.4 + width * (j + 0.5) for k, _ in shown]
        ys = [i["estimate"] for _, i in shown]
        errors = list(zip(*(_error_bar(i) for _, i in shown), strict=True))
        label = LABELS.get(policy, policy) if seed in (None, str(doc["seeds"][0])) else None
        if seed is not None and label:
            label += ", one point per seed"
        ax.errorbar(xs, ys, yerr=errors, fmt="o", capsize=3, color=COLORS.get(policy), label=label)
    ax.axhline(doc["objective"], color=COLORS[AGENT], linestyle="--", linewidth=1, label="agent IQM")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(folds)), [_fold_name(entry).replace(": ", "\n") for entry in folds])
    ax.set_ylabel("Sharpe ratio (annualized)")
    ax.grid(True, axis="y", alpha=0.3)
    boot = doc["bootstrap"]
    ax.set_title(f"Sharpe ratio per fold with {boot['level']:.0%} block-bootstrap intervals")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


def _members_table(doc: Mapping[str, Any]) -> str:
    table = pd.DataFrame(doc["members"]).rename(columns=lambda c: c.replace("_", " "))
    return table.to_html(classes="members", border=0, index=False, na_rep="")


def _page(result: GroupEvaluation, img: Callable[[str], str]) -> str:
    doc = result.document
    gid, period = html.escape(doc["group_id"]), doc["stitched"]["period"]
    table = format_metrics(result.stitched.metrics).to_html(classes="metrics", border=0, index_names=False)
    study = f" Optuna study {html.escape(doc['study'])}, trial {doc['trial']}." if doc["study"] else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Out-of-sample evaluation of group {gid}</title>
{STYLE}</head><body>
<h1>Out-of-sample evaluation of group {gid} ({_shape(doc)})</h1>
<p class="verdict" id="verdict">{html.escape(doc["verdict"]["text"])}</p>
<p>Every member run is judged on its own test sessions, which it never trained on; the baselines run once per fold,
in the same environment, with the same costs and execution timing. The stitched curves chain the folds in date order
({period["start"]} to {period["end"]}, {period["sessions"]} sessions after the start). Symbols:
{html.escape(", ".join(doc["symbols"]))}.{study} Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.</p>
<section id="aggregate"><h2>Over seeds and folds</h2><p>Interquartile mean (IQM) of the per-fold Sharpe ratios with
its stratified-bootstrap interval, and the probability that the agent beats each baseline on a fold (docs/statistics.md,
"Seeds").</p>{aggregate_table(doc).to_html(classes="aggregate", border=0)}<p>{html.escape(seeds_line(doc))}</p>
{img("folds")}{fold_table(doc).to_html(classes="folds", border=0)}</section>
<section id="equity"><h2>Stitched equity curves</h2><p>Each fold's out-of-sample segment, chained: every fold starts
from the net worth the previous one ended with.</p>{img("equity")}</section>
<section id="metrics"><h2>Metrics of the stitched curves</h2>{table}</section>
{statistics_section(doc["stitched"], img("intervals"))}
<section id="members"><h2>Member runs</h2>{_members_table(doc)}</section>
</body></html>
"""


def write_report(out_dir: Path, result: GroupEvaluation) -> Path:
    """Write the PNGs and ``report.html`` into ``out_dir`` (created); return the HTML path.

    :raise UserError: (FILESYSTEM) the folder or a file in it cannot be written (permissions, full disk).
    """
    figures = {"equity": equity_figure(result), "folds": folds_figure(result.document),
               "intervals": intervals_figure(result.document["stitched"])}  # fmt: skip
    return write_page(out_dir, figures, lambda img: _page(result, img))
