#!/usr/bin/env bash
# Runs clerk on a fresh machine: fetches the default models, builds, and serves the OpenAI API on
# http://127.0.0.1:8080 (Ctrl-C stops it).
#   scripts/run.sh              # clerk serve
#   scripts/run.sh chat         # any other subcommand and its flags
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
[ $# -eq 0 ] && set -- serve
exec cargo run --release --quiet -- "$@"
