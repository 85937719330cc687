"""Prefect tasks for training a base recommender and evaluating it with full ranking."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger

from recsys.config import EvalConfig, ModelConfig, TrainConfig
from recsys.data.dataset import DenseSplit
from recsys.eval.ranking import evaluate
from recsys.models.base import Recommender
from recsys.models.factory import build_model
from recsys.train.trainer import EpochReport, FitResult, fit, resolve_device
from storage.store import ArtifactRef, ArtifactStore
from tasks.common import read_dense_split, stage_ref, stage_task


@stage_task("train", name="train")
def train_model(store_root: str, split_ref: str, model: ModelConfig, train: TrainConfig, eval: EvalConfig) -> str:
    """Train with early stopping on VALID; store the best checkpoint, the per-epoch history and a summary."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "model": model, "train": train, "eval": eval}
    ref = stage_ref("train", params)
    data, _ = read_dense_split(store, split_ref)
    net = build_model(model, data, seed=train.seed)
    fit_and_store(store, ref, params, net, data, train.tuned_for(model.name), eval, {"model": model.name})
    return str(ref)


def fit_and_store(store: ArtifactStore, ref: ArtifactRef, params: dict[str, Any], net: Recommender,
                  data: DenseSplit, train: TrainConfig, eval: EvalConfig, summary: dict[str, Any]) -> FitResult:
    """Fit with early stopping on VALID, logging each epoch; store checkpoint, history and fit.json (`summary`
    first, then the fit's numbers)."""
    logger = get_run_logger()

    def report(r: EpochReport) -> None:
        logger.info("%s", r.describe())

    result = fit(net, data, train, eval, on_epoch=report)
    with store.write(ref.stage, ref.key, params) as w:
        w.tensors("checkpoint", result.best_state)
        w.table("history", history_frame(result.history))
        w.json("fit", {
            **summary,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "seconds_per_epoch": result.seconds_per_epoch,
            "valid": result.best_valid,
            "device": result.device,
        })
    logger.info("%s: best epoch %d of %d; valid %s", summary.get("model"), result.best_epoch, result.epochs_run,
                _fmt(result.best_valid))
    return result


def history_frame(history: list[dict]) -> pd.DataFrame:
    """One row per epoch; the loss parts ({"bpr": .., "reg": ..}) become loss_bpr, loss_reg columns."""
    rows = [{**{k: v for k, v in h.items() if k != "parts"},
             **{f"loss_{name}": value for name, value in h.get("parts", {}).items()}} for h in history]
    return pd.DataFrame(rows)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def load_trained(store: ArtifactStore, train_ref: str, model: ModelConfig, data: DenseSplit,
                 device: str = "auto") -> Recommender:
    """Rebuild a trained model from its checkpoint, on `device`, in eval mode."""
    net = build_model(model, data)
    arrays = store.read_tensors(train_ref, "checkpoint")
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    net.load_state_dict(state)
    return net.to(resolve_device(device)).eval()


@stage_task("evaluate", name="evaluate")
def evaluate_model(store_root: str, split_ref: str, train_ref: str, model: ModelConfig, eval: EvalConfig,
                   device: str = "auto") -> str:
    """Full-ranking metrics on VALID (train masked) and TEST (train and valid masked)."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "train_ref": train_ref, "model": model, "eval": eval, "device": device}
    ref = stage_ref("evaluate", params)
    data, _ = read_dense_split(store, split_ref)
    net = load_trained(store, train_ref, model, data, device)
    metrics = {part: evaluate(net, data, part, eval.ks, eval.batch_users) for part in ("valid", "test")}
    with store.write(ref.stage, ref.key, params) as w:
        w.json("metrics", metrics)
    get_run_logger().info("test %s", _fmt(metrics["test"]))
    return str(ref)
