#!/usr/bin/env bash
# The whole test suite on a fresh machine: fetches what the tests need, then runs every test.
#   scripts/test.sh [cargo test args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh --all
# The official Python OpenAI client, in a virtual environment of its own under target/, for the
# server tests that check clerk with the client most users have.
venv=target/test-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'openai>=1.50,<3'
fi
export CLERK_TEST_PYTHON="$PWD/$venv/bin/python"
# Debian's Chromium and playwright-core for the browser tests (no browser download: the test
# tool drives the system's Chromium).
if [ ! -x /usr/bin/chromium ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
[ -d tests/web/node_modules/playwright-core ] || npm ci --prefix tests/web --no-audit --no-fund
export CLERK_TEST_CHROMIUM=/usr/bin/chromium
cargo test --all-targets "$@"
# A short, bounded fuzz of the request parsers, the ingest parsers and the chat-template renderer
# (CLERK_FUZZ_SECS per target; 0 skips it). Longer runs: scripts/fuzz.sh 3600.
fuzz_secs=${CLERK_FUZZ_SECS:-15}
if [ "$fuzz_secs" -gt 0 ] && [ $# -eq 0 ]; then
  scripts/fuzz.sh "$fuzz_secs"
fi
