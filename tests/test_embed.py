"""The embedding stage: text builders, the text-hash cache, the local and the remote backend (against the real
local OpenAI-compatible server, counting on the server side), feature files, and Prefect caching in a real flow."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from recsys.config import EmbedConfig
from recsys.embed.base import Embedder, LocalBackend
from recsys.embed.cache import CachedEmbedder, VectorCache, text_key
from recsys.embed.features import FeatureFileError, align, load_feature_file
from recsys.embed.local import LocalEmbedder
from recsys.embed.texts import attribute_texts_of, item_text, item_texts_of, profile_text, texts_for
from recsys.llm.client import UsageEvent
from recsys.llm.limits import clear_shared_limiters
from recsys.llm.pricing import cost_usd

if TYPE_CHECKING:
    from llmsim.launch import LLMServer

ITEMS = pd.DataFrame({"item_id": [3, 1, 2], "title": ["Four Rooms (1995)", "Toy Story (1995)", "Heat"],
                      "year": pd.array([1995, 1995, None], dtype="Int64"),
                      "genres": ["Thriller", "Animation|Children's|Comedy", ""], "description": ["", "", ""]})
PROFILE = {"user_id": 7, "age": 25, "gender": "male", "liked_genres": ["Drama", "Comedy"], "disliked_genres": [],
           "liked_directors": ["Steven  Spielberg"], "country": "United States", "language": "English",
           "raw_text": '```json\n{"age": 25, ...}\n```', "model": "m", "prompt_hash": "h"}


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    """The real model, loaded once for the module (about 10 s)."""
    embedder = LocalEmbedder()
    embedder.load()
    return embedder


class Counting:
    """A fake backend that counts its calls and texts."""

    backend, model = "fake", "fake-1"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)


# --- texts ------------------------------------------------------------------------------------------------------
def test_item_text_profile_and_attribute_texts() -> None:
    assert item_text("Toy Story (1995)", 1995, "Animation|Children's|Comedy") == \
        "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert item_text("Heat", None, "") == "Heat."
    assert item_text("A\nB", 2001, "Drama", "  Long\tplot ") == "A B (2001). Genres: Drama. Long plot"
    ids, texts = item_texts_of(ITEMS)
    assert ids.tolist() == [1, 2, 3] and texts[2] == "Four Rooms (1995). Genres: Thriller."
    # Parsed fields, not raw_text; whitespace normalised; empty lists left out.
    text = profile_text(PROFILE)
    assert text == ("A 25-year-old male from United States who speaks English. Likes Drama, Comedy. "
                    "Favourite directors: Steven Spielberg.")
    assert "json" not in text
    # Lists as numpy arrays (what Parquet gives back) give the same text.
    assert profile_text({**PROFILE, "liked_genres": np.array(["Drama", "Comedy"])}) == text
    ids, texts = texts_for("user_profile", pd.DataFrame([PROFILE]))
    assert ids.tolist() == [7] and texts == [text]
    attrs = pd.DataFrame({"item_id": [2, 1], "director": ["Michael Mann", "John Lasseter"],
                          "country": ["USA", ""], "language": ["English", "English"]})
    ids, texts = attribute_texts_of(attrs, "director")
    assert ids.tolist() == [1, 2] and texts == ["John Lasseter", "Michael Mann"]
    ids, texts = texts_for("item_attr_country", attrs)
    assert ids.tolist() == [2] and texts == ["USA"]  # an empty value gets no row
    with pytest.raises(ValueError, match="unknown"):
        texts_for("item_attr_budget", attrs)


# --- cache ------------------------------------------------------------------------------------------------------
def test_cache_dedups_batches_and_serves_repeats_with_zero_calls(tmp_path: Path) -> None:
    fake = Counting()
    assert isinstance(fake, Embedder)
    texts = ["a", "bb", "a", "ccc", "aaaa", "bb", "e"]
    first = CachedEmbedder(fake, VectorCache(tmp_path), batch_size=2).encode(texts)
    assert first.shape == (7, 3) and first.dtype == np.float32
    assert [len(c) for c in fake.calls] == [2, 2, 1]  # 5 unique texts in batches of 2
    np.testing.assert_array_equal(first[0], first[2])
    # A new process would open the same folder: nothing reaches the backend again.
    fake2 = Counting()
    again = CachedEmbedder(fake2, VectorCache(tmp_path), batch_size=2)
    np.testing.assert_array_equal(again.encode(texts), first)
    assert fake2.calls == [] and again.stats.hits == 5 and again.stats.computed == 0
    # Another model (or dimensions) is another key.
    assert text_key("fake", "fake-1", "a") != text_key("fake", "fake-2", "a") != text_key("fake", "fake-1", "a", 8)


# --- local backend ------------------------------------------------------------------------------------------------
def test_local_backend_shape_norm_and_throughput(local: LocalEmbedder, tmp_path: Path) -> None:
    _, texts = item_texts_of(ITEMS)
    matrix = CachedEmbedder(LocalBackend(local), VectorCache(tmp_path)).encode(texts)
    assert matrix.shape == (3, 384) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    batch = [f"Movie number {i} ({1900 + i}). Genres: Drama, Comedy." for i in range(128)]
    t0 = time.perf_counter()
    LocalBackend(local).embed(batch)
    print(f"\nlocal all-MiniLM-L6-v2: {len(batch) / (time.perf_counter() - t0):.0f} texts/s")


# --- remote backend against the real local server ---------------------------------------------------------------
def test_remote_backend_counts_tokens_and_repeats_without_http(llm_server: LLMServer, local: LocalEmbedder,
                                                               tmp_path: Path) -> None:
    from recsys.embed.remote import RemoteEmbedder

    clear_shared_limiters()
    llm_server.reset()
    events: list[UsageEvent] = []
    cfg = EmbedConfig(backend="openai", model="text-embedding-3-small", base_url=llm_server.base_url,
                      batch_size=4, max_in_flight=2, backoff_initial_s=0.05)
    texts = [f"Film {i}. Genres: Drama." for i in range(10)] + ["Film 0. Genres: Drama."]
    with RemoteEmbedder(cfg, usage_sink=events.append, api_key="sk-secret-test") as remote:
        assert "sk-secret" not in repr(remote)
        t0 = time.perf_counter()
        matrix = CachedEmbedder(remote, VectorCache(tmp_path), batch_size=cfg.batch_size).encode(texts)
        elapsed = time.perf_counter() - t0
    print(f"\nremote (local server, cold model included): {10 / elapsed:.0f} texts/s")
    stats = llm_server.stats()
    assert matrix.shape == (11, 384) and stats["requests"] == 3  # 10 unique texts, 4 per request
    assert [e.outcome for e in events] == ["ok"] * 3
    tokens = sum(e.prompt_tokens for e in events)
    assert tokens == stats["embedding_tokens"] > 0
    assert sum(e.cost_usd or 0 for e in events) == pytest.approx(cost_usd("text-embedding-3-small", tokens, 0))
    # The server embeds with the same model: the vectors agree with the local backend's.
    np.testing.assert_allclose(matrix, LocalBackend(local).embed(texts), atol=1e-4)
    # Second run, new cache handle and client: zero HTTP requests.
    events.clear()
    with RemoteEmbedder(cfg, usage_sink=events.append) as remote:
        again = CachedEmbedder(remote, VectorCache(tmp_path), batch_size=cfg.batch_size).encode(texts)
    np.testing.assert_array_equal(again, matrix)
    assert llm_server.stats()["requests"] == 3 and events == []


def test_remote_backend_retries_server_errors(llm_server: LLMServer) -> None:
    from recsys.embed.remote import RemoteEmbedder

    clear_shared_limiters()
    server = llm_server  # the module's server (its model is loaded): faults on for this test only
    server.set_faults(error_rate=0.5, seed=3)
    server.reset()
    events: list[UsageEvent] = []
    cfg = EmbedConfig(backend="openai", model="llmrec-heuristic", base_url=server.base_url, batch_size=2,
                      max_in_flight=1, backoff_initial_s=0.01, backoff_max_s=0.05, max_attempts=20)
    try:
        with RemoteEmbedder(cfg, usage_sink=events.append) as remote:
            matrix = remote.embed([f"text {i}" for i in range(6)])
    finally:
        stats = server.stats()
        server.set_faults()
    assert matrix.shape == (6, 384)
    failed = [e for e in events if e.outcome != "ok"]
    assert failed and all(e.cost_usd == 0.0 and e.prompt_tokens == 0 for e in failed)
    assert sum(e.prompt_tokens for e in events) == stats["embedding_tokens"]


# --- user-supplied features ---------------------------------------------------------------------------------------
def test_feature_file_validation(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    m = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "f.npy", m)
    pd.DataFrame({"item_id": [30, 10, 20]}).to_parquet(tmp_path / "ids.parquet")
    ids, matrix = load_feature_file(tmp_path / "f.npy", tmp_path / "ids.parquet", known_ids=[10, 20, 30, 40])
    assert ids.tolist() == [10, 20, 30] and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[0], m[1])
    save_file({"embeddings": m.astype(np.float32)}, str(tmp_path / "f.safetensors"))
    pd.DataFrame({"id": [1, 2, 3], "row": [2, 0, 1]}).to_csv(tmp_path / "ids.csv", index=False)
    ids, matrix = load_feature_file(tmp_path / "f.safetensors", tmp_path / "ids.csv")
    np.testing.assert_array_equal(matrix[0], m[2])
    pd.DataFrame({"item_id": [1, 2]}).to_parquet(tmp_path / "short.parquet")
    with pytest.raises(FeatureFileError, match="expected 2 rows"):
        load_feature_file(tmp_path / "f.npy", tmp_path / "short.parquet")
    pd.DataFrame({"item_id": [1, 1, 2]}).to_parquet(tmp_path / "dup.parquet")
    with pytest.raises(FeatureFileError, match="id 1 is listed 2 times"):
        load_feature_file(tmp_path / "f.npy", tmp_path / "dup.parquet")
    with pytest.raises(FeatureFileError, match="not in the dataset"):
        load_feature_file(tmp_path / "f.npy", tmp_path / "ids.parquet", known_ids=[10, 20])
    m[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", m)
    with pytest.raises(FeatureFileError, match="row 1 has NaN"):
        load_feature_file(tmp_path / "nan.npy", tmp_path / "ids.parquet")
    out, present = align(np.array([10, 30]), np.eye(2, dtype=np.float32), [30, 20, 10], fill="mean")
    assert present.tolist() == [True, False, True] and out[1].tolist() == [0.5, 0.5]


# --- Prefect -----------------------------------------------------------------------------------------------------
def test_embed_task_is_cached_across_flow_runs(local: LocalEmbedder, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow

    import tasks.embed as te
    from storage.store import ArtifactStore
    from tasks.common import bind

    monkeypatch.setattr(te, "_LOCAL", local)
    store = ArtifactStore(tmp_path / "store")
    with store.write("dataset", "d1", {"test": 1}) as w:
        w.table("items", ITEMS)
    root = str(store.root)

    @flow(name="embed-test")
    def embed_flow() -> Any:
        return bind(te.embed_source, root)(root, "item_text", ["dataset/d1"], EmbedConfig(), return_state=True)

    first = embed_flow()
    misses = local.misses
    second = embed_flow()
    assert first.name == "Completed" and second.name == "Cached"
    assert local.misses == misses  # no model call on the second run
    ref = first.result()
    assert second.result() == ref
    ids, matrix = te.read_embeddings(store, ref)
    assert ids.tolist() == [1, 2, 3] and matrix.shape == (3, 384)
    assert store.manifest(ref)["artifacts"]["embeddings"]["shapes"] == {"embeddings": [3, 384]}
    assert "api_key" not in str(store.manifest(ref)["params"]).replace("api_key_env", "")
