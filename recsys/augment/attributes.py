"""Item attribute augmentation (paper §3.1.2): director, country and language, several items per request.

A partial answer keeps its valid entries; only the missing or invalid items are asked again, in a smaller request,
at most `max_reasks` times (`runner.ask_until_valid`).
"""

from __future__ import annotations

from collections.abc import Callable

from recsys.augment.parse import validate_attributes
from recsys.augment.prompts import ATTRIBUTES_VERSION, ItemText, Messages, attributes_messages, item_skip_reason
from recsys.augment.runner import (
    ChatClient,
    ItemOutcome,
    ask_until_valid,
    check_run_args,
    failed,
    run_parallel,
    too_long,
)
from recsys.llm.tokens import count_message_tokens


def request_groups(items: list[ItemText], items_per_request: int, max_prompt_tokens: int | None,
                   count: Callable[[Messages], int] = count_message_tokens
                   ) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Item ids in requests of at most `items_per_request` items (in input order), each closed early when one more
    item would make its prompt longer than `max_prompt_tokens`; and (item id, tokens) of the items whose prompt
    alone is too long (never sent)."""
    groups: list[list[ItemText]] = []
    alone_too_long: list[tuple[int, int]] = []
    for item in items:
        last = groups[-1] if groups else None
        if (last is not None and len(last) < items_per_request
                and (max_prompt_tokens is None or count(attributes_messages([*last, item])) <= max_prompt_tokens)):
            last.append(item)
            continue
        tokens = count(attributes_messages([item])) if max_prompt_tokens is not None else 0
        if max_prompt_tokens is not None and tokens > max_prompt_tokens:
            alone_too_long.append((item.item_id, tokens))
        else:
            groups.append([item])
    return [[i.item_id for i in g] for g in groups], alone_too_long


def augment_attributes(
    client: ChatClient,
    items: list[ItemText],
    *,
    items_per_request: int,
    max_reasks: int,
    max_workers: int,
    tags: dict[str, str],
    max_prompt_tokens: int | None = None,
    count: Callable[[Messages], int] = count_message_tokens,
) -> list[ItemOutcome]:
    """One outcome per item, in input order; value {"director", "country", "language"}.

    Items go up to `items_per_request` to a request (`request_groups`: fewer when the prompt would pass
    `max_prompt_tokens`); requests run concurrently on `max_workers` threads. `asks` counts the requests that
    included the item. An item without text (`item_skip_reason`) or whose prompt alone is too long fails without a
    call.
    """
    check_run_args([i.item_id for i in items], max_reasks, max_workers)
    if items_per_request < 1:
        raise ValueError(f"items_per_request must be >= 1, got {items_per_request}")
    by_id = {item.item_id: item for item in items}
    skipped = {i.item_id: failed(i.item_id, reason) for i in items if (reason := item_skip_reason(i)) is not None}
    asked = [i for i in items if i.item_id not in skipped]
    groups, too_big = request_groups(asked, items_per_request, max_prompt_tokens, count)

    def ask(ids: list[int]) -> list[ItemOutcome]:
        return ask_until_valid(client, ids, lambda keys: attributes_messages([by_id[k] for k in keys]),
                               lambda text, keys: validate_attributes(text, {k: by_id[k].title for k in keys}),
                               template_version=ATTRIBUTES_VERSION, max_reasks=max_reasks, tags=tags,
                               fits=None if max_prompt_tokens is None else lambda m: count(m) <= max_prompt_tokens)

    done = {o.key: o for group in run_parallel(ask, groups, max_workers) for o in group} | skipped
    assert max_prompt_tokens is not None or not too_big
    done |= {key: too_long(key, tokens, max_prompt_tokens or 0, "this item alone") for key, tokens in too_big}
    return [done[item.item_id] for item in items]
