"""Prefect tasks for the LLMRec recommender (paper Stage 2): train on the augmented data, then evaluate.

`train_llmrec` reads the split, the embedded feature sources (`embed` artifacts, aligned to dense ids: users for
"user_*" sources, items for "item_*"; ids without a vector get a zero row) and the LLM's augmented edges (the
union of the `augment-edges` batch artifacts, validated once into `AugmentedEdges`), builds the model and fits it
with early stopping on VALID. Output `llmrec/<key>`: checkpoint, history, fit.json (as tasks/train.py, plus the
feature coverage and the number of augmented edges). Its key covers the split, the feature refs (themselves
content keys), the edge batch refs with the sha256 of their rows (a batch completed by a re-run keeps its ref but
changes its rows) and the configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from prefect.states import State

from recsys.config import EvalConfig, LLMRecConfig, TrainConfig
from recsys.data.dataset import DenseSplit, IdMap
from recsys.embed.features import align
from recsys.models.llmrec import LLMRec, build_llmrec, feature_group
from recsys.train.augmented import EDGE_COLUMNS, AugmentedEdges
from storage.store import ArtifactRef, ArtifactStore
from tasks.common import read_dense_split, stage_ref, stage_task, table_digests
from tasks.embed import read_embeddings
from tasks.train import OnEpoch, fit_and_store, restore, store_metrics

EDGE_TABLE = "rows"  # of augment-edges batches


def llmrec_ref(params: Mapping[str, Any]) -> ArtifactRef:
    """The output address of `train_llmrec`: its parameters and the sha256 of each written edge batch's rows."""
    refs = params["edge_refs"]
    digests = None if refs is None else table_digests(ArtifactStore(params["store_root"]), refs, EDGE_TABLE)
    return stage_ref("llmrec", {**params, "_extra": digests})


def read_features(store: ArtifactStore, feature_refs: Mapping[str, str],
                  ids: IdMap) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """name -> float32 tensor [n_users or n_items, dim] in dense-id order, and the share of ids with a vector."""
    features: dict[str, torch.Tensor] = {}
    coverage: dict[str, float] = {}
    for name, ref in sorted(feature_refs.items()):
        side, _ = feature_group(name)
        raw_ids, matrix = read_embeddings(store, ref)
        wanted = ids.user_ids if side == "user" else ids.item_ids
        if matrix.ndim != 2 or matrix.shape[0] == 0:
            raise ValueError(f"feature {name!r} ({ref}) holds no vectors")
        rows, present = align(raw_ids, matrix, wanted)
        features[name] = torch.from_numpy(rows)
        coverage[name] = float(present.mean()) if len(present) else 0.0
    return features, coverage


def read_edges(store: ArtifactStore, edge_refs: list[str] | None, ids: IdMap) -> AugmentedEdges | None:
    """The union of the augment-edges batches (batches never written are skipped), validated once."""
    if edge_refs is None:
        return None
    frames = [store.read_table(r, EDGE_TABLE) for r in edge_refs if store.exists(r)]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(EDGE_COLUMNS))
    frame = frame[list(EDGE_COLUMNS)].astype("int64")
    return AugmentedEdges.from_frame(frame, ids)


def _inputs(store: ArtifactStore, split_ref: str,
            feature_refs: Mapping[str, str]) -> tuple[DenseSplit, IdMap, dict[str, torch.Tensor], dict[str, float]]:
    data, ids = read_dense_split(store, split_ref)
    features, coverage = read_features(store, feature_refs, ids)
    return data, ids, features, coverage


@stage_task(llmrec_ref, name="train-llmrec", task_run_name="train-llmrec-{train.seed}")
def train_llmrec(store_root: str, split_ref: str, edge_refs: list[str] | None, feature_refs: dict[str, str],
                 llmrec: LLMRecConfig, train: TrainConfig, eval: EvalConfig, on_epoch: OnEpoch | None = None
                 ) -> str | State:
    """Train LLMRec with early stopping on VALID; store the best checkpoint, the history and fit.json (`on_epoch`
    as in tasks/train.py:train_model)."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "edge_refs": edge_refs, "feature_refs": feature_refs, "llmrec": llmrec,
              "train": train, "eval": eval}
    ref = llmrec_ref({**params, "store_root": store_root})
    data, ids, features, coverage = _inputs(store, split_ref, feature_refs)
    augmented = read_edges(store, edge_refs, ids)
    net = build_llmrec(llmrec, data, features, augmented=augmented, seed=train.seed)
    return fit_and_store(store, ref, params, net, data, train.tuned_for(llmrec.backbone), eval, {
        "model": "llmrec",
        "feature_coverage": coverage,
        "augmented_edges": 0 if augmented is None else len(augmented),
    }, on_epoch)


def load_llmrec(store: ArtifactStore, train_ref: str, device: str = "auto") -> tuple[LLMRec, DenseSplit, IdMap]:
    """Rebuild a trained LLMRec (features re-read from the refs its manifest records), on `device`, eval mode."""
    p = store.manifest(train_ref)["params"]
    data, ids, features, _ = _inputs(store, p["split_ref"], p["feature_refs"])
    net = build_llmrec(LLMRecConfig.model_validate(p["llmrec"]), data, features)
    return restore(store, train_ref, net, device), data, ids


@stage_task("llmrec-evaluate", name="evaluate-llmrec", task_run_name="evaluate-llmrec")
def evaluate_llmrec(store_root: str, train_ref: str, eval: EvalConfig, device: str = "auto") -> str:
    """Full-ranking metrics of a trained LLMRec on VALID (train masked) and TEST (train and valid masked)."""
    store = ArtifactStore(store_root)
    params = {"train_ref": train_ref, "eval": eval, "device": device}
    ref = stage_ref("llmrec-evaluate", params)
    store_metrics(store, ref, params, *load_llmrec(store, train_ref, device), eval)
    return str(ref)
