"""The `tune` flow: choose each model's configuration on VALIDATION, then compare the tuned models on test.

augmentation and embeddings (as `run`) -> an Optuna study of the backbone over its lr and L2 -> an Optuna study of
LLMRec over recsys/tune/space.py, whose first trial is LLMRec reduced to its backbone with the backbone's best lr
and L2 (so the tuned LLMRec cannot be worse than the tuned backbone on validation) -> both tuned models trained
over the run's seeds, with the report of `run` (verdict, Table 3, cost, user groups) and a tuning section.

Every trial is a cached train task on its configuration's content key, reporting valid NDCG@10 (TrainConfig.monitor)
every epoch to Optuna's median pruner; a pruned, diverged or over-time trial ends Cancelled and is told PRUNED,
never crashing the study. Test is never read during the studies: only the training tasks run, and they read train
and valid alone. The studies live in `<out>/tuning/optuna-journal.log`, under a name keyed on what they tune (split,
features, edges, configs), so an interrupted `llmrec tune` resumes where it stopped and a changed setting starts a
new study.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from prefect import flow, get_run_logger
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from flows.train import StageTwoInputs, prepare_inputs, report_run, train_variants, used_inputs, with_base_url
from recsys.ablations import parse_variants
from recsys.config import RunConfig, TuneConfig, default_store_dir
from recsys.models.llmrec import feature_group
from recsys.train.trainer import EpochReport, StopTraining
from recsys.tune.space import all_off, suggest_llmrec, suggest_train
from recsys.tune.study import best_trial, open_study, plots_png, trials_frame, trials_left
from storage.atomic import write_json, write_parquet
from storage.keys import content_key
from storage.store import ArtifactStore
from tasks.common import bind
from tasks.llmrec import train_llmrec
from tasks.train import train_model

TUNE_VERSION = "1"  # bump when the search spaces change: studies of another version are new studies
Objective = Callable[[optuna.Trial], State]


def pruning_callback(trial: optuna.Trial, tune: TuneConfig, monitor: str) -> Callable[[EpochReport], None]:
    """An `on_epoch` callback: report the valid metric to the trial each evaluated epoch, and stop the fit when the
    pruner says so or the trial has run longer than `tune.trial_timeout_s`."""
    start = time.monotonic()

    def on_epoch(report: EpochReport) -> None:
        if report.valid is not None:
            trial.report(report.valid[monitor], report.epoch)
            if trial.should_prune():
                raise StopTraining(f"pruned by the median rule at epoch {report.epoch}")
        if tune.trial_timeout_s is not None and time.monotonic() - start > tune.trial_timeout_s:
            raise StopTraining(f"over the trial time limit of {tune.trial_timeout_s:g} s at epoch {report.epoch}")

    return on_epoch


def trial_value(state: State, store: ArtifactStore, monitor: str) -> float:
    """The best valid metric of a trial's training task, or optuna.TrialPruned when it was stopped or diverged."""
    if state.is_cancelled():
        raise optuna.TrialPruned(state.message or "stopped")
    if state.is_failed():
        error = state.result(raise_on_failure=False)
        if isinstance(error, FloatingPointError):
            raise optuna.TrialPruned(f"diverged: {error}")
        raise error if isinstance(error, BaseException) else RuntimeError(state.message)
    return float(store.read_json(state.result(), "fit")["valid"][monitor])


def run_trials(study: optuna.Study, budget: int, objective: Callable[[optuna.Trial], float]) -> float:
    """Ask and tell until the study has `budget` finished trials; returns the wall seconds this call took."""
    start = time.monotonic()
    for _ in range(trials_left(study, budget)):
        trial = study.ask()
        try:
            value = objective(trial)
        except optuna.TrialPruned as why:
            trial.set_user_attr("stopped", str(why))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    return time.monotonic() - start


def save_study(study: optuna.Study, folder: Path, wall_s: float) -> dict[str, Any]:
    """trials.parquet, the PNG plots and best_config.json (the best trial's parameters) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(study)
    write_parquet(folder / "trials.parquet", frame)
    plots_png(study, folder)
    best = best_trial(study)
    summary = {"study": study.study_name, "best_trial": best.number, "best_value": best.value,
               "params": best.params, "trials": frame["state"].value_counts().to_dict(),
               "trial_seconds": float(frame["duration"].dt.total_seconds().sum()), "wall_seconds_this_run": wall_s}
    write_json(folder / "best_config.json", summary)
    return summary


def tune_models(config: RunConfig, tune: TuneConfig, root: str, inputs: StageTwoInputs,
                folder: Path) -> tuple[RunConfig, dict[str, dict[str, Any]]]:
    """The backbone's study, then LLMRec's (first trial: LLMRec reduced to the tuned backbone); returns the run
    config with both tuned, and per model the study's summary (see `save_study`)."""
    logger = get_run_logger()
    store, split, monitor = ArtifactStore(root), inputs.refs["split"], config.train.monitor
    baseline = config.baseline_model()
    groups = {feature_group(name)[1] for name in inputs.features}
    edges = inputs.edge_refs is not None
    setting = content_key("tune", TUNE_VERSION, {
        "split": split, "features": inputs.features, "edges": inputs.edge_refs, "model": baseline,
        "train": config.train, "llmrec": config.llmrec, "eval": config.eval, "warmup": tune.warmup_epochs,
        "timeout": tune.trial_timeout_s})[:12]

    def base_objective(trial: optuna.Trial) -> float:
        train = suggest_train(trial, config.train)
        state = bind(train_model, root).with_options(task_run_name=f"trial-{baseline.name}-{trial.number}")(
            root, split, baseline, train, config.eval, on_epoch=pruning_callback(trial, tune, monitor),
            return_state=True)
        return trial_value(state, store, monitor)

    def llmrec_objective(trial: optuna.Trial) -> float:
        train = suggest_train(trial, config.train)
        cfg = suggest_llmrec(trial, config.llmrec, groups, edges)
        edge_refs, features = used_inputs(cfg, inputs.edge_refs, inputs.features)
        state = bind(train_llmrec, root).with_options(task_run_name=f"trial-llmrec-{trial.number}")(
            root, split, edge_refs, features, cfg, train, config.eval,
            on_epoch=pruning_callback(trial, tune, monitor), return_state=True)
        return trial_value(state, store, monitor)

    summaries: dict[str, dict[str, Any]] = {}
    base_study = open_study(folder, f"{baseline.name}-{setting}", seed=tune.seed, warmup_epochs=tune.warmup_epochs)
    wall = run_trials(base_study, tune.trials, base_objective)
    summaries[baseline.name] = save_study(base_study, folder / baseline.name, wall)
    best = best_trial(base_study).params
    llmrec_study = open_study(folder, f"llmrec-{setting}", seed=tune.seed, warmup_epochs=tune.warmup_epochs)
    if not llmrec_study.trials:
        llmrec_study.enqueue_trial(all_off(groups, edges, best["lr"], best["reg_weight"]),
                                   user_attrs={"why": "LLMRec reduced to its backbone, with its tuned lr and L2"})
    wall = run_trials(llmrec_study, tune.trials, llmrec_objective)
    summaries["llmrec"] = save_study(llmrec_study, folder / "llmrec", wall)
    fixed = optuna.trial.FixedTrial(best_trial(llmrec_study).params)
    tuned = config.model_copy(update={
        "train": suggest_train(fixed, config.train),
        "llmrec": suggest_llmrec(fixed, config.llmrec, groups, edges),
        "baseline_train": suggest_train(optuna.trial.FixedTrial(best), config.train),
    })
    write_json(folder / "best_config.json", {"config": tuned.model_dump(mode="json")})
    logger.info("tuned: %s valid %s %.4f, llmrec %.4f", baseline.name, monitor, summaries[baseline.name]["best_value"],
                summaries["llmrec"]["best_value"])
    return tuned, summaries


def tuning_section(summaries: dict[str, dict[str, Any]], tune: TuneConfig, monitor: str) -> list[str]:
    """Markdown: per model the trial budget, what became of the trials, the time they took and the best valid
    value with its parameters."""
    lines = ["## Tuning on validation (Optuna TPE, median pruning)", "",
             f"Each model had a budget of {tune.trials} finished trials (seed {tune.seed}); the objective is valid "
             f"{monitor}, test was not read. Trial time is the sum of the trials' durations (over every run of the "
             "study, resumed ones included).", "",
             "| model | trials | best valid | trial time (s) | best parameters |", "|---|---|---|---|---|"]
    for model, s in summaries.items():
        states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(s["trials"].items()))
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["params"].items())
        lines.append(f"| {model} | {states} | {s['best_value']:.4f} (trial {s['best_trial']}) | "
                     f"{s['trial_seconds']:.0f} | {params} |")
    return [*lines, ""]


@flow(name="tune", task_runner=ThreadPoolTaskRunner(max_workers=4))
def tune_flow(config: RunConfig | None = None, tune: TuneConfig | None = None, store_root: str | None = None,
              out_dir: str | None = None, base_url: str | None = None, variants: list[str] | None = None,
              max_cost_usd: float | None = None, allow_unbounded_spend: bool = False) -> dict[str, Any]:
    """Augment and embed as `run`, tune the backbone and LLMRec on validation, then train both tuned models (and
    `variants` of the tuned LLMRec, default ["llmrec"]) over the seeds and report. Outputs in `out_dir` as `run`,
    plus tuning/ (the Optuna journal, per model trials.parquet, PNG plots and best_config.json, and
    best_config.json: the tuned run config, for `llmrec run --config`)."""
    config = with_base_url(config or RunConfig(), base_url)
    tune = tune or TuneConfig()
    names = parse_variants(variants)
    root = str(store_root or default_store_dir())
    out = Path(out_dir).expanduser() if out_dir else None
    folder = (out if out else Path(root) / "_tuning") / "tuning"
    inputs = prepare_inputs(config, root, out, max_cost_usd, allow_unbounded_spend)
    tuned, summaries = tune_models(config, tune, root, inputs, folder)
    rows, trained = train_variants(tuned, root, inputs, names)
    extra = tuning_section(summaries, tune, config.train.monitor)
    return {**report_run(tuned, root, out, inputs, rows, trained, names, extra), "tuning": summaries}
