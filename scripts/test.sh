#!/usr/bin/env bash
# The whole test suite on a fresh machine: fetches what the tests need, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh --all
cargo test --all-targets "$@"
