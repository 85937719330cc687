"""Optuna studies that survive an interruption: stored in a journal file, seeded, resumed where they stopped.

One study per model (e.g. "lightgcn", "llmrec") in one journal file of the tuning output folder. The sampler is
TPE (Optuna's default, seeded); the pruner is Optuna's MedianPruner on the validation curve (a trial reports its
valid metric every epoch). A trial that was running when the process died is marked failed on resume and its
parameters are asked again first, so its training (a cached task keyed on the resulting config) is not redone.
Run one `llmrec tune` per output folder at a time.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pandas as pd
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

JOURNAL = "optuna-journal.log"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


class TuningFailed(RuntimeError):
    """No trial of a study completed (every one was pruned, diverged or ran over its time limit)."""


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The study's best complete trial; TuningFailed naming what became of the trials when none completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        states = ", ".join(f"{n} {s}" for s, n in trials_frame(study)["state"].value_counts().items())
        raise TuningFailed(f"study {study.study_name}: no trial completed ({states or 'no trials'}); give trials "
                           "more time (--trial-timeout) or more trials (--trials)")
    return study.best_trial


def open_study(folder: Path, name: str, *, seed: int, warmup_epochs: int) -> optuna.Study:
    """The study `name` in `folder`/optuna-journal.log, created or resumed (interrupted trials queued again).

    Pruning starts after 5 trials have completed and, within a trial, after `warmup_epochs` epochs."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(folder / JOURNAL)))
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup_epochs),
    )
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        if trial.state == TrialState.RUNNING:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return study


def trials_left(study: optuna.Study, budget: int) -> int:
    """Trials still to run for a budget of `budget` finished (complete or pruned) trials."""
    return max(0, budget - len(study.get_trials(deepcopy=False, states=DONE)))


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, start/end/duration, params_*, user_attrs_* (Optuna's own table)."""
    frame = study.trials_dataframe()
    if "state" in frame:
        frame["state"] = frame["state"].astype(str)
    return frame


def plots_png(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's optimisation history and (with two or more complete trials) parameter importances as PNG files
    in `folder`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    written = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = {"optimization_history.png": plot_optimization_history}
    if len(complete) >= 2 and len({t.value for t in complete}) > 1:
        plots["param_importances.png"] = plot_param_importances
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)  # "few trials per regime": the plot says what it can
            ax = plot(study)
        ax.figure.set_size_inches(8, 5)
        ax.figure.tight_layout()
        path = folder / name
        ax.figure.savefig(path, dpi=100)
        plt.close(ax.figure)
        written.append(path)
    return written
