#!/usr/bin/env bash
# Runs the commands of README "Operations on a Prefect server", in order, against a temporary PREFECT_HOME and
# artifact store on free ports: server, work pool, deploy, local LLM server, worker, a run that fails on purpose
# (the local server answers HTTP 500 to every prompt naming one movie), artifacts, the failed run listed and
# re-run with `llmrec rerun`, costs. Stops what it started (worker, LLM server, Prefect server, in that order)
# and exits non-zero on any failure. tests/test_prefect_server.py checks that every prefect/llmrec command of
# that README section appears here.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/bootstrap.sh"
cd "$root"

if [ -e runs/ops-demo ]; then
  echo "ops_walkthrough: runs/ops-demo exists; move it away first (this script writes and then deletes it)" >&2
  exit 1
fi
work="$(mktemp -d)"
export PREFECT_HOME="$work/prefect-home" LLMREC_STORE="$work/store"
export PREFECT_LOGGING_LEVEL=WARNING PREFECT_SERVER_REGISTER_BLOCKS_ON_START=false
export PREFECT_WORKER_QUERY_SECONDS=2 PREFECT_WORKER_PREFETCH_SECONDS=5
unset PREFECT_API_URL OPENAI_API_KEY
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
LLM_PORT="$(free_port)"

pids=()
cleanup() {
  local status=$?
  # The worker was started last: stop in reverse order, each by its own PID, and wait for it to exit.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pids[i]}" 2>/dev/null || true
  done
  rm -rf "$work" runs/ops-demo
  [ "$status" -eq 0 ] && echo "ops_walkthrough: all steps passed" || echo "ops_walkthrough: FAILED (exit $status)" >&2
}
trap cleanup EXIT
step() { printf '\n== %s (%ds)\n' "$1" "$SECONDS"; }
wait_for() {  # URL, what
  for _ in $(seq 600); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "ops_walkthrough: $2 did not answer at $1" >&2; return 1
}

step "1. server"
prefect server start --host 127.0.0.1 --port $PORT >"$work/server.log" 2>&1 &
pids+=($!)
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
wait_for "$PREFECT_API_URL/health" "prefect server" || { tail -30 "$work/server.log" >&2; exit 1; }

step "2. work pool and deployments"
prefect work-pool create llmrec-process --type process
prefect --no-prompt deploy --all

step "3. local LLM server and worker"
llmrec llm-server --port $LLM_PORT --fail-match "My Left Foot" >"$work/llm.log" 2>&1 &
pids+=($!)
export OPENAI_BASE_URL=http://127.0.0.1:$LLM_PORT/v1
wait_for "$OPENAI_BASE_URL/models" "local LLM server"
prefect worker start --pool llmrec-process >"$work/worker.log" 2>&1 &
pids+=($!)

step "4. a run (some prompts fail on purpose, so it must end Failed)"
if prefect deployment run 'augment/augment-nightly' --watch --params '{"out_dir": "runs/ops-demo", "config": {"model": {"name": "mf"}, "llm": {"model": "llmrec-heuristic", "rpm": null, "tpm": null}, "augment": {"stages": ["profiles"]}}}'; then
  echo "ops_walkthrough: the run should have failed on the injected errors" >&2
  exit 1
fi
test -s runs/ops-demo/user_profiles.parquet && test -s runs/ops-demo/augment_failures.parquet

step "5. outputs"
prefect artifact ls
prefect artifact inspect augment-cost

step "6. re-run the failed run, with the endpoint recovered"
prefect flow-run ls --state Failed
FLOW_RUN_ID="$(prefect flow-run ls --state Failed --output json \
  | python -c 'import json, sys; print(json.load(sys.stdin)[0]["id"])')"
curl -fsS -X POST "http://127.0.0.1:$LLM_PORT/admin/faults" -H 'content-type: application/json' -d '{}' >/dev/null
curl -fsS -X POST "http://127.0.0.1:$LLM_PORT/admin/reset" >/dev/null
llmrec rerun "$FLOW_RUN_ID" --wait
failed_left="$(python -c 'import pandas as pd; print(len(pd.read_parquet("runs/ops-demo/augment_failures.parquet")))')"
test "$failed_left" -eq 0
curl -fsS "http://127.0.0.1:$LLM_PORT/admin/stats" | python -c 'import json, sys; s = json.load(sys.stdin); print("HTTP requests of the re-run:", s["requests"])'

step "7. costs"
llmrec cost --by flow-run
llmrec cost --since 2025-01-01 --by day --plot runs/ops-demo/costs.png
test -s runs/ops-demo/costs.png
