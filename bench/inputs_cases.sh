#!/usr/bin/env bash
# The failing inputs of ../shared/cases (CASES.md), each run through `llmrec` as a new user runs it: its own
# process, a fresh store and Prefect home, none of the test suite's Prefect settings. Prints, per case, the command,
# its exit code and the lines that matter (warnings, errors, the metrics users), and keeps each full output.
#
#   bash bench/inputs_cases.sh OUT [CHECKOUT]
#
# CHECKOUT (default: this repository) is the code that runs, through this repository's .venv; point it at a copy
# of an older commit to see how that one handled the cases (`git archive COMMIT | tar -x -C DIR`). An older commit
# waits Prefect's 20 s for its temporary server, which a busy machine exceeds: STARTUP_S=120 in the environment
# sets that wait (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS) so that the case itself is reached.
# Then each case again with the option that makes it run. Results: bench/results/inputs-cases.md.
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(mkdir -p "$1" && cd "$1" && pwd)"
code="$(cd "${2:-$root}" && pwd)"
py="$root/.venv/bin/python"
cases="$(cd "$root/../shared/cases" && pwd)"
export LLMREC_DATA_DIR="$root/../shared/data" PYTHONPATH="$code" PYTHONDONTWRITEBYTECODE=1
unset PREFECT_API_URL PREFECT_SERVER_ANALYTICS_ENABLED DO_NOT_TRACK PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
[ -n "${STARTUP_S:-}" ] && export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="$STARTUP_S"

run() {  # NAME ARGS...: run `llmrec ARGS` in OUT/NAME
  local name=$1 dir="$out/$1"
  shift
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$dir" && LLMREC_STORE="$dir/store" PREFECT_HOME="$dir/prefect-home" timeout 900 "$py" -m flows.cli "$@" \
    > "$dir/output.txt" 2>&1; echo $? > "$dir/exit")
  echo "== $name: llmrec ${*//$cases/../shared/cases} -> exit $(cat "$dir/exit"), $(wc -l < "$dir/output.txt") lines"
  grep -E "WARNING|ERROR|^error:|Error: |^[A-Za-z]*Error" "$dir/output.txt" | cut -c1-400
  [ -f "$dir/runs/out/metrics.json" ] && "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); \
print('metrics.json users:', d.get('users'), '| recall@20 valid', d['valid']['recall@20'], 'test', d['test']['recall@20'])" "$dir/runs/out/metrics.json"
}

run sparse-users base --dataset "$cases/sparse-users/interactions.csv" --epochs 5 --out runs/out
run cold-user-in-test base --split-dir "$cases/cold-user-in-test/split" --epochs 5 --out runs/out
run valid-equals-test base --split-dir "$cases/valid-equals-test/split" --epochs 5 --out runs/out
run sparse-users+loo base --dataset "$cases/sparse-users/interactions.csv" --split loo --epochs 5 --out runs/out
run cold-user-in-test+keep base --split-dir "$cases/cold-user-in-test/split" --cold-users keep --epochs 5 \
  --out runs/out
run valid-equals-test+drop base --split-dir "$cases/valid-equals-test/split" --split-overlap drop --epochs 5 \
  --out runs/out

# items-without-text needs an endpoint: the local server (not a language model)
port=$((20000 + RANDOM % 20000))
"$py" -m llmsim --port "$port" > "$out/llmsim.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$port/v1/models" > /dev/null && break; sleep 1; done
run items-without-text augment --dataset "$cases/items-without-text" --base-url "http://127.0.0.1:$port/v1" \
  --model llmrec-heuristic --rpm 0 --tpm 0 --epochs 5 --out runs/out
# titles for 20 of its 24 items: the other 4 are listed in augment_failures, never asked
"$py" -c "import pandas as pd, sys; ids = sorted(pd.read_csv(sys.argv[1])['item_id'].unique())[:20]; \
pd.DataFrame({'item_id': ids, 'title': [f'Film {i} (1999)' for i in ids]}).to_csv(sys.argv[2], index=False)" \
  "$cases/items-without-text/interactions.csv" "$out/items.csv"
run items-without-text+items augment --dataset "$cases/items-without-text" --items "$out/items.csv" \
  --base-url "http://127.0.0.1:$port/v1" --model llmrec-heuristic --rpm 0 --tpm 0 --epochs 5 --out runs/out
[ -f "$out/items-without-text+items/runs/out/augment_failures.parquet" ] && "$py" -c "import pandas as pd, sys; \
f = pd.read_parquet(sys.argv[1]); print('augment_failures:', len(f), 'rows;', f['reason'].value_counts().to_dict())" \
  "$out/items-without-text+items/runs/out/augment_failures.parquet"
echo "local server: $(curl -sf "http://127.0.0.1:$port/admin/stats" | "$py" -c \
  'import json,sys; s=json.load(sys.stdin); print(s["requests"], "requests,", s["chat_ok"], "chat answers")')"
