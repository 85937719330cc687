"""Implicit-feedback augmentation (paper §3.1.1): one liked and one disliked candidate per user -> a BPR edge pair."""

from __future__ import annotations

from recsys.augment.parse import validate_edges
from recsys.augment.prompts import EDGES_VERSION, UserContext, edges_messages, edges_skip_reason
from recsys.augment.runner import ChatClient, ItemOutcome, ask_until_valid, check_run_args, failed, run_parallel


def augment_edges(
    client: ChatClient,
    users: list[UserContext],
    *,
    max_reasks: int,
    max_workers: int,
    tags: dict[str, str],
) -> list[ItemOutcome]:
    """One outcome per user, in input order; value {"pos_item_id", "neg_item_id"} (raw item ids).

    Users without training history (with text) or with fewer than two candidates fail without a call
    (`edges_skip_reason`; the official script would still have asked, with an empty history).
    """
    check_run_args([u.user_id for u in users], max_reasks, max_workers)

    def one(ctx: UserContext) -> ItemOutcome:
        reason = edges_skip_reason(ctx)
        if reason is not None:
            return failed(ctx.user_id, reason)
        (outcome,) = ask_until_valid(client, [ctx.user_id], lambda _: edges_messages(ctx),
                                     lambda text, keys: ({keys[0]: validate_edges(text, ctx)}, {}),
                                     template_version=EDGES_VERSION, max_reasks=max_reasks, tags=tags)
        return outcome

    return run_parallel(one, users, max_workers)
