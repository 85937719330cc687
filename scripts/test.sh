#!/usr/bin/env bash
# Quick start, command 2: the whole test suite (extra arguments go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$root"
exec python -m pytest "$@"
