"""Item attribute augmentation (paper §3.1.2): director, country and language, several items per request.

A partial answer keeps its valid entries; only the missing or invalid items are asked again, in a smaller request,
at most `max_reasks` times (`runner.ask_until_valid`).
"""

from __future__ import annotations

from recsys.augment.parse import validate_attributes
from recsys.augment.prompts import ATTRIBUTES_VERSION, ItemText, attributes_messages, item_skip_reason
from recsys.augment.runner import (
    ChatClient,
    ItemOutcome,
    ask_until_valid,
    check_run_args,
    failed,
    run_parallel,
)


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
    threads. `asks` counts the requests that included the item. An item without text fails without a call
    (`item_skip_reason`).
    """
    check_run_args([i.item_id for i in items], max_reasks, max_workers)
    if items_per_request < 1:
        raise ValueError(f"items_per_request must be >= 1, got {items_per_request}")
    by_id = {item.item_id: item for item in items}
    skipped = {i.item_id: failed(i.item_id, reason) for i in items if (reason := item_skip_reason(i)) is not None}
    asked = [i for i in items if i.item_id not in skipped]
    groups = [[i.item_id for i in asked[i : i + items_per_request]] for i in range(0, len(asked), items_per_request)]

    def ask(ids: list[int]) -> list[ItemOutcome]:
        return ask_until_valid(client, ids, lambda keys: attributes_messages([by_id[k] for k in keys]),
                               lambda text, keys: validate_attributes(text, {k: by_id[k].title for k in keys}),
                               template_version=ATTRIBUTES_VERSION, max_reasks=max_reasks, tags=tags)

    answered = {o.key: o for group in run_parallel(ask, groups, max_workers) for o in group}
    return [answered.get(i.item_id) or skipped[i.item_id] for i in items]
