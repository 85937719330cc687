"""User profiling (paper §3.1.2): age, gender, liked/disliked genres, liked directors, country, language."""

from __future__ import annotations

from recsys.augment.parse import validate_profile
from recsys.augment.prompts import PROFILES_VERSION, UserContext, profile_messages, profile_skip_reason
from recsys.augment.runner import ChatClient, ItemOutcome, ask_until_valid, check_run_args, failed, run_parallel


def augment_profiles(
    client: ChatClient,
    users: list[UserContext],
    *,
    max_reasks: int,
    max_workers: int,
    tags: dict[str, str],
) -> list[ItemOutcome]:
    """One outcome per user, in input order; value = the validated profile fields (see parse.validate_profile).

    A user without training history (with text) fails without a call (`profile_skip_reason`).
    """
    check_run_args([u.user_id for u in users], max_reasks, max_workers)

    def one(ctx: UserContext) -> ItemOutcome:
        reason = profile_skip_reason(ctx)
        if reason is not None:
            return failed(ctx.user_id, reason)
        (outcome,) = ask_until_valid(client, [ctx.user_id], lambda _: profile_messages(ctx),
                                     lambda text, keys: ({keys[0]: validate_profile(text)}, {}),
                                     template_version=PROFILES_VERSION, max_reasks=max_reasks, tags=tags)
        return outcome

    return run_parallel(one, users, max_workers)
