"""LLM4IDRec prompts: IDs written `u<id>` / `i<id>`, history from training data only.

Template of the official code (newlei/LLM4IDRec `data_process.py`, commit af1fac4): the input is
"Given the user(u123)'s clicked list items:i5,i9,i42, predict what is the list items to recommend to the
user(u123). Please only answer the item IDs." and the target a comma-separated `i<id>` list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from recsys.llm.tokens import count_tokens

PROMPT_VERSION = "1"  # bump when the template changes: it is part of every fine-tuning file's content key


def user_token(user_id: int) -> str:
    return f"u{int(user_id)}"


def item_token(item_id: int) -> str:
    return f"i{int(item_id)}"


def item_list(items: Sequence[int]) -> str:
    """`i5,i9,i42`: the form of both the history in a prompt and the target."""
    return ",".join(item_token(i) for i in items)


def prompt_text(user_id: int, history: Sequence[int]) -> str:
    """The official template (module docstring) for `user_id` and its (possibly empty) `history` of raw item ids."""
    u = user_token(user_id)
    return (f"Given the user({u})'s clicked list items:{item_list(history)}, predict what is the list items to "
            f"recommend to the user({u}). Please only answer the item IDs.")


def cut_history(user_id: int, history: Sequence[int], max_tokens: int,
                count: Callable[[str], int] = count_tokens) -> tuple[int, ...]:
    """The longest tail of `history` (its last items, order kept) whose prompt has at most `max_tokens` tokens by
    `count` (default tiktoken's cl100k_base). Deterministic: the same history and budget always give the same cut.
    An empty tuple when not even the bare template fits (the caller decides what that means)."""
    items = tuple(int(i) for i in history)
    if count(prompt_text(user_id, items)) <= max_tokens:
        return items
    lo, hi = 0, len(items)  # invariant: keeping `lo` items fits (or lo == 0), keeping `hi` does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(prompt_text(user_id, items[-mid:])) <= max_tokens:
            lo = mid
        else:
            hi = mid
    return items[-lo:] if lo else ()
