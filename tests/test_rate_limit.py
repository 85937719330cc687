"""A requests/minute limit shared across processes: the clients' `before_request` hook, and a Prefect global
concurrency limit with slot decay holding the augment flow's request rate (real flow, real local LLM server)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from flows.augment import augment_flow
from recsys.augment.prompts import ItemText, attributes_messages
from recsys.config import AugmentConfig, AugmentRunConfig, DataConfig, EmbedConfig, LLMConfig, ModelConfig, TrainConfig
from recsys.embed.remote import RemoteEmbedder
from recsys.llm.client import LLMClient
from tasks.ratelimit import RateLimitUnusable, check_rate_limit, prefect_rate_limit_hook

LIMIT, DECAY = 2, 2.0  # at most 2 at once, then 2 requests per second
TINY_USERS = 12


class Stop(RuntimeError):
    pass


def ask(title: str) -> list[dict[str, str]]:
    """A real attributes prompt for one movie."""
    return attributes_messages([ItemText(item_id=1, title=title, year=1995, genres="Drama")])


def test_hook_runs_once_per_http_attempt_and_never_for_cache_hits(llm_server_factory, tmp_path):
    server = llm_server_factory()
    calls: list[int] = []
    cfg = LLMConfig(model="llmrec-heuristic", base_url=server.base_url, rpm=None, tpm=None, max_attempts=3,
                    backoff_initial_s=0.01, backoff_max_s=0.05)
    with LLMClient(cfg, cache_dir=tmp_path / "cache", before_request=lambda: calls.append(1)) as client:
        for title in ("Alien", "Heat", "Alien"):  # the second "Alien" is a cache hit
            assert client.chat(ask(title), template_version="t").text is not None
        assert len(calls) == 2
        server.set_faults(error_rate=1.0)
        assert client.chat(ask("Fargo"), template_version="t").text is None
        assert len(calls) == 2 + 3  # every retried attempt takes a slot
    server.set_faults()
    embed_cfg = EmbedConfig(backend="openai", model="llmrec-heuristic", base_url=server.base_url, batch_size=2,
                            max_in_flight=1, rpm=None, tpm=None)
    with RemoteEmbedder(embed_cfg, before_request=lambda: calls.append(1)) as embedder:
        assert embedder.embed(["x", "y", "z"]).shape[0] == 3
    assert len(calls) == 5 + 2  # two requests of at most 2 texts

    def refuse() -> None:
        raise Stop("no slot")

    requests = server.stats()["requests"]
    with LLMClient(cfg, cache_dir=tmp_path / "cache", before_request=refuse) as client, \
            pytest.raises(Stop, match="no slot"):  # the hook's error ends the call: nothing is sent
        client.chat(ask("Babe"), template_version="t")
    assert server.stats()["requests"] == requests


@pytest.fixture()
def tiny_movielens(small_movielens, tmp_path) -> Path:
    """The first 12 users of the small MovieLens sample (real rows)."""
    inter = pd.read_parquet(small_movielens / "interactions.parquet")
    inter = inter[inter["user_id"] <= TINY_USERS]
    items = pd.read_parquet(small_movielens / "items.parquet")
    folder = tmp_path / "ml-tiny"
    folder.mkdir()
    inter.to_parquet(folder / "interactions.parquet", index=False)
    items[items["item_id"].isin(inter["item_id"])].to_parquet(folder / "items.parquet", index=False)
    return folder


def tiny_config(dataset: Path, base_url: str, limit: str | None) -> AugmentRunConfig:
    return AugmentRunConfig(
        data=DataConfig(dataset=str(dataset)), model=ModelConfig(name="mf", embedding_dim=8),
        train=TrainConfig(max_epochs=1, device="cpu"),
        llm=LLMConfig(model="llmrec-heuristic", base_url=base_url, rpm=None, tpm=None, max_in_flight=4,
                      prefect_rate_limit=limit),
        augment=AugmentConfig(stages=("profiles",), users_per_batch=6),
    )


def test_missing_or_decay_less_limit_fails_before_any_request(tiny_movielens, tmp_path, llm_server):
    llm_server.reset()
    with pytest.raises(RateLimitUnusable, match=r"'no-such-limit' does not exist; create it with `prefect gcl"):
        augment_flow(config=tiny_config(tiny_movielens, llm_server.base_url, "no-such-limit"),
                     store_root=str(tmp_path / "store"))
    with pytest.raises(RateLimitUnusable, match="'no-such-limit' cannot be used"):  # strict=True in the hook
        prefect_rate_limit_hook("no-such-limit")()
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="llm-no-decay", limit=2))
    with pytest.raises(RateLimitUnusable, match="no slot decay"):
        check_rate_limit("llm-no-decay")
    assert llm_server.stats()["requests"] == 0


@pytest.mark.slow
def test_prefect_rate_limit_holds_the_request_rate(tiny_movielens, tmp_path, llm_server):
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name="llm-test-rpm", limit=LIMIT, slot_decay_per_second=DECAY))
    llm_server.reset()
    out = tmp_path / "out"
    result = augment_flow(config=tiny_config(tiny_movielens, llm_server.base_url, "llm-test-rpm"),
                          store_root=str(tmp_path / "store"), out_dir=str(out))
    assert result["rows"] == {"profiles": TINY_USERS}
    ledger = pd.read_parquet(out / "ledger.parquet")
    sent = ledger[~ledger["cached"]].sort_values("timestamp")["timestamp"]
    assert len(sent) == TINY_USERS == llm_server.stats()["requests"]
    seconds = (sent - sent.iloc[0]).dt.total_seconds().tolist()
    # Any run of requests from the i-th to the j-th fits the bucket: at most LIMIT at once plus DECAY per second
    # (one request of slack: a ledger time is the end of an attempt, not its start). Unthrottled, the 12 requests
    # go out 4 at a time within a fraction of a second.
    for i, j in itertools.combinations(range(len(seconds)), 2):
        assert j - i + 1 <= LIMIT + DECAY * (seconds[j] - seconds[i]) + 1, (i, j, seconds)
    print(f"{len(seconds)} requests over {seconds[-1]:.1f} s under limit {LIMIT}, decay {DECAY}/s")
