"""A requests-per-minute limit shared by every process that calls one endpoint with one API key.

The LLM and embedding clients (recsys/) know only a generic `before_request` hook; this module makes that hook
take one slot of a Prefect global concurrency limit with slot decay, which the Prefect server enforces for every
flow run and process using it. Create the limit first, e.g. 500 requests/minute in bursts of at most 20:

    prefect gcl create openai-rpm --limit 20 --slot-decay-per-second 8.33

A name that does not exist, or a limit without slot decay, is an error (`strict=True`), never a silent run
without the limit.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import rate_limit


class RateLimitUnusable(RuntimeError):
    """The configured Prefect rate limit does not exist or has no slot decay."""


def setup_hint(name: str) -> str:
    """How to create the limit `name`."""
    return f"create it with `prefect gcl create {name} --limit N --slot-decay-per-second R`"


def prefect_rate_limit_hook(name: str | None) -> Callable[[], None] | None:
    """A `before_request` hook taking one slot of the Prefect rate limit `name` per HTTP attempt (None: none)."""
    if not name:
        return None

    def take_slot() -> None:
        try:
            rate_limit(name, occupy=1, strict=True)
        except ConcurrencySlotAcquisitionError as exc:
            raise RateLimitUnusable(f"Prefect rate limit {name!r} cannot be used: {exc}; {setup_hint(name)}"
                                    ) from None

    return take_slot


def check_rate_limit(name: str | None) -> None:
    """Fail at once, before any work, when the configured limit is missing or has no slot decay."""
    if not name:
        return
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            raise RateLimitUnusable(f"Prefect rate limit {name!r} does not exist; {setup_hint(name)}") from None
    if not limit.active:
        raise RateLimitUnusable(f"Prefect rate limit {name!r} is inactive; activate it with "
                                f"`prefect gcl enable {name}`")
    if not limit.slot_decay_per_second:
        raise RateLimitUnusable(f"Prefect rate limit {name!r} has no slot decay, so it limits concurrency, not rate; "
                                f"{setup_hint(name)}")
