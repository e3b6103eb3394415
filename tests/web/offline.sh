#!/bin/sh
# The whole server flow with no network but loopback: run inside a fresh network namespace
# (`unshare -rn tests/web/offline.sh DATA_DIR PORT`, as tests/it/trust.rs does). Checks that the
# outside is unreachable, starts `clerk serve` on an empty data folder (the demo shop and the
# default models), then drives the raw model, the embedder and the browser journey over loopback.
# Env: CLERK (the binary), CHROMIUM, CLERK_OUT (screenshots).
set -eu
data=$1
port=$2
here=$(cd "$(dirname "$0")" && pwd)
ip link set lo up

# Prove the namespace is closed before trusting what follows.
if node -e '
  const s = require("net").connect({ host: "1.1.1.1", port: 443, timeout: 3000 });
  s.on("connect", () => process.exit(0));
  s.on("error", () => process.exit(1));
  s.on("timeout", () => process.exit(1));'; then
  echo "an outside address is reachable: this is not an offline namespace" >&2
  exit 1
fi

staff=$("$CLERK" keys create --data-dir "$data" --name offline-test --scope staff)
widget="widget:offline-widget-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
"$CLERK" serve --data-dir "$data" --port "$port" --threads 2 --api-key "$widget" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
base="http://127.0.0.1:$port"

node --input-type=module -e '
  const [base, staff] = process.argv.slice(1);
  for (let i = 0; i < 600; i++) {
    try { if ((await fetch(base + "/health")).status === 200) break; } catch {}
    await new Promise((r) => setTimeout(r, 500));
  }
  const post = async (path, body) => {
    const res = await fetch(base + path, {
      method: "POST",
      headers: { authorization: "Bearer " + staff, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const json = await res.json();
    if (res.status !== 200) throw new Error(path + ": " + res.status + " " + JSON.stringify(json));
    return json;
  };
  const chat = await post("/v1/chat/completions", {
    model: "smollm2-135m-instruct", max_tokens: 8, temperature: 0,
    messages: [{ role: "user", content: "Say hello." }],
  });
  if (!(chat.usage.completion_tokens > 0)) throw new Error("the raw model generated nothing");
  const emb = await post("/v1/embeddings", { model: "all-minilm-l6-v2", input: "hiking boots" });
  if (emb.data[0].embedding.length !== 384) throw new Error("the embedder answered wrongly");
  console.log("ok   raw model and embedder answer offline");
' "$base" "$staff"

CLERK_BASE="$base" CLERK_STAFF_KEY="$staff" node "$here/e2e.mjs"
