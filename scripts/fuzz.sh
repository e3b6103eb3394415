#!/usr/bin/env bash
# Runs clerk's fuzz targets (fuzz/fuzz_targets) under cargo-fuzz, each for a bounded time.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default 30 s, every target)
# cargo-fuzz needs nightly's -Z flags: RUSTC_BOOTSTRAP lets the stable toolchain accept them, and
# `--sanitizer none` avoids needing a sanitizer runtime. The corpus grows under fuzz/corpus (not
# committed); fuzz/seeds holds the committed starting inputs, including every crash found so far.
# A crash leaves its input under fuzz/artifacts/TARGET/ and fails the script; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none TARGET fuzz/artifacts/TARGET/crash-…
#
# Short runs (under 300 s per target, as in scripts/test.sh) use an unoptimised build: cold on 2
# cores it takes 6 minutes against 17 for an optimised one, which then runs about 10 times more
# inputs per second, a trade worth making only for a long run. CLERK_FUZZ_BUILD=dev|release
# overrides the choice.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
shift || true
mode=${CLERK_FUZZ_BUILD:-$([ "$secs" -lt 300 ] && echo dev || echo release)}
case $mode in
  dev) build=(--dev) ;;
  release) build=() ;;
  *) echo "CLERK_FUZZ_BUILD must be dev or release, not $mode" >&2; exit 2 ;;
esac
# A debug build of cargo-fuzz itself installs in about half the time (31 s against 54 here), and
# its own speed does not matter, since all it does is call cargo.
command -v cargo-fuzz >/dev/null || cargo install --locked --debug cargo-fuzz@0.13.2
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(openai_request ingest chat_template)
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz build ${build[@]+"${build[@]}"} --sanitizer none
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "fuzzing $t for ${secs}s ($mode build)"
  # -rss_limit_mb: a parser that needs more than 2 GiB for one input is a bug.
  cargo fuzz run ${build[@]+"${build[@]}"} --sanitizer none "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 | tail -n 12
done
