"""Loopback IB Gateway simulator: enough of the TWS API socket protocol (server version 178) for ib_async.

A dev and test tool, not a data source. It serves daily bars from a long-format CSV (the bundled sample by
default) to the real ib_async client, and can misbehave on demand: unknown symbols (200), no data (162),
pacing violations on IBKR's documented limits (162), slow replies, a disconnect in the middle of a request,
a gateway restart after N requests, a duplicate client id (326) and more than ``max_open`` open requests (322).
The wire format follows docs/ib_gateway_protocol.md (shared brief); every request runs in its own task so a
cancel overtakes a slow reply.

By hand, from the repository root (``-m`` puts the root on the import path, for ``watchlist_loader``)::

    python -m tools.ib_gateway_sim --csv data/sample_daily_bars.csv.gz --port 4002
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd

from watchlist_loader import canonical_symbol, to_source_symbol

SERVER_VERSION = 178
EXCHANGE_TZ = ZoneInfo("America/New_York")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CSV = REPO / "data" / "sample_daily_bars.csv.gz"
HMDS = "Historical Market Data Service error message:"
PACING_TEXT = HMDS + "Historical data request pacing violation"
LIMIT_TEXT = "Error processing request:-'wd' : cause - Only 50 simultaneous API historical data requests allowed."
NO_ZONE_TEXT = "Warning: You submitted request with date-time attributes without explicit time zone."
log = logging.getLogger("ib_gateway_sim")


@dataclasses.dataclass
class SimConfig:
    """What the simulator serves and how it misbehaves (all switchable per test)."""

    csv: Path = DEFAULT_CSV
    today: dt.date | None = None  # last day served and the meaning of an empty end date; default: last CSV date
    latency: float = 0.0  # seconds before each head-timestamp / historical reply
    pacing: str = "off"  # "off" or "strict" (162 on IBKR's documented limits)
    pacing_scale: float = 1.0  # multiplies the pacing windows (15 s, 2 s, 600 s) so tests run in seconds
    no_data: frozenset[str] = frozenset()  # known contracts without bars: 162 "HMDS query returned no data"
    disconnect_at: frozenset[int] = frozenset()  # close the socket on receiving the Nth historical request
    restart_after: int | None = None  # gateway restart (all sockets closed, port down) after N hist. requests
    restart_downtime: float = 0.2  # seconds the port stays closed during a restart
    duplicate_client_ids: frozenset[int] = frozenset()  # START_API with these ids gets 326 and a close
    max_open: int = 50  # open historical requests allowed at once; the next gets 322
    primary_exchange: str = "ARCA"


@dataclasses.dataclass
class SimStats:
    """What the simulator saw, for assertions."""

    requests: list[tuple[str, str, str, str, str]] = dataclasses.field(default_factory=list)  # kind, sym, ...
    pacing_violations: int = 0
    max_open_seen: int = 0
    connections: int = 0

    def historical(self, symbol: str | None = None) -> list[tuple[str, str, str, str, str]]:
        """Historical-data requests (optionally for one IB symbol): (kind, symbol, end, duration, what)."""
        return [r for r in self.requests if r[0] == "hist" and (symbol is None or r[1] == symbol)]


class BarStore:
    """Daily bars per IB symbol, pre-formatted as HISTORICAL_DATA fields (TRADES and ADJUSTED_LAST)."""

    def __init__(self, csv: Path) -> None:
        frame = pd.read_csv(csv, dtype={"symbol": str})
        frame["date"] = pd.to_datetime(frame["date"]).dt.date
        self.dates: dict[str, list[dt.date]] = {}
        self.fields: dict[tuple[str, str], list[str]] = {}
        for symbol, group in frame.sort_values(["symbol", "date"]).groupby("symbol", sort=False):
            name = to_source_symbol(canonical_symbol(str(symbol)), "ibkr")  # IB notation: BRK.B -> BRK B
            self.dates[name] = list(group["date"])
            self.fields[(name, "TRADES")] = _format_bars(group, None)
            if "adj_close" in group and group["adj_close"].notna().all():
                self.fields[(name, "ADJUSTED_LAST")] = _format_bars(group, group["adj_close"] / group["close"])
        self.last_date = max(d[-1] for d in self.dates.values())


def _format_bars(group: pd.DataFrame, factor: pd.Series | None) -> list[str]:
    """One NUL-joined ``date, o, h, l, c, volume, wap, barCount`` run per bar (-1 for unknown wap/count).

    With ``factor`` (adj_close / close) the bars are ADJUSTED_LAST: every price scaled, close = adj_close.
    """
    if factor is None:
        o, h, lo, c = (group[k] for k in ("open", "high", "low", "close"))
    else:
        o, h, lo = ((group[k] * factor).round(6) for k in ("open", "high", "low"))
        c = group["adj_close"]
    days = [d.strftime("%Y%m%d") for d in group["date"]]
    vol = group["volume"].astype("int64").tolist()
    columns = zip(days, o.tolist(), h.tolist(), lo.tolist(), c.tolist(), vol, strict=True)
    return [f"{d}\0{a!r}\0{b!r}\0{e!r}\0{f!r}\0{v}\0-1\0-1\0" for d, a, b, e, f, v in columns]


class Pacer:
    """IBKR's documented historical-data pacing rules, as a rolling log of requests (one per session)."""

    def __init__(self, scale: float) -> None:
        self.identical_s, self.contract_s, self.rate_s = 15.0 * scale, 2.0 * scale, 600.0 * scale
        self.log: deque[tuple[float, tuple[str, ...], tuple[str, ...]]] = deque()

    def violates(self, identical: tuple[str, ...], contract: tuple[str, ...]) -> bool:
        """Record a request; True when it breaks a rule (violations still count toward the windows)."""
        now = time.monotonic()
        while self.log and now - self.log[0][0] > self.rate_s:
            self.log.popleft()
        same = any(i == identical and now - t < self.identical_s for t, i, _ in self.log)
        burst = sum(1 for t, _, c in self.log if c == contract and now - t < self.contract_s) >= 5
        too_many = len(self.log) >= 60
        self.log.append((now, identical, contract))
        return same or burst or too_many


def parse_end(text: str, today: dt.date) -> tuple[dt.date, bool]:
    """Exchange date of an endDateTime string, and whether warning 2174 (no time zone) applies."""
    if not text:
        return today, False
    if "-" in text[:9]:  # YYYYMMDD-HH:MM:SS is UTC
        stamp = dt.datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=dt.UTC)
        return stamp.astimezone(EXCHANGE_TZ).date(), False
    parts = text.split()
    stamp = dt.datetime.strptime(" ".join(parts[:2]), "%Y%m%d %H:%M:%S")
    if len(parts) < 3:
        return stamp.date(), True
    zone = dt.UTC if parts[2] in ("UTC", "GMT") else ZoneInfo(parts[2])
    return stamp.replace(tzinfo=zone).astimezone(EXCHANGE_TZ).date(), False


def window_start(end: dt.date, duration: str) -> dt.date:
    """First day (inclusive) covered by ``duration`` ending at ``end``; ValueError with IBKR's 321 cause text."""
    count, unit = duration.split()
    n = int(count)
    if unit == "D" and n > 365:
        raise ValueError("Historical data requests for durations longer than 365 days must be made in years.")
    if unit == "Y":
        return (pd.Timestamp(end) - pd.DateOffset(years=n)).date() + dt.timedelta(days=1)
    if unit == "M":
        return (pd.Timestamp(end) - pd.DateOffset(months=n)).date() + dt.timedelta(days=1)
    days = {"W": 7, "D": 1}.get(unit)
    if days is None:
        raise ValueError(f"Invalid duration string: {duration}")
    return end - dt.timedelta(days=n * days - 1)


def frame(*fields: object) -> bytes:
    """One length-prefixed message of NUL-terminated fields."""
    payload = "".join(f"{f}\0" for f in fields).encode()
    return struct.pack(">I", len(payload)) + payload


def frame_raw(payload: str) -> bytes:
    """A length-prefixed message whose payload is already NUL-joined."""
    data = payload.encode()
    return struct.pack(">I", len(data)) + data


class Gateway:
    """The simulated gateway: accepts API clients on 127.0.0.1 and serves the bar store."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.store = BarStore(config.csv)
        self.today = config.today or self.store.last_date
        self.stats = SimStats()
        self.sessions: set[Session] = set()
        self.hist_count = 0
        self.restarted = False
        self.host, self.port = "127.0.0.1", 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 = any free port); return the port."""
        self._server = await asyncio.start_server(self._accept, host, port)
        self.host, self.port = host, self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop every client."""
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.close()

    async def restart(self) -> None:
        """Simulate a gateway restart: drop every client, keep the port closed for a while, listen again."""
        log.info("restart: port down for %.2f s", self.config.restart_downtime)
        await self.stop()
        await asyncio.sleep(self.config.restart_downtime)
        self._server = await asyncio.start_server(self._accept, self.host, self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        session = Session(self, reader, writer)
        self.sessions.add(session)
        try:
            await session.serve()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.sessions.discard(session)
            session.close()


class Session:
    """One API client connection."""

    def __init__(self, gateway: Gateway, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.gw, self.cfg, self.reader, self.writer = gateway, gateway.config, reader, writer
        self.client_id: int | None = None
        self.open: dict[int, asyncio.Task[None]] = {}
        self.pacer = Pacer(gateway.config.pacing_scale)
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[None, None, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def close(self) -> None:
        """Close the socket and abandon open requests."""
        for task in self.open.values():
            task.cancel()
        self.writer.close()

    def send(self, *fields: object) -> None:
        """Send one message (writes never interleave: one event loop, synchronous write)."""
        if not self.writer.is_closing():
            self.writer.write(frame(*fields))

    def error(self, req_id: int, code: int, text: str) -> None:
        """ERR_MSG at version 178 (the empty advancedOrderRejectJson field is mandatory)."""
        self.send(4, 2, req_id, code, text, "")

    async def _read(self) -> list[str]:
        (size,) = struct.unpack(">I", await self.reader.readexactly(4))
        return (await self.reader.readexactly(size)).decode(errors="backslashreplace").split("\0")

    async def serve(self) -> None:
        """Handshake, then dispatch every message in its own task so cancels overtake slow replies."""
        if await self.reader.readexactly(4) != b"API\0":
            return
        (size,) = struct.unpack(">I", await self.reader.readexactly(4))
        low, high = (await self.reader.readexactly(size)).decode().split()[0].lstrip("v").split("..")
        version = min(SERVER_VERSION, int(high))
        if version < int(low):
            return
        self.send(version, dt.datetime.now().strftime("%Y%m%d %H:%M:%S US/Eastern"))
        while True:
            fields = await self._read()
            if fields[0] == "71" and not self._start_api(int(fields[2])):
                return
            self.dispatch(fields)

    def _start_api(self, client_id: int) -> bool:
        in_use = {s.client_id for s in self.gw.sessions if s is not self}
        if client_id in in_use or client_id in self.cfg.duplicate_client_ids:
            self.error(-1, 326, "Unable to connect as the client id is already in use. Retry with a unique client id.")
            return False
        self.client_id = client_id
        self.send(15, 1, "DU1234567")
        self.send(9, 1, 1)
        for code, text in (
            (2104, "Market data farm connection is OK:usfarm"),
            (2106, "HMDS data farm connection is OK:ushmds"),
            (2158, "Sec-def data farm connection is OK:secdefnj"),
        ):
            self.error(-1, code, text)
        return True

    def dispatch(self, f: list[str]) -> None:
        """Answer one client message."""
        replies = {"61": (62, 1), "5": (53, 1), "99": (102,), "17": (15, 1, "DU1234567")}
        msg = f[0]
        if msg in replies:
            self.send(*replies[msg])
        elif msg == "6":
            self.send(54, 1, f[4])
        elif msg in ("76", "7", "62"):
            self.send({"76": 74, "7": 55, "62": 64}[msg], 1, f[2])
        elif msg == "49":
            self.send(49, 1, int(time.time()))
        elif msg == "9":
            self.contract_details(f)
        elif msg == "87":
            self.spawn(self.head_timestamp(f))
        elif msg == "20":
            req_id = int(f[1])
            self.open[req_id] = asyncio.ensure_future(self.historical(f))
        elif msg == "25":
            self.cancel_historical(int(f[2]))

    def known(self, symbol: str) -> bool:
        """Whether a contract exists (with or without bars)."""
        return symbol in self.gw.store.dates or symbol in self.cfg.no_data

    def contract_details(self, f: list[str]) -> None:
        """CONTRACT_DATA + CONTRACT_DATA_END, or only 200 for an unknown stock (as the real gateway does)."""
        req_id, symbol, sec_type, currency = int(f[2]), f[4], f[5], f[12]
        self.gw.stats.requests.append(("contract", symbol, "", "", ""))
        if not self.known(symbol) or sec_type not in ("STK", "") or currency not in ("USD", ""):
            self.error(req_id, 200, "No security definition has been found for the request")
            return
        con_id = zlib.crc32(symbol.encode()) % 900_000_000 + 1000
        primary = self.cfg.primary_exchange
        self.send(
            10, req_id, symbol, "STK", "", 0.0, "", "SMART", "USD", symbol, primary, primary, con_id, 0.01, "",
            "ACTIVETIM,AD,LMT,MKT,STP", f"SMART,{primary},NYSE", 1, 0, f"{symbol} simulated", primary, "",
            "", "", "", "US/Eastern", "", "", "", "", 0, 1, "", "", "26,26", "", "ETF", 0.0001, 0.0001, 100,
        )  # fmt: skip
        self.send(52, 1, req_id)

    def paced_out(self, req_id: int, identical: tuple[str, ...], contract: tuple[str, ...]) -> bool:
        """Strict pacing: answer 162 and return True when the request breaks a rule."""
        if self.cfg.pacing == "strict" and self.pacer.violates(identical, contract):
            self.gw.stats.pacing_violations += 1
            self.error(req_id, 162, PACING_TEXT)
            return True
        return False

    async def head_timestamp(self, f: list[str]) -> None:
        """HEAD_TIMESTAMP: 09:30 New York on the first served date (formatDate 2: epoch seconds)."""
        req_id, symbol, what, format_date = int(f[1]), f[3], f[16], f[17]
        self.gw.stats.requests.append(("head", symbol, "", "", what))
        if self.paced_out(req_id, ("87", *f[2:]), (f[2] or symbol, f[9], what)):
            return
        await asyncio.sleep(self.cfg.latency)
        if not self.known(symbol):
            self.error(req_id, 200, "No security definition has been found for the request")
        elif symbol not in self.gw.store.dates:
            self.error(req_id, 162, f"{HMDS}No head time stamp: {symbol}")
        else:
            first = dt.datetime.combine(self.gw.store.dates[symbol][0], dt.time(9, 30), EXCHANGE_TZ)
            stamp = str(int(first.timestamp())) if format_date == "2" else first.strftime("%Y%m%d %H:%M:%S US/Eastern")
            self.send(88, req_id, stamp)

    async def historical(self, f: list[str]) -> None:
        """HISTORICAL_DATA in one message, after validation (321), the open limit (322) and pacing (162)."""
        req_id, symbol, end, bar_size, duration, what = int(f[1]), f[3], f[15], f[16], f[17], f[19]
        gw = self.gw
        gw.hist_count += 1
        gw.stats.requests.append(("hist", symbol, end, duration, what))
        try:
            if gw.hist_count in self.cfg.disconnect_at:
                log.info("disconnect in the middle of request %d", gw.hist_count)
                self.close()
                return
            if self.cfg.restart_after == gw.hist_count and not gw.restarted:
                gw.restarted = True
                self.spawn(gw.restart())
                return
            await self._serve_bars(req_id, symbol, end, bar_size, duration, what, f)
        finally:
            self.open.pop(req_id, None)

    async def _serve_bars(self, req_id: int, symbol: str, end: str, bar_size: str, duration: str, what: str,
                          f: list[str]) -> None:  # fmt: skip
        cause = "Error validating request.-'bS' : cause - "
        if bar_size != "1 day":
            self.error(req_id, 321, cause + "Historical data bar size setting is invalid. Legal ones are: 1 day")
            return
        if what == "ADJUSTED_LAST" and end:
            self.error(req_id, 321, cause + "End date not supported with adjusted last")
            return
        try:
            last, no_zone = parse_end(end, self.gw.today)
            first = window_start(last, duration)
        except ValueError as exc:
            self.error(req_id, 321, cause + str(exc))
            return
        if len(self.open) > self.cfg.max_open:
            self.error(req_id, 322, LIMIT_TEXT)
            return
        self.gw.stats.max_open_seen = max(self.gw.stats.max_open_seen, len(self.open))
        if self.paced_out(req_id, tuple(f[2:]), (f[2] or symbol, f[9], what)):
            return
        if no_zone:
            self.error(req_id, 2174, NO_ZONE_TEXT)
        await asyncio.sleep(self.cfg.latency)
        if not self.known(symbol):
            self.error(req_id, 200, "No security definition has been found for the request")
            return
        dates = self.gw.store.dates.get(symbol, [])
        last = min(last, self.gw.today)
        lo, hi = bisect_left(dates, first), bisect_right(dates, last)
        bars = self.gw.store.fields.get((symbol, what), [])[lo:hi]
        if not bars:
            label = "Trades" if what == "TRADES" else what
            self.error(req_id, 162, f"{HMDS}HMDS query returned no data: {symbol}@SMART {label}")
            return
        span = f"{first:%Y%m%d} 09:30:00 US/Eastern\0{last:%Y%m%d} 16:00:00 US/Eastern"
        self.writer.write(frame_raw(f"17\0{req_id}\0{span}\0{len(bars)}\0" + "".join(bars)))

    def cancel_historical(self, req_id: int) -> None:
        """162 'query cancelled' for an open request, 366 otherwise."""
        task = self.open.pop(req_id, None)
        self.gw.stats.requests.append(("cancel", "", str(req_id), "", "open" if task else "unknown"))
        if task is None:
            self.error(req_id, 366, f"No historical data query found for ticker id:{req_id}")
            return
        task.cancel()
        self.error(req_id, 162, f"{HMDS}API historical data query cancelled: {req_id}")


class SimThread:
    """Run a :class:`Gateway` in a background thread with its own event loop (for tests and benchmarks)."""

    def __init__(self, config: SimConfig, port: int = 0) -> None:
        self.gateway = Gateway(config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ib-gateway-sim", daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.gateway.start(port=port), self.loop).result(10)

    @property
    def stats(self) -> SimStats:
        """Requests and violations seen so far."""
        return self.gateway.stats

    def call(self, fn: object, *args: object) -> None:
        """Run ``fn(*args)`` on the simulator's loop (e.g. to change ``gateway.today`` between runs)."""
        self.loop.call_soon_threadsafe(fn, *args)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Stop the server and the thread."""
        asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class SimProcess:
    """Run the simulator in its own process: for timing-sensitive tests and benchmarks, where a simulator
    thread would compete with the client for the GIL and see requests late and bunched together.

    ``options`` are command-line flags without dashes, e.g. ``SimProcess(pacing="strict", pacing_scale=0.005)``.
    """

    def __init__(self, csv: Path = DEFAULT_CSV, **options: object) -> None:
        args = [sys.executable, "-m", "tools.ib_gateway_sim", "--csv", str(Path(csv).resolve()), "--port", "0"]
        for name, value in options.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        banner = self.proc.stdout.readline()  # "IB Gateway simulator on HOST:PORT, N symbols"
        match = re.search(r":(\d+),", banner)
        if match is None:
            self.proc.kill()
            raise RuntimeError(f"simulator did not start: {banner!r}")
        self.port = int(match.group(1))

    def stop(self) -> dict[str, int]:
        """Stop the simulator; return what it saw (historical requests, pacing violations, ...)."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Command line: serve a CSV on a port until Ctrl-C (or SIGTERM, which prints what it saw as JSON)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="long-format CSV (gzip allowed)")
    p.add_argument("--port", type=int, default=4002)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--today", type=dt.date.fromisoformat, default=None, help="last served day (default: last in CSV)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each data reply")
    p.add_argument("--pacing", choices=("off", "strict"), default="off")
    p.add_argument("--pacing-scale", type=float, default=1.0, help="multiply IBKR's pacing windows")
    p.add_argument("--no-data", nargs="*", default=(), help="symbols that exist but have no bars (162)")
    p.add_argument("--disconnect-at", type=int, nargs="*", default=(), help="drop the socket on these hist requests")
    p.add_argument("--restart-after", type=int, default=None, help="restart the gateway after N hist requests")
    p.add_argument("--duplicate-client-id", type=int, nargs="*", default=(), help="client ids answered with 326")
    p.add_argument("--max-open", type=int, default=50, help="open historical requests before 322")
    a = p.parse_args(argv)
    config = SimConfig(
        csv=a.csv, today=a.today, latency=a.latency, pacing=a.pacing, pacing_scale=a.pacing_scale,
        no_data=frozenset(a.no_data), disconnect_at=frozenset(a.disconnect_at), restart_after=a.restart_after,
        duplicate_client_ids=frozenset(a.duplicate_client_id), max_open=a.max_open,
    )  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def serve() -> None:
        gateway = Gateway(config)
        port = await gateway.start(a.host, a.port)
        print(f"IB Gateway simulator on {a.host}:{port}, {len(gateway.store.dates)} symbols", flush=True)
        stopped = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
        await stopped.wait()
        await gateway.stop()
        stats = gateway.stats
        summary = {"historical": len(stats.historical()), "pacing_violations": stats.pacing_violations,
                   "max_open_seen": stats.max_open_seen, "connections": stats.connections}  # fmt: skip
        print(json.dumps(summary), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
