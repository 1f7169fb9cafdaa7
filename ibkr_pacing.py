"""The IBKR source's settings and historical-data pacing: IBKR's documented limits as an asyncio throttle.

Kept apart from ``ibkr_source.py`` (and from ib_async, which this module never imports) so the ingest command can
declare the IB settings without loading the client, the rules can be tested with an injected clock, and the
benchmark can compute the minimum time the rules allow (docs/ibkr.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Literal

from settings import setting


@dataclasses.dataclass(frozen=True)
class IbSettings:
    """Connection and pacing settings for the IBKR source."""

    ib_host: str = setting("127.0.0.1", "TWS / IB Gateway host", env="IB_HOST")
    ib_port: int = setting(
        4002, "API port (IB Gateway paper 4002 / live 4001; TWS 7497 / 7496)", env="IB_PORT", bounds=(1, 65535)
    )
    ib_client_id: int = setting(17, "API client id (must not be in use by another API client)", env="IB_CLIENT_ID")
    ib_pacing: Literal["soft", "strict"] = setting(
        "soft",
        "soft: IBKR's soft throttle for daily bars; strict: the documented pacing rules",
        env="IB_PACING",
    )
    ib_max_in_flight: int = setting(4, "requests in flight at once in soft mode (<= 50)", env="IB_MAX_IN_FLIGHT")
    ib_timeout: float = setting(60.0, "seconds to wait for one historical request", env="IB_TIMEOUT")
    ib_max_reconnects: int = setting(5, "reconnects after the gateway drops the connection", env="IB_MAX_RECONNECTS")
    what_to_show: Literal["TRADES", "ADJUSTED_LAST"] = setting(
        "TRADES", "IBKR bar type (ADJUSTED_LAST is only allowed with an empty end date)", env="IB_WHAT_TO_SHOW"
    )
    ib_connect_timeout: float = setting(10.0, "seconds to wait for the API handshake", env="IB_CONNECT_TIMEOUT")
    ib_reconnect_delay: float = setting(
        1.0, "first reconnect delay in seconds (doubles per attempt, capped at 30 s)", env="IB_RECONNECT_DELAY"
    )
    ib_chunk_years: int = setting(
        1, "years per historical request (1 = IBKR's documented maximum for daily bars; up to 10)", env="IB_CHUNK_YEARS"
    )
    ib_overlap_days: int = setting(
        7, "calendar days re-requested before the last stored bar (picks up corrections)", env="IB_OVERLAP_DAYS"
    )
    ib_pacing_scale: float = setting(
        1.0,
        "multiplies IBKR's pacing windows (15 s, 2 s, 10 min); < 1 only against the simulator",
        env="IB_PACING_SCALE",
    )

    def __post_init__(self) -> None:
        if not 1 <= self.ib_max_in_flight <= 50:
            raise ValueError(
                f"--ib-max-in-flight must be 1..50 (IBKR allows 50 open requests), got {self.ib_max_in_flight}"
            )
        if not 1 <= self.ib_chunk_years <= 10:
            raise ValueError(f"--ib-chunk-years must be 1..10, got {self.ib_chunk_years}")
        if self.ib_timeout <= 0 or self.ib_connect_timeout <= 0 or self.ib_pacing_scale <= 0:
            raise ValueError("--ib-timeout, --ib-connect-timeout and --ib-pacing-scale must be > 0")


@dataclasses.dataclass(frozen=True)
class PacingRules:
    """IBKR's historical-data limits (historical_limitations.html); ``scaled`` shrinks the windows for tests."""

    identical_s: float = 15.0  # no identical request within 15 s
    contract_s: float = 2.0  # fewer than 6 requests for one contract/exchange/tick type within 2 s
    contract_max: int = 5
    rate_s: float = 600.0  # at most 60 requests per 10 minutes
    rate_max: int = 60
    max_open: int = 50  # at most 50 open requests

    def scaled(self, scale: float) -> PacingRules:
        """The same limits with every window multiplied by ``scale``."""
        return dataclasses.replace(
            self, identical_s=self.identical_s * scale, contract_s=self.contract_s * scale, rate_s=self.rate_s * scale
        )


def _margin(window: float) -> float:
    """Safety added to a pacing window: the gateway times a request on arrival, not when it was sent."""
    return max(0.02 * window, 0.05)


class Throttle:
    """Admits historical-data requests so they keep IBKR's pacing rules.

    Strict mode keeps every rule; soft mode (daily bars, where IBKR slows replies rather than rejecting) keeps
    the in-flight cap and the identical-request rule. ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        rules: PacingRules,
        strict: bool,
        max_in_flight: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.rules, self.strict, self.clock, self.sleep = rules, strict, clock, sleep
        self.slots = min(max_in_flight, rules.max_open)
        self.log: deque[list[Any]] = deque()  # [sent at, identical key, contract key], oldest first
        self.paused_until = 0.0
        self._open = 0
        self._lock: asyncio.Lock | None = None
        self._freed: asyncio.Condition | None = None

    def delay(self, identical: Hashable, contract: Hashable, now: float) -> float:
        """Seconds to wait before a request with these keys may be sent at ``now`` (0 = send now)."""
        r = self.rules
        while self.log and now - self.log[0][0] >= max(r.rate_s, r.identical_s) + _margin(r.rate_s):
            self.log.popleft()
        wait = self.paused_until - now
        same = [t for t, i, _ in self.log if i == identical]
        if same:
            wait = max(wait, max(same) + r.identical_s + _margin(r.identical_s) - now)
        if self.strict:
            span = r.contract_s + _margin(r.contract_s)
            recent = sorted(t for t, _, c in self.log if c == contract and now - t < span)
            if len(recent) >= r.contract_max:
                wait = max(wait, recent[-r.contract_max] + span - now)
            span = r.rate_s + _margin(r.rate_s)
            in_window = sorted(t for t, _, _ in self.log if now - t < span)
            if len(in_window) >= r.rate_max:
                wait = max(wait, in_window[-r.rate_max] + span - now)
        return max(wait, 0.0)

    async def acquire(self, identical: Hashable, contract: Hashable) -> list[Any]:
        """Wait for a free slot and for the pacing rules, then record the request (first come, first served).

        :return: the log entry, for :meth:`sent_late`.
        """
        if self._lock is None or self._freed is None:
            self._lock, self._freed = asyncio.Lock(), asyncio.Condition()
        async with self._lock:
            async with self._freed:
                await self._freed.wait_for(lambda: self._open < self.slots)
                self._open += 1
            while (wait := self.delay(identical, contract, self.clock())) > 0:
                await self.sleep(wait)
            self.log.append([self.clock(), identical, contract])
            return self.log[-1]

    def sent_late(self, entry: list[Any], seconds: float) -> None:
        """The request of ``entry`` leaves up to ``seconds`` late (queued by the client): count it from then."""
        entry[0] = max(entry[0], self.clock() + seconds)

    async def release(self) -> None:
        """Free the slot of a finished request."""
        assert self._freed is not None
        async with self._freed:
            self._open -= 1
            self._freed.notify()

    def shrink(self) -> bool:
        """Allow one request fewer in flight than are open now (after a 322); False when already at one."""
        if self.slots <= 1:
            return False
        self.slots = max(1, min(self.slots, self._open) - 1)
        return True

    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (after a pacing violation)."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)
