"""IBKR's pacing rules (the throttle, with an injected clock) and the IB settings' checks."""

from __future__ import annotations

import asyncio

import pytest

from ibkr_pacing import IbSettings, PacingRules, Throttle


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ib_max_in_flight": 0}, "--ib-max-in-flight must be 1..50"),
        ({"ib_max_in_flight": 51}, "--ib-max-in-flight must be 1..50"),
        ({"ib_chunk_years": 11}, "--ib-chunk-years must be 1..10"),
        ({"ib_timeout": 0.0}, "must be > 0"),
        ({"ib_pacing_scale": -1.0}, "must be > 0"),
    ],
)
def test_ib_settings_refuse_values_ibkr_does_not_allow(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IbSettings(**fields)  # type: ignore[arg-type]


def test_throttle_rules_with_an_injected_clock() -> None:
    rules = PacingRules()
    strict = Throttle(rules, strict=True, max_in_flight=50)
    strict.log.extend([0.0, ("req", i), "C"] for i in range(5))
    # each window gets a safety margin of max(2 %, 50 ms): the gateway times requests on arrival
    assert strict.delay(("req", 99), "C", 1.0) == pytest.approx(2.05 - 1.0)  # 6th for one contract within 2 s
    assert strict.delay(("req", 99), "other", 1.0) == 0.0
    assert strict.delay(("req", 0), "other", 1.0) == pytest.approx(15.3 - 1.0)  # identical within 15 s
    strict.log.clear()
    strict.log.extend([float(i), ("req", i), f"C{i}"] for i in range(60))
    assert strict.delay("new", "new", 100.0) == pytest.approx(612.0 - 100.0)  # 61st within 10 minutes
    soft = Throttle(rules, strict=False, max_in_flight=4)
    soft.log.extend(strict.log)
    assert soft.delay("new", "new", 100.0) == 0.0  # soft mode: no rate cap
    assert soft.delay(("req", 59), "x", 60.0) == pytest.approx(59 + 15.3 - 60.0)  # but never an identical one
    paused = Throttle(rules, strict=False, max_in_flight=4, clock=lambda: 100.0)
    paused.pause(30.0)  # after a pacing violation everything waits
    assert paused.delay("new", "new", 100.0) == pytest.approx(30.0)


def test_throttle_caps_requests_in_flight() -> None:
    async def run() -> int:
        throttle = Throttle(PacingRules(), strict=False, max_in_flight=3)
        peak = current = 0

        async def one(i: int) -> None:
            nonlocal peak, current
            await throttle.acquire(i, i)
            current += 1
            peak = max(peak, current)
            await asyncio.sleep(0.01)
            current -= 1
            await throttle.release()

        await asyncio.gather(*(one(i) for i in range(12)))
        return peak

    assert asyncio.run(run()) == 3
