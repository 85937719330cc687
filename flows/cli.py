"""The `llmrec` command line."""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmsim import MODEL_ID
from llmsim.cli import serve_command
from llmsim.launch import LaunchError as LLMServerError
from llmsim.launch import start_llm_server
from recsys.ablations import FULL as FULL_VARIANT
from recsys.ablations import VARIANTS, parse_variants
from recsys.config import (
    DATA_DIR_ENV,
    AugmentConfig,
    AugmentRunConfig,
    BaseRunConfig,
    CandidateConfig,
    DataConfig,
    EmbedConfig,
    LLMConfig,
    ModelConfig,
    RunConfig,
    RunnerConfig,
    SplitConfig,
    TrainConfig,
)
from recsys.data.errors import DataError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="LLM-augmented graph recommendation.")
console = Console()


@app.callback()
def _root() -> None:
    """LLM-augmented graph recommendation (LLMRec) as Prefect flows."""


class ModelName(StrEnum):
    mf = "mf"
    lightgcn = "lightgcn"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class RunnerKind(StrEnum):
    threads = "threads"
    dask = "dask"


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def runner_config(runner: RunnerKind, dask_address: str | None) -> RunnerConfig:
    """The task runner the --runner / --dask-address options ask for."""
    if dask_address and runner is not RunnerKind.dask:
        raise _fail("--dask-address needs --runner dask")
    return RunnerConfig(kind=runner.value, dask_address=dask_address)


def metrics_table(doc: dict[str, Any]) -> Table:
    """Rows: metric@k; columns: valid and test."""
    table = Table(title=f"{doc['model']} — best epoch {doc['best_epoch']}, {doc['seconds_per_epoch']:.3f} s/epoch")
    table.add_column("metric")
    table.add_column("valid", justify="right")
    table.add_column("test", justify="right")
    for name in doc["test"]:
        valid = doc["valid"].get(name)
        table.add_row(name, f"{valid:.4f}" if valid is not None else "", f"{doc['test'][name]:.4f}")
    return table


@app.command()
def train(
    model: ModelName = typer.Option(ModelName.lightgcn, help="Base recommender."),
    dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m, or a path to your interactions (file or folder)."),
    data_dir: Path | None = typer.Option(None, help=f"Where MovieLens lives or is downloaded (env {DATA_DIR_ENV})."),
    items: Path | None = typer.Option(None, help="Item text table (Parquet/CSV) for a user-supplied dataset."),
    split_dir: Path | None = typer.Option(None, help="Use this split: train/valid/test Parquet or CSV."),
    out: Path = typer.Option(Path("runs/base"), help="Output folder for metrics.json and candidates.parquet."),
    seed: int = typer.Option(2020, help="Training seed."),
    split_seed: int = typer.Option(2020, help="Seed of the random split (ignored with --split-dir)."),
    epochs: int = typer.Option(1000, help="Maximum epochs; early stopping on valid usually ends sooner."),
    device: Device = typer.Option(Device.auto, help="auto: CUDA when present, else CPU."),
    candidates: int = typer.Option(10, help="Candidates per user for the LLM stages (paper: |C| = 10)."),
    store: Path | None = typer.Option(None, help="Artifact store shared by runs (env LLMREC_STORE)."),
) -> None:
    """Train a base model (load -> split -> train -> evaluate -> candidates) as the Prefect flow `base`."""
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir = Path(os.environ[DATA_DIR_ENV])
    try:
        config = BaseRunConfig(
            data=DataConfig(dataset=dataset, data_dir=data_dir, items_path=items),
            split=SplitConfig(method="dir", split_dir=split_dir) if split_dir else SplitConfig(seed=split_seed),
            model=ModelConfig(name=model.value),
            train=TrainConfig(max_epochs=epochs, seed=seed, device=device.value),
            candidates=CandidateConfig(n_candidates=candidates),
        )
    except ValueError as e:
        raise _fail(str(e)) from None

    from flows.base import base_flow  # deferred: importing Prefect costs seconds, --help should not

    try:
        result = base_flow(config=config, store_root=str(store) if store else None, out_dir=str(out))
    except (DataError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    console.print(metrics_table(result["metrics"]))
    console.print(f"wrote {out / 'metrics.json'} and {out / 'candidates.parquet'}")


@app.command()
def augment(
    base_url: str | None = typer.Option(None, envvar="OPENAI_BASE_URL",
                                        help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."),
    model: str = typer.Option(LLMConfig().model, help="LLM model name at that endpoint."),
    stages: str = typer.Option("edges,profiles,attributes", help="Comma-separated: edges, profiles, attributes."),
    dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m, or a path to your interactions."),
    data_dir: Path | None = typer.Option(None, help=f"Where MovieLens lives (env {DATA_DIR_ENV})."),
    split_dir: Path | None = typer.Option(None, help="Use this split: train/valid/test Parquet or CSV."),
    base_model: ModelName = typer.Option(ModelName.lightgcn, help="Base recommender proposing the candidates."),
    epochs: int = typer.Option(1000, help="Maximum epochs of the base model."),
    out: Path = typer.Option(Path("runs/augment"), help="Output folder."),
    max_cost_usd: float | None = typer.Option(None, help="Budget: stop before spending more than this."),
    users_per_batch: int = typer.Option(AugmentConfig().users_per_batch, help="Users per Prefect task run."),
    rpm: int = typer.Option(LLMConfig().rpm, help="Requests per minute allowed by your endpoint (0: no limit)."),
    tpm: int = typer.Option(LLMConfig().tpm, help="Tokens per minute allowed by your endpoint (0: no limit)."),
    price_table: Path | None = typer.Option(None, help="YAML of USD per 1M input/output tokens per model."),
    store: Path | None = typer.Option(None, help="Artifact store shared by runs (env LLMREC_STORE)."),
    runner: RunnerKind = typer.Option(RunnerKind.threads, help="Where batches run: threads in this process, or a "
                                                               "Dask cluster (a local one unless --dask-address)."),
    dask_address: str | None = typer.Option(None, help="Existing Dask scheduler, e.g. tcp://10.0.0.5:8786."),
    prefect_rate_limit: str | None = typer.Option(None, help="Prefect rate limit (a GCL with slot decay) every "
                                                             "request takes a slot of, shared across processes."),
) -> None:
    """LLM augmentation (paper §3.1) as the Prefect flow `augment`: u-i edges, user profiles, item attributes.

    Trains the base model first when its candidates are not in the store yet. The API key is read from
    $OPENAI_API_KEY and never written anywhere.
    """
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir = Path(os.environ[DATA_DIR_ENV])
    try:
        config = AugmentRunConfig(
            data=DataConfig(dataset=dataset, data_dir=data_dir),
            split=SplitConfig(method="dir", split_dir=split_dir) if split_dir else SplitConfig(),
            model=ModelConfig(name=base_model.value),
            train=TrainConfig(max_epochs=epochs),
            llm=LLMConfig(model=model, base_url=base_url, rpm=rpm or None, tpm=tpm or None, price_table=price_table,
                          prefect_rate_limit=prefect_rate_limit),
            augment=AugmentConfig(stages=tuple(s.strip() for s in stages.split(",") if s.strip()),
                                  max_cost_usd=max_cost_usd, users_per_batch=users_per_batch),
            runner=runner_config(runner, dask_address),
        )
    except ValueError as e:
        raise _fail(str(e)) from None

    from flows.augment import AugmentFailed, run_augment
    from tasks.ratelimit import RateLimitUnusable

    try:
        result = run_augment(config=config, store_root=str(store) if store else None, out_dir=str(out))
    except (DataError, FileNotFoundError, AugmentFailed, RateLimitUnusable) as e:
        raise _fail(str(e)) from None
    console.print(f"rows: {result['rows']}; failed items: {result['failed']}; cost ${result['cost_usd']:.6f}")
    console.print(f"wrote {out}/*.parquet (this run's ledger rows: {out}/ledger.parquet); all runs' ledger: "
                  f"{result['ledger']}")


class CostGrouping(StrEnum):
    stage = "stage"
    model = "model"
    day = "day"
    flow_run = "flow-run"


@app.command()
def cost(
    since: str | None = typer.Option(None, help="Only calls at or after this date (YYYY-MM-DD, UTC) or ISO time."),
    by: CostGrouping = typer.Option(CostGrouping.stage, help="Group rows by stage, model, day or flow-run."),
    plot: Path | None = typer.Option(None, help="Also draw cumulative USD over time per stage to this PNG."),
    ledger: list[Path] | None = typer.Option(None, help="Ledger folder(s) to read; default <store>/ledger."),
    store: Path | None = typer.Option(None, help="Artifact store whose ledger to read (default: $LLMREC_STORE, "
                                                 "else ~/.cache/llmrec/store)."),
) -> None:
    """What the LLM calls cost: calls, cache hits, tokens and USD per group, from the cost ledger."""
    from recsys.config import default_store_dir
    from recsys.costs import COST_COLUMNS, COST_HEADERS, cost_by, parse_since, spend_plot_png
    from storage.atomic import atomic_path
    from storage.ledger import LedgerNotFound, read_ledgers, store_ledger_root

    roots = list(ledger) if ledger else [store_ledger_root(store or default_store_dir())]
    try:
        cutoff = parse_since(since) if since else None
        rows = read_ledgers(roots, cutoff)
    except (ValueError, LedgerNotFound) as e:
        raise _fail(str(e)) from None
    where = ", ".join(str(r) for r in roots)
    if rows.empty:
        raise _fail(f"no ledger rows{f' since {since}' if since else ''} in {where}")
    summary = cost_by(rows, by.value)
    columns = [c for c in COST_COLUMNS if c != "unpriced" or summary[c].any()]  # unpriced: only when there are
    table = Table(title=f"LLM cost by {by.value} — {escape(where)}")
    table.add_column(by.value, overflow="fold")
    for col in columns:
        table.add_column(COST_HEADERS[col], justify="right", no_wrap=True)
    records = summary.to_dict("records")
    for i, rec in enumerate(records):  # the last record is the total
        cells = [f"{rec[c]:.6f}" if c == "cost_usd" else f"{rec[c]:,}" for c in columns]
        table.add_row(escape(str(rec["group"])), *cells, style="bold" if i == len(records) - 1 else None,
                      end_section=i == len(records) - 2)
    # Piped or captured: wide enough for whole flow-run ids and model names.
    (console if console.is_terminal else Console(width=160)).print(table)
    if int(summary["unpriced"].iloc[-1]):
        console.print("unpriced: answered calls to models missing from the price table (not in the USD column)")
    if plot is not None:
        with atomic_path(plot) as tmp:
            tmp.write_bytes(spend_plot_png(rows))
        console.print(f"wrote {plot}")


LOCAL_MODEL = MODEL_ID  # what the local server answers as


@contextmanager
def local_llm_server() -> Iterator[str]:
    """Start the local LLM server (`python -m llmsim --port 0`; stopped again on exit, also on errors) and yield
    its /v1 URL."""
    with start_llm_server() as server:
        yield server.base_url


@app.command()
def run(
    base_url: str | None = typer.Option(None, envvar="OPENAI_BASE_URL",
                                        help="OpenAI-compatible endpoint; none: start the local server (NOT an "
                                             "LLM: transparent heuristics) and use model llmrec-heuristic."),
    model: str | None = typer.Option(None, help=f"LLM model name (default: {LLMConfig().model}, or "
                                                f"{LOCAL_MODEL} with the local server)."),
    dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m, or a path to your interactions."),
    data_dir: Path | None = typer.Option(None, help=f"Where MovieLens lives (env {DATA_DIR_ENV})."),
    split_dir: Path | None = typer.Option(None, help="Use this split: train/valid/test Parquet or CSV."),
    seeds: int = typer.Option(1, min=1, help="Training seeds per variant (2020, 2021, ...); >= 2 gives p-values."),
    epochs: int = typer.Option(1000, help="Maximum epochs of every model; early stopping on valid usually ends "
                                          "sooner."),
    device: Device = typer.Option(Device.auto, help="auto: CUDA when present, else CPU."),
    embed_backend: str = typer.Option("local", help="local (all-MiniLM-L6-v2, offline) or openai."),
    max_cost_usd: float | None = typer.Option(None, help="LLM budget: stop before spending more than this."),
    out: Path = typer.Option(Path("runs/llmrec"), help="Output folder: metrics.parquet, report.md, report.png, "
                                                       "augment/."),
    store: Path | None = typer.Option(None, help="Artifact store shared by runs (env LLMREC_STORE)."),
    variants: str = typer.Option(FULL_VARIANT, help=f"Comma-separated LLMRec variants to train beside the LightGCN "
                                                    f"baseline: {', '.join(VARIANTS)}."),
    runner: RunnerKind = typer.Option(RunnerKind.threads, help="Where LLM and embedding batches run: threads in "
                                                               "this process, or a Dask cluster."),
    dask_address: str | None = typer.Option(None, help="Existing Dask scheduler, e.g. tcp://10.0.0.5:8786."),
) -> None:
    """The whole pipeline as the Prefect flow `run`: base model -> LLM augmentation -> embeddings -> LightGCN
    baseline and LLMRec per seed -> metrics.parquet and report.md. Every stage is cached: a re-run is free."""
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir = Path(os.environ[DATA_DIR_ENV])
    local = not base_url
    try:
        config = RunConfig(
            data=DataConfig(dataset=dataset, data_dir=data_dir),
            split=SplitConfig(method="dir", split_dir=split_dir) if split_dir else SplitConfig(),
            train=TrainConfig(max_epochs=epochs, device=device.value),
            # The local server started below enforces no rate limit, so the client's own limits are lifted
            # (they are not part of any cache key).
            llm=LLMConfig(model=model or (LOCAL_MODEL if local else LLMConfig().model), base_url=base_url,
                          **({"rpm": None, "tpm": None} if local else {})),
            augment=AugmentConfig(max_cost_usd=max_cost_usd),
            embed=EmbedConfig(backend=embed_backend),  # type: ignore[arg-type]
            seeds=tuple(2020 + i for i in range(seeds)),
            runner=runner_config(runner, dask_address),
        )
        names = parse_variants(variants)
    except ValueError as e:
        raise _fail(str(e)) from None

    from flows.augment import AugmentFailed
    from flows.run import run_flow

    try:
        with contextlib.ExitStack() as stack:
            if local:
                console.print("[bold yellow]no --base-url:[/] starting the local LLM server (NOT a language model: "
                              f"transparent heuristics) and using model {config.llm.model}")
                url = stack.enter_context(local_llm_server())
                console.print(f"local LLM server listening at {url}; it stops when this run ends")
            else:
                url = base_url
            result = run_flow(config=config, store_root=str(store) if store else None, out_dir=str(out),
                              base_url=url, variants=names)
    except (DataError, FileNotFoundError, AugmentFailed, LLMServerError) as e:
        raise _fail(str(e)) from None
    console.print(result["report"], markup=False, highlight=False)
    console.print(f"wrote {out / 'metrics.parquet'}, {out / 'report.md'}, {out / 'report.png'} and {out / 'augment'}/")


def ablate(**options: Any) -> None:
    """The ablation study (paper Table 3) as the Prefect flow `run`: the pipeline and options of `run`, training
    every variant in --variants (default: all) beside the LightGCN baseline, with the cost per LLM strategy
    (Table 7) in the report. Models `run` already trained come from the store."""
    run(**options)


# The options of `run`, declared once there, with every variant by default.
ablate.__signature__ = inspect.signature(run, eval_str=True).replace(parameters=[  # type: ignore[attr-defined]
    p.replace(default=typer.Option(",".join(VARIANTS), help=f"Comma-separated variants (default: all): "
                                                             f"{', '.join(VARIANTS)}."))
    if p.name == "variants" else p for p in inspect.signature(run, eval_str=True).parameters.values()])
app.command()(ablate)


@app.command()
def rerun(
    flow_run_id: str = typer.Argument(..., help="Id of a Failed or Crashed flow run of a deployment."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the new attempt ends and list its task runs."),
    timeout: float = typer.Option(3600.0, help="Seconds to wait with --wait."),
) -> None:
    """Re-run a failed deployment run on the Prefect server at $PREFECT_API_URL (as the UI's Retry): finished
    tasks come back Cached, only the failed work (e.g. the failed LLM batches) executes again."""
    from flows.ops import OpsError, rerun_summary
    from flows.ops import rerun as rerun_flow_run

    try:
        report = rerun_flow_run(flow_run_id, wait=wait, timeout_s=timeout)
    except OpsError as e:
        raise _fail(str(e)) from None
    console.print(f"flow run {report.flow_run_id} ({report.flow_run_name}) was {report.previous_state}; "
                  "scheduled again", highlight=False)
    if report.final_state is None:
        console.print("a worker of its work pool will pick it up; add --wait to follow it", highlight=False)
        return
    table = Table(title=f"attempt {report.run_count}: task runs")
    for column in ("flow run", "task run", "state", "executed"):
        table.add_column(column)
    for line in report.task_runs:
        table.add_row(line.flow_run, line.name, line.state, "no (cached)" if line.cached else "yes")
    console.print(table)
    counts = rerun_summary(report)
    console.print(f"executed {counts['executed']} task runs ({counts['failed']} failed), {counts['cached']} Cached; "
                  f"flow run ended {report.final_state}", highlight=False)
    if report.final_state != "Completed":
        raise typer.Exit(code=1)


app.command("llm-server")(serve_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
