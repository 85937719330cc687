"""What a tuning trial may change, per model, as Optuna suggestions (TPE over these ranges).

Every augmentation has "off" as an explicit choice (a feature group's fusion scale 0, omega3 = 0, no pruning, no
MAE), so a study of LLMRec can choose "this source does not help", and `all_off` is the trial that is LLMRec reduced
to its backbone: with the backbone's own tuned lr and L2 it trains exactly the tuned backbone, so a tuned LLMRec
is never worse than its tuned backbone on validation.

Ranges: lr and L2 around the values chosen on the reference split (recsys/config.py TUNED_TRAIN: lr 2e-3..5e-3,
L2 1e-3..1e-2); fusion scales over the official code's three (0.005 attributes, 0.02 modal, 2.8 profile) and the
paper's grids (Fig. 4c: omega1 in {0, 0.8, ..., 3.2} Netflix, {0, ..., 0.4} MovieLens); omega3 and omega4 over the
paper's grids (§4.4: omega3 {0, .2, .4, .6, .8}, omega4 {0, .2, .4, .6, .8} on MovieLens); feature dropout and the
MAE mask rate over the official code's flags (--drop_rate, --mask_rate).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from recsys.config import LLMRecConfig, TrainConfig

LR = (1e-4, 3e-2)  # Adam learning rate, log-uniform
REG = (1e-6, 1e-1)  # L2 weight on the batch's layer-0 embeddings, log-uniform
SCALE = (1e-3, 10.0)  # fusion scale of a feature group when it is on, log-uniform
OMEGA3 = (0.02, 1.0)  # augmented triplets per batch as a share of B, when the LLM's edges are on, log-uniform
OMEGA4 = (0.05, 0.9)  # pruning rate, when pruning is on
DROPOUT = (0.0, 0.5)  # feature dropout
MASK_RATE = (0.05, 0.5)  # MAE mask rate, when the MAE is on
# Feature group -> the LLMRecConfig scale the official fusion uses for it.
SCALE_FIELDS = {"modal": "modal_scale", "profile": "profile_scale", "attribute": "attribute_scale"}


class Trial(Protocol):
    """The part of `optuna.Trial` a search space uses."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any: ...


def suggest_train(trial: Trial, train: TrainConfig) -> TrainConfig:
    """`train` with the trial's learning rate and L2 weight (the only training settings a study changes)."""
    return train.model_copy(update={"lr": trial.suggest_float("lr", *LR, log=True),
                                    "reg_weight": trial.suggest_float("reg_weight", *REG, log=True)})


def suggest_llmrec(trial: Trial, base: LLMRecConfig, groups: Collection[str], edges: bool) -> LLMRecConfig:
    """`base` with the trial's augmentation settings, in the official per-group fusion.

    groups: the feature groups the model has sources of ("modal", "profile", "attribute"); edges: whether there
    are LLM-augmented edges. A group or mechanism that is absent is switched off without asking the trial.
    """
    update: dict[str, Any] = {"fusion": "official"}
    for group, field in SCALE_FIELDS.items():
        on = group in groups and trial.suggest_categorical(f"{group}_on", [True, False])
        update[field] = trial.suggest_float(f"{group}_scale", *SCALE, log=True) if on else 0.0
    on = edges and trial.suggest_categorical("edges_on", [True, False])
    update["omega3"] = trial.suggest_float("omega3", *OMEGA3, log=True) if on else 0.0
    update["prune"] = bool(trial.suggest_categorical("prune", [True, False]))
    if update["prune"]:
        update["omega4"] = trial.suggest_float("omega4", *OMEGA4)
    update["feature_dropout"] = trial.suggest_float("feature_dropout", *DROPOUT)
    update["mae"] = bool(trial.suggest_categorical("mae", [True, False]))
    if update["mae"]:
        update["mask_rate"] = trial.suggest_float("mask_rate", *MASK_RATE)
    return base.model_copy(update=update)


def all_off(groups: Collection[str], edges: bool, lr: float, reg_weight: float) -> dict[str, Any]:
    """The trial parameters of LLMRec reduced to its backbone (every group off, no edges, no pruning, no dropout,
    no MAE) with the given lr and L2: enqueue it with the backbone's best values."""
    params: dict[str, Any] = {f"{g}_on": False for g in SCALE_FIELDS if g in groups}
    if edges:
        params["edges_on"] = False
    return {**params, "prune": False, "feature_dropout": 0.0, "mae": False, "lr": lr, "reg_weight": reg_weight}
