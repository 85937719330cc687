"""Implicit-feedback augmentation (paper §3.1.1): one liked and one disliked candidate per user -> a BPR edge pair."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from recsys.augment.parse import validate_edges
from recsys.augment.prompts import (
    EDGES_VERSION,
    Messages,
    UserContext,
    edges_messages,
    edges_skip_reason,
    fit_history,
)
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


def augment_edges(
    client: ChatClient,
    users: list[UserContext],
    *,
    max_reasks: int,
    max_workers: int,
    tags: dict[str, str],
    max_prompt_tokens: int | None = None,
    count: Callable[[Messages], int] = count_message_tokens,
) -> list[ItemOutcome]:
    """One outcome per user, in input order; value {"pos_item_id", "neg_item_id"} (raw item ids) and {"pos_rank",
    "neg_rank"} (their positions in the base model's candidate order).

    Users without training history (with text) or with fewer than two candidates fail without a call
    (`edges_skip_reason`; the official script would still have asked, with an empty history). With
    `max_prompt_tokens`, the history is cut until the prompt fits (`prompts.fit_history`, counted by `count`); a
    prompt that does not fit with one history item is not sent and fails with that reason.
    """
    check_run_args([u.user_id for u in users], max_reasks, max_workers)
    budget = max_prompt_tokens

    def one(ctx: UserContext) -> ItemOutcome:
        reason = edges_skip_reason(ctx)
        if reason is not None:
            return failed(ctx.user_id, reason)
        if budget is not None:
            ctx, tokens = fit_history(ctx, edges_messages, budget, count)
            if tokens > budget:
                return too_long(ctx.user_id, tokens, budget, "one history item", ctx.history_cut)
        (outcome,) = ask_until_valid(client, [ctx.user_id], lambda _: edges_messages(ctx),
                                     lambda text, keys: ({keys[0]: validate_edges(text, ctx)}, {}),
                                     template_version=EDGES_VERSION, max_reasks=max_reasks, tags=tags,
                                     fits=None if budget is None else lambda m: count(m) <= budget)
        return dataclasses.replace(outcome, history_cut=ctx.history_cut)

    return run_parallel(one, users, max_workers)
