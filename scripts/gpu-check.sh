#!/usr/bin/env bash
# The GPU check, for a machine that has an NVIDIA GPU, its driver and CUDA 13's libraries (cuBLAS,
# cuRAND, NVRTC) but no Rust toolchain and a cap on what can be copied to it: the binaries are built
# here against CUDA 13.0 from NVIDIA's Python wheels, and travel with the default model in two
# packs of under 60 MiB each.
#
#   scripts/gpu-check.sh toolkit   (here) fetch CUDA 13.0's compiler and libraries into a cache
#   scripts/gpu-check.sh pack      (here) build clerk, the unit tests and the integration tests with
#                                  --features cuda, and pack them with the model into .gpu/a and .gpu/b
#   scripts/gpu-check.sh run-a     (there, with .gpu/a) the unit and architecture tests on the GPU
#   scripts/gpu-check.sh run-b     (there, after run-a, with .gpu/b) the real-model test and clerk bench
#
# run-a and run-b write their logs to $OUT (default .gpu/out) and fail if any step failed. Both must
# run on the same machine, as run-b joins the model from the pieces both packs carried.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cuda_version=13.0
cache=${CLERK_CUDA_CACHE:-$HOME/.cache/clerk-cuda-$cuda_version}
cuda_root=$cache/nvidia/cu13
model=smollm2-135m-instruct
out=${OUT:-$root/.gpu/out}

toolkit() {
  [ -x "$cuda_root/bin/nvcc" ] && [ -e "$cuda_root/lib/stubs/libcuda.so" ] && return
  mkdir -p "$cache/wheels"
  # nvcc and what it includes and links, and the libraries candle links to (cudarc links them
  # dynamically, so they must exist at link time; at run time the GPU machine's own are used).
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 -d "$cache/wheels" \
    "nvidia-cuda-nvcc==$cuda_version.*" "nvidia-cuda-runtime==$cuda_version.*" \
    "nvidia-cuda-cccl==$cuda_version.*" "nvidia-cuda-crt==$cuda_version.*" \
    "nvidia-nvvm==$cuda_version.*" "nvidia-cuda-nvrtc==$cuda_version.*" \
    "nvidia-cublas==$cuda_version.*" "nvidia-curand==10.4.0.*"
  for w in "$cache"/wheels/*.whl; do python3 -m zipfile -e "$w" "$cache"; done
  chmod +x "$cuda_root"/bin/* "$cuda_root"/nvvm/bin/* 2>/dev/null || true
  (
    cd "$cuda_root/lib"
    ln -sfn lib "$cuda_root/lib64"
    for l in libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13 libcurand.so.10 libcudart.so.13; do
      ln -sf "$l" "${l%.so.*}.so"
    done
  )
  # libcuda belongs to the driver, which no wheel carries: a stub with the driver API's names (as
  # cudarc declares them) lets the linker finish; the driver's own library is loaded at run time.
  # Each stub returns CUDA_ERROR_NO_DEVICE (100), so a binary run against it fails cleanly.
  local cudarc
  cudarc=$(cargo metadata --format-version 1 --features cuda --locked | python3 -c '
import json, sys
print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')
  mkdir -p "$cuda_root/lib/stubs"
  grep -oh 'load::<_F>("cu[A-Za-z0-9_]*")' "$(dirname "$cudarc")"/src/driver/sys/mod.rs |
    sed 's/.*("\(.*\)")/int \1(void) { return 100; }/' | sort -u >"$cache/libcuda-stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda_root/lib/stubs/libcuda.so" "$cache/libcuda-stub.c"
}

pack() {
  toolkit
  export CUDA_PATH=$cuda_root CUDA_ROOT=$cuda_root PATH=$cuda_root/bin:$PATH
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda}
  # One cargo run builds all three: the integration tests need the binary, so cargo builds it with
  # them (a separate `cargo build` would compile the dependencies again, with other features). The
  # paths are read from cargo's messages rather than guessed from hashes.
  local built
  built=$(cargo test --locked --release --features cuda --lib --test it --no-run \
    --message-format json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        kind = m["target"]["kind"][0]
        name = "clerk" if kind == "bin" else "unit" if kind == "lib" else "it"
        print(name, m["executable"])')
  rm -rf .gpu/a .gpu/b .gpu/stage
  mkdir -p .gpu/a .gpu/b .gpu/stage
  while read -r name exe; do
    strip -o ".gpu/stage/$name" "$exe"
  done <<<"$built"
  # Each binary embeds the same PTX of candle's kernels; a dictionary larger than all three lets xz
  # store it once (33 MB with its default, 16 MB so).
  tar -C .gpu/stage -cf - clerk unit it | xz -T1 --lzma2=preset=6,dict=192MiB >.gpu/a/bin.tar.xz
  rm -rf .gpu/stage
  # The model is split so that each pack stays under the cap with the working tree beside it.
  local gguf=${CLERK_MODELS_DIR:-$root/models}/$model.gguf
  [ -f "$gguf" ] || scripts/fetch-models.sh "$model"
  local bin_size first
  bin_size=$(stat -c %s .gpu/a/bin.tar.xz)
  first=$((58 * 1024 * 1024 - bin_size))
  head -c "$first" "$gguf" >.gpu/a/model.0
  tail -c +"$((first + 1))" "$gguf" >.gpu/b/model.1
  du -b .gpu/a .gpu/b
  if [ "$(stat -c %s .gpu/b/model.1)" -gt $((58 * 1024 * 1024)) ]; then
    echo "the packs do not fit: .gpu/b is over 58 MiB" >&2
    exit 1
  fi
}

# On the GPU machine: the driver's libcuda and the CUDA 13 libraries of its Python environment.
gpu_env() {
  local libs
  libs=$(python3 -c '
import os, nvidia
for p in nvidia.__path__:
    d = os.path.join(p, "cu13", "lib")
    if os.path.isdir(d): print(d)' 2>/dev/null | head -1) || true
  [ -n "$libs" ] || libs=$(dirname "$(find / -name libcublas.so.13 -not -path '/proc/*' 2>/dev/null | head -1)")
  export LD_LIBRARY_PATH=$libs:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
  mkdir -p "$out" .gpu/bin
  # Python's tarfile rather than tar -J: a slim image may lack the xz program.
  [ -x .gpu/bin/clerk ] || python3 -c '
import sys, tarfile
tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' .gpu/a/bin.tar.xz .gpu/bin
}

# Runs one step, its output to the terminal and to $out/NAME.txt; a failure is remembered, not fatal,
# so that one call reports every step.
failed=0
step() {
  local name=$1
  shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.txt" || { failed=1; echo "== $name FAILED"; }
}

run_a() {
  gpu_env
  step machine nvidia-smi
  # candle's CUDA products against clerk's CPU kernels; then the tensor forward on the GPU against
  # the CPU forward on tiny models of every architecture (the tests write the models).
  step unit .gpu/bin/unit candle_products
  step arch .gpu/bin/it arch::
  return $failed
}

run_b() {
  [ -f .gpu/a/model.0 ] || { echo "no .gpu/a/model.0: run-a must run first on this machine" >&2; exit 2; }
  gpu_env
  local dir=.gpu/models want
  mkdir -p "$dir"
  cat .gpu/a/model.0 .gpu/b/model.1 >"$dir/$model.gguf"
  cp "models/$model.json" "$dir/"
  want=$(python3 -c "import json; print(json.load(open('models/$model.json'))['sha256'])")
  echo "$want  $dir/$model.gguf" | sha256sum -c -
  export CLERK_MODELS_DIR=$root/$dir
  step engine .gpu/bin/it engine::the_tensor_forward_answers_on_cuda
  step bench-cuda .gpu/bin/clerk bench --models-dir "$dir" --device cuda --concurrency 1,4,8,16 --repetitions 2
  # The same binary on the machine's CPU cores, for a side-by-side figure.
  step bench-cpu .gpu/bin/clerk bench --models-dir "$dir" --device cpu --repetitions 2
  return $failed
}

case ${1:-} in
  toolkit) toolkit ;;
  pack) pack ;;
  run-a) run_a ;;
  run-b) run_b ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
