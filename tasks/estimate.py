"""What an augmentation will cost, before anything is sent: every prompt of a stage built (as in batch mode's
planning pass, with no HTTP call), its input tokens counted with the model's tokenizer, its output tokens
expected from the ledger (the mean of this model's answers in this stage) or `max_tokens`, priced at the price
table's normal and batch prices; no API key is needed. Prompts already answered in the response cache cost nothing
and are counted apart. Re-asks of invalid answers are not foreseen: they add to the real cost."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from recsys.config import AugmentConfig, LLMConfig
from recsys.llm.batch import DeferredChat
from recsys.llm.client import LOCAL_PLACEHOLDER_KEY
from recsys.llm.pricing import load_price_table
from recsys.llm.tokens import count_message_tokens, model_encoding
from storage.ledger import read_ledger
from tasks.batch_api import collect_pending


def observed_output_tokens(ledger_root: str, model: str, stage: str) -> float | None:
    """The mean completion tokens of this model's answered HTTP calls in `stage` in the ledger, None if none."""
    rows = read_ledger(ledger_root)
    answered = rows[(rows["model"] == model) & (rows["stage"] == stage) & (rows["outcome"] == "ok")
                    & ~rows["cached"]]
    return float(answered["completion_tokens"].mean()) if len(answered) else None


@task(name="estimate-stage", cache_policy=NO_CACHE)
def estimate_stage(store_root: str, stage: str, ids: list[int], refs: Mapping[str, str], llm: LLMConfig,
                   augment: AugmentConfig, ledger_root: str) -> dict[str, Any]:
    """One stage's estimate: items, prompts built, prompts already answered (cached), input tokens and expected
    output tokens of the prompts to send, USD at normal and batch prices (None for an unpriced model), the
    tokenizer and where the output estimate comes from."""
    # Nothing is sent, so no API key is needed: the client gets the placeholder, never the user's key.
    asker, _ = collect_pending(store_root, stage, ids, refs, llm, augment, [], api_key=LOCAL_PLACEHOLDER_KEY)
    return price_prompts(stage, len(ids), asker, llm, ledger_root)


def price_prompts(stage: str, items: int, asker: DeferredChat, llm: LLMConfig, ledger_root: str, *,
                  copies: int = 1, label: str | None = None) -> dict[str, Any]:
    """The estimate row of the questions `asker` saw with no HTTP call (recsys/llm/batch.py `DeferredChat`): its
    pending prompts are sent, its cached ones cost nothing. With `copies` > 1 the built prompts also stand for
    `copies - 1` more sets of the same size, all to be sent (Llama4Rec's rankings of lists that exist only after
    training on the LLM's answers); `label` names the row (default: `stage`, which keys the ledger's output mean)."""
    enc, tokenizer = model_encoding(llm.model)
    pending = sum(count_message_tokens(body["messages"], enc) for body in asker.pending.values())
    built = sum(count_message_tokens(messages, enc) for messages in asker.built.values()) if copies > 1 else 0
    to_send = len(asker.pending) + len(asker.built) * (copies - 1)
    input_tokens = pending + built * (copies - 1)
    observed = observed_output_tokens(ledger_root, llm.model, stage)
    per_answer = observed if observed is not None else float(llm.max_tokens)
    output_tokens = round(per_answer * to_send)
    price = load_price_table(llm.price_table).price(llm.model)
    return {"stage": label or stage, "items": items * copies, "prompts": to_send + asker.hits, "cached": asker.hits,
            "input_tokens": input_tokens, "output_tokens": output_tokens,
            "usd": None if price is None else price.cost(input_tokens, output_tokens),
            "usd_batch": None if price is None else price.cost(input_tokens, output_tokens, batch=True),
            "tokenizer": tokenizer,
            "output_source": f"ledger mean {observed:.1f}" if observed is not None else f"max_tokens {llm.max_tokens}"}
