"""The `llmrec` command line. `base`, `augment` and `run` run the Prefect flows of the same names; `ablate` runs
`run` with every variant; `cost` and `rerun` operate on the ledger and a Prefect server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmsim import MODEL_ID
from llmsim.cli import faults_command, serve_command
from llmsim.launch import LaunchError as LLMServerError
from llmsim.launch import start_llm_server
from recsys.ablations import FULL as FULL_VARIANT
from recsys.ablations import VARIANTS, parse_variants
from recsys.config import (
    DATA_DIR_ENV,
    STORE_DIR_ENV,
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
from recsys.llm.pricing import require_budget

app = typer.Typer(no_args_is_help=True, add_completion=False, help="LLM-augmented graph recommendation.")
console = Console()


# Options shared by several commands, declared once.
BaseModel = Annotated[Literal["mf", "lightgcn"], typer.Option(help="Base recommender (it proposes the candidates).")]
Dataset = Annotated[str, typer.Option(help="ml-100k, ml-1m, or a path to your interactions (file or folder).")]
DataDir = Annotated[Path | None, typer.Option(envvar=DATA_DIR_ENV, help="Where MovieLens lives or is downloaded.")]
SplitDir = Annotated[Path | None, typer.Option(help="Use this split: train/valid/test Parquet or CSV.")]
Epochs = Annotated[int, typer.Option(help="Maximum epochs; early stopping on valid usually ends sooner.")]
Device = Annotated[Literal["auto", "cpu", "cuda"], typer.Option(help="auto: CUDA when present, else CPU.")]
MaxCostUSD = Annotated[float | None, typer.Option(help="LLM budget: stop before spending more than this.")]
AllowUnboundedSpend = Annotated[bool, typer.Option("--allow-unbounded-spend", help="Run against a priced model "
                                                   "without --max-cost-usd (refused otherwise).")]
Store = Annotated[Path | None, typer.Option(envvar=STORE_DIR_ENV, help="Artifact store shared by runs (default "
                                                                      "~/.cache/llmrec/store).")]
Runner = Annotated[Literal["threads", "dask"], typer.Option(help="Where LLM and embedding batches run: threads in "
                                                                 "this process, or a Dask cluster (a local one "
                                                                 "unless --dask-address).")]
DaskAddress = Annotated[str | None, typer.Option(help="Existing Dask scheduler, e.g. tcp://10.0.0.5:8786.")]


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@contextmanager
def expected(*errors: type[Exception]) -> Iterator[None]:
    """Turn these errors into one line on the console and exit code 2 (no traceback)."""
    try:
        yield
    except errors as e:
        raise _fail(str(e)) from None


def runner_config(runner: str, dask_address: str | None) -> RunnerConfig:
    """The task runner the --runner / --dask-address options ask for."""
    if dask_address and runner != "dask":
        raise _fail("--dask-address needs --runner dask")
    return RunnerConfig(kind=runner, dask_address=dask_address)


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
def base(
    model: BaseModel = "lightgcn",
    dataset: Dataset = "ml-100k",
    data_dir: DataDir = None,
    items: Path | None = typer.Option(None, help="Item text table (Parquet/CSV) for a user-supplied dataset."),
    split_dir: SplitDir = None,
    out: Path = typer.Option(Path("runs/base"), help="Output folder for metrics.json and candidates.parquet."),
    seed: int = typer.Option(2020, help="Training seed."),
    split_seed: int = typer.Option(2020, help="Seed of the random split (ignored with --split-dir)."),
    epochs: Epochs = 1000,
    device: Device = "auto",
    candidates: int = typer.Option(10, help="Candidates per user for the LLM stages (paper: |C| = 10)."),
    store: Store = None,
) -> None:
    """Train the base model (load -> split -> train -> evaluate -> candidates) as the Prefect flow `base`."""
    with expected(ValueError):
        config = BaseRunConfig(
            data=DataConfig(dataset=dataset, data_dir=data_dir, items_path=items),
            split=SplitConfig(method="dir", split_dir=split_dir) if split_dir else SplitConfig(seed=split_seed),
            model=ModelConfig(name=model),
            train=TrainConfig(max_epochs=epochs, seed=seed, device=device),
            candidates=CandidateConfig(n_candidates=candidates),
        )

    from flows.base import base_flow  # deferred: importing Prefect costs seconds, --help should not

    with expected(DataError, FileNotFoundError):
        result = base_flow(config=config, store_root=str(store) if store else None, out_dir=str(out))
    console.print(metrics_table(result["metrics"]))
    console.print(f"wrote {out / 'metrics.json'} and {out / 'candidates.parquet'}")


@app.command()
def augment(
    base_url: str | None = typer.Option(None, envvar="OPENAI_BASE_URL",
                                        help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."),
    model: str = typer.Option(LLMConfig().model, help="LLM model name at that endpoint."),
    stages: str = typer.Option("edges,profiles,attributes", help="Comma-separated: edges, profiles, attributes."),
    dataset: Dataset = "ml-100k",
    data_dir: DataDir = None,
    split_dir: SplitDir = None,
    base_model: BaseModel = "lightgcn",
    epochs: Epochs = 1000,
    out: Path = typer.Option(Path("runs/augment"), help="Output folder."),
    max_cost_usd: MaxCostUSD = None,
    allow_unbounded_spend: AllowUnboundedSpend = False,
    users_per_batch: int = typer.Option(AugmentConfig().users_per_batch, help="Users per Prefect task run."),
    rpm: int = typer.Option(LLMConfig().rpm, help="Requests per minute allowed by your endpoint (0: no limit)."),
    tpm: int = typer.Option(LLMConfig().tpm, help="Tokens per minute allowed by your endpoint (0: no limit)."),
    price_table: Path | None = typer.Option(None, help="YAML of USD per 1M input/output tokens per model."),
    store: Store = None,
    runner: Runner = "threads",
    dask_address: DaskAddress = None,
    prefect_rate_limit: str | None = typer.Option(None, help="Prefect rate limit (a GCL with slot decay) every "
                                                             "request takes a slot of, shared across processes."),
) -> None:
    """LLM augmentation (paper §3.1) as the Prefect flow `augment`: u-i edges, user profiles, item attributes.

    Trains the base model first when its candidates are not in the store yet. The API key is read from
    $OPENAI_API_KEY and never written anywhere.
    """
    with expected(ValueError):
        config = AugmentRunConfig(
            data=DataConfig(dataset=dataset, data_dir=data_dir),
            split=SplitConfig(method="dir", split_dir=split_dir) if split_dir else SplitConfig(),
            model=ModelConfig(name=base_model),
            train=TrainConfig(max_epochs=epochs),
            llm=LLMConfig(model=model, base_url=base_url, rpm=rpm or None, tpm=tpm or None, price_table=price_table,
                          prefect_rate_limit=prefect_rate_limit),
            augment=AugmentConfig(stages=tuple(s.strip() for s in stages.split(",") if s.strip()),
                                  users_per_batch=users_per_batch),
            runner=runner_config(runner, dask_address),
        )
        require_budget(config.llm.model, max_cost_usd, allow_unbounded_spend, config.llm.price_table)

    from flows.augment import AugmentFailed, run_augment
    from tasks.ratelimit import RateLimitUnusable

    with expected(DataError, FileNotFoundError, AugmentFailed, RateLimitUnusable):
        result = run_augment(config=config, store_root=str(store) if store else None, out_dir=str(out),
                             max_cost_usd=max_cost_usd, allow_unbounded_spend=allow_unbounded_spend)
    console.print(f"rows: {result['rows']}; failed items: {result['failed']}; cost ${result['cost_usd']:.6f}")
    console.print(f"wrote {out}/*.parquet (this run's ledger rows: {out}/ledger.parquet); all runs' ledger: "
                  f"{result['ledger']}")


@app.command()
def cost(
    since: str | None = typer.Option(None, help="Only calls at or after this date (YYYY-MM-DD, UTC) or ISO time."),
    by: Literal["stage", "model", "day", "flow-run"] = typer.Option("stage", help="Group rows by stage, model, day "
                                                                                 "or flow-run."),
    plot: Path | None = typer.Option(None, help="Also draw cumulative USD over time per stage to this PNG."),
    ledger: list[Path] | None = typer.Option(None, help="Ledger folder(s) to read; default <store>/ledger."),
    store: Store = None,
) -> None:
    """What the LLM calls cost: calls, cache hits, tokens and USD per group, from the cost ledger."""
    from recsys.config import default_store_dir
    from recsys.costs import (
        COST_COLUMNS,
        COST_HEADERS,
        cost_by,
        no_paid_reason,
        paid_usd,
        parse_since,
        spend_plot_png,
    )
    from storage.atomic import atomic_path
    from storage.ledger import LedgerNotFound, read_ledgers, store_ledger_root

    roots = list(ledger) if ledger else [store_ledger_root(store or default_store_dir())]
    with expected(ValueError, LedgerNotFound):
        cutoff = parse_since(since) if since else None
        rows = read_ledgers(roots, cutoff)
    where = ", ".join(str(r) for r in roots)
    if rows.empty:
        raise _fail(f"no ledger rows{f' since {since}' if since else ''} in {where}")
    summary = cost_by(rows, by)
    columns = [c for c in COST_COLUMNS if c != "unpriced" or summary[c].any()]  # unpriced: only when there are
    table = Table(title=f"LLM cost by {by} — {escape(where)}")
    table.add_column(by, overflow="fold", min_width=36 if by == "flow-run" else None)  # a whole flow-run id
    if "name" in summary:
        table.add_column("flow run name", overflow="fold")
    for col in columns:
        table.add_column(COST_HEADERS[col], justify="right", no_wrap=True)
    records = summary.to_dict("records")
    for i, rec in enumerate(records):  # the last record is the total
        cells = [f"{rec[c]:.6f}" if c == "cost_usd" else f"{rec[c]:,}" for c in columns]
        names = [escape(str(rec["name"]))] if "name" in summary else []
        table.add_row(escape(str(rec["group"])), *names, *cells, style="bold" if i == len(records) - 1 else None,
                      end_section=i == len(records) - 2)
    # Piped or captured: wide enough for whole flow-run ids, run names and model names.
    (console if console.is_terminal else Console(width=200)).print(table)
    if int(summary["unpriced"].iloc[-1]):
        console.print("unpriced: answered calls to models missing from the price table (not in the USD column)")
    if plot is not None:
        with atomic_path(plot) as tmp:
            tmp.write_bytes(spend_plot_png(rows))
        paid = "" if paid_usd(rows) else f" (no paid calls: {no_paid_reason(rows)})"
        console.print(f"wrote {plot}{paid}", highlight=False, soft_wrap=True)


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
    dataset: Dataset = "ml-100k",
    data_dir: DataDir = None,
    split_dir: SplitDir = None,
    seeds: int = typer.Option(1, min=1, help="Training seeds per variant (2020, 2021, ...); >= 2 gives p-values."),
    epochs: Epochs = 1000,
    device: Device = "auto",
    embed_backend: str = typer.Option("local", help="local (all-MiniLM-L6-v2, offline) or openai."),
    max_cost_usd: MaxCostUSD = None,
    allow_unbounded_spend: AllowUnboundedSpend = False,
    out: Path = typer.Option(Path("runs/llmrec"), help="Output folder: metrics.parquet, report.md, report.png, "
                                                       "augment/."),
    store: Store = None,
    variants: str = typer.Option(FULL_VARIANT, help=f"Comma-separated LLMRec variants to train beside the LightGCN "
                                                    f"baseline: {', '.join(VARIANTS)}."),
    runner: Runner = "threads",
    dask_address: DaskAddress = None,
) -> None:
    """The whole pipeline as the Prefect flow `run`: base model -> LLM augmentation -> embeddings -> LightGCN
    baseline and LLMRec per seed -> metrics.parquet and report.md. Every stage is cached: a re-run is free."""
    local = not base_url
    with expected(ValueError):
        config = RunConfig(
            data=DataConfig(dataset=dataset, data_dir=data_dir),
            split=SplitConfig(method="dir", split_dir=split_dir) if split_dir else SplitConfig(),
            train=TrainConfig(max_epochs=epochs, device=device),
            # The local server started below enforces no rate limit, so the client's own limits are lifted
            # (they are not part of any cache key).
            llm=LLMConfig(model=model or (LOCAL_MODEL if local else LLMConfig().model), base_url=base_url,
                          **({"rpm": None, "tpm": None} if local else {})),
            embed=EmbedConfig(backend=embed_backend),  # type: ignore[arg-type]
            seeds=tuple(2020 + i for i in range(seeds)),
            runner=runner_config(runner, dask_address),
        )
        names = parse_variants(variants)
        require_budget(config.llm.model, max_cost_usd, allow_unbounded_spend, config.llm.price_table)

    from flows.augment import AugmentFailed

    with expected(DataError, FileNotFoundError, AugmentFailed, LLMServerError):
        result = run_pipeline(config, base_url or None, names, store, out, max_cost_usd=max_cost_usd,
                              allow_unbounded_spend=allow_unbounded_spend)
    console.print(result["report"], markup=False, highlight=False)
    console.print(f"wrote {out / 'metrics.parquet'}, {out / 'report.md'}, {out / 'report.png'} and {out / 'augment'}/")


def run_pipeline(config: RunConfig, base_url: str | None, variants: list[str], store: Path | None, out: Path, *,
                 max_cost_usd: float | None = None, allow_unbounded_spend: bool = False) -> dict[str, Any]:
    """The flow `run` (with its budget) against `base_url`, or, when it is None, against the local LLM server
    started for it."""
    from flows.run import run_flow

    with contextlib.ExitStack() as stack:
        if base_url is None:
            console.print("[bold yellow]no --base-url:[/] starting the local LLM server (NOT a language model: "
                          f"transparent heuristics) and using model {config.llm.model}")
            base_url = stack.enter_context(local_llm_server())
            console.print(f"local LLM server listening at {base_url}; it stops when this run ends")
        return run_flow(config=config, store_root=str(store) if store else None, out_dir=str(out),
                        base_url=base_url, variants=variants, max_cost_usd=max_cost_usd,
                        allow_unbounded_spend=allow_unbounded_spend)


# `ablate` is `run` (the same options and flow) with every variant by default.
app.command("ablate", context_settings={"default_map": {"variants": ",".join(VARIANTS)}}, help=(
    "The ablation study (paper Table 3) as the Prefect flow `run`: the pipeline and options of `run`, training "
    "every variant in --variants (default: all) beside the LightGCN baseline, with the cost per LLM strategy "
    "(Table 7) in the report. Models `run` already trained come from the store."))(run)


class ProgressLines:
    """What `rerun --wait` shows while it waits: the flow run's state, and one bar per progress artifact of the
    run (LLM batches, training epochs, embeddings; tasks/progress.py) on a terminal; elsewhere (piped, in a log)
    one line each time a state or an artifact's text changes."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        self.live = console.is_terminal
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f} %"),
                             console=console, transient=False)
        self.tasks: dict[str, Any] = {}
        self.seen: dict[str, str] = {}

    def __enter__(self) -> ProgressLines:
        if self.live:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bars.stop()

    def __call__(self, state: str, phases: dict[str, tuple[str, float]]) -> None:
        for key, (text, percent) in {"flow run": (f"flow run: {state}", -1.0), **phases}.items():
            if self.live and percent >= 0:
                if key not in self.tasks:
                    self.tasks[key] = self.bars.add_task(escape(text), total=100)
                self.bars.update(self.tasks[key], completed=percent, description=escape(text))
            elif self.seen.get(key) != text:
                (self.bars.console if self.live else console).print(escape(text), highlight=False, soft_wrap=True)
            self.seen[key] = text


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

    with expected(OpsError), ProgressLines() as show:
        report = rerun_flow_run(flow_run_id, wait=wait, timeout_s=timeout, on_progress=show)
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
app.command("llm-faults")(faults_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
