#!/usr/bin/env bash
# clerk and llama.cpp side by side: same GGUF, same machine, same thread count, one run.
#   scripts/bench-vs-llama.sh [MODEL_NAME] [THREADS]
# llama.cpp's llama-bench is built once into a cache outside the repo by ../shared/scripts/llama-bench.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
name=${1:-smollm2-135m-instruct}
threads=${2:-2}
gguf=models/$name.gguf
scripts/fetch-models.sh "$name" >&2
llama_bench=${LLAMA_BENCH:-$root/../shared/scripts/llama-bench.sh}
[ -x "$llama_bench" ] || { echo "llama-bench.sh not found at $llama_bench (set LLAMA_BENCH)" >&2; exit 2; }
cargo build --release --quiet
# llama.cpp's extra buffer types (AMX on Sapphire Rapids, the repacked AVX layouts) are its fastest
# path where they run, but in some virtual machines AMX's tile instructions fault (the CPU reports
# AMX, the hypervisor doesn't give the thread its tile state): then it runs with --repack 0, and
# says so. LLAMA_BENCH_EXTRA adds arguments by hand.
read -r -a extra <<< "${LLAMA_BENCH_EXTRA:-}"
if ! "$llama_bench" -m "$gguf" -t "$threads" -p 8 -n 0 -r 1 ${extra[@]+"${extra[@]}"} >/dev/null 2>&1; then
  echo "llama-bench failed with its default buffer types here; running it with --repack 0" >&2
  extra+=(--repack 0)
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Interleave the two so that machine noise hits both alike.
for round in 1 2; do
  echo "round $round: clerk" >&2
  target/release/clerk bench --model "$name" --threads "$threads" --concurrency 1 --repetitions 3 --json > "$out/clerk-$round.json"
  echo "round $round: llama.cpp" >&2
  "$llama_bench" -m "$gguf" -t "$threads" -p 128 -n 128 -r 3 ${extra[@]+"${extra[@]}"} -o json > "$out/llama-$round.json"
done
python3 - "$out" <<'PY'
import json, glob, os, statistics, sys
d = sys.argv[1]
clerk = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(d, "clerk-*.json")))]
llama = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(d, "llama-*.json")))]
def llama_rate(kind):
    vals = []
    for run in llama:
        for r in run:
            if (kind == "pp" and r["n_prompt"] > 0 and r["n_gen"] == 0) or (kind == "tg" and r["n_gen"] > 0 and r["n_prompt"] == 0):
                vals.append(r["avg_ts"])
    return statistics.median(vals)
c_pp = statistics.median(c["prompt_tokens_per_s"] for c in clerk)
c_tg = statistics.median(c["decode_tokens_per_s"] for c in clerk)
l_pp, l_tg = llama_rate("pp"), llama_rate("tg")
print(f"{'':22}{'clerk':>10}{'llama.cpp':>12}{'ratio':>8}")
print(f"{'prompt tokens/s (128)':22}{c_pp:10.1f}{l_pp:12.1f}{c_pp / l_pp:8.2f}")
print(f"{'decode tokens/s (128)':22}{c_tg:10.1f}{l_tg:12.1f}{c_tg / l_tg:8.2f}")
PY
