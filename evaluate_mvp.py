"""Out-of-sample evaluation of a trained run against simple baselines, with statistics, in ``tt_evaluations``.

``python evaluate_mvp.py --run RUN_ID|latest [--start D] [--end D] [--json]`` loads the run's final PPO checkpoint,
runs it deterministically over the held-out tail (the sessions after the run's training slice, or
``--start/--end``; a slice overlapping the training slice only with ``--in-sample``, and labelled so) through the
same environment, costs and execution timing as training, runs the baselines the same way, computes bootstrap
intervals, paired tests, the SPA test, the deflated Sharpe ratio and a verdict (``evaluation_records``), prints
the tables (or one JSON document), stores one row per policy in ``tt_evaluations`` and writes
``reports/<run_id>/report.html`` (plus PNGs). Definitions: docs/evaluation.md and docs/statistics.md.

``python evaluate_mvp.py --shadow RUN_ID|latest [--json]`` shows the run's forward shadow record (``predict_mvp.py``)
beside the baselines over the same sessions, with the same statistics; it stores and writes nothing.

``python evaluate_mvp.py --group GROUP_ID|latest [--json]`` judges a group of runs (``train_mvp.py --seeds/--folds``)
as one (``group_evaluation``): per fold and seed, over seeds x folds, and over the stitched folds; it stores
``tt_group_evaluations`` / ``tt_group_curves`` and writes ``reports/<group_id>/report.html``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import sys
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

import db_utils
import evaluation_records as records
import group_evaluation
import group_report
import report_mvp
import run_groups
import run_records
import signal_records
from evaluation_records import overlaps_training
from evaluation_stats import BootstrapConfig
from market import Market
from policy_rollout import (
    baseline_policies,
    evaluate_policies,
    final_checkpoint,
    require_native,
    run_agent,
    run_market,
)
from run_records import RunRecord
from settings import REPO_ROOT, CommonSettings, ExitCode, UserError, parse_command, run_cli, setting, writable_folder
from tensortrade_risk_module import EnvConfig


@dataclasses.dataclass(frozen=True)
class EvaluateSettings(CommonSettings):
    """Settings of ``evaluate_mvp.py``."""

    run: str = setting("latest", "run id to evaluate, or 'latest' (the most recently started finished run)")
    start: dt.date | None = setting(None, "first evaluated session (default: the first after the training slice)")
    end: dt.date | None = setting(None, "last evaluated session (default: the last stored bar)")
    in_sample: bool = setting(False, "evaluate a slice overlapping the training slice (labelled in-sample)")
    shadow: str | None = setting(None, "instead, show the forward shadow record of a run (RUN id or 'latest') "
                                 "beside the baselines over its sessions; stores nothing")  # fmt: skip
    group: str | None = setting(None, "instead, evaluate a group of runs (GROUP id or 'latest'): its seeds and "
                                "walk-forward folds, each on its own test sessions, stitched")  # fmt: skip
    out_dir: Path = setting(REPO_ROOT / "reports", "reports are written to OUT_DIR/<run_id>/", env="TT_REPORTS_DIR")
    store: bool = setting(True, "store the metrics and statistics in tt_evaluations")
    json: bool = setting(False, "print one JSON document on stdout; the tables and messages go to stderr")
    bootstrap_reps: int = setting(
        2000, "bootstrap resamples behind every interval, p-value and the SPA test", bounds=(100, None)
    )


def evaluation_slice(run: RunRecord, settings: EvaluateSettings) -> tuple[dt.date, dt.date | None]:
    """(start, end) of the evaluation: flags, else the day after the training slice .. the last stored bar."""
    start = settings.start or (run.slice_end + dt.timedelta(days=1) if run.slice_end else None)
    if start is None:
        raise UserError(f"run {run.run_id} has no slice_end in tt_runs: give --start", ExitCode.USAGE)
    end = settings.end
    if end is not None and end < start:
        raise UserError(f"--end {end} is before the evaluation start {start}")
    return start, end


def check_out_of_sample(run: RunRecord, market: Market, config: EnvConfig, allowed: bool) -> None:
    """Refuse an evaluated slice that shares a session with the training slice, unless ``--in-sample`` asks for it.

    :raise UserError: (REFUSED) naming both slices.
    """
    start, end = (pd.Timestamp(d).date() for d in (market.dates[config.first_decision], market.dates[-1]))
    if allowed or not overlaps_training(run, start, end):
        return
    raise UserError(
        f"the evaluated sessions {start} .. {end} overlap run {run.run_id}'s training slice {run.slice_start} .. "
        f"{run.slice_end}: that is in-sample; evaluate_mvp.py --in-sample evaluates it anyway (labelled "
        "in-sample), or give a --start after the training slice",
        ExitCode.REFUSED,
    )


def evaluate_run(engine: sa.Engine, settings: EvaluateSettings) -> Path:
    """Evaluate ``settings.run`` against the baselines with statistics, store them, write the report and print
    the tables (or, with ``--json``, the document on stdout and the tables on stderr).

    :return: the path of ``report.html``.
    :raise UserError: NOT_FOUND for an unknown run or a missing checkpoint, REFUSED when the data do not fit or
        the slice is in-sample without ``--in-sample``, USAGE for an unreadable checkpoint, FILESYSTEM for a
        reports folder that cannot be written.
    """
    run = run_records.find_run(engine, settings.run, finished_only=True)
    require_native(run)
    checkpoint = final_checkpoint(run)
    start, end = evaluation_slice(run, settings)
    market, env_settings = run_market(engine, run, start, end)
    check_out_of_sample(run, market, EnvConfig(**env_settings), settings.in_sample)
    folder = writable_folder(settings.out_dir / run.run_id, "--out-dir")
    policies = {"agent": run_agent(run, checkpoint, market, env_settings), **baseline_policies(len(market.symbols))}
    evaluation = evaluate_policies(market, env_settings, policies)
    doc = records.evaluation_document(engine, run, evaluation, BootstrapConfig(reps=settings.bootstrap_reps))
    if settings.store:
        records.store_evaluation(engine, run.run_id, evaluation, doc)
    episodes = run_records.read_episodes(engine, run.run_id)
    html = report_mvp.write_report(folder, run, evaluation, episodes, env_settings, doc)
    out = sys.stderr if settings.json else sys.stdout
    report_mvp.print_summary(doc, evaluation, out)
    print(f"report: {html}", file=out)
    if settings.json:
        document = {**doc, "stored": settings.store, "report": str(html)}
        print(json.dumps(document, indent=1, allow_nan=False))
    return html


def show_shadow(engine: sa.Engine, run_id: str, settings: EvaluateSettings) -> None:
    """Print the shadow record of ``run_id`` (or 'latest') beside the baselines over its sessions, with the statistics
    (``signal_records.evaluate_shadow``), or with ``--json`` the document on stdout; nothing is stored.

    :raise UserError: USAGE with ``--start``/``--end``/``--in-sample`` (the record fixes the sessions), NOT_FOUND
        for an unknown run or a run without a shadow record.
    """
    if settings.start or settings.end or settings.in_sample:
        raise UserError("--shadow evaluates the sessions of the shadow record: drop --start, --end, --in-sample")
    run = run_records.find_run(engine, run_id, finished_only=True)
    doc, evaluation = signal_records.evaluate_shadow(engine, run, settings.bootstrap_reps)
    out = sys.stderr if settings.json else sys.stdout
    print(f"shadow record of run {run.run_id} (its stored signals, traded forward) beside the baselines", file=out)
    report_mvp.print_summary(doc, evaluation, out)
    if settings.json:
        print(json.dumps({**doc, "stored": False}, indent=1, allow_nan=False))


def evaluate_group(engine: sa.Engine, group: str, settings: EvaluateSettings) -> Path:
    """Evaluate ``group`` (an id or 'latest'; ``group_evaluation.evaluate_group``), store it, write
    ``OUT_DIR/<group_id>/report.html`` and print the tables (with ``--json``: the document on stdout).

    :raise UserError: USAGE with ``--start``/``--end``/``--in-sample``/``--shadow`` (each member has its own test
        sessions); otherwise as :func:`group_evaluation.evaluate_group` and FILESYSTEM for the reports folder.
    """
    if settings.start or settings.end or settings.in_sample or settings.shadow:
        raise UserError("--group judges each run on its own test sessions: drop --start, --end, --in-sample, --shadow")
    group_id = run_groups.find_group(engine, group).group_id
    folder = writable_folder(settings.out_dir / group_id, "--out-dir")
    config = BootstrapConfig(reps=settings.bootstrap_reps)
    result = group_evaluation.evaluate_group(engine, group_id, config, settings.store)
    html = group_report.write_report(folder, result)
    out = sys.stderr if settings.json else sys.stdout
    group_report.print_summary(result, out)
    print(f"report: {html}", file=out)
    if settings.json:
        print(json.dumps({**result.document, "stored": settings.store, "report": str(html)}, indent=1, allow_nan=False))
    return html


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and evaluate the run (:func:`evaluate_run`), a group (:func:`evaluate_group`) or a run's
    shadow record (:func:`show_shadow`)."""
    settings = parse_command(EvaluateSettings, argv, "Out-of-sample evaluation of a training run against baselines.")
    if settings is None:
        return int(ExitCode.OK)
    announce = functools.partial(print, file=sys.stderr) if settings.json else print
    engine = db_utils.connect(settings, announce=announce)
    if settings.group:
        evaluate_group(engine, settings.group, settings)
    elif settings.shadow:
        show_shadow(engine, settings.shadow, settings)
    else:
        evaluate_run(engine, settings)
    return int(ExitCode.OK)


def cli() -> int:
    """The ``evaluate-mvp`` console script (pyproject.toml): ``main`` with user errors as one line."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
