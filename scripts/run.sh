#!/usr/bin/env bash
# Runs clerk on a fresh machine: fetches the default model, builds, and starts it.
#   scripts/run.sh              # chat in the terminal with the default model
#   scripts/run.sh bench        # any other subcommand and its flags
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
[ $# -eq 0 ] && set -- chat
exec cargo run --release --quiet -- "$@"
