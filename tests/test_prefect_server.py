"""Operations on a real Prefect server: prefect.yaml deployed with `prefect --no-prompt deploy --all`, a process
worker, a deployment run whose LLM batches partly fail, `llmrec rerun` executing only those, and a schedule firing.

One server, one worker and one local LLM server serve the whole module. The LLM server's `/admin/stats` is the
ground truth for what went over HTTP; the Prefect API for what each task run did.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import FlowRun, FlowRunResult
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.ops import OpsError, rerun
from llmsim.launch import LLMServer, start_llm_server
from recsys.config import AugmentConfig, AugmentRunConfig, DataConfig, LLMConfig, ModelConfig, SplitConfig, TrainConfig
from recsys.data.loading import load_dataset, make_split
from storage.ledger import read_ledger, store_ledger_root
from tests.conftest import REPO
from tests.prefect_server import PrefectServer
from tests.subflow_probe import parent

POOL = "llmrec-process"
AUGMENT = "augment/augment-nightly"
USERS_PER_BATCH = 10
# Watched only by users 6-18 of the first 60 (batches 0 and 1): their profile prompts always get HTTP 500.
FAILING_TITLE = "My Left Foot"
RUN_TIMEOUT_S = 150.0

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    """The command lines of the README section "Operations on a Prefect server", in order."""
    section = (REPO / "README.md").read_text().split("## Operations on a Prefect server\n", 1)[1].split("\n## ")[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def run_readme_command(server: PrefectServer, starts: str) -> subprocess.CompletedProcess[str]:
    """Run the README's `prefect ...` line that starts with `starts`, literally, against the test server."""
    [line] = [c for c in readme_commands() if c.startswith(starts)]
    args = shlex.split(line)
    assert args[0] == "prefect"
    return server.cli(*args[1:], cwd=REPO, env={"PWD": str(REPO), "COLUMNS": "250"})


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer) -> PrefectServer:
    """The repo's prefect.yaml deployed with the README's commands (from the repo root, as a user would) and a
    worker polling the pool."""
    run_readme_command(prefect_server, "prefect work-pool create")
    done = run_readme_command(prefect_server, "prefect --no-prompt deploy --all")
    names = [d["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]]
    for name in names:
        assert f"/{name}' successfully created" in " ".join(done.stdout.split()), done.stdout
    prefect_server.start_worker(POOL, cwd=REPO)
    return prefect_server


@pytest.fixture(scope="module")
def llm() -> Any:
    with start_llm_server(fail_match=FAILING_TITLE) as server:
        yield server


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ops")
    return {"store": root / "store", "out": root / "out", "nightly": root / "nightly", "data": root / "data",
            "priced": root / "priced"}


def augment_config(dataset: Path, base_url: str) -> AugmentRunConfig:
    """Profiles only (no embedding model needed), 6 batches of 10 users, a 2-epoch MF base model."""
    return AugmentRunConfig(
        data=DataConfig(dataset=str(dataset)),
        model=ModelConfig(name="mf", embedding_dim=16), train=TrainConfig(max_epochs=2, device="cpu"),
        llm=LLMConfig(model="llmrec-heuristic", base_url=base_url, rpm=None, tpm=None, max_attempts=2,
                      backoff_initial_s=0.05, backoff_max_s=0.2, timeout_s=20.0),
        augment=AugmentConfig(stages=("profiles",), users_per_batch=USERS_PER_BATCH),
    )


def parameters(cfg: AugmentRunConfig, store: Path, out: Path) -> dict[str, Any]:
    return {"config": cfg.model_dump(mode="json"), "store_root": str(store), "out_dir": str(out)}


def wait_final(server: PrefectServer, flow_run_id: Any, run_count: int = 0) -> FlowRun:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with server.api(), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final() and run.run_count > run_count:
                return run
            time.sleep(0.5)
    raise AssertionError(f"flow run {flow_run_id} did not end within {RUN_TIMEOUT_S:.0f} s\n{server.logs()}")


def batch_states(server: PrefectServer, run: FlowRun) -> dict[int, str]:
    """Final state name of each `profiles-batch-<i>` task run of the run's latest attempt."""
    with server.api(), get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    states = {}
    for t in task_runs:
        match = re.fullmatch(r"profiles-batch-(\d+)", t.name)
        if match and t.flow_run_run_count == run.run_count:
            states[int(match.group(1))] = t.state.name
    return states


def artifacts(server: PrefectServer, run: FlowRun, every_version: bool = False) -> dict[str, Any]:
    """The run's artifacts by key; with `every_version`, asserts that there is one per key."""
    with server.api(), get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[run.id])))
    by_key = {a.key: a for a in found}
    if every_version:
        assert len(by_key) == len(found), sorted(a.key or "" for a in found)
    return by_key


def flow_run_inputs(server: PrefectServer, run: FlowRun) -> list[str]:
    """Task runs of `run` with an input that came from a flow run (Prefect 3.8.8's default UI then lists none)."""
    with server.api(), get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    return [t.name for t in task_runs for inputs in t.task_inputs.values()
            for i in inputs if isinstance(i, FlowRunResult)]


def test_rerun_executes_only_failed_batches(deployed: PrefectServer, llm: LLMServer, small_movielens: Path,
                                            paths: dict[str, Path]):
    cfg = augment_config(small_movielens, llm.base_url)
    with deployed.api():
        started = run_deployment(AUGMENT, parameters=parameters(cfg, paths["store"], paths["out"]), timeout=0)
    first = wait_final(deployed, started.id)
    assert first.state.is_failed(), f"{first.state}\n{deployed.logs()}"

    failures = pd.read_parquet(paths["out"] / "augment_failures.parquet")
    failed_per_batch = ((failures["key"].astype(int) - 1) // USERS_PER_BATCH).value_counts().to_dict()
    states = batch_states(deployed, first)
    assert sorted(states) == list(range(6))
    assert {b for b, s in states.items() if s == "Failed"} == set(failed_per_batch)
    assert 0 < len(failed_per_batch) < 6 and all(s in ("Failed", "Completed") for s in states.values())
    # The UI's view of the run: how far its batches got (a progress card), and task runs whose inputs it can
    # show (no flow-run input, which empties the default UI's task-run list).
    progress = artifacts(deployed, first)["progress-profiles-batches"]
    assert progress.data == 100.0 and (f"profiles: LLM batches — 6 of 6 batches, {len(failed_per_batch)} failed "
                                       f"(batches {sorted(failed_per_batch)})") in progress.description
    assert not flow_run_inputs(deployed, first)

    assert str(first.id) in run_readme_command(deployed, "prefect flow-run ls --state Failed").stdout
    llm.set_faults()  # the endpoint recovers
    llm.reset()
    since = datetime.now(UTC)
    cli = deployed.run([str(Path(sys.executable).with_name("llmrec")), "rerun", str(first.id), "--wait",
                        "--timeout", str(RUN_TIMEOUT_S)], check=False, timeout=RUN_TIMEOUT_S + 30)
    assert cli.returncode == 0, f"{cli.stdout}\n{cli.stderr}\n{deployed.logs()}"
    assert "flow run ended Completed" in cli.stdout and "Cached" in cli.stdout
    assert "profiles: LLM batches — 6 of 6 batches, 0 failed" in cli.stdout  # its progress, while it waited

    second = wait_final(deployed, first.id, run_count=first.run_count)
    assert second.state.is_completed() and second.id == first.id
    states = batch_states(deployed, second)
    assert {b for b, s in states.items() if s == "Completed"} == set(failed_per_batch), states
    assert {b for b, s in states.items() if s == "Cached"} == set(range(6)) - set(failed_per_batch), states
    for batch in failed_per_batch:
        assert re.search(rf"profiles-batch-{batch}\s.*Completed\s.*yes", cli.stdout), cli.stdout

    # Only the failed items went over HTTP (the rest of their batches came from the response cache), and none
    # from a finished batch.
    assert llm.stats()["requests"] == len(failures)
    ledger = read_ledger(store_ledger_root(paths["store"]), since=since, flow_run_id=str(first.id))
    http = ledger[~ledger["cached"]]
    assert http.groupby(http["batch"].astype(int)).size().to_dict() == failed_per_batch
    assert pd.read_parquet(paths["out"] / "user_profiles.parquet")["user_id"].nunique() == 60

    cards = artifacts(deployed, second, every_version=True)
    assert {"augment-cost", "augment-cost-summary", "progress-profiles-batches"} <= set(cards)  # one card each
    assert "augment-cost" in run_readme_command(deployed, "prefect artifact ls").stdout
    cost = run_readme_command(deployed, "prefect artifact inspect augment-cost").stdout
    assert str(first.id) in cost and "profiles" in cost

    with deployed.api():
        with pytest.raises(OpsError, match="is Completed: only Failed or Crashed"):
            rerun(str(first.id))
        with pytest.raises(OpsError, match="no flow run 00000000-"):
            rerun("00000000-0000-0000-0000-000000000000")
        with pytest.raises(OpsError, match="not a flow-run id"):
            rerun("not-a-uuid")
    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(OpsError, match="PREFECT_API_URL"):
        rerun(str(first.id))


def with_new_ratings(source: Path, dest: Path, user: int, n: int) -> Path:
    """`source` plus `n` ratings by `user` of movies (already in the items table) they had not rated."""
    inter = pd.read_parquet(source / "interactions.parquet")
    items = pd.read_parquet(source / "items.parquet")
    seen = set(inter.loc[inter["user_id"] == user, "item_id"])
    new_items = [i for i in sorted(items["item_id"]) if i not in seen][:n]
    row = inter[inter["user_id"] == user].iloc[[0]]
    added = pd.concat([row.assign(item_id=i, timestamp=int(inter["timestamp"].max()) + k + 1)
                       for k, i in enumerate(new_items)], ignore_index=True)
    dest.mkdir(parents=True)
    pd.concat([inter, added], ignore_index=True).to_parquet(dest / "interactions.parquet", index=False)
    items.to_parquet(dest / "items.parquet", index=False)
    return dest


def train_histories(dataset: Path) -> dict[int, frozenset[int]]:
    train = make_split(load_dataset(DataConfig(dataset=str(dataset))), SplitConfig()).train
    return {int(u): frozenset(g["item_id"]) for u, g in train.groupby("user_id")}


def test_schedule_fires_and_nightly_run_asks_only_changed_prompts(deployed: PrefectServer, llm: LLMServer,
                                                                  small_movielens: Path, paths: dict[str, Path]):
    """Runs after the rerun test, on its (now complete) store: new ratings of one user arrive, a schedule fires,
    and only the users whose profile prompt (training history) changed are asked again."""
    data = with_new_ratings(small_movielens, paths["data"], user=60, n=6)
    before, after = train_histories(small_movielens), train_histories(data)
    changed = {u for u in after if after[u] != before.get(u)}
    assert changed == {60}

    llm.set_faults()
    llm.reset()
    cfg = augment_config(data, llm.base_url)
    soon = datetime.now(UTC) + timedelta(seconds=5)
    with deployed.api(), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(AUGMENT)
        [schedule] = client.create_deployment_schedules(deployment.id, [DeploymentScheduleCreate(
            schedule=IntervalSchedule(interval=timedelta(hours=1), anchor_date=soon), active=True,
            parameters=parameters(cfg, paths["store"], paths["nightly"]))])
        deadline = time.monotonic() + RUN_TIMEOUT_S
        runs: list[FlowRun] = []
        while not runs and time.monotonic() < deadline:
            runs = [r for r in client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
                if r.auto_scheduled and r.expected_start_time <= soon + timedelta(seconds=1)]
            time.sleep(0.5)
        assert runs, f"the schedule created no run\n{deployed.logs()}"
    run = wait_final(deployed, runs[0].id)
    with deployed.api(), get_client(sync_client=True) as client:
        client.delete_deployment_schedule(deployment.id, schedule.id)
    assert run.state.is_completed(), f"{run.state}\n{deployed.logs()}"
    assert llm.stats()["requests"] == len(changed)
    profiles = pd.read_parquet(paths["nightly"] / "user_profiles.parquet")
    assert profiles["user_id"].nunique() == 60


def test_deployment_budget_survives_a_config_override_and_an_unbudgeted_priced_run_is_refused(
        deployed: PrefectServer, llm: LLMServer, small_movielens: Path, paths: dict[str, Path]):
    """Through real deployment runs of augment-nightly (its prefect.yaml parameters: max_cost_usd 5.0) against a
    priced model (gpt-4o-mini's list price, answered by the local server): a run overriding the whole `config`
    keeps the $5 budget; one that drops the budget is refused before any work; one that says
    allow_unbounded_spend runs."""
    llm.set_faults()
    llm.reset()
    cfg = augment_config(small_movielens, llm.base_url)
    priced = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"model": "gpt-4o-mini"})})
    with deployed.api():
        kept = run_deployment(AUGMENT, parameters=parameters(priced, paths["store"], paths["priced"]), timeout=0)
    kept = wait_final(deployed, kept.id)
    assert kept.state.is_completed(), f"{kept.state}\n{deployed.logs()}"
    assert kept.parameters["max_cost_usd"] == 5.0
    summary = artifacts(deployed, kept)["augment-cost-summary"].data
    spent = read_ledger(store_ledger_root(paths["store"]), flow_run_id=str(kept.id))["cost_usd"].sum()
    assert spent > 0 and f"| this run | {spent:.6f} |" in summary and "| budget of this run | $5.0000 |" in summary
    asked = llm.stats()["requests"]
    assert asked == 60  # one profile prompt per user: new for this model

    unbudgeted = {**parameters(priced, paths["store"], paths["priced"]), "max_cost_usd": None}
    with deployed.api():
        refused = run_deployment(AUGMENT, parameters=unbudgeted, timeout=0)
        allowed = run_deployment(AUGMENT, parameters={**unbudgeted, "allow_unbounded_spend": True}, timeout=0)
    refused, allowed = wait_final(deployed, refused.id), wait_final(deployed, allowed.id)
    assert refused.state.is_failed() and "no budget: set max_cost_usd" in refused.state.message, refused.state
    with deployed.api(), get_client(sync_client=True) as client:  # refused before any work: no task run at all
        assert not client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[refused.id])))
    assert allowed.state.is_completed(), f"{allowed.state}\n{deployed.logs()}"
    assert llm.stats()["requests"] == asked  # the allowed run found every answer in the store: nothing paid
    assert "| budget of this run | none |" in artifacts(deployed, allowed)["augment-cost-summary"].data


def test_the_ui_is_told_this_servers_api_address(prefect_server: PrefectServer) -> None:
    """A server started with PREFECT_API_URL exported (as the README says) on a port other than 4200 tells its UI
    its own API address; the UI page is served."""
    settings = httpx.get(f"{prefect_server.url}/ui-settings", timeout=10).json()
    assert prefect_server.port != 4200 and settings["api_url"] == prefect_server.api_url
    assert "<html" in httpx.get(prefect_server.url, timeout=10).text.lower()


def test_walkthrough_runs_every_readme_command_in_order():
    """bench/ops_walkthrough.sh runs the README's operations commands (the port numbers and the README's
    placeholders `<NAME>` are variables there: "$NAME"), in the README's order; this test runs several of them
    itself."""
    script = [line.strip() for line in (REPO / "bench" / "ops_walkthrough.sh").read_text().splitlines()]
    commands = readme_commands()
    assert len(commands) >= 12 and any(c == "prefect --no-prompt deploy --all" for c in commands)
    positions = []
    for command in commands:
        wanted = re.sub(r"<([A-Z_]+)>", r'"$\1"', command.removesuffix("&").strip().replace("4200", "$PORT")
                        .replace("8000", "$LLM_PORT"))
        found = [i for i, line in enumerate(script) if wanted in line and not line.startswith("#")]
        assert found, f"README command not run by bench/ops_walkthrough.sh: {command}"
        positions.append(found[0])
    assert positions == sorted(positions), "bench/ops_walkthrough.sh runs the README's commands out of order"


RATE_LIMIT_TAKER = """
import sys, time
from tasks.ratelimit import prefect_rate_limit_hook
take = prefect_rate_limit_hook(sys.argv[1])
for _ in range(int(sys.argv[2])):
    take()
    print(time.time(), flush=True)
"""


def test_rate_limit_is_shared_across_processes(prefect_server: PrefectServer) -> None:
    """Two processes take slots of one server-side limit (2 at once, refilled at 2/s) through the hook the LLM
    client calls before each HTTP attempt: together they are held to the shared rate, not each to its own."""
    prefect_server.cli("gcl", "create", "shared-rpm", "--limit", "2", "--slot-decay-per-second", "2")
    per_process = 6
    procs = [subprocess.Popen([sys.executable, "-c", RATE_LIMIT_TAKER, "shared-rpm", str(per_process)],
                              env=prefect_server.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    stamps = sorted(float(x) for out, _ in outputs for x in out.split())
    assert len(stamps) == 2 * per_process
    # 12 slots from a bucket of 2 refilled at 2/s take at least (12 - 2) / 2 = 5 s; one process alone would need
    # only (6 - 2) / 2 = 2 s, so anything near 5 s means the processes shared the limit.
    assert stamps[-1] - stamps[0] >= 4.5, stamps


class LosesOneAnswer(ThreadingHTTPServer):
    """An HTTP proxy in front of the Prefect API that passes the first COMPLETED transition of a flow run to the
    server and answers the client 503 instead of the server's answer: the client sends the transition again, as
    after a timeout on a busy server, and the server rejects the duplicate."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.lost = upstream, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = httpx.request(self.command, proxy.upstream + self.path, content=body, headers=headers,
                                       timeout=30.0)
                completed = (self.command == "POST" and re.fullmatch(r"/api/flow_runs/[^/]+/set_state", self.path)
                             and b'"COMPLETED"' in body)
                if completed and answer.status_code == 201 and proxy.lost == 0:
                    proxy.lost += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = forward

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_a_subflow_result_survives_a_lost_api_answer_and_links_no_task_input(prefect_server: PrefectServer) -> None:
    """Through the proxy (in a child process), the subflow's COMPLETED transition is accepted, its answer lost and
    the resent one rejected: the caller still gets the subflow's result. Straight to the server (the proxy carries
    no websocket, so no task-run events), the task run taking that result has a plain input: the UI lists it."""
    proxy = LosesOneAnswer(prefect_server.url)
    serving = threading.Thread(target=proxy.serve_forever, daemon=True)
    serving.start()
    try:
        env = {**prefect_server.env, "PREFECT_API_URL": f"http://127.0.0.1:{proxy.server_port}/api"}
        lossy = subprocess.run([sys.executable, "-m", "tests.subflow_probe"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=180)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert lossy.returncode == 0, lossy.stdout + lossy.stderr[-3000:]
    assert proxy.lost == 1
    assert json.loads(lossy.stdout.splitlines()[-1]) == {"answer": "from the child"}

    with prefect_server.api():
        direct = parent(return_state=True)
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(direct.state_details.flow_run_id)
    assert direct.result() == {"answer": "from the child"}
    wait_for_task_run(prefect_server, run, "echo")
    assert flow_run_inputs(prefect_server, run) == []


def wait_for_task_run(server: PrefectServer, run: FlowRun, prefix: str, timeout_s: float = 30.0) -> None:
    """Task runs reach the server as events, after the flow run ends: wait until one named `prefix-*` is there."""
    deadline = time.monotonic() + timeout_s
    with server.api(), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            if any(t.name.startswith(f"{prefix}-") for t in runs):
                return
            time.sleep(0.5)
    raise AssertionError(f"no task run {prefix}-* of flow run {run.id} after {timeout_s:.0f} s")
