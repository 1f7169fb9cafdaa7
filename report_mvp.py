"""The evaluation report: PNG charts (matplotlib, Agg) and one self-contained HTML page embedding them.

:func:`write_report` writes ``equity.png``, ``drawdown.png``, ``weights.png``, ``training.png``, ``metrics.png``
and ``report.html`` (the same PNGs inlined as base64 data URIs, so the page can be mailed or archived alone).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, and no GUI backend to pick on a server
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from metrics import Evaluation
from run_records import RunRecord
from tensortrade_risk_module import env_config

COLORS = {"agent": "#111111", "buy_and_hold": "#1f77b4", "monthly_rebalanced": "#2ca02c",
          "inverse_vol": "#ff7f0e", "cash": "#8c8c8c"}  # fmt: skip
LABELS = {"agent": "agent (PPO)", "buy_and_hold": "equal-weight buy & hold",
          "monthly_rebalanced": "equal-weight monthly", "inverse_vol": "inverse-vol, vol-targeted",
          "cash": "cash"}  # fmt: skip
MAX_STACKED = 9  # the weights chart shows the largest holdings; the rest are summed as "other"
# column -> (heading, format); percentages are fractions in the data
METRIC_FORMATS = {
    "total_return": ("Total return", "{:+.1%}"),
    "cagr": ("CAGR", "{:+.1%}"),
    "annual_volatility": ("Volatility", "{:.1%}"),
    "sharpe": ("Sharpe", "{:.2f}"),
    "sortino": ("Sortino", "{:.2f}"),
    "max_drawdown": ("Max drawdown", "{:.1%}"),
    "calmar": ("Calmar", "{:.2f}"),
    "turnover": ("Turnover /yr", "{:.2f}x"),
    "fees_paid": ("Fees", "${:,.0f}"),
    "avg_gross_exposure": ("Avg exposure", "{:.0%}"),
    "days_stopped": ("Days stopped", "{:.0f}"),
    "final_net_worth": ("Final net worth", "${:,.0f}"),
}
SECTIONS = (
    ("equity", "Equity curves", "Cumulative return of every policy over the evaluated sessions, after costs."),
    ("drawdown", "Drawdowns", "Fall from each policy's running peak; the dashed line is the drawdown stop."),
    ("weights", "Agent weights", "End-of-day weights of the agent's portfolio; cash is the rest."),
    ("training", "Training curve", "Reward and end net worth of each training episode (tt_episodes)."),
)


def format_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """The metrics as display strings with readable headings and policy names (undefined values as "n/a")."""

    def cell(value: Any, pattern: str) -> str:
        return "n/a" if value is None or not math.isfinite(float(value)) else pattern.format(float(value))

    table = pd.DataFrame(
        {head: [cell(v, fmt) for v in metrics[col]] for col, (head, fmt) in METRIC_FORMATS.items()},
        index=[LABELS.get(p, p) for p in metrics.index],
    )
    table.index.name = "policy"
    return table


def _label(policy: str, trace: pd.DataFrame) -> str:
    stopped = int(trace["stopped"].sum())
    return LABELS.get(policy, policy) + (f" (stopped {stopped} d)" if stopped else "")


def _style(policy: str) -> dict[str, Any]:
    agent = policy == "agent"
    return {"color": COLORS.get(policy), "linewidth": 2.2 if agent else 1.3, "zorder": 3 if agent else 2}


def _date_axis(ax: plt.Axes, ylabel: str) -> None:
    ax.set_xlabel("Date")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0)


def equity_figure(evaluation: Evaluation) -> Figure:
    """Cumulative return (percent) of every policy; a cross marks where a drawdown stop fired."""
    fig, ax = plt.subplots(figsize=(11, 5.5), layout="constrained")
    for policy, trace in evaluation.traces.items():
        growth = trace["net_worth"] / trace["net_worth"].iloc[0] - 1.0
        ax.plot(growth.index, growth, label=f"{_label(policy, trace)}: {growth.iloc[-1]:+.1%}", **_style(policy))
        if trace["stopped"].any():
            stop = trace.index[trace["stopped"].argmax() - 1]
            ax.plot(stop, growth[stop], "x", color=COLORS.get(policy), markersize=10, markeredgewidth=2.5)
    ax.axhline(0.0, color="black", linewidth=0.8, zorder=1)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    _date_axis(ax, "Cumulative return (after costs)")
    ax.set_title(f"Out-of-sample equity curves, {evaluation.start} to {evaluation.end}")
    ax.legend(loc="upper left", frameon=True)
    return fig


def drawdown_figure(evaluation: Evaluation, stop_level: float) -> Figure:
    """Drawdown from the running peak (percent); the agent's is shaded, the stop level dashed."""
    fig, ax = plt.subplots(figsize=(11, 5.5), layout="constrained")
    for policy, trace in evaluation.traces.items():
        worth = trace["net_worth"]
        drawdown = worth / worth.cummax() - 1.0
        ax.plot(drawdown.index, drawdown, label=f"{_label(policy, trace)}: {drawdown.min():.1%}", **_style(policy))
        if policy == "agent":
            ax.fill_between(drawdown.index, drawdown, 0.0, color=COLORS["agent"], alpha=0.12)
    if stop_level < 1.0:
        ax.axhline(
            -stop_level, color="#d62728", linestyle="--", linewidth=1.2, label=f"drawdown stop ({stop_level:.0%})"
        )
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    _date_axis(ax, "Drawdown from peak")
    ax.set_title("Drawdowns (legend: maximum drawdown)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3, frameon=False)
    return fig


def weights_figure(weights: pd.DataFrame) -> Figure:
    """Stacked area of the agent's end-of-day weights (largest holdings, "other", then cash on top)."""
    held = weights.abs()  # with shorts allowed the stack shows gross exposure per asset
    order = held.mean().sort_values(ascending=False).index
    shown = held[order[:MAX_STACKED]].copy()
    if len(order) > MAX_STACKED:
        shown["other"] = held[order[MAX_STACKED:]].sum(axis=1)
    shown["cash"] = (1.0 - held.sum(axis=1)).clip(lower=0.0)
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]  # tab10's gray is for cash
    colors = [*palette[: min(len(order), MAX_STACKED)], *(["#6f6f6f"] if "other" in shown else []), "#dcdcdc"]
    fig, ax = plt.subplots(figsize=(11, 4.5), layout="constrained")
    ax.stackplot(shown.index, shown.T.to_numpy(), labels=list(shown.columns), colors=colors, linewidth=0)
    ax.set_ylim(0.0, max(1.0, float(shown.sum(axis=1).max())))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    _date_axis(ax, "Share of net worth")
    ax.set_title("Agent portfolio weights (end of day)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, reverse=True)
    return fig


def training_figure(episodes: pd.DataFrame) -> Figure:
    """Episode reward sum and end net worth by training episode (a note when no episode was logged)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True, layout="constrained")
    if episodes.empty:
        top.text(0.5, 0.5, "no episodes logged in tt_episodes for this run", ha="center", va="center")
    else:
        top.plot(episodes["episode"], episodes["reward_sum"], marker=".", color=COLORS["agent"])
        bottom.plot(episodes["episode"], episodes["net_worth_end"], marker=".", color="#1f77b4", label="end")
        bottom.plot(episodes["episode"], episodes["net_worth_start"], "--", color="#8c8c8c", label="start")
        bottom.legend(loc="upper left")
    top.set_ylabel("Episode reward (sum)")
    bottom.set_ylabel("Net worth")
    bottom.set_xlabel("Training episode")
    bottom.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"${v:,.0f}"))
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    top.set_title("Training curve")
    return fig


def metrics_figure(table: pd.DataFrame) -> Figure:
    """The formatted metrics table as an image (for places that cannot show the HTML, e.g. a README)."""
    fig, ax = plt.subplots(figsize=(13, 0.3 * (len(table) + 1) + 0.4))
    ax.axis("off")
    cells = ax.table(cellText=table.to_numpy(), rowLabels=list(table.index), colLabels=list(table.columns),
                     loc="center", cellLoc="right")  # fmt: skip
    cells.auto_set_font_size(False)
    cells.set_fontsize(9)
    cells.auto_set_column_width(range(-1, table.shape[1]))
    cells.scale(1.0, 1.5)
    ax.set_title("Out-of-sample metrics", pad=2)
    return fig


def _save(fig: Figure, path: Path) -> bytes:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.read_bytes()


def _html_page(run: RunRecord, evaluation: Evaluation, table: pd.DataFrame, images: dict[str, bytes],
               env_settings: dict[str, Any]) -> str:  # fmt: skip
    def img(name: str) -> str:
        data = base64.b64encode(images[name]).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{name} chart">'

    symbols = ", ".join(run.symbols)
    sections = "".join(
        f'<section id="{key}"><h2>{title}</h2><p>{note}</p>{img(key)}</section>' for key, title, note in SECTIONS
    )
    settings = html.escape(json.dumps(env_settings, indent=1, default=str))
    sessions = int(evaluation.metrics["sessions"].iloc[0])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation of run {html.escape(run.run_id)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:14px}}th,td{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}}
th:first-child,td:first-child{{text-align:left}}img{{max-width:100%}}p{{color:#555}}</style></head><body>
<h1>Evaluation of run {html.escape(run.run_id)}</h1>
<p>Out of sample: {evaluation.start} to {evaluation.end} ({sessions} sessions after the start); training slice
{run.slice_start} to {run.slice_end}. Symbols: {html.escape(symbols)}.
Every policy runs in the same environment, with the same costs and execution timing;
after a drawdown stop a policy sells everything and stays in cash.
Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.</p>
<section id="metrics"><h2>Metrics</h2>{table.to_html(classes="metrics", border=0, index_names=False)}</section>
{sections}
<section id="settings"><h2>Environment settings</h2><pre>{settings}</pre></section>
</body></html>
"""


def write_report(out_dir: Path, run: RunRecord, evaluation: Evaluation, episodes: pd.DataFrame,
                 env_settings: dict[str, Any]) -> Path:  # fmt: skip
    """Write the PNGs and ``report.html`` into ``out_dir`` (created); return the HTML path.

    :param run: the ``tt_runs`` record; ``episodes``: its ``tt_episodes`` rows; ``env_settings``: the
        environment settings the evaluation used (shown at the end of the page).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    table = format_metrics(evaluation.metrics)
    figures = {
        "equity": equity_figure(evaluation),
        "drawdown": drawdown_figure(evaluation, env_config(**env_settings).max_drawdown),
        "weights": weights_figure(evaluation.weights["agent"]),
        "training": training_figure(episodes),
        "metrics": metrics_figure(table),
    }
    images = {name: _save(fig, out_dir / f"{name}.png") for name, fig in figures.items()}
    path = out_dir / "report.html"
    # written under a temporary name and renamed, so a reader never sees half a page
    partial = path.with_suffix(".html.partial")
    partial.write_text(_html_page(run, evaluation, table, images, env_settings), encoding="utf-8")
    partial.replace(path)
    return path
