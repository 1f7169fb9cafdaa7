"""The evaluation report: PNG charts (matplotlib, Agg) and one self-contained HTML page embedding them.

:func:`write_report` writes ``equity.png``, ``drawdown.png``, ``weights.png``, ``training.png``, ``metrics.png``,
``intervals.png`` and ``report.html`` (the same PNGs inlined as base64 data URIs, so the page can be mailed or
archived alone). The statistics come as the evaluation's JSON document (``evaluation_records.document``); the
same table and notes are printed by ``evaluate_mvp.py``. A group's report (``group_report.py``) is built from the
same tables, charts and :func:`write_page`.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import matplotlib

matplotlib.use("Agg")  # files only: no display, and no GUI backend to pick on a server
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from metrics import Evaluation
from run_records import RunRecord
from settings import unwritable_folder
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
# interval statistic -> (heading, format of the estimate and both bounds)
INTERVAL_FORMATS = {"sharpe": ("Sharpe", "{:.2f}"), "cagr": ("CAGR", "{:+.1%}"),
                    "max_drawdown": ("Max drawdown", "{:.1%}")}  # fmt: skip
# the report pages' shared look (the evaluation's and the group's)
STYLE = """<style>body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:14px}th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%}p{color:#555}
.verdict{font-size:17px;color:#111;border-left:5px solid #444;padding:6px 12px;background:#f4f4f4}
.in-sample{color:#a00;font-weight:bold;border:2px solid #a00;padding:6px 12px}</style>"""
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


def _num(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _p_text(p: float | None) -> str:
    return "n/a" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def interval_text(interval: Mapping[str, float | None], pattern: str, scale: float = 1.0) -> str:
    """The interval as "estimate [low, high]"; "n/a" when undefined, the estimate alone without bounds."""
    estimate, low, high = (None if v is None else v * scale for v in interval.values())
    if low is None or high is None:
        return _num(estimate, pattern)
    return f"{_num(estimate, pattern)} [{pattern.format(low)}, {pattern.format(high)}]"


def format_statistics(doc: Mapping[str, Any]) -> pd.DataFrame:
    """Per policy: Sharpe, CAGR and max drawdown with their intervals, the PSR, and (baselines) the agent's
    paired Sharpe and mean daily return differences against it with their intervals and p-values."""
    rows = {}
    for policy, entry in doc["policies"].items():
        row = {head: interval_text(entry[key], fmt) for key, (head, fmt) in INTERVAL_FORMATS.items()}
        row["PSR"] = _num(entry["psr"], "{:.2f}")
        c = doc["comparisons"].get(policy)
        row["agent - this: Sharpe"] = interval_text(c["sharpe_difference"], "{:+.2f}") if c else ""
        row["p (Sharpe)"] = _p_text(c["sharpe_p_value"]) if c else ""
        row["agent - this: mean bp/day"] = interval_text(c["mean_difference"], "{:+.1f}", 1e4) if c else ""
        row["p (mean)"] = _p_text(c["mean_p_value"]) if c else ""
        rows[LABELS.get(policy, policy)] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "policy"
    return table


def statistics_notes(doc: Mapping[str, Any]) -> list[str]:
    """One line for the SPA test and one for the deflated Sharpe ratio, in words."""
    spa, d = doc["spa"], doc["deflated_sharpe"]
    lines = []
    if spa is not None:
        lines.append(f"SPA test (Hansen 2005), H0 no baseline has a higher mean daily return than the agent: "
                     f"p = {_p_text(spa['consistent'])} (consistent; lower {_p_text(spa['lower'])}, upper "
                     f"{_p_text(spa['upper'])}); highest mean: {spa['best_model']}")  # fmt: skip
    known = len(doc["trials"]["sharpes"])
    if d["n_trials"] == 1:
        spread = "one trial: the deflated Sharpe is the PSR"
    elif d["variance_source"] == "trials":
        spread = f"their Sharpe s.d. {_num(d['trial_sharpe_std'], '{:.2f}')}, from {known} stored evaluations"
    else:
        sessions = doc["period"]["sessions"]
        spread = f"under 2 trial Sharpe ratios stored: their spread assumed that of noise over {sessions} sessions"
    trials = f"{d['n_trials']} trial" + ("s" if d["n_trials"] != 1 else "")
    lines.append(f"deflated Sharpe {_num(d['dsr'], '{:.2f}')}: probability that the agent's true Sharpe (estimate "
                 f"{_num(d['sharpe'], '{:.2f}')}) exceeds {_num(d['expected_max_sharpe'], '{:.2f}')}, the expected "
                 f"best of {trials} without skill over these bars ({spread})")  # fmt: skip
    return lines


def print_summary(doc: dict[str, Any], evaluation: Evaluation, out: TextIO) -> None:
    """The metrics table, the statistics table (intervals, comparisons), the SPA, the DSR and the verdict."""
    period = doc["period"]
    label = " IN-SAMPLE (overlaps the training slice)" if period["in_sample"] else " out of sample"
    print(f"run {doc['run_id']}: {period['start']} .. {period['end']},{label}, {period['sessions']} sessions, "
          f"{len(doc['symbols'])} symbols", file=out)  # fmt: skip
    print(format_metrics(evaluation.metrics).to_string(), file=out)
    boot = doc["bootstrap"]
    print(f"\n{boot['level']:.0%} intervals: {boot['kind']} block bootstrap, {boot['reps']} resamples, mean block "
          f"{boot['block_size']:.1f} sessions; p-values two-sided", file=out)  # fmt: skip
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(format_statistics(doc).to_string(), file=out)
    for line in statistics_notes(doc):
        print(line, file=out)
    print(f"verdict: {doc['verdict']['text']}", file=out)


def _label(policy: str, trace: pd.DataFrame) -> str:
    stopped = int(trace["stopped"].sum())
    return LABELS.get(policy, policy) + (f" (stopped {stopped} d)" if stopped else "")


def line_style(policy: str) -> dict[str, Any]:
    agent = policy == "agent"
    return {"color": COLORS.get(policy), "linewidth": 2.2 if agent else 1.3, "zorder": 3 if agent else 2}


def date_axis(ax: plt.Axes, ylabel: str) -> None:
    ax.set_xlabel("Date")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0)


def equity_figure(evaluation: Evaluation) -> Figure:
    """Cumulative return (percent) of every policy; a cross marks where a drawdown stop fired."""
    fig, ax = plt.subplots(figsize=(11, 5.5), layout="constrained")
    for policy, trace in evaluation.traces.items():
        growth = trace["net_worth"] / trace["net_worth"].iloc[0] - 1.0
        ax.plot(growth.index, growth, label=f"{_label(policy, trace)}: {growth.iloc[-1]:+.1%}", **line_style(policy))
        if trace["stopped"].any():
            stop = trace.index[trace["stopped"].argmax() - 1]
            ax.plot(stop, growth[stop], "x", color=COLORS.get(policy), markersize=10, markeredgewidth=2.5)
    ax.axhline(0.0, color="black", linewidth=0.8, zorder=1)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    date_axis(ax, "Cumulative return (after costs)")
    ax.set_title(f"Out-of-sample equity curves, {evaluation.start} to {evaluation.end}")
    ax.legend(loc="upper left", frameon=True)
    return fig


def drawdown_figure(evaluation: Evaluation, stop_level: float) -> Figure:
    """Drawdown from the running peak (percent); the agent's is shaded, the stop level dashed."""
    fig, ax = plt.subplots(figsize=(11, 5.5), layout="constrained")
    for policy, trace in evaluation.traces.items():
        worth = trace["net_worth"]
        drawdown = worth / worth.cummax() - 1.0
        ax.plot(drawdown.index, drawdown, label=f"{_label(policy, trace)}: {drawdown.min():.1%}", **line_style(policy))
        if policy == "agent":
            ax.fill_between(drawdown.index, drawdown, 0.0, color=COLORS["agent"], alpha=0.12)
    if stop_level < 1.0:
        ax.axhline(
            -stop_level, color="#d62728", linestyle="--", linewidth=1.2, label=f"drawdown stop ({stop_level:.0%})"
        )
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    date_axis(ax, "Drawdown from peak")
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
    palette = [c for i, c in enumerate(matplotlib.color_sequences["tab10"]) if i != 7]  # tab10's gray is for cash
    colors = [*palette[: min(len(order), MAX_STACKED)], *(["#6f6f6f"] if "other" in shown else []), "#dcdcdc"]
    fig, ax = plt.subplots(figsize=(11, 4.5), layout="constrained")
    ax.stackplot(shown.index, shown.T.to_numpy(), labels=list(shown.columns), colors=colors, linewidth=0)
    ax.set_ylim(0.0, max(1.0, float(shown.sum(axis=1).max())))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    date_axis(ax, "Share of net worth")
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


def intervals_figure(doc: Mapping[str, Any]) -> Figure:
    """Point estimates with their bootstrap intervals as error bars: Sharpe, CAGR and max drawdown per policy, and
    the agent's Sharpe difference against each baseline (a bar that does not cross 0 is significant)."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 6), layout="constrained")
    panels = [(key, head, [(p, e[key]) for p, e in doc["policies"].items()]) for key, (head, _) in
              INTERVAL_FORMATS.items()]  # fmt: skip
    differences = [(p, c["sharpe_difference"]) for p, c in doc["comparisons"].items()]
    panels.append(("sharpe_difference", "Agent Sharpe minus baseline's", differences))
    for ax, (key, title, entries) in zip(axes.flat, panels, strict=True):
        for y, (policy, interval) in enumerate(entries):
            estimate, low, high = (math.nan if v is None else v for v in interval.values())
            if math.isnan(estimate):
                ax.text(0.02, y, "n/a", va="center", transform=ax.get_yaxis_transform(), color="#8c8c8c")
                continue
            # a bootstrap interval need not contain the point estimate: no negative error bars
            error = [[max(estimate - low, 0.0)], [max(high - estimate, 0.0)]] if not math.isnan(low) else None
            ax.errorbar(estimate, y, xerr=error, fmt="o", capsize=4, color=COLORS.get(policy, "#111111"))
        ax.set_yticks(range(len(entries)), [LABELS.get(p, p) for p, _ in entries])
        ax.set_ylim(-0.6, len(entries) - 0.4)
        ax.invert_yaxis()
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.grid(True, axis="x", alpha=0.3)
        if key in ("cagr", "max_drawdown"):
            ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_title(title)
    boot = doc["bootstrap"]
    fig.suptitle(f"Estimates with {boot['level']:.0%} {boot['kind']} block-bootstrap intervals "
                 f"({boot['reps']} resamples)")  # fmt: skip
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


def save_figure(fig: Figure, path: Path) -> bytes:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.read_bytes()


def statistics_section(doc: Mapping[str, Any], img: str) -> str:
    table = format_statistics(doc).to_html(classes="statistics", border=0, index_names=False)
    notes = "".join(f"<li>{html.escape(line)}</li>" for line in [*statistics_notes(doc), *doc["verdict"]["details"]])
    return (f'<section id="statistics"><h2>How sure can we be?</h2><p>Bootstrap intervals, the probabilistic Sharpe '
            f"ratio (PSR: probability the true Sharpe is above 0) and the agent's paired differences against each "
            f"baseline (docs/statistics.md).</p>{table}{img}<ul>{notes}</ul></section>")  # fmt: skip


def _html_page(run: RunRecord, evaluation: Evaluation, table: pd.DataFrame, img: Callable[[str], str],
               env_settings: dict[str, Any], doc: Mapping[str, Any]) -> str:  # fmt: skip
    symbols = ", ".join(run.symbols)
    sections = "".join(
        f'<section id="{key}"><h2>{title}</h2><p>{note}</p>{img(key)}</section>' for key, title, note in SECTIONS
    )
    settings = html.escape(json.dumps(env_settings, indent=1, default=str))
    sessions = doc["period"]["sessions"]
    in_sample = doc["period"]["in_sample"]
    kind = "In-sample" if in_sample else "Out-of-sample"
    banner = (f'<p class="in-sample">IN-SAMPLE: the evaluated sessions overlap the training slice {run.slice_start} '
              f"to {run.slice_end}; the run has seen these days, so nothing here is evidence of an edge.</p>"
              if in_sample else "")  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{kind} evaluation of run {html.escape(run.run_id)}</title>
{STYLE}</head><body>
<h1>{kind} evaluation of run {html.escape(run.run_id)}</h1>
{banner}<p class="verdict" id="verdict">{html.escape(doc["verdict"]["text"])}</p>
<p>{kind}: {evaluation.start} to {evaluation.end} ({sessions} sessions after the start); training slice
{run.slice_start} to {run.slice_end}. Symbols: {html.escape(symbols)}.
Every policy runs in the same environment, with the same costs and execution timing;
after a drawdown stop a policy sells everything and stays in cash.
Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.</p>
<section id="metrics"><h2>Metrics</h2>{table.to_html(classes="metrics", border=0, index_names=False)}</section>
{statistics_section(doc, img("intervals"))}
{sections}
<section id="settings"><h2>Environment settings</h2><pre>{settings}</pre></section>
</body></html>
"""


def write_report(out_dir: Path, run: RunRecord, evaluation: Evaluation, episodes: pd.DataFrame,
                 env_settings: dict[str, Any], doc: Mapping[str, Any]) -> Path:  # fmt: skip
    """Write the PNGs and ``report.html`` into ``out_dir`` (created); return the HTML path.

    :param run: the ``tt_runs`` record; ``episodes``: its ``tt_episodes`` rows; ``env_settings``: the
        environment settings the evaluation used (shown at the end of the page); ``doc``: the evaluation's
        statistics document (``evaluation_records.document``).
    :raise UserError: (FILESYSTEM) the folder or a file in it cannot be written (permissions, full disk).
    """
    table = format_metrics(evaluation.metrics)
    figures = {
        "equity": equity_figure(evaluation),
        "drawdown": drawdown_figure(evaluation, env_config(**env_settings).max_drawdown),
        "weights": weights_figure(evaluation.weights["agent"]),
        "training": training_figure(episodes),
        "metrics": metrics_figure(table),
        "intervals": intervals_figure(doc),
    }
    return write_page(out_dir, figures, lambda img: _html_page(run, evaluation, table, img, env_settings, doc))


def write_page(out_dir: Path, figures: Mapping[str, Figure], render: Callable[[Callable[[str], str]], str]) -> Path:
    """Save each figure as ``<name>.png`` in ``out_dir`` (created) and write ``report.html``, the page
    ``render(img)`` returns, where ``img(name)`` is that figure's ``<img>`` tag with the PNG inlined; return its path.

    :raise UserError: (FILESYSTEM) the folder or a file in it cannot be written (permissions, full disk).
    """
    path = out_dir / "report.html"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        images = {name: save_figure(fig, out_dir / f"{name}.png") for name, fig in figures.items()}

        def img(name: str) -> str:
            data = base64.b64encode(images[name]).decode("ascii")
            return f'<img src="data:image/png;base64,{data}" alt="{name} chart">'

        # written under a temporary name and renamed, so a reader never sees half a page
        partial = path.with_suffix(".html.partial")
        partial.write_text(render(img), encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        raise unwritable_folder("--out-dir", out_dir, exc) from None
    finally:
        for fig in figures.values():
            plt.close(fig)  # those a failed write left open
    return path
