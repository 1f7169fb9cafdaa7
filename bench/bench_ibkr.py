"""Benchmark of the IBKR fetcher: 100 symbols x 20 years of daily bars against the loopback gateway simulator.

The simulator runs in its own process and answers every data request after ``--latency`` seconds (50 ms).

* Soft mode, per requests-in-flight setting: wall time beside two floors measured in the same run:
  the latency bound ``requests x latency / in-flight`` (the issue's goal: within 1.3x) and ib_async's own
  client-side limit of 45 messages/s (``(messages - 45) / 45``), which no fetcher built on ib_async can beat.
* Strict mode: wall time beside the minimum IBKR's rules allow for the same number of paced requests,
  ``floor((requests - 1) / 60) x 10 min``. The pacing windows are shrunk by ``--strict-scale`` (0.005: 10 min ->
  3 s) on both sides so the run takes about two minutes instead of six hours; the ratio is what counts.

The 100 symbols are the sample's 15 ETFs under generated 4-letter names (ZAAA, ZAAB, ...), written to a
temporary CSV.  Run from the repository root: ``.venv/bin/python -m bench.bench_ibkr`` (``--help`` for smaller runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import tempfile
import time
from pathlib import Path

import pandas as pd

from ibkr_pacing import IbSettings, PacingRules
from ibkr_source import fetch_price_history_ibkr
from tools.ib_gateway_sim import SimProcess
from watchlist_loader import FetchStatus, WatchlistEntry

REPO = Path(__file__).resolve().parent.parent

END = dt.date(2025, 9, 26)
IB_MESSAGES_PER_S = 45  # ib_async Client.MaxRequests per RequestsInterval (1 s)


def ticker(k: int) -> str:
    """The k-th generated ticker: ZAAA, ZAAB, ..."""
    return "Z" + "".join(chr(65 + (k // 26**i) % 26) for i in (2, 1, 0))


def write_universe(n: int, years: int, folder: Path) -> tuple[Path, list[str], dt.date]:
    """The sample's ETFs renamed to ``n`` symbols, last ``years`` years; (csv path, symbols, start date)."""
    sample = pd.read_csv(REPO / "data" / "sample_daily_bars.csv.gz")
    start = dt.date(END.year - years, END.month, END.day) + dt.timedelta(days=1)
    sample = sample[pd.to_datetime(sample["date"]).dt.date >= start]
    etfs = sorted(sample["symbol"].unique())
    symbols = [ticker(k) for k in range(n)]
    parts = [sample[sample["symbol"] == etfs[k % len(etfs)]].assign(symbol=s) for k, s in enumerate(symbols)]
    path = folder / "universe.csv"
    pd.concat(parts, ignore_index=True).to_csv(path, index=False)
    return path, symbols, start


def run(csv: Path, symbols: list[str], start: dt.date, latency: float, **settings: object) -> tuple[float, int, int]:
    """One fetch of every symbol; (wall seconds, paced requests, messages sent)."""
    pacing = str(settings.get("ib_pacing", "soft"))
    scale = float(settings.get("ib_pacing_scale", 1.0))  # type: ignore[arg-type]
    sim = SimProcess(csv, latency=latency, pacing="strict" if pacing == "strict" else "off", pacing_scale=scale)
    try:
        ib = IbSettings(ib_port=sim.port, ib_timeout=30.0, **settings)  # type: ignore[arg-type]
        entries = [WatchlistEntry(s) for s in symbols]
        t0 = time.perf_counter()
        results = list(fetch_price_history_ibkr(entries, start, END, {}, ib))
        wall = time.perf_counter() - t0
    finally:
        sim.stop()
    bad = [r.symbol for r in results if r.status is not FetchStatus.STORED]
    if bad:
        raise SystemExit(f"not stored: {bad}")
    hist = sum(r.requests for r in results)
    paced = hist + len(symbols)  # + one head timestamp per symbol
    messages = paced + 2 * len(symbols)  # + contract details and ib_async's head-timestamp cancel
    return wall, paced, messages


def main() -> None:
    """Run the soft-mode sweep and the strict run; print figures beside their bounds."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--symbols", type=int, default=100)
    p.add_argument("--years", type=int, default=20)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--in-flight", default="1,2,4,8", help="soft-mode settings to try ('' = none)")
    p.add_argument("--chunk-years", type=int, default=1, help="years per request (soft and strict)")
    p.add_argument("--strict-scale", type=float, default=0.005, help="pacing windows x this (0 = skip strict)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv, symbols, start = write_universe(a.symbols, a.years, Path(tmp))
        print(f"{a.symbols} symbols x {a.years} years ({start} .. {END}), {a.latency * 1000:.0f} ms reply latency")
        print(f"{'mode':<14}{'wall s':>8}{'requests':>10}{'latency bound':>15}{'ratio':>7}{'45 msg/s floor':>16}"
              f"{'ratio':>7}")  # fmt: skip
        for n in (int(x) for x in a.in_flight.split(",") if x):
            wall, paced, messages = run(
                csv, symbols, start, a.latency, ib_max_in_flight=n, ib_chunk_years=a.chunk_years
            )
            bound, floor = paced * a.latency / n, max(messages - IB_MESSAGES_PER_S, 0) / IB_MESSAGES_PER_S
            label = f"soft x{n} {a.chunk_years} Y"
            print(f"{label:<14}{wall:>8.1f}{paced:>10}{bound:>15.1f}{wall / bound:>7.2f}{floor:>16.1f}"
                  f"{wall / max(bound, floor):>7.2f}")  # fmt: skip
        if a.strict_scale > 0:
            rules = PacingRules().scaled(a.strict_scale)
            wall, paced, _ = run(csv, symbols, start, a.latency, ib_pacing="strict", ib_max_in_flight=8,
                                 ib_pacing_scale=a.strict_scale, ib_chunk_years=a.chunk_years)  # fmt: skip
            minimum = math.floor((paced - 1) / rules.rate_max) * rules.rate_s + a.latency
            print(f"strict: {wall:.1f} s for {paced} paced requests; pacing minimum {minimum:.1f} s "
                  f"({rules.rate_max} per {rules.rate_s:g} s, windows x{a.strict_scale:g}); "
                  f"ratio {wall / minimum:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
