"""The `embed` flow: one `embed_source` task run per feature source, on the flow's task runner.

Same contract as embedding the sources one by one: source name -> the refs its texts come from, in; source name ->
the ref of its `embed` artifact, out. Each task run is cached on its content key, so the runner (threads or Dask,
see flows/runners.py) changes where vectors are computed, never which artifact a source maps to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runners import with_runner
from flows.subflows import call_subflow
from recsys.config import EmbedConfig, RunnerConfig, default_store_dir
from storage.ledger import store_ledger_root
from tasks.common import bind
from tasks.embed import embed_source
from tasks.ratelimit import check_rate_limit


class EmbedFailed(RuntimeError):
    """At least one feature source could not be embedded."""


@flow(name="embed", task_runner=ThreadPoolTaskRunner(max_workers=4))
def embed_flow(sources: Mapping[str, list[str]], embed: EmbedConfig | None = None, store_root: str | None = None,
               ledger_root: str | None = None) -> dict[str, str]:
    """Embed every feature source (`{"item_text": [dataset_ref], "user_profile": [batch refs], ...}`) at once on
    this flow's task runner; returns source -> embed ref. Paid calls go to the ledger (default `<store>/ledger`)."""
    embed = embed or EmbedConfig()
    if embed.backend == "openai":
        check_rate_limit(embed.prefect_rate_limit)
    root = str(store_root or default_store_dir())
    ledger = str(ledger_root or store_ledger_root(root))
    task = bind(embed_source, root)
    futures = {source: task.submit(root, source, list(inputs), embed, ledger_root=ledger)
               for source, inputs in sources.items()}
    refs: dict[str, str] = {}
    errors: list[str] = []
    for source, fut in futures.items():
        try:
            refs[source] = str(fut.result())
        except Exception as exc:  # the task run (or the worker running it) raised
            errors.append(f"{source}: {type(exc).__name__}: {exc}")
    if errors:
        raise EmbedFailed("; ".join(errors))
    get_run_logger().info("embedded %d sources", len(refs))
    return refs


def run_embed(sources: Mapping[str, list[str]], embed: EmbedConfig | None = None, store_root: str | None = None,
              ledger_root: str | None = None, runner: RunnerConfig | None = None) -> dict[str, Any]:
    """`embed_flow` with its task runs on the runner `runner` names (threads or Dask)."""
    flow_obj = with_runner(embed_flow, runner) if runner is not None else embed_flow
    return call_subflow(flow_obj, sources=dict(sources), embed=embed, store_root=store_root, ledger_root=ledger_root)
