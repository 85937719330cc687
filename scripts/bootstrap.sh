#!/usr/bin/env bash
# Create or reuse ./.venv with the project installed; sourced by scripts/demo.sh and scripts/test.sh.
# torch is installed first and pinned, so that nothing later resolves an unpinned (CUDA) torch.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
stamp="$venv/.llmrec-installed"
want="$(cat "$root/pyproject.toml" "$root/scripts/bootstrap.sh" | sha256sum | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ]; then
  echo "llmrec: creating virtualenv at $venv" >&2
  "$python" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "llmrec: installing torch==2.13.0 and the project into $venv (a few minutes the first time)" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
  "$venv/bin/python" -m pip show torch >/dev/null 2>&1 || { echo "llmrec: torch install failed" >&2; exit 1; }
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[dev]" 2>&1 \
    | grep -v "is ignored: it is neither" >&2 || true
  "$venv/bin/python" -c "import flows.cli, prefect, torch" || { echo "llmrec: project install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

# MovieLens is read from a path, never copied: use the shared folder beside the checkout when there is one.
if [ -z "${LLMREC_DATA_DIR:-}" ] && [ -d "$root/../shared/data" ]; then
  export LLMREC_DATA_DIR="$(cd "$root/../shared/data" && pwd)"
fi
# Quiet, offline-friendly Prefect defaults (each can be overridden from the environment).
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export DO_NOT_TRACK="${DO_NOT_TRACK:-1}"
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-90}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export PATH="$venv/bin:$PATH"
