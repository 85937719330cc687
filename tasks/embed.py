"""Prefect tasks for the embedding stage: one task run per feature source, keyed on its content.

A source is "item_text" (the dataset's items), "user_profile" (augment-profiles batches) or "item_attr_<field>"
(augment-attributes batches). Its key covers the source, the text builders' version, the backend, model and
dimensions, and the refs of its inputs together with the sha256 of the tables read (an augment batch completed by
a re-run keeps its ref but changes its rows). Endpoint, key, batch size and limits are not in the key: they do not
change the vectors. Output `embed/<key>`: `embeddings.safetensors` ({"embeddings": float32 [n, dim]}; the manifest
records the shape), `index.parquet` (id, row: raw ids) and `summary.json`. Texts already embedded by any earlier
run come from the text-hash cache (`<store>/embed-cache`), so they are never computed or paid for twice.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger
from prefect.runtime import flow_run

from recsys.config import EmbedConfig
from recsys.embed.base import make_embedder
from recsys.embed.cache import CachedEmbedder, VectorCache
from recsys.embed.texts import TEXTS_VERSION, texts_for
from recsys.llm.client import UsageEvent
from storage.keys import content_key
from storage.ledger import LedgerWriter, store_ledger_root
from storage.store import ArtifactRef, ArtifactStore
from tasks.common import stage_task, table_digests
from tasks.progress import PhaseProgress
from tasks.ratelimit import prefect_rate_limit_hook

STAGE = "embed"
STAGE_VERSION = "1"
TABLES = {"item_text": "items", "user_profile": "rows"}  # item_attr_*: "rows" of augment-attributes batches

_LOCAL: Any = None
_LOCAL_LOCK = threading.Lock()


def shared_local() -> Any:
    """One LocalEmbedder per process (loading the model takes seconds): every task run shares it."""
    global _LOCAL
    with _LOCAL_LOCK:
        if _LOCAL is None:
            from recsys.embed.local import LocalEmbedder

            _LOCAL = LocalEmbedder()
        return _LOCAL


def table_of(source: str) -> str:
    return TABLES.get(source, "rows")


def embed_ref(params: Mapping[str, Any]) -> ArtifactRef:
    """The output address of one source: only what changes the vectors is part of the key."""
    cfg: EmbedConfig = params["embed"]
    store = ArtifactStore(params["store_root"])
    table = table_of(params["source"])
    keyed = {"source": params["source"], "texts": TEXTS_VERSION, "backend": cfg.backend,
             "model": cfg.resolved_model, "dimensions": cfg.dimensions,
             "inputs": table_digests(store, list(params["input_refs"]), table)}
    return ArtifactRef(STAGE, content_key(STAGE, STAGE_VERSION, keyed))


def cache_dir(store_root: str, cfg: EmbedConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(store_root) / "embed-cache"


def _write(store: ArtifactStore, ref: ArtifactRef, params: Any, ids: np.ndarray, matrix: np.ndarray,
           summary: dict[str, Any]) -> None:
    with store.write(ref.stage, ref.key, params) as w:
        w.tensors("embeddings", {"embeddings": np.ascontiguousarray(matrix, dtype=np.float32)})
        w.table("index", pd.DataFrame({"id": np.asarray(ids, dtype=np.int64),
                                       "row": np.arange(len(ids), dtype=np.int64)}))
        w.json("summary", summary)


def read_embeddings(store: ArtifactStore, ref: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw ids int64 [n], float32 [n, dim]) of an `embed` artifact, row i the vector of ids[i]."""
    index = store.read_table(ref, "index")
    matrix = store.read_tensors(ref, "embeddings")["embeddings"]
    return index["id"].to_numpy(), matrix[index["row"].to_numpy()]


@stage_task(embed_ref, name="embed-source", task_run_name="embed-{source}")
def embed_source(store_root: str, source: str, input_refs: list[str], embed: EmbedConfig,
                 ledger_root: str | None = None) -> str:
    """Embed one feature source's texts (cached by text hash) and store matrix + id index."""
    store = ArtifactStore(store_root)
    params = {"source": source, "input_refs": list(input_refs), "embed": embed}
    ref = embed_ref({**params, "store_root": store_root})
    logger = get_run_logger()
    table = table_of(source)
    frames = [store.read_table(r, table) for r in input_refs]
    ids, texts = texts_for(source, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
    run_id = str(flow_run.id or "no-flow-run")
    ledger = None
    if embed.backend == "openai":
        ledger = LedgerWriter(ledger_root or store_ledger_root(store_root), run_id,
                              f"embed-{source}-{uuid.uuid4().hex[:8]}", flow_run_name=flow_run.name)

    def sink(event: UsageEvent) -> None:
        assert ledger is not None
        ledger.append({**event.to_row(), "flow_run_id": run_id})

    vectors = VectorCache(cache_dir(store_root, embed))
    backend = make_embedder(embed, usage_sink=sink if ledger else None,
                            local=shared_local() if embed.backend == "local" else None,
                            tags={"stage": "embed", "batch": source},
                            before_request=prefect_rate_limit_hook(embed.prefect_rate_limit)
                            if embed.backend == "openai" else None)
    try:
        encoder = CachedEmbedder(backend, vectors, batch_size=embed.batch_size, dimensions=embed.dimensions)
        with PhaseProgress(f"embed-{ref.key[:12]}", f"embed {source}", None, "texts to compute") as progress:
            matrix = encoder.encode(texts, on_batch=lambda done, total: progress.update(
                done, f"{len(texts)} texts in all, the others from the cache", total=total))
    finally:
        vectors.close()
        if hasattr(backend, "close"):
            backend.close()
        if ledger is not None:
            ledger.close()
    s = encoder.stats
    summary = {"source": source, "backend": embed.backend, "model": embed.resolved_model, "n": len(ids),
               "dim": int(matrix.shape[1]) if len(ids) else 0, "texts_version": TEXTS_VERSION,
               "cache_hits": s.hits, "computed": s.computed, "calls": s.calls}
    _write(store, ref, params, ids, matrix, summary)
    logger.info("%s: %d vectors (%d from cache, %d computed in %d calls)", source, len(ids), s.hits, s.computed,
                s.calls)
    return str(ref)
