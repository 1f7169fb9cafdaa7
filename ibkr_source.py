"""IBKR daily bars through ib_async: paced, resumable, honest about failures.

(Settings are declared here so the pipeline can expose them; the fetcher itself is built by the IBKR issue.)
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from settings import setting


@dataclasses.dataclass(frozen=True)
class IbSettings:
    """Connection and pacing settings for the IBKR source."""

    ib_host: str = setting("127.0.0.1", "TWS / IB Gateway host", env="IB_HOST")
    ib_port: int = setting(4002, "API port (IB Gateway paper 4002 / live 4001; TWS 7497 / 7496)", env="IB_PORT")
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
