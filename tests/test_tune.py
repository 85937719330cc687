"""`llmrec tune` through real Prefect runs on a planted sparse dataset: the backbone's study, then LLMRec's, whose
first trial is LLMRec reduced to the tuned backbone (so noise features can never make the tuned LLMRec worse on
validation), resumed without retraining finished trials, and blind to the test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect import flow

from flows.train import StageTwoInputs
from flows.tune import tune_models
from recsys.config import DataConfig, LLMRecConfig, ModelConfig, RunConfig, SplitConfig, TrainConfig, TuneConfig
from recsys.data.synthetic import planted
from storage.store import ArtifactStore
from tasks.common import bind
from tasks.data import load_data, split_data


def write_planted(folder: Path, test_offset: int = 0) -> Path:
    """The planted data as CSV files: interactions and a split folder (raw ids = dense ids + 1). `test_offset`
    rotates each user's test items among the items it never interacted with, so two folders differ in test only."""
    data = planted(n_users=120, n_items=150, per_user=12, n_train=5, n_valid=3, features="noise", seed=3).split
    test = data.test.copy()
    if test_offset:
        seen = {(u, i) for part in (data.train, data.valid, data.test) for u, i in part.tolist()}
        for row in range(len(test)):
            u, i = test[row]
            j = (i + test_offset) % data.n_items
            while (u, j) in seen:
                j = (j + 1) % data.n_items
            test[row, 1] = j
            seen.add((u, j))
    (folder / "split").mkdir(parents=True)
    parts = {"train": data.train, "valid": data.valid, "test": test}
    for name, pairs in parts.items():
        pd.DataFrame(pairs + 1, columns=["user_id", "item_id"]).to_csv(folder / "split" / f"{name}.csv", index=False)
    every = np.concatenate([data.train, data.valid, test]) + 1
    pd.DataFrame(every, columns=["user_id", "item_id"]).to_csv(folder / "interactions.csv", index=False)
    items = np.arange(1, data.n_items + 1)  # the same item universe whatever the test part holds
    pd.DataFrame({"item_id": items, "title": [f"item {i}" for i in items]}).to_csv(folder / "items.csv", index=False)
    return folder


def noise_feature(store: ArtifactStore, n_items: int = 150, dim: int = 16) -> str:
    """An `embed` artifact of pure noise for every item: what a useless feature source looks like."""
    rng = np.random.default_rng(0)
    with store.write("embed", "planted-noise", {"source": "item_text", "noise": True}) as w:
        w.tensors("embeddings", {"embeddings": rng.standard_normal((n_items, dim)).astype(np.float32)})
        w.table("index", pd.DataFrame({"id": np.arange(1, n_items + 1, dtype=np.int64),
                                       "row": np.arange(n_items, dtype=np.int64)}))
    return "embed/planted-noise"


def config(folder: Path) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset=str(folder)),
        split=SplitConfig(method="dir", split_dir=folder / "split"),
        model=ModelConfig(embedding_dim=16, n_layers=2),
        train=TrainConfig(max_epochs=40, patience=5, batch_size=256, device="cpu"),
        llmrec=LLMRecConfig(embedding_dim=16, n_layers=2),
        seeds=(2020,),
    )


@flow
def tune_on(folder: str, store_root: str, out: str, trials: int) -> dict:
    """The planted split through the real data tasks, a noise item_text feature, then both studies."""
    cfg = config(Path(folder))
    dataset = bind(load_data, store_root)(store_root, cfg.data)
    split = bind(split_data, store_root)(store_root, dataset, cfg.split)
    inputs = StageTwoInputs({"dataset": dataset, "split": split}, {"item_text": noise_feature(ArtifactStore(
        store_root))}, None, {})
    tuned, summaries = tune_models(cfg, TuneConfig(trials=trials, warmup_epochs=3), store_root, inputs,
                                   Path(out) / "tuning")
    return {"tuned": tuned, "summaries": summaries}


def trials_of(out: Path, model: str) -> pd.DataFrame:
    return pd.read_parquet(out / "tuning" / model / "trials.parquet")


@pytest.mark.slow
def test_tuned_llmrec_is_never_worse_than_its_tuned_backbone_and_resumes(tmp_path):
    folder, store, out = write_planted(tmp_path / "data"), tmp_path / "store", tmp_path / "out"
    first = tune_on(str(folder), str(store), str(out), 3)
    base, llm = trials_of(out, "lightgcn"), trials_of(out, "llmrec")
    assert (base["state"] == "COMPLETE").sum() + (base["state"] == "PRUNED").sum() == 3
    # Trial 0 of LLMRec is the backbone with its best lr and L2, and every feature and mechanism off: exactly the
    # best backbone trial's valid NDCG@10, so with pure-noise features the tuned LLMRec is at least as good.
    zero = llm.set_index("number").loc[0]
    assert not zero["params_modal_on"] and not zero["params_prune"] and not zero["params_mae"]
    assert zero["value"] == pytest.approx(base["value"].max(), abs=1e-9)
    s = first["summaries"]
    assert s["llmrec"]["best_value"] >= s["lightgcn"]["best_value"]
    tuned: RunConfig = first["tuned"]
    assert tuned.baseline_train is not None and tuned.baseline_train.lr == pytest.approx(s["lightgcn"]["params"]["lr"])
    assert RunConfig.model_validate(json.loads((out / "tuning" / "best_config.json").read_text())["config"]) == tuned
    assert (out / "tuning" / "llmrec" / "optimization_history.png").read_bytes().startswith(b"\x89PNG")

    # Resumed with a larger budget: the finished trials stay, one more trial per model trains.
    trained_before = len(list((store / "train").iterdir())) + len(list((store / "llmrec").iterdir()))
    tune_on(str(folder), str(store), str(out), 4)
    base2, llm2 = trials_of(out, "lightgcn"), trials_of(out, "llmrec")
    assert len(base2) == len(llm2) == 4
    pd.testing.assert_series_equal(base2["value"].iloc[:3], base["value"], check_names=False)
    trained_after = len(list((store / "train").iterdir())) + len(list((store / "llmrec").iterdir()))
    assert trained_after - trained_before <= 2  # at most the two new trials (a pruned one writes nothing)


@pytest.mark.slow
def test_the_studies_never_read_the_test_split(tmp_path):
    """Two splits that differ only in their test parts give the very same trials."""
    tables = []
    for offset in (0, 7):
        folder = write_planted(tmp_path / f"data-{offset}", test_offset=offset)
        tune_on(str(folder), str(tmp_path / f"store-{offset}"), str(tmp_path / f"out-{offset}"), 2)
        tables.append({m: trials_of(tmp_path / f"out-{offset}", m)[["number", "value", "state"]]
                       for m in ("lightgcn", "llmrec")})
    assert not pd.read_csv(tmp_path / "data-0" / "split" / "test.csv").equals(
        pd.read_csv(tmp_path / "data-7" / "split" / "test.csv"))
    for model in ("lightgcn", "llmrec"):
        pd.testing.assert_frame_equal(tables[0][model], tables[1][model])


def test_stopped_or_diverged_trials_are_pruned_and_the_study_goes_on(tmp_path):
    import optuna
    from prefect.states import Cancelled, Failed

    from flows.tune import pruning_callback, run_trials, trial_value
    from recsys.train.trainer import EpochReport, StopTraining
    from recsys.tune.study import open_study

    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(optuna.TrialPruned, match="stopped: over the trial time limit"):
        trial_value(Cancelled(message="stopped: over the trial time limit of 5 s at epoch 3"), store, "ndcg@10")
    with pytest.raises(optuna.TrialPruned, match="diverged"):
        trial_value(Failed(data=FloatingPointError("training loss became nan")), store, "ndcg@10")
    with pytest.raises(KeyError):  # any other failure is a real error, not a pruned trial
        trial_value(Failed(data=KeyError("bug")), store, "ndcg@10")

    study = open_study(tmp_path, "s", seed=0, warmup_epochs=0)
    outcomes = iter([0.1, optuna.TrialPruned("stopped"), 0.3])

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return out

    run_trials(study, 3, objective)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert study.best_value == 0.3 and study.trials[1].user_attrs["stopped"] == "stopped"

    report = EpochReport(epoch=1, loss=0.5, parts={}, seconds=0.1, eval_seconds=0.01, valid={"ndcg@10": 0.2},
                         best_epoch=1, best_value=0.2, is_best=True, epochs_without_improvement=0)
    callback = pruning_callback(study.ask(), TuneConfig(trial_timeout_s=1e-9), "ndcg@10")
    with pytest.raises(StopTraining, match="over the trial time limit"):
        callback(report)


def test_a_study_with_no_complete_trial_says_so(tmp_path):
    import optuna

    from recsys.tune.study import TuningFailed, best_trial, open_study

    study = open_study(tmp_path, "all-pruned", seed=0, warmup_epochs=0)
    trial = study.ask()
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    with pytest.raises(TuningFailed, match=r"study all-pruned: no trial completed \(1 PRUNED\); give trials more"):
        best_trial(study)
