"""Degenerate users: users a stage cannot serve like the others, and the one policy every stage applies to them.

**Policy.** A stage that meets such users skips them and says so in one WARNING that names the stage, what the
users lack, how many there are, one example (raw user id) and the file the stage read them from. A stage that
would be left with no user at all stops instead with a DataError naming the file. Nothing is skipped silently and
no such user ends in a bare traceback.

Kinds, the stages that meet them and what those stages do:
- too sparse for the split (one interaction, or fewer than the split needs to hold one out) -- split: kept in
  train only, not evaluated; a DataError naming the split that fits when valid or test would be empty.
- cold: in valid or test but not in train -- split: warned; evaluation: left out of the metrics
  (EvalConfig.cold_users="keep" keeps them), counted in metrics.json `users`.
- no training interaction at all -- candidates: none; augmentation: never asked (in no batch).
- no negative (every item is one of the user's training items) -- sampling: the user's pairs are left out of BPR
  sampling; a DataError when no user has a negative.
- fewer than 2 candidates left after masking the training items (or after leaving out items without text) --
  candidates: fewer or none; edges: not asked, listed in augment_failures with the reason.
- no training item with text -- profiles and edges: not asked, listed in augment_failures with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("llmrec.data")


def describe_skip(stage: str, users: Sequence[int] | np.ndarray, what: str, source: str | Path | None) -> str:
    """The one message for skipped users: '<stage>: skipping N user(s) <what>, e.g. user U [file F]'."""
    users = np.asarray(users, dtype=np.int64)
    where = f" [file {source}]" if source else ""
    return f"{stage}: skipping {users.size} user(s) {what}, e.g. user {int(users[0])}{where}"


def warn_skipped(stage: str, users: Sequence[int] | np.ndarray, what: str, source: str | Path | None,
                 logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
    """Log `describe_skip` as a WARNING (on `logger`, else the `llmrec.data` logger); nothing when `users` is
    empty."""
    if len(users):
        (logger or log).warning("%s", describe_skip(stage, users, what, source))
