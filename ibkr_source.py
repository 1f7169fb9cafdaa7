"""IBKR daily bars through ib_async: paced, resumable, honest about failures (docs/ibkr.md).

:func:`fetch_price_history_ibkr` is the ``--source ibkr`` fetcher. It owns a private asyncio loop and drives
ib_async on it until the next symbol completes, so several requests can be in flight while the pipeline
stores each yielded result. Every symbol ends as stored, no data, unknown symbol or failed (with IBKR's code);
pacing violations back off and retry; a dropped connection is re-established with backoff and the run continues
from the first chunk not yet received.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pandas as pd
from ib_async import IB, Contract
from ib_async.ib import StartupFetchNONE
from ib_async.wrapper import RequestError

from ibkr_pacing import IbSettings, PacingRules, Throttle
from ibkr_parsing import (
    bars_frame,
    combine_chunks,
    exchange_date,
    is_no_data,
    is_pacing_violation,
    matching_details,
    next_chunk_end,
    plan_request,
)
from settings import ExitCode, UserError
from watchlist_loader import FetchStatus, SymbolFetch, WatchlistEntry, empty_bars, to_source_symbol

T = TypeVar("T")
log = logging.getLogger("ibkr_source")
_TOO_MANY_OPEN = 322  # "Only 50 simultaneous API historical data requests" (other clients count too)
_MAX_PACING_RETRIES = 8
_MAX_TIMEOUT_ATTEMPTS = 2
_RECONNECT_CAP_S = 30.0


def _no_data(exc: RequestError) -> bool:
    """Whether an IB error means "no bars" rather than a failure."""
    return is_no_data(exc.code, exc.message)


@dataclasses.dataclass
class _Symbol:
    """Progress of one symbol; kept across reconnects so the fetch resumes from the first missing chunk."""

    entry: WatchlistEntry
    contract: Contract | None = None
    tz: str = "US/Eastern"
    first: dt.date | None = None  # first day wanted (start, head timestamp or incremental overlap)
    chunk_end: dt.date | None = None  # end of the next chunk to request
    frames: list[pd.DataFrame] = dataclasses.field(default_factory=list)
    requests: int = 0
    metadata: dict[str, object] = dataclasses.field(default_factory=dict)
    no_data: RequestError | None = None


class _Fetcher:
    """One run: the IB connection, the throttle, the worker tasks and the queue of finished symbols."""

    def __init__(self, settings: IbSettings, start: dt.date, end: dt.date, since: dict[str, dt.date]) -> None:
        self.settings, self.start, self.end, self.since = settings, start, end, since
        self.ib = IB()
        self.ib.RaiseRequestErrors = True  # errors come back as RequestError(code, message), never as []
        rules = PacingRules().scaled(settings.ib_pacing_scale)
        self.rules = rules
        self.throttle = Throttle(rules, settings.ib_pacing == "strict", settings.ib_max_in_flight)
        self.results: asyncio.Queue[SymbolFetch | BaseException] = asyncio.Queue()
        self.ready = asyncio.Event()
        self.fatal: UserError | None = None  # reconnects exhausted
        self.failure: BaseException | None = None  # what a worker stopped on, raised once the queue is empty
        self.closing = False
        self.workers: list[asyncio.Task[None]] = []
        self.reconnecting: asyncio.Task[None] | None = None

    # connection -------------------------------------------------------------------------------------------
    async def connect_once(self) -> None:
        """Connect read-only without startup fetches; a 326 (client id in use) fails at once, not on timeout."""
        in_use: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def on_error(req_id: int, code: int, text: str, contract: object) -> None:
            if code == 326 and not in_use.done():
                in_use.set_result(text)

        self.ib.errorEvent += on_error
        s = self.settings
        connecting = asyncio.ensure_future(
            self.ib.connectAsync(
                s.ib_host, s.ib_port, s.ib_client_id, timeout=s.ib_connect_timeout, readonly=True,
                fetchFields=StartupFetchNONE,
            )
        )  # fmt: skip
        try:
            await asyncio.wait({connecting, in_use}, return_when=asyncio.FIRST_COMPLETED)
            if in_use.done():
                connecting.cancel()  # connectAsync disconnects on its way out
                raise ConnectionRefusedError(f"IB error 326: client id {s.ib_client_id} is already in use")
            await connecting
        finally:
            self.ib.errorEvent -= on_error
            with contextlib.suppress(BaseException):
                await connecting
        self.ready.set()

    def unavailable(self, exc: BaseException, what: str) -> UserError:
        """The SOURCE_UNAVAILABLE error: what failed, and how to start the gateway or pick another source."""
        s = self.settings
        if isinstance(exc, TimeoutError):
            reason = f"no API handshake within {s.ib_connect_timeout:g} s (API disabled, or client id in use?)"
        else:
            reason = str(exc) or type(exc).__name__
        hint = (
            "Start TWS or IB Gateway, log in, and enable the API (Configure > Settings > API > Settings: "
            f"'Enable ActiveX and Socket Clients', socket port {s.ib_port}; use a client id no other API client "
            "uses: --ib-client-id / IB_CLIENT_ID), or pick another --source (sample, csv, yfinance)."
        )
        return UserError(f"IBKR source: {what} TWS / IB Gateway at {s.ib_host}:{s.ib_port}: {reason}. {hint}",
                         ExitCode.SOURCE_UNAVAILABLE)  # fmt: skip

    def on_disconnected(self) -> None:
        """Schedule a reconnect (never blocks inside ib_async's callback)."""
        if self.closing or self.fatal is not None or self.ib.isConnected():
            return
        self.ready.clear()
        if self.reconnecting is None or self.reconnecting.done():
            self.reconnecting = asyncio.ensure_future(self.reconnect())

    async def reconnect(self) -> None:
        """Reconnect with exponential backoff; after ``ib_max_reconnects`` failures the run stops."""
        delay, attempts = self.settings.ib_reconnect_delay, self.settings.ib_max_reconnects
        last: BaseException = ConnectionError("connection lost")
        for attempt in range(1, attempts + 1):
            log.warning("IBKR: connection lost; reconnect %d of %d in %.1f s", attempt, attempts, delay)
            await asyncio.sleep(delay)
            try:
                await self.connect_once()
                log.warning("IBKR: reconnected; resuming from the first chunk not yet received")
                return
            except (OSError, TimeoutError, ConnectionError) as exc:
                last = exc
            delay = min(delay * 2, _RECONNECT_CAP_S)
        self.fatal = self.unavailable(last, f"lost the connection; {attempts} reconnects failed to reach")
        self.ready.set()  # wake the workers so they see the fatal error

    async def call(self, kind: str, sym: _Symbol, make: Callable[[], Awaitable[T]], keys: tuple | None = None) -> T:
        """Send one request; wait through reconnects, keep pacing (``keys``), retry violations and drops.

        :raise RequestError: an IB error that is the symbol's answer (200, 162 no data, ...).
        """
        pacing_retries = timeouts = 0
        while True:
            await self.ready.wait()
            if self.fatal is not None:
                raise self.fatal
            entry = await self.throttle.acquire(*keys) if keys is not None else None
            if kind == "hist":
                sym.requests += 1
            started = time.monotonic()
            try:
                task = asyncio.ensure_future(make())
                await asyncio.sleep(0)  # the request is handed to ib_async now
                if entry is not None and self.ib.client._msgQ:
                    # ib_async queued it (its 45 messages/s limit): the gateway will time it up to 1 s later
                    self.throttle.sent_late(entry, self.ib.client.RequestsInterval)
                return await asyncio.wait_for(task, self.settings.ib_timeout + 5)
            except RequestError as exc:
                pacing = is_pacing_violation(exc.code, exc.message)
                if exc.code == _TOO_MANY_OPEN and self.throttle.shrink():
                    continue  # the gateway's open-request limit is lower than ours: keep fewer in flight
                if not (pacing or exc.code == _TOO_MANY_OPEN) or pacing_retries >= _MAX_PACING_RETRIES:
                    raise
                pacing_retries += 1
                # wait past the identical-request window, doubling, so the retry is not itself a violation
                self.throttle.pause(min(self.rules.identical_s * 2 ** (pacing_retries - 1), self.rules.rate_s))
            except ConnectionError:
                self.on_disconnected()
            except TimeoutError:
                timeouts += 1
                if timeouts >= _MAX_TIMEOUT_ATTEMPTS:
                    elapsed = time.monotonic() - started
                    raise RequestError(-1, 0, f"{kind} request timed out after {elapsed:.0f} s") from None
            finally:
                if keys is not None:
                    await self.throttle.release()

    # one symbol -------------------------------------------------------------------------------------------
    async def qualify(self, sym: _Symbol) -> None:
        """Contract details (conId, primary exchange, long name, time zone) for the watchlist entry."""
        e = sym.entry
        wanted = Contract(
            symbol=to_source_symbol(e.symbol, "ibkr"), secType=e.sec_type or "STK", exchange=e.exchange or "SMART",
            currency=e.currency or "USD", primaryExchange=e.primary_exchange,
        )  # fmt: skip
        details = await self.call("contract", sym, lambda: self.ib.reqContractDetailsAsync(wanted))
        matches = matching_details(details, wanted.secType, e.primary_exchange)
        if len(matches) != 1:
            raise RequestError(-1, 200, f"{len(matches)} contracts match {wanted.symbol} {wanted.secType} "
                                        f"{wanted.currency}; set primary_exchange in the watchlist")  # fmt: skip
        found = matches[0]
        contract = found.contract
        assert contract is not None
        contract.exchange = wanted.exchange  # keep SMART routing
        sym.contract, sym.tz = contract, found.timeZoneId or "US/Eastern"
        sym.metadata.update(
            ib_con_id=contract.conId, primary_exchange=contract.primaryExchange, exchange=contract.exchange,
            currency=contract.currency, long_name=found.longName,
        )  # fmt: skip

    async def head_date(self, sym: _Symbol) -> dt.date:
        """First day IBKR has bars for (the head timestamp, in the exchange's time zone)."""
        c, what = sym.contract, self.settings.what_to_show
        assert c is not None
        keys = (("head", c.conId, what), (c.conId, c.exchange, what))
        stamp = await self.call("head", sym, lambda: self.ib.reqHeadTimeStampAsync(c, what, True, 2), keys)
        return exchange_date(stamp, sym.tz)

    async def chunk(self, sym: _Symbol) -> None:
        """Request the next chunk and move ``chunk_end`` before the earliest bar received."""
        c, what = sym.contract, self.settings.what_to_show
        assert c is not None and sym.chunk_end is not None and sym.first is not None
        end_text, duration = plan_request(
            sym.first, sym.chunk_end, sym.tz, what, self.settings.ib_chunk_years, dt.date.today()
        )

        async def request() -> list[Any]:
            bars = await self.ib.reqHistoricalDataAsync(
                c, end_text, duration, "1 day", what, True, formatDate=1, timeout=self.settings.ib_timeout
            )
            if len(bars) == 0:  # with RaiseRequestErrors, an empty list only means ib_async timed out
                raise TimeoutError
            return list(bars)

        keys = (("hist", c.conId, end_text, duration, what), (c.conId, c.exchange, what))
        try:
            bars = await self.call("hist", sym, request, keys)
        except RequestError as exc:
            if not _no_data(exc):
                raise
            sym.no_data, bars = exc, []
        if bars:
            sym.frames.append(bars_frame(sym.entry.symbol, bars, what))
        earliest = min(b.date for b in bars) if bars else None
        sym.chunk_end = next_chunk_end(sym.first, sym.chunk_end, duration, what, earliest)

    async def fetch_symbol(self, sym: _Symbol) -> SymbolFetch:
        """Qualify, clamp by the head timestamp (or the last stored bar), then fetch chunks until done."""
        symbol = sym.entry.symbol
        try:
            if sym.contract is None:
                await self.qualify(sym)
            if sym.first is None:
                last = self.since.get(symbol)
                if last is not None:  # incremental: one small request from just before the last stored bar
                    sym.first = max(self.start, last - dt.timedelta(days=self.settings.ib_overlap_days))
                else:
                    head = await self.head_date(sym)
                    sym.metadata["first_available_date"] = head
                    sym.first = max(self.start, head)
                    if head > self.end:
                        raise RequestError(-1, 162, f"no data: IBKR's first bar is on {head}, after --end {self.end}")
                sym.chunk_end = self.end
            while sym.chunk_end is not None and sym.first is not None and sym.chunk_end >= sym.first:
                await self.chunk(sym)
        except RequestError as exc:
            status = FetchStatus.UNKNOWN_SYMBOL if exc.code == 200 else FetchStatus.FAILED
            if _no_data(exc):
                status = FetchStatus.NO_DATA
            # a failed symbol returns no bars: storing only the newest chunks would hide the older gap from
            # the next incremental run
            return self.result(sym, status, empty_bars(), exc)
        assert sym.first is not None
        bars = combine_chunks(sym.frames, sym.first, self.end)
        if bars.empty:
            return self.result(sym, FetchStatus.NO_DATA, bars, sym.no_data)
        return self.result(sym, FetchStatus.STORED, bars, None)

    def result(self, sym: _Symbol, status: FetchStatus, bars: pd.DataFrame, exc: RequestError | None) -> SymbolFetch:
        """The SymbolFetch for a finished symbol."""
        first = sym.metadata.get("first_available_date")
        return SymbolFetch(
            symbol=sym.entry.symbol, status=status, bars=bars, error=exc.message if exc else None,
            error_code=exc.code if exc and exc.code else None, requests=sym.requests, metadata=dict(sym.metadata),
            first_available_date=first if isinstance(first, dt.date) else None,
        )  # fmt: skip

    # the run -----------------------------------------------------------------------------------------------
    async def open(self, entries: list[WatchlistEntry]) -> None:
        """Connect (or raise SOURCE_UNAVAILABLE) and start the workers."""
        try:
            await self.connect_once()
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise self.unavailable(exc, "cannot connect to") from None
        self.ib.disconnectedEvent += self.on_disconnected
        todo = deque(_Symbol(e) for e in entries)
        for _ in range(min(len(entries), self.throttle.slots)):
            self.workers.append(asyncio.ensure_future(self.work(todo)))

    async def work(self, todo: deque[_Symbol]) -> None:
        """Fetch symbols one after another and queue each result; a fatal error is queued for the caller."""
        try:
            while todo:
                await self.results.put(await self.fetch_symbol(todo.popleft()))
        except Exception as exc:  # the caller re-raises it after yielding what is already done
            await self.results.put(exc)

    async def next(self) -> SymbolFetch:
        """The next finished symbol; after a fatal error, the symbols that finished before it, then the error."""
        if self.failure is None:
            item = await self.results.get()
            if isinstance(item, SymbolFetch):
                return item
            self.failure = item
        while not self.results.empty():
            item = self.results.get_nowait()
            if isinstance(item, SymbolFetch):
                return item
        raise self.failure

    async def close(self) -> None:
        """Stop the workers and disconnect."""
        self.closing = True
        for task in [*self.workers, self.reconnecting]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        with contextlib.suppress(ConnectionError):  # ib_async raises when already disconnected
            self.ib.disconnect()


def fetch_price_history_ibkr(
    entries: list[WatchlistEntry], start: dt.date, end: dt.date, since: dict[str, dt.date], settings: Any
) -> Iterator[SymbolFetch]:
    """Daily bars from TWS / IB Gateway, one :class:`SymbolFetch` per entry as each symbol completes.

    :param entries: watchlist entries (canonical symbols; converted to IB notation here).
    :param start: first day wanted (clamped by IBKR's head timestamp).
    :param end: last day wanted.
    :param since: last stored bar date per symbol; those symbols get one small request from
        ``since - ib_overlap_days`` (no head timestamp).
    :param settings: any object with the :class:`IbSettings` fields.
    :raise UserError: ``SOURCE_UNAVAILABLE`` when the gateway cannot be reached, or the connection is lost and
        every reconnect fails (after yielding every symbol already finished).
    """
    if not entries:
        return
    ib_settings = IbSettings(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(IbSettings)})
    loop = asyncio.new_event_loop()
    fetcher: _Fetcher | None = None
    try:
        fetcher = loop.run_until_complete(_make_fetcher(ib_settings, start, end, since))
        loop.run_until_complete(fetcher.open(entries))
        for _ in entries:
            yield loop.run_until_complete(fetcher.next())
    finally:
        if fetcher is not None:
            loop.run_until_complete(fetcher.close())
        loop.close()


async def _make_fetcher(settings: IbSettings, start: dt.date, end: dt.date, since: dict[str, dt.date]) -> _Fetcher:
    """Build the fetcher inside the loop (ib_async and asyncio primitives bind to the running loop)."""
    return _Fetcher(settings, start, end, since)
