"""Task runners: the augment and embed flows on a Dask cluster of worker processes write exactly what they write on
the default thread pool, with the same content keys, against the real local LLM server on real MovieLens rows."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from typer.testing import CliRunner

from flows.augment import _check_runner, run_augment
from flows.cli import app
from flows.dask_workers import LlmrecDaskTaskRunner, profiler_running
from flows.embed import run_embed
from flows.runners import runner_kind, task_runner, worker_env
from llmsim.launch import start_llm_server
from recsys.config import (
    AugmentConfig,
    AugmentRunConfig,
    DataConfig,
    EmbedConfig,
    LLMConfig,
    ModelConfig,
    RunnerConfig,
    TrainConfig,
)
from storage.ledger import read_ledger
from storage.store import ArtifactStore
from tasks.augment import OUTPUT_FILES
from tasks.embed import read_embeddings
from tests.prefect_server import running_prefect_server


def augment_config(dataset: Path, base_url: str, runner: RunnerConfig) -> AugmentRunConfig:
    return AugmentRunConfig(
        data=DataConfig(dataset=str(dataset)), model=ModelConfig(name="mf", embedding_dim=16),
        train=TrainConfig(max_epochs=2, device="cpu"),
        llm=LLMConfig(model="llmrec-heuristic", base_url=base_url, rpm=None, tpm=None, backoff_initial_s=0.05,
                      backoff_max_s=1.0, timeout_s=20.0),
        # A batch stuck for 2 minutes fails the run naming it, instead of holding the test until its timeout.
        augment=AugmentConfig(stages=("profiles", "attributes"), users_per_batch=20, items_per_batch=300,
                              batch_timeout_s=120),
        runner=runner,
    )


def test_runner_factory():
    threads = task_runner(RunnerConfig(threads=3))
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    local = task_runner(RunnerConfig(kind="dask", dask_workers=3, dask_threads_per_worker=2))
    assert isinstance(local, LlmrecDaskTaskRunner) and local.address is None
    assert local.cluster_kwargs["n_workers"] == 3 and local.cluster_kwargs["processes"] is True
    assert local.cluster_kwargs["env"]["PREFECT_API_URL"].startswith("http://127.0.0.1:")  # this process's API
    remote = task_runner(RunnerConfig(kind="dask", dask_address="tcp://127.0.0.1:8786"))
    assert isinstance(remote, LlmrecDaskTaskRunner) and remote.address == "tcp://127.0.0.1:8786"
    with pytest.raises(ValueError, match="dask_address needs kind 'dask'"):
        RunnerConfig(dask_address="tcp://127.0.0.1:8786")
    result = CliRunner().invoke(app, ["augment", "--dask-address", "tcp://127.0.0.1:8786"])
    assert result.exit_code == 2 and "--dask-address needs --runner dask" in result.output


def test_runner_kind_and_the_mismatch_warning():
    """Both Dask runners are kind "dask"; the augment flow warns only when its runner is not the configured kind."""
    dask_cfg = RunnerConfig(kind="dask", dask_address="tcp://127.0.0.1:8786")
    assert runner_kind(task_runner(RunnerConfig())) == "threads"
    assert runner_kind(task_runner(dask_cfg)) == runner_kind(DaskTaskRunner()) == "dask"
    config = AugmentRunConfig(runner=dask_cfg)
    warnings: list[str] = []

    class Logger:
        def warning(self, message: str, *args: object) -> None:
            warnings.append(message % args)

    @flow
    def probe() -> None:
        _check_runner(config, Logger())

    probe.with_options(task_runner=task_runner(dask_cfg))()  # entering the runner connects to nothing yet
    assert warnings == []
    probe()  # the default thread pool
    assert len(warnings) == 1 and "the dask runner" in warnings[0] and "ThreadPoolTaskRunner" in warnings[0]


@pytest.mark.timeout(120)
def test_dask_runner_turns_off_the_worker_profiler():
    """The profiler that can freeze a worker on Python 3.11 (flows/dask_workers.py) is off on the workers there
    when the runner connects and on those that join later; a plain client leaves it on."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as plain:
            assert all(plain.run(profiler_running).values())  # distributed's default: on
        runner = task_runner(RunnerConfig(kind="dask", dask_address=cluster.scheduler_address))
        with runner:
            client = runner.client
            assert list(client.run(profiler_running).values()) == [False]
            cluster.scale(2)
            client.wait_for_workers(2, timeout=60)
            assert list(client.run(profiler_running).values()) == [False, False]


@pytest.mark.slow
@pytest.mark.timeout(300)  # about 60 s here; batch_timeout_s below fails a stuck batch long before this
def test_dask_runner_writes_the_same_bytes_as_threads(small_movielens, tmp_path):
    outs = {kind: tmp_path / f"out-{kind}" for kind in ("threads", "dask")}
    stores = {kind: str(tmp_path / f"store-{kind}") for kind in outs}  # separate stores: nothing is reused
    results, features, timings = {}, {}, {}
    # Worker processes of a multi-process runner each talk to the Prefect API: one real server for the flow
    # process and the workers (as the README tells users), not the flow process's temporary one on SQLite.
    with running_prefect_server() as prefect, prefect.api(), start_llm_server() as server:
        cfg = augment_config(small_movielens, server.base_url, RunnerConfig())
        t0 = time.monotonic()
        results["threads"] = run_augment(cfg, store_root=stores["threads"], out_dir=str(outs["threads"]))
        timings["threads"] = time.monotonic() - t0
        # An existing cluster (as --dask-address) of 2 worker processes, shared by the augment and embed flows;
        # its workers use this process's Prefect API, as those of a LocalCluster the runner starts itself do.
        with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None,
                          env=worker_env()) as cluster, Client(cluster) as client:
            worker_pids = set(client.run(os.getpid).values())
            dask = RunnerConfig(kind="dask", dask_address=cluster.scheduler_address)
            t0 = time.monotonic()
            results["dask"] = run_augment(cfg.model_copy(update={"runner": dask}), store_root=stores["dask"],
                                          out_dir=str(outs["dask"]))
            timings["dask"] = time.monotonic() - t0
            for kind, runner in (("threads", None), ("dask", dask)):
                sources = {"user_profile": results[kind]["batches"]["profiles"]}
                t0 = time.monotonic()
                features[kind] = run_embed(sources, EmbedConfig(), store_root=stores[kind], runner=runner)
                timings[f"embed-{kind}"] = time.monotonic() - t0
            profilers = client.run(profiler_running)
    print("wall s:", {k: round(v, 1) for k, v in timings.items()})

    # The LLM work really ran in the Dask worker processes: ledger parts are named after the writing process.
    writers = {int(p.stem.split("-")[-2]) for p in (Path(stores["dask"]) / "ledger").rglob("*.parquet")}
    assert writers and writers <= worker_pids and os.getpid() not in writers
    assert profilers and not any(profilers.values())  # the runner turned off the profiler that can freeze them
    # Same content keys (the runner is in none of them) and byte-identical Parquet outputs.
    assert results["dask"]["batches"] == results["threads"]["batches"]
    assert results["dask"]["rows"] == results["threads"]["rows"]
    for name in [OUTPUT_FILES["profiles"], OUTPUT_FILES["attributes"], "augment_failures.parquet"]:
        a, b = (outs[k] / name for k in ("threads", "dask"))
        assert a.read_bytes() == b.read_bytes(), name
    assert len(pd.read_parquet(outs["dask"] / "user_profiles.parquet")) > 0
    # The run's ledger rows differ only in time and run id: same requests, tokens and cost.
    tokens = {k: read_ledger(Path(stores[k]) / "ledger")[["stage", "prompt_tokens", "completion_tokens"]]
              .groupby("stage").sum() for k in stores}
    pd.testing.assert_frame_equal(tokens["threads"], tokens["dask"])
    # Embeddings: same refs, same vectors, whichever runner computed them.
    assert features["dask"] == features["threads"]
    for source, ref in features["dask"].items():
        ids_t, vec_t = read_embeddings(ArtifactStore(stores["threads"]), ref)
        ids_d, vec_d = read_embeddings(ArtifactStore(stores["dask"]), ref)
        assert np.array_equal(ids_t, ids_d) and np.array_equal(vec_t, vec_d), source
