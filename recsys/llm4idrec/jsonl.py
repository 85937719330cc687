"""Chat-format JSONL for fine-tuning (OpenAI's fine-tuning file format; local LoRA reads the same records).

Each line: {"messages": [{"role": "user", "content": <prompt>}, {"role": "assistant", "content": <target>}]}.
A held-out part (whole users, chosen by a seeded draw) gives the validation file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from recsys.llm.tokens import count_tokens
from recsys.llm4idrec.parse import ITEM_TOKEN, parse_user
from recsys.llm4idrec.prompts import cut_history, item_list, prompt_text
from recsys.llm4idrec.samples import Sample

ROLES = ("system", "user", "assistant")


def chat_record(sample: Sample, max_prompt_tokens: int, count: Callable[[str], int] = count_tokens) -> dict:
    """The chat record of `sample`, its input list cut to `max_prompt_tokens` (recsys.llm4idrec.prompts)."""
    history = cut_history(sample.user_id, sample.history, max_prompt_tokens, count)
    return {"messages": [{"role": "user", "content": prompt_text(sample.user_id, history)},
                         {"role": "assistant", "content": item_list(sample.target)}]}


def holdout_users(users: Iterable[int], share: float, seed: int) -> frozenset[int]:
    """A seeded `share` of `users` (at least one when share > 0 and there are two or more users)."""
    pool = np.array(sorted(set(int(u) for u in users)), dtype=np.int64)
    if share <= 0 or pool.size < 2:
        return frozenset()
    n = min(pool.size - 1, max(1, round(share * pool.size)))
    return frozenset(int(u) for u in np.random.default_rng(seed).choice(pool, n, replace=False))


def split_records(samples: Sequence[Sample], max_prompt_tokens: int, holdout_share: float, seed: int,
                  count: Callable[[str], int] = count_tokens) -> tuple[list[dict], list[dict]]:
    """(training records, held-out records): the samples of `holdout_users` go to the second list."""
    held = holdout_users((s.user_id for s in samples), holdout_share, seed)
    train, valid = [], []
    for s in samples:
        (valid if s.user_id in held else train).append(chat_record(s, max_prompt_tokens, count))
    return train, valid


def to_jsonl(records: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def format_errors(text: str, *, max_errors: int = 10) -> list[str]:
    """What breaks OpenAI's chat fine-tuning file rules, as 'line N: reason' (empty when the file is valid): every
    line a JSON object with a non-empty `messages` list; each message a `role` among system/user/assistant and a
    non-empty string `content`; at least one assistant message. At most `max_errors` are listed."""
    errors: list[str] = []
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        return ["file: no examples"]
    for n, line in enumerate(lines, 1):
        if len(errors) >= max_errors:
            break
        reason = _line_error(line)
        if reason:
            errors.append(f"line {n}: {reason}")
    return errors


def _line_error(line: str) -> str | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return f"not JSON ({e.msg})"
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        return "no 'messages' list"
    for m in obj["messages"]:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"message role must be one of {', '.join(ROLES)}"
        if not isinstance(m.get("content"), str) or not m["content"]:
            return f"{m['role']} message has no string content"
    if not any(m["role"] == "assistant" for m in obj["messages"]):
        return "no assistant message"
    return None


def record_pairs(record: dict) -> set[tuple[int, int]]:
    """(user_id, item_id) of every item written in a record (prompt and answer), the user read from `user(u<id>)`:
    what a check that no valid or test pair reached a file compares against."""
    user = parse_user(record["messages"][0]["content"])
    return {(user, int(m)) for msg in record["messages"] for m in ITEM_TOKEN.findall(msg["content"])}
