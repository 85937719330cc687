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

from recsys.augment.parse import PROFILE_LISTS, InvalidAnswer
from recsys.augment.prompts import Messages
from recsys.llm.cache import prompt_hash

logger = logging.getLogger("llmrec.augment")

CORRECTION = "Your answer was invalid: {reason}. Answer again with JSON only in the required format."

T = TypeVar("T")
R = TypeVar("R")
# (answer, asked keys) -> (valid value per key, reason per key); raises InvalidAnswer for the whole answer.
Judge = Callable[[str, list[int]], tuple[dict[int, dict], dict[int, str]]]


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
    history_cut: int = 0  # training items left out of the prompt's history to fit max_prompt_tokens


def failed(key: int, reason: str, *, raw: str | None = None, asks: int = 0, first_hash: str | None = None,
           history_cut: int = 0) -> ItemOutcome:
    """A failed outcome."""
    return ItemOutcome(key=key, ok=False, value=None, raw=raw, reason=reason, asks=asks, prompt_hash=first_hash,
                       history_cut=history_cut)


def too_long(key: int, tokens: int, max_tokens: int, what: str, history_cut: int = 0) -> ItemOutcome:
    """The failure of an item whose prompt does not fit `max_tokens` (`what`: the smallest prompt tried); never
    sent."""
    return failed(key, f"prompt too long: {tokens} tokens with {what}, more than max_prompt_tokens={max_tokens}; "
                       "not sent", history_cut=history_cut)


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


def _summary(reasons: dict[int, str], limit: int = 5) -> str:
    """The distinct reasons, at most `limit` of them (a whole-answer reason is shared by every key)."""
    distinct = list(dict.fromkeys(reasons.values()))
    more = len(distinct) - limit
    return "; ".join(distinct[:limit]) + (f"; and {more} more" if more > 0 else "")


def ask_until_valid(
    client: ChatClient,
    keys: list[int],
    prompt: Callable[[list[int]], Messages],
    judge: Judge,
    *,
    template_version: str,
    max_reasks: int,
    tags: dict[str, str],
    fits: Callable[[Messages], bool] | None = None,
) -> list[ItemOutcome]:
    """One outcome per key (in `keys` order) of one request for all `keys`, re-asked at most `max_reasks` times.

    `prompt(keys)` builds the request; `judge(answer, keys)` gives the valid values and the reasons per key, or
    raises InvalidAnswer for the whole answer. A partial answer keeps its valid values and stays in the response
    cache (a re-run replays it for free); the keys still missing are asked again in a fresh, smaller request. An
    answer with nothing valid is dropped from the cache (also the last one: a re-run must not be served it again)
    and the re-ask extends the conversation with that answer and the reasons (a fresh copy of the same request
    would likely get the same answer), unless that conversation does not `fit` the prompt budget: then the fresh
    request is sent again. A transport failure (`text is None`, the client having used its own
    retries) ends every pending key at once. `asks` counts the requests that included the key.
    """
    asks, first_hash = dict.fromkeys(keys, 0), {}
    raw: dict[int, str | None] = dict.fromkeys(keys)
    done: dict[int, dict] = {}
    reasons: dict[int, str] = {}
    pending, messages, final = list(keys), prompt(list(keys)), False
    for round_no in range(max_reasks + 1):
        digest = prompt_hash(messages)
        for key in pending:
            asks[key] += 1
            first_hash.setdefault(key, digest)
        result = client.chat(messages, template_version=template_version, tags=dict(tags))
        if result.text is None:
            reasons.update(dict.fromkeys(pending, result.error or "no answer from the LLM"))
            final = True
            break
        try:
            valid, invalid = judge(result.text, pending)
        except InvalidAnswer as exc:
            valid, invalid = {}, dict.fromkeys(pending, str(exc))
        raw.update(dict.fromkeys(pending, result.text))
        done.update(valid)
        reasons.update(invalid)
        for key, reason in invalid.items():
            log_rejection(tags, key, asks[key], reason)
        if not valid:
            forget(client, messages, template_version)
        pending = [key for key in pending if key in invalid]
        if not pending or round_no == max_reasks:
            break
        messages = prompt(pending) if valid else correction(messages, result.text, _summary(invalid))
        if fits is not None and not valid and not fits(messages):
            messages = prompt(pending)
    return [_outcome(key, done, reasons, raw, asks, first_hash, final) for key in keys]


def _outcome(key: int, done: dict[int, dict], reasons: dict[int, str], raw: dict[int, str | None],
             asks: dict[int, int], first_hash: dict[int, str], final: bool) -> ItemOutcome:
    if key in done:
        return ItemOutcome(key=key, ok=True, value=done[key], raw=raw[key], reason=None, asks=asks[key],
                           prompt_hash=first_hash[key])
    reason, n = reasons.get(key, "no answer from the LLM"), asks[key]
    if not final:
        reason = f"invalid after {n} answer{'s' if n > 1 else ''}: {reason}"
    return failed(key, reason, raw=raw[key], asks=n, first_hash=first_hash.get(key))


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


def ask_each(
    client: ChatClient,
    contexts: Sequence[T],
    *,
    key: Callable[[T], int],
    skip: Callable[[T], str | None],
    messages: Callable[[T], Messages],
    validate: Callable[[str, T], dict],
    template_version: str,
    max_reasks: int,
    max_workers: int,
    tags: dict[str, str],
) -> list[ItemOutcome]:
    """One outcome per context, in input order, from one request per context (`messages(ctx)`, its one key
    `key(ctx)`), validated by `validate(answer, ctx)` (raises InvalidAnswer) and re-asked as in
    `ask_until_valid`. A context for which `skip(ctx)` gives a reason fails with it, without a call."""
    check_run_args([key(c) for c in contexts], max_reasks, max_workers)

    def one(ctx: T) -> ItemOutcome:
        reason = skip(ctx)
        if reason is not None:
            return failed(key(ctx), reason)
        (outcome,) = ask_until_valid(client, [key(ctx)], lambda _: messages(ctx),
                                     lambda text, keys: ({keys[0]: validate(text, ctx)}, {}),
                                     template_version=template_version, max_reasks=max_reasks, tags=tags)
        return outcome

    return run_parallel(one, contexts, max_workers)


# ---- output tables -------------------------------------------------------------------------------------------

_STR = "str"
_LIST = pd.ArrowDtype(pa.list_(pa.string()))


def _frame(rows: list[dict[str, Any]], dtypes: dict[str, Any]) -> pd.DataFrame:
    data = {name: pd.Series([r[name] for r in rows], dtype=dtype) for name, dtype in dtypes.items()}
    return pd.DataFrame(data, columns=list(dtypes))


def edges_frame(outcomes: Sequence[ItemOutcome], model: str) -> pd.DataFrame:
    """augmented_edges: user_id, pos_item_id, neg_item_id (int64), model, prompt_hash, pos_rank, neg_rank (the
    picked candidates' ranks in the base model's order, 1 = its best), history_cut — one row per ok user."""
    rows = [{"user_id": o.key, **o.value, "model": model, "prompt_hash": o.prompt_hash,
             "history_cut": o.history_cut} for o in outcomes if o.ok and o.value is not None]
    return _frame(rows, {"user_id": "int64", "pos_item_id": "int64", "neg_item_id": "int64",
                         "model": _STR, "prompt_hash": _STR, "pos_rank": "int64", "neg_rank": "int64",
                         "history_cut": "int64"})


def profiles_frame(outcomes: Sequence[ItemOutcome], model: str) -> pd.DataFrame:
    """user_profiles: user_id, age (int64), gender, liked_genres, disliked_genres, liked_directors (list<string>),
    country, language, raw_text, model, prompt_hash, history_cut — one row per ok user."""
    rows = [{"user_id": o.key, **o.value, "raw_text": o.raw, "model": model, "prompt_hash": o.prompt_hash,
             "history_cut": o.history_cut} for o in outcomes if o.ok and o.value is not None]
    dtypes: dict[str, Any] = {"user_id": "int64", "age": "int64", "gender": _STR}
    dtypes |= {name: _LIST for name in PROFILE_LISTS}
    dtypes |= {"country": _STR, "language": _STR, "raw_text": _STR, "model": _STR, "prompt_hash": _STR,
               "history_cut": "int64"}
    return _frame(rows, dtypes)


def attributes_frame(outcomes: Sequence[ItemOutcome], model: str) -> pd.DataFrame:
    """item_attributes: item_id (int64), director, country, language, raw_text, model, prompt_hash — one row per
    ok item. raw_text is the whole answer to the request that covered several items."""
    rows = [{"item_id": o.key, **o.value, "raw_text": o.raw, "model": model, "prompt_hash": o.prompt_hash}
            for o in outcomes if o.ok and o.value is not None]
    return _frame(rows, {"item_id": "int64", "director": _STR, "country": _STR, "language": _STR,
                         "raw_text": _STR, "model": _STR, "prompt_hash": _STR})


def failures_frame(outcomes: Sequence[ItemOutcome], stage: str) -> pd.DataFrame:
    """stage, key (int64), reason, raw (null when there was no answer), asks, history_cut (int64) — one row per
    failed key."""
    rows = [{"stage": stage, "key": o.key, "reason": o.reason, "raw": o.raw, "asks": o.asks,
             "history_cut": o.history_cut} for o in outcomes if not o.ok]
    return _frame(rows, {"stage": _STR, "key": "int64", "reason": _STR, "raw": _STR, "asks": "int64",
                         "history_cut": "int64"})
