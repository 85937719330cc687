"""The bounded ask -> validate -> re-ask loop shared by the three augmentors, and their output tables.

The official scripts retried a bad answer recursively with no limit and skipped a user on an HTTP error, so that
user silently vanished (reference notes §A.3.2). Here every input key gets exactly one ItemOutcome: a validated
value, or a failure with its reason and the last raw answer; re-asks are bounded by `max_reasks`. HTTP retries
are the client's job (one retry layer): a `text is None` result is final for the item.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import pandas as pd
import pyarrow as pa

from recsys.augment.parse import PROFILE_LISTS, Verdict
from recsys.augment.prompts import Messages, prompt_hash

logger = logging.getLogger("llmrec.augment")

CORRECTION = "Your answer was invalid: {reason}. Answer again with JSON only in the required format."

T = TypeVar("T")
R = TypeVar("R")


class ChatAnswer(Protocol):
    """What the augmentors read from a client's ChatResult."""

    @property
    def text(self) -> str | None: ...

    @property
    def error(self) -> str | None: ...


class ChatClient(Protocol):
    """The LLM client interface (recsys.llm.client.LLMClient implements it, plus an optional `forget`)."""

    def chat(
        self, messages: list[dict[str, str]], *, template_version: str, tags: dict[str, str] | None = None
    ) -> ChatAnswer: ...


@dataclass(frozen=True)
class ItemOutcome:
    """The result for one user (edges, profiles) or item (attributes)."""

    key: int
    ok: bool
    value: dict | None  # the validated fields when ok
    raw: str | None  # the last raw answer, kept for failures too
    reason: str | None  # why it failed
    asks: int  # chat calls that included this key
    prompt_hash: str | None  # sha256 of the canonical JSON of the first prompt for this key


def failed(key: int, reason: str, *, raw: str | None = None, asks: int = 0, first_hash: str | None = None
           ) -> ItemOutcome:
    """A failed outcome."""
    return ItemOutcome(key=key, ok=False, value=None, raw=raw, reason=reason, asks=asks, prompt_hash=first_hash)


def correction(messages: Messages, bad_answer: str, reason: str) -> Messages:
    """The conversation extended by the bad answer and a correction naming what was wrong."""
    return [*messages, {"role": "assistant", "content": bad_answer},
            {"role": "user", "content": CORRECTION.format(reason=reason)}]


def forget(client: ChatClient, messages: Messages, template_version: str) -> None:
    """Drop a rejected answer from the client's response cache, when the client has one."""
    drop = getattr(client, "forget", None)
    if callable(drop):
        drop(messages, template_version)


def log_rejection(tags: dict[str, str], key: int, ask: int, reason: str) -> None:
    """One WARNING per rejected answer (stage, key, ask number, reason)."""
    logger.warning("%s: rejected answer for %s (ask %d): %s", tags.get("stage", "augment"), key, ask, reason)


def ask_until_valid(
    client: ChatClient,
    key: int,
    messages: Messages,
    validate: Callable[[str], Verdict],
    *,
    template_version: str,
    max_reasks: int,
    tags: dict[str, str],
) -> ItemOutcome:
    """Ask, validate, and re-ask at most `max_reasks` times with the reason for the rejection.

    A transport failure (`text is None`, the client having used its own retries) ends the item at once.
    """
    first_hash = prompt_hash(messages)
    conversation, raw, reason = messages, None, "no answer"
    for ask in range(1, max_reasks + 2):
        result = client.chat(conversation, template_version=template_version, tags=dict(tags))
        if result.text is None:
            return failed(key, result.error or "no answer from the LLM", raw=raw, asks=ask, first_hash=first_hash)
        raw = result.text
        verdict = validate(raw)
        if verdict.ok:
            return ItemOutcome(key=key, ok=True, value=verdict.value, raw=raw, reason=None, asks=ask,
                               prompt_hash=first_hash)
        reason = verdict.reason or "invalid answer"
        log_rejection(tags, key, ask, reason)
        # Also for the last answer: a re-run of this item must not be served the rejected answer again.
        forget(client, conversation, template_version)
        conversation = correction(conversation, raw, reason)
    answers = max_reasks + 1
    return failed(key, f"invalid after {answers} answer{'s' if answers > 1 else ''}: {reason}", raw=raw,
                  asks=answers, first_hash=first_hash)


def check_run_args(keys: Sequence[int], max_reasks: int, max_workers: int) -> None:
    """Reject duplicate keys (one outcome per key) and impossible limits."""
    if max_reasks < 0:
        raise ValueError(f"max_reasks must be >= 0, got {max_reasks}")
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    dupes = sorted(k for k, n in Counter(keys).items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate keys in one call: {dupes[:5]}")


def run_parallel(fn: Callable[[T], R], inputs: Sequence[T], max_workers: int) -> list[R]:
    """fn over inputs on a thread pool; results in input order.

    An exception raised by fn (the client raises only for what no retry can fix, e.g. refused credentials)
    stops the items not yet started and is re-raised, instead of failing every remaining item the same way.
    """
    if not inputs:
        return []
    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded(x: T) -> R | None:
        if stop.is_set():
            return None
        try:
            return fn(x)
        except BaseException as exc:
            errors.append(exc)
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=min(max_workers, len(inputs)), thread_name_prefix="augment") as pool:
        futures = [pool.submit(guarded, x) for x in inputs]
    if errors:
        raise errors[0]
    return [cast(R, f.result()) for f in futures]  # None only after an error, which was raised above


# ---- output tables -------------------------------------------------------------------------------------------

_STR = "str"
_LIST = pd.ArrowDtype(pa.list_(pa.string()))


def _frame(rows: list[dict[str, Any]], dtypes: dict[str, Any]) -> pd.DataFrame:
    data = {name: pd.Series([r[name] for r in rows], dtype=dtype) for name, dtype in dtypes.items()}
    return pd.DataFrame(data, columns=list(dtypes))


def edges_frame(outcomes: Sequence[ItemOutcome], model: str) -> pd.DataFrame:
    """augmented_edges: user_id, pos_item_id, neg_item_id (int64), model, prompt_hash — one row per ok user."""
    rows = [{"user_id": o.key, "pos_item_id": o.value["pos_item_id"], "neg_item_id": o.value["neg_item_id"],
             "model": model, "prompt_hash": o.prompt_hash} for o in outcomes if o.ok and o.value is not None]
    return _frame(rows, {"user_id": "int64", "pos_item_id": "int64", "neg_item_id": "int64",
                         "model": _STR, "prompt_hash": _STR})


def profiles_frame(outcomes: Sequence[ItemOutcome], model: str) -> pd.DataFrame:
    """user_profiles: user_id, age (int64), gender, liked_genres, disliked_genres, liked_directors (list<string>),
    country, language, raw_text, model, prompt_hash — one row per ok user."""
    rows = [{"user_id": o.key, **o.value, "raw_text": o.raw, "model": model, "prompt_hash": o.prompt_hash}
            for o in outcomes if o.ok and o.value is not None]
    dtypes: dict[str, Any] = {"user_id": "int64", "age": "int64", "gender": _STR}
    dtypes |= {name: _LIST for name in PROFILE_LISTS}
    dtypes |= {"country": _STR, "language": _STR, "raw_text": _STR, "model": _STR, "prompt_hash": _STR}
    return _frame(rows, dtypes)


def attributes_frame(outcomes: Sequence[ItemOutcome], model: str) -> pd.DataFrame:
    """item_attributes: item_id (int64), director, country, language, raw_text, model, prompt_hash — one row per
    ok item. raw_text is the whole answer to the request that covered several items."""
    rows = [{"item_id": o.key, **o.value, "raw_text": o.raw, "model": model, "prompt_hash": o.prompt_hash}
            for o in outcomes if o.ok and o.value is not None]
    return _frame(rows, {"item_id": "int64", "director": _STR, "country": _STR, "language": _STR,
                         "raw_text": _STR, "model": _STR, "prompt_hash": _STR})


def failures_frame(outcomes: Sequence[ItemOutcome], stage: str) -> pd.DataFrame:
    """stage, key (int64), reason, raw (null when there was no answer), asks (int64) — one row per failed key."""
    rows = [{"stage": stage, "key": o.key, "reason": o.reason, "raw": o.raw, "asks": o.asks}
            for o in outcomes if not o.ok]
    return _frame(rows, {"stage": _STR, "key": "int64", "reason": _STR, "raw": _STR, "asks": "int64"})
