"""Item attribute augmentation (paper §3.1.2): director, country and language, several items per request.

A partial answer keeps its valid entries; only the missing or invalid items are asked again, in a smaller request,
at most `max_reasks` times. When an answer has no valid entry at all, the re-ask shows the model its answer and
the reason instead (a fresh copy of the same request would likely get the same answer).
"""

from __future__ import annotations

from recsys.augment.parse import validate_attributes
from recsys.augment.prompts import ATTRIBUTES_VERSION, ItemText, Messages, attributes_messages, prompt_hash
from recsys.augment.runner import (
    ChatClient,
    ItemOutcome,
    check_run_args,
    correction,
    forget,
    log_rejection,
    run_parallel,
)


def _summary(reasons: dict[int, str], limit: int = 5) -> str:
    """The distinct reasons, at most `limit` of them (a whole-answer reason is shared by every item)."""
    distinct = list(dict.fromkeys(reasons.values()))
    more = len(distinct) - limit
    return "; ".join(distinct[:limit]) + (f"; and {more} more" if more > 0 else "")


def _ask_group(client: ChatClient, group: list[ItemText], *, max_reasks: int, tags: dict[str, str]
               ) -> list[ItemOutcome]:
    """Outcomes for one request's items, in the group's order."""
    by_id = {item.item_id: item for item in group}
    asks = dict.fromkeys(by_id, 0)
    first_hash: dict[int, str] = {}
    raw: dict[int, str | None] = dict.fromkeys(by_id)
    reasons: dict[int, str] = {}
    done: dict[int, dict[str, str]] = {}
    pending = list(by_id)
    messages: Messages = attributes_messages(group)
    final = False  # True once pending items will not be asked again (transport failure)
    for round_no in range(max_reasks + 1):
        digest = prompt_hash(messages)
        for item_id in pending:
            asks[item_id] += 1
            first_hash.setdefault(item_id, digest)
        result = client.chat(messages, template_version=ATTRIBUTES_VERSION, tags=dict(tags))
        if result.text is None:
            for item_id in pending:
                reasons[item_id] = result.error or "no answer from the LLM"
            final = True
            break
        verdict = validate_attributes(result.text, {i: by_id[i].title for i in pending})
        for item_id in pending:
            raw[item_id] = result.text
        done.update(verdict.valid)
        for item_id, reason in verdict.invalid.items():
            reasons[item_id] = reason
            log_rejection(tags, item_id, asks[item_id], reason)
        if not verdict.valid:
            # Nothing in this answer is used: keep it out of the cache. A partial answer stays cached, so a
            # re-run replays it for free and asks again only for the items that are still missing.
            forget(client, messages, ATTRIBUTES_VERSION)
        pending = [i for i in pending if i in verdict.invalid]
        if not pending or round_no == max_reasks:
            break
        if verdict.valid:
            messages = attributes_messages([by_id[i] for i in pending])
        else:
            messages = correction(messages, result.text, _summary(verdict.invalid))

    outcomes = []
    for item_id in by_id:
        if item_id in done:
            outcomes.append(ItemOutcome(key=item_id, ok=True, value=done[item_id], raw=raw[item_id], reason=None,
                                        asks=asks[item_id], prompt_hash=first_hash[item_id]))
            continue
        reason = reasons.get(item_id, "no answer from the LLM")
        if not final:
            n = asks[item_id]
            reason = f"invalid after {n} ask{'s' if n > 1 else ''}: {reason}"
        outcomes.append(ItemOutcome(key=item_id, ok=False, value=None, raw=raw[item_id], reason=reason,
                                    asks=asks[item_id], prompt_hash=first_hash.get(item_id)))
    return outcomes


def augment_attributes(
    client: ChatClient,
    items: list[ItemText],
    *,
    items_per_request: int,
    max_reasks: int,
    max_workers: int,
    tags: dict[str, str],
) -> list[ItemOutcome]:
    """One outcome per item, in input order; value {"director", "country", "language"}.

    Items go `items_per_request` to a request (in input order); requests run concurrently on `max_workers`
    threads. `asks` counts the requests that included the item.
    """
    check_run_args([i.item_id for i in items], max_reasks, max_workers)
    if items_per_request < 1:
        raise ValueError(f"items_per_request must be >= 1, got {items_per_request}")
    groups = [items[i : i + items_per_request] for i in range(0, len(items), items_per_request)]
    per_group = run_parallel(lambda g: _ask_group(client, g, max_reasks=max_reasks, tags=tags), groups, max_workers)
    return [outcome for group in per_group for outcome in group]
