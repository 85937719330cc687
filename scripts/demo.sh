#!/usr/bin/env bash
# Quick start, command 1: the main job end to end on its embedded default -- `llmrec run` on MovieLens 100K in the
# sparse-data setting (at most 10 training interactions per user), against the local LLM server (NOT a language
# model: transparent heuristics), 3 seeds: base model, augmentation, embeddings, LightGCN and LLMRec, and the
# verdict at the top of runs/demo/report.md. Extra arguments are passed to `llmrec run`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$root"
exec llmrec run --dataset ml-100k --max-train-per-user 10 --seeds 3 --out "${LLMREC_DEMO_OUT:-runs/demo}" "$@"
