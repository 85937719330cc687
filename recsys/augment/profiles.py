"""User profiling (paper §3.1.2): age, gender, liked/disliked genres, liked directors, country, language."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from recsys.augment.parse import validate_profile
from recsys.augment.prompts import (
    PROFILES_VERSION,
    Messages,
    UserContext,
    fit_history,
    profile_messages,
    profile_skip_reason,
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


def augment_profiles(
    client: ChatClient,
    users: list[UserContext],
    *,
    max_reasks: int,
    max_workers: int,
    tags: dict[str, str],
    max_prompt_tokens: int | None = None,
    count: Callable[[Messages], int] = count_message_tokens,
) -> list[ItemOutcome]:
    """One outcome per user, in input order; value = the validated profile fields (see parse.validate_profile).

    A user without training history (with text) fails without a call (`profile_skip_reason`): a profile of nothing
    would be pure invention. With `max_prompt_tokens`, the history is cut until the prompt fits, as for edges
    (`augment_edges`).
    """
    check_run_args([u.user_id for u in users], max_reasks, max_workers)
    budget = max_prompt_tokens

    def one(ctx: UserContext) -> ItemOutcome:
        reason = profile_skip_reason(ctx)
        if reason is not None:
            return failed(ctx.user_id, reason)
        if budget is not None:
            ctx, tokens = fit_history(ctx, profile_messages, budget, count)
            if tokens > budget:
                return too_long(ctx.user_id, tokens, budget, "one history item", ctx.history_cut)
        (outcome,) = ask_until_valid(client, [ctx.user_id], lambda _: profile_messages(ctx),
                                     lambda text, keys: ({keys[0]: validate_profile(text)}, {}),
                                     template_version=PROFILES_VERSION, max_reasks=max_reasks, tags=tags,
                                     fits=None if budget is None else lambda m: count(m) <= budget)
        return dataclasses.replace(outcome, history_cut=ctx.history_cut)

    return run_parallel(one, users, max_workers)
