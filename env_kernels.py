"""The trading environment's math as compiled (numba) kernels: one copy, used by every caller.

Row functions (``*_row``) work on one environment: 1-D per-asset vectors and float scalars, writing vector
results into ``out`` arrays so a step allocates nothing. The fused step (:func:`step_row`, :func:`step_rows`)
composes them in TensorTrade's order (action scheme -> portfolio -> reward -> stopper -> observer). The
element-wise functions (:func:`log_return`, :func:`update_drawdown`, ...) are compiled for floats inside the
kernels and for arrays of any shape when called from Python. :mod:`tensortrade_risk_module` exposes the
array-in/array-out public functions as thin wrappers over these kernels. Formulas: docs/environment.md.

Compiled on first use and cached on disk (``cache=True``, in ``__pycache__``); nothing is compiled at import.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# A buy scaled to fit the cash keeps this relative margin so float rounding cannot overdraw the account.
FUNDING_MARGIN = 1e-12

# Columns of the per-environment state record: account, drawdown, differential-Sharpe moments, step results.
CASH, NET_WORTH, PEAK, DRAWDOWN, DSR_A, DSR_B, REWARD, FEES, TURNOVER = range(9)
STATE_WIDTH = 9

# Entries of the float64 parameter vector of the fused step (built by tensortrade_risk_module.kernel_params).
(P_TARGET_VOL, P_VOL_FLOOR, P_MAX_WEIGHT, P_MAX_GROSS, P_BAND, P_FEE_FLAT, P_COMMISSION, P_DOWNSIDE,
 P_DRAWDOWN_PENALTY, P_DSR_ETA, P_MAX_DRAWDOWN, P_ALLOW_SHORT, P_PORTFOLIO_VOL, P_DSR, P_COV_WINDOW,
 P_WINDOW_SIZE, P_FILL_OFFSET, P_ANNUALIZE, P_SOFTMAX_GAIN) = range(19)  # fmt: skip
N_PARAMS = 19

# Step modes: map an action, trade to explicit target weights, or hold.
ACTION, TARGET, HOLD = 0, 1, 2

Num = float | np.ndarray  # the element-wise functions take floats (inside kernels) or arrays (from Python)
Market = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # scale, returns, fill, close, features


@njit(cache=True)
def dot(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of a·b in index order (a loop: BLAS calls cost more than they save on a few assets)."""
    total = 0.0
    for j in range(a.shape[0]):
        total += a[j] * b[j]
    return total


# ------------------------------------------------------------------------------------ element-wise (any shape)
@njit(cache=True)
def log_return(net_worth: Num, previous: Num) -> Num:
    """log(V_t / V_{t-1}); the ratio is floored at 1e-12 so a wipe-out (possible only with shorts) is finite."""
    return np.log(np.maximum(net_worth / previous, 1e-12))


@njit(cache=True)
def update_drawdown(net_worth: Num, peak: Num) -> tuple[Num, Num]:
    """New peak max(peak, V) and drawdown 1 - V / peak."""
    peak = np.maximum(peak, net_worth)
    return peak, 1.0 - net_worth / peak


@njit(cache=True)
def differential_sharpe(ret: Num, a: Num, b: Num, eta: float) -> tuple[Num, Num, Num]:
    """Differential Sharpe ratio (Moody & Saffell): D = (B·ΔA - A·ΔB/2) / (B - A²)^(3/2).

    :param ret: step returns R_t; ``a``, ``b``: moving first and second moments before the step.
    :return: D_t (0 while B - A² <= 1e-12), updated A, updated B.
    """
    d_a = ret - a
    d_b = ret * ret - b
    variance = b - a * a
    # where(variance > 1e-12, x, 0) written as a product so one body serves floats and arrays
    dsr = (variance > 1e-12) * ((b * d_a - 0.5 * a * d_b) / np.maximum(np.abs(variance), 1e-12) ** 1.5)
    return dsr, a + eta * d_a, b + eta * d_b


@njit(cache=True)
def risk_aware_reward(
    base: Num, ret: Num, drawdown_before: Num, drawdown_after: Num, downside_penalty: float, drawdown_penalty: float
) -> Num:
    """base - downside_penalty·min(ret, 0)² - drawdown_penalty·max(dd_after² - dd_before², 0).

    Both penalties are second order, like the variance term of a utility: first-order penalties on losses would
    cost ~0.4σ a day and make cash beat any portfolio with a daily Sharpe ratio below ~0.4.
    """
    downside = np.minimum(ret, 0.0)
    deepening = np.maximum(drawdown_after * drawdown_after - drawdown_before * drawdown_before, 0.0)
    return base - downside_penalty * downside * downside - drawdown_penalty * deepening


@njit(cache=True)
def scheme_reward(
    ret: Num, drawdown_before: Num, drawdown_after: Num, a: Num, b: Num, dsr: bool, eta: float,
    downside_penalty: float, drawdown_penalty: float,
) -> tuple[Num, Num, Num]:  # fmt: skip
    """The reward scheme: base = ret (or the differential Sharpe ratio when ``dsr``), then the penalties.

    :return: reward, updated moment A, updated moment B (unchanged unless ``dsr``).
    """
    base = ret
    if dsr:
        base, a, b = differential_sharpe(ret, a, b, eta)
    return risk_aware_reward(base, ret, drawdown_before, drawdown_after, downside_penalty, drawdown_penalty), a, b


@njit(cache=True)
def drawdown_stop(drawdown: Num, max_drawdown: float) -> bool | np.ndarray:
    """True where the drawdown from the peak has reached ``max_drawdown`` (inclusive)."""
    return drawdown >= max_drawdown


# -------------------------------------------------------------------------------------- one environment row
@njit(cache=True)
def raw_weights_row(action: np.ndarray, allow_short: bool, out: np.ndarray) -> None:
    """``out`` = long-only max(a, 0), else a; divided by max(sum |.|, 1) so the gross is at most 1."""
    gross = 0.0
    for j in range(action.shape[0]):
        r = action[j]
        if not allow_short and r < 0.0:
            r = 0.0
        out[j] = r
        gross += abs(r)
    gross = max(gross, 1.0)
    for j in range(action.shape[0]):
        out[j] = out[j] / gross


@njit(cache=True)
def softmax_weights_row(action: np.ndarray, gain: float, out: np.ndarray) -> None:
    """``out`` = softmax of gain·a over the assets and a cash logit of 0 (the assets' shares; cash takes the rest).

    The zero action is therefore an equal split over the assets and cash, not all cash.
    """
    top = 0.0  # the cash logit
    for j in range(action.shape[0]):
        top = max(top, gain * action[j])
    total = math.exp(-top)
    for j in range(action.shape[0]):
        out[j] = math.exp(gain * action[j] - top)
        total += out[j]
    for j in range(action.shape[0]):
        out[j] = out[j] / total


@njit(cache=True)
def portfolio_vol_row(raw: np.ndarray, returns: np.ndarray, annualize: float) -> float:
    """Annualized std (ddof 1) of the portfolio returns (``returns`` times ``raw``) over a ``(W, N)`` block of days."""
    days = returns.shape[0]
    total = 0.0
    for d in range(days):
        total += dot(returns[d], raw)
    mean = total / days
    squares = 0.0
    for d in range(days):
        squares += (dot(returns[d], raw) - mean) ** 2
    return math.sqrt(squares / (days - 1)) * annualize


@njit(cache=True)
def cap_weights_row(weights: np.ndarray, max_weight: float, max_gross: float, out: np.ndarray) -> None:
    """``out`` = clip(w, -max_weight, max_weight), scaled down so sum |.| <= max_gross (``out`` may be ``weights``)."""
    gross = 0.0
    for j in range(weights.shape[0]):
        capped = min(max(weights[j], -max_weight), max_weight)
        out[j] = capped
        gross += abs(capped)
    divisor = max(gross * (1.0 / max_gross), 1.0)
    for j in range(weights.shape[0]):
        out[j] = out[j] / divisor


@njit(cache=True)
def action_weights_row(action: np.ndarray, params: np.ndarray, out: np.ndarray) -> None:
    """``out`` = the action map's raw weights: softmax (``P_SOFTMAX_GAIN`` > 0) or clip."""
    if params[P_SOFTMAX_GAIN] > 0.0:
        softmax_weights_row(action, params[P_SOFTMAX_GAIN], out)
    else:
        raw_weights_row(action, params[P_ALLOW_SHORT] != 0.0, out)


@njit(cache=True)
def portfolio_scale_row(raw: np.ndarray, t: int, returns: np.ndarray, params: np.ndarray) -> float:
    """``vol_mode=portfolio``: target_vol / max(vol, vol_floor), vol that of the raw portfolio over the
    ``cov_window`` days up to the close of ``t``."""
    vol = portfolio_vol_row(raw, returns[t - int(params[P_COV_WINDOW]) + 1 : t + 1], params[P_ANNUALIZE])
    return params[P_TARGET_VOL] / max(vol, params[P_VOL_FLOOR])


@njit(cache=True)
def targets_row(
    action: np.ndarray, t: int, scale: np.ndarray, returns: np.ndarray, params: np.ndarray, out: np.ndarray
) -> None:
    """Vol-targeted, capped target weights at decision date ``t`` into ``out`` (data up to the close of t).

    Steps: raw weights (:func:`action_weights_row`), times the per-asset ``scale[t]`` or the portfolio's
    (:func:`portfolio_scale_row`), capped (:func:`cap_weights_row`).
    """
    action_weights_row(action, params, out)
    if params[P_PORTFOLIO_VOL] != 0.0:
        factor = portfolio_scale_row(out, t, returns, params)
        for j in range(out.shape[0]):
            out[j] = out[j] * factor
    else:
        for j in range(out.shape[0]):
            out[j] = out[j] * scale[t, j]
    cap_weights_row(out, params[P_MAX_WEIGHT], params[P_MAX_GROSS], out)


@njit(cache=True)
def rebalance_row(
    quantity: np.ndarray, cash: float, target: np.ndarray, price: np.ndarray, band: float, fee_flat: float,
    commission: float, out: np.ndarray,
) -> tuple[float, float, float]:  # fmt: skip
    """Trade towards ``target`` weights at ``price`` (rules: ``tensortrade_risk_module.rebalance``).

    :param out: receives the new quantities.
    :return: new cash, fees, turnover.
    """
    n = quantity.shape[0]
    net_worth = cash + dot(quantity, price)
    threshold = max(band * net_worth, fee_flat / (1.0 - commission))
    spent = traded = buys = sells = 0.0
    trades = 0
    for j in range(n):
        goal = target[j] * net_worth / price[j]
        delta = goal * price[j] - quantity[j] * price[j]
        if abs(delta) > threshold:
            out[j] = goal  # exact target quantity, so selling out leaves exactly 0
            spent, traded, trades = spent + delta, traded + abs(delta), trades + 1
            buys, sells = buys + max(delta, 0.0), sells + max(-delta, 0.0)
        else:
            out[j] = quantity[j]
    fees = fee_flat * trades + commission * traded
    new_cash = cash - spent - fees
    if new_cash < 0.0:  # scale every buy by one k so that cash + sells - buys - fees = 0 (k = 0 drops them)
        available = cash + sells * (1.0 - commission) - fee_flat * trades
        k = min(max(available / (buys * (1.0 + commission)) * (1.0 - FUNDING_MARGIN), 0.0), 1.0)
        spent = traded = 0.0
        trades = 0
        for j in range(n):
            if out[j] != quantity[j]:
                delta = target[j] * net_worth / price[j] * price[j] - quantity[j] * price[j]
                if delta > 0.0:
                    delta *= k
                    out[j] = quantity[j] + delta / price[j]
                if delta != 0.0:
                    spent, traded, trades = spent + delta, traded + abs(delta), trades + 1
        fees = fee_flat * trades + commission * traded
        new_cash = cash - spent - fees
    return new_cash, fees, traded / net_worth


@njit(cache=True)
def mark_to_market_row(quantity: np.ndarray, cash: float, price: np.ndarray, out: np.ndarray) -> float:
    """Net worth cash + sum(q·p), returned; weights q·p / net worth into ``out``."""
    net_worth = cash + dot(quantity, price)
    for j in range(quantity.shape[0]):
        out[j] = quantity[j] * price[j] / net_worth
    return net_worth


@njit(cache=True)
def observe_row(
    features: np.ndarray, t: int, window_size: int, weights: np.ndarray, state: np.ndarray, out: np.ndarray
) -> None:
    """Observation at the close of ``t``: feature rows t-window+1..t, weights, cash / net worth, drawdown."""
    width = features.shape[1]
    window = features.reshape(-1)[(t - window_size + 1) * width : (t + 1) * width]  # the rows are contiguous
    size = window.shape[0]
    for k in range(size):  # a plain loop over the slice vectorizes; slice assignment is ~3x slower here
        out[k] = window[k]
    n = weights.shape[0]
    for j in range(n):
        out[size + j] = weights[j]
    out[size + n] = state[CASH] / state[NET_WORTH]
    out[size + n + 1] = state[DRAWDOWN]


@njit(cache=True, inline="always")  # inlined into step_rows: ~20 % less per-row call and refcount overhead
def step_row(
    t: int, mode: int, values: np.ndarray, market: Market, params: np.ndarray, quantity: np.ndarray,
    state: np.ndarray, q_out: np.ndarray, w_out: np.ndarray, target_out: np.ndarray, state_out: np.ndarray,
    obs_out: np.ndarray,
) -> bool:  # fmt: skip
    """One environment step for the decision at ``t``: act, fill, value at the close of t + 1, score, observe.

    :param mode: ACTION (``values`` is the Box action), TARGET (``values`` are target weights) or HOLD.
    :param market: ``(scale, returns, fill, close, features)`` precomputed per date.
    :param state: the state record before the step (see the column constants); ``state_out`` after it.
    :return: True when the drawdown stopper fires.
    """
    scale, returns, fill, close, features = market
    cash = state[CASH]
    price = fill[t + int(params[P_FILL_OFFSET])]
    if mode == HOLD:
        mark_to_market_row(quantity, cash, price, target_out)
        q_out[:] = quantity
        fees = turnover = 0.0
    else:
        if mode == ACTION:
            targets_row(values, t, scale, returns, params, target_out)
        else:
            target_out[:] = values
        cash, fees, turnover = rebalance_row(
            quantity, cash, target_out, price, params[P_BAND], params[P_FEE_FLAT], params[P_COMMISSION], q_out
        )
    net_worth = mark_to_market_row(q_out, cash, close[t + 1], w_out)
    peak, drawdown = update_drawdown(net_worth, state[PEAK])
    reward, a, b = scheme_reward(
        log_return(net_worth, state[NET_WORTH]), state[DRAWDOWN], drawdown, state[DSR_A], state[DSR_B],
        params[P_DSR] != 0.0, params[P_DSR_ETA], params[P_DOWNSIDE], params[P_DRAWDOWN_PENALTY],
    )  # fmt: skip
    state_out[CASH], state_out[NET_WORTH], state_out[PEAK], state_out[DRAWDOWN] = cash, net_worth, peak, drawdown
    state_out[DSR_A], state_out[DSR_B], state_out[REWARD] = a, b, reward
    state_out[FEES], state_out[TURNOVER] = fees, turnover
    observe_row(features, t + 1, int(params[P_WINDOW_SIZE]), w_out, state_out, obs_out)
    return drawdown_stop(drawdown, params[P_MAX_DRAWDOWN])


@njit(cache=True)
def step_rows(
    t: np.ndarray, actions: np.ndarray, market: Market, params: np.ndarray, quantity: np.ndarray,
    state: np.ndarray, q_out: np.ndarray, w_out: np.ndarray, target_out: np.ndarray, state_out: np.ndarray,
    obs_out: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """:func:`step_row` (mode ACTION) for every environment of a batch; returns the ``(B,)`` stopper flags."""
    stop = np.empty(t.shape[0], dtype=np.bool_)
    for i in range(t.shape[0]):
        stop[i] = step_row(
            t[i], ACTION, actions[i], market, params, quantity[i], state[i],
            q_out[i], w_out[i], target_out[i], state_out[i], obs_out[i],
        )  # fmt: skip
    return stop


# ------------------------------------------------------------------------------- batch drivers (public API)
@njit(cache=True)
def portfolio_vol_rows(raw: np.ndarray, returns: np.ndarray, annualize: float) -> np.ndarray:
    """:func:`portfolio_vol_row` for raw ``(M, N)`` and day blocks ``(M, W, N)``; returns ``(M,)``."""
    out = np.empty(raw.shape[0])
    for i in range(raw.shape[0]):
        out[i] = portfolio_vol_row(raw[i], returns[i], annualize)
    return out


@njit(cache=True)
def targets_rows(
    actions: np.ndarray, t: np.ndarray, scale: np.ndarray, returns: np.ndarray, params: np.ndarray
) -> np.ndarray:
    """:func:`targets_row` for actions ``(M, N)`` at decision dates ``t`` ``(M,)``."""
    out = np.empty_like(actions)
    for i in range(actions.shape[0]):
        targets_row(actions[i], t[i], scale, returns, params, out[i])
    return out


@njit(cache=True)
def rebalance_rows(
    quantity: np.ndarray, cash: np.ndarray, target: np.ndarray, price: np.ndarray, band: float, fee_flat: float,
    commission: float,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`rebalance_row` over rows: quantity, target, price ``(M, N)``, cash ``(M, 1)``."""
    new_quantity = np.empty_like(quantity)
    scalars = np.empty((quantity.shape[0], 3))  # cash, fees, turnover
    for i in range(quantity.shape[0]):
        scalars[i, 0], scalars[i, 1], scalars[i, 2] = rebalance_row(
            quantity[i], cash[i, 0], target[i], price[i], band, fee_flat, commission, new_quantity[i]
        )
    return new_quantity, scalars


@njit(cache=True)
def mark_to_market_rows(quantity: np.ndarray, cash: np.ndarray, price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mark_to_market_row` over rows: net worth ``(M, 1)`` and weights ``(M, N)``."""
    weights = np.empty_like(quantity)
    net_worth = np.empty((quantity.shape[0], 1))
    for i in range(quantity.shape[0]):
        net_worth[i, 0] = mark_to_market_row(quantity[i], cash[i, 0], price[i], weights[i])
    return net_worth, weights


@njit(cache=True)
def observe_rows(
    features: np.ndarray, t: np.ndarray, window_size: int, weights: np.ndarray, state: np.ndarray, out: np.ndarray
) -> None:
    """:func:`observe_row` for the rows of a batch (``t`` ``(M,)``) into ``out`` ``(M, size)``."""
    for i in range(t.shape[0]):
        observe_row(features, t[i], window_size, weights[i], state[i], out[i])
