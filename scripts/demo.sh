#!/usr/bin/env bash
# Quick start, command 1: the main job end to end on the embedded default (LightGCN on MovieLens 100K).
# Extra arguments are passed to `llmrec base`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$root"
exec llmrec base --model lightgcn --dataset ml-100k --out "${LLMREC_DEMO_OUT:-runs/demo}" "$@"
