#!/usr/bin/env bash
# Runs the commands of README "Operations on a Prefect server", in order, against a temporary PREFECT_HOME and
# artifact store on free ports: server (with the API address exported first, and the UI's API address checked),
# work pool, deploy, local LLM server, worker, a run whose batches partly fail on purpose (the local server
# answers HTTP 500 to every prompt naming "Dunston Checks In": 3 of the 19 batches), artifacts, the failed run
# listed and re-run with `llmrec rerun` once `llmrec llm-faults --clear` recovered the endpoint, costs. Stops what
# it started (worker, LLM server, Prefect server, in that order) and exits non-zero on any failure.
# tests/test_prefect_server.py checks that every prefect/llmrec command of that README section appears here
# (`<NAME>` in the README is "$NAME" here). With --hold it prints the UI's address at the end and waits for Enter
# before stopping, so that the runs can be looked at in a browser.
set -euo pipefail
hold=false
[ "${1:-}" = "--hold" ] && hold=true
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/bootstrap.sh"
cd "$root"

if [ -e runs/ops-demo ]; then
  echo "ops_walkthrough: runs/ops-demo exists; move it away first (this script writes and then deletes it)" >&2
  exit 1
fi
work="$(mktemp -d)"
DATA_DIR="${LLMREC_DATA_DIR:-$HOME/.cache/llmrec}"
STORE="$work/store"
export PREFECT_HOME="$work/prefect-home"
export PREFECT_SERVER_REGISTER_BLOCKS_ON_START=false
export PREFECT_WORKER_QUERY_SECONDS=2 PREFECT_WORKER_PREFETCH_SECONDS=5
export COLUMNS=200  # Prefect's tables, printed to a pipe here, would fit 80 columns and cut ids and keys
unset PREFECT_API_URL OPENAI_API_KEY LLMREC_STORE
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
LLM_PORT="$(free_port)"

pids=()
stops=()  # the signal that stops each: SIGINT (what Ctrl-C sends) for the worker, SIGTERM for the servers
cleanup() {
  local status=$?
  # The worker was started last: stop in reverse order, each by its own PID, and wait for it to exit.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    local t0=$SECONDS
    kill "-${stops[i]}" "${pids[i]}" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "${pids[i]}" 2>/dev/null && [ "${stops[i]}" = INT ]; then
      # A second Ctrl-C: Prefect's worker then kills itself (SIGKILL), as the README says.
      echo "the worker was still running 30 s after one Ctrl-C (SIGINT): a second one stops it; its last lines:"
      tail -5 "$work/worker.log"
      kill -INT "${pids[i]}" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
    elif [ "${stops[i]}" = INT ]; then
      echo "the worker stopped $((SECONDS - t0)) s after one Ctrl-C (SIGINT)"
    fi
    if kill -0 "${pids[i]}" 2>/dev/null; then
      echo "ops_walkthrough: PID ${pids[i]} still running after SIG${stops[i]}: killed" >&2
      kill -KILL "${pids[i]}" 2>/dev/null || true
      status=1
    fi
  done
  rm -rf "$work" runs/ops-demo
  [ "$status" -eq 0 ] && echo "ops_walkthrough: all steps passed" || echo "ops_walkthrough: FAILED (exit $status)" >&2
  exit "$status"
}
trap cleanup EXIT
step() { printf '\n== %s (%ds)\n' "$1" "$SECONDS"; }
wait_for() {  # URL, what
  for _ in $(seq 600); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "ops_walkthrough: $2 did not answer at $1" >&2; return 1
}

step "1. server on port $PORT, its API address exported first"
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
prefect server start --host 127.0.0.1 --port $PORT >"$work/server.log" 2>&1 &
pids+=($!) stops+=(TERM)
wait_for "$PREFECT_API_URL/health" "prefect server" || { tail -30 "$work/server.log" >&2; exit 1; }
ui_api="$(curl -s http://127.0.0.1:$PORT/ui-settings | python -c 'import json, sys; print(json.load(sys.stdin)["api_url"])')"
echo "the UI calls the API at $ui_api"
if [ "$ui_api" != "$PREFECT_API_URL" ]; then
  echo "ops_walkthrough: the UI would call $ui_api, not this server's $PREFECT_API_URL" >&2
  exit 1
fi
curl -fsS "http://127.0.0.1:$PORT/" | grep -q "<html" || { echo "ops_walkthrough: no UI page" >&2; exit 1; }

step "2. work pool and deployments"
prefect work-pool create llmrec-process --type process
prefect --no-prompt deploy --all

step "3. worker environment, local LLM server (failing one movie's prompts) and worker"
export LLMREC_DATA_DIR="$DATA_DIR" LLMREC_STORE="$STORE"
llmrec llm-server --port $LLM_PORT --fail-match "Dunston Checks In" >"$work/llm.log" 2>&1 &
pids+=($!) stops+=(TERM)
export OPENAI_BASE_URL=http://127.0.0.1:$LLM_PORT/v1
wait_for "$OPENAI_BASE_URL/models" "local LLM server"
# Job control on while it starts: like a command in a terminal, the worker then keeps SIGINT (a script's background
# commands would ignore it), so that one SIGINT, as one Ctrl-C, stops it.
set -m
prefect worker start --pool llmrec-process >"$work/worker.log" 2>&1 &
pids+=($!) stops+=(INT)
set +m

step "4. a run (some batches fail on purpose, so it must end Failed)"
if prefect deployment run 'augment/augment-nightly' --watch --params '{"out_dir": "runs/ops-demo", "config": {"model": {"name": "mf"}, "llm": {"model": "llmrec-heuristic", "rpm": null, "tpm": null}, "augment": {"stages": ["profiles"]}}}'; then
  echo "ops_walkthrough: the run should have failed on the injected errors" >&2
  exit 1
fi
test -s runs/ops-demo/user_profiles.parquet && test -s runs/ops-demo/augment_failures.parquet
# Batch states of the run, from the Prefect API: some failed, not all; and the deployment's budget survived.
python - <<'EOF'
import re
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName
with get_client(sync_client=True) as client:
    [run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Failed"]))))
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run.id]}))
states = {int(m.group(1)): t.state.name for t in tasks if (m := re.fullmatch(r"profiles-batch-(\d+)", t.name))}
failed = sorted(b for b, s in states.items() if s == "Failed")
print(f"profiles batches: {len(states)}, failed: {failed}")
assert 0 < len(failed) < len(states), states
summary = Artifact.get("augment-cost-summary").data
assert "| budget of this run | $5.0000 |" in summary, summary
print("the deployment's budget of $5 held under the run's `config` override")
EOF

step "5. outputs"
prefect artifact ls
prefect artifact inspect augment-cost

step "6. the endpoint recovers; re-run the failed run"
prefect flow-run ls --state Failed
FLOW_RUN_ID="$(prefect flow-run ls --state Failed --output json \
  | python -c 'import json, sys; print(json.load(sys.stdin)[0]["id"])')"
llmrec llm-faults --clear
curl -fsS -X POST "http://127.0.0.1:$LLM_PORT/admin/reset" >/dev/null  # zero the server's counters (stats below)
llmrec rerun "$FLOW_RUN_ID" --wait
failed_left="$(python -c 'import pandas as pd; print(len(pd.read_parquet("runs/ops-demo/augment_failures.parquet")))')"
test "$failed_left" -eq 0
curl -fsS "http://127.0.0.1:$LLM_PORT/admin/stats" | python -c 'import json, sys; s = json.load(sys.stdin); print("HTTP requests of the re-run:", s["requests"])'
# One card per artifact key on the re-run flow run (the first attempt's versions were replaced).
FLOW_RUN_ID="$FLOW_RUN_ID" python - <<'EOF'
import collections, os
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter
with get_client(sync_client=True) as client:
    arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id={"any_": [os.environ["FLOW_RUN_ID"]]}))
keys = collections.Counter(a.key for a in arts)
print("artifact cards of the re-run flow run:", dict(keys))
assert keys and max(keys.values()) == 1, keys
EOF

step "7. costs"
llmrec cost --by flow-run
llmrec cost --since 2025-01-01 --by day --plot runs/ops-demo/costs.png
test -s runs/ops-demo/costs.png

if $hold; then
  echo "the UI: http://127.0.0.1:$PORT (the failed and re-run flow run: http://127.0.0.1:$PORT/runs/flow-run/$FLOW_RUN_ID)"
  read -r -p "press Enter to stop everything "
fi
