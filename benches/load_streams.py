"""Concurrent streaming clients against a running clerk server, loopback only and bounded.

    python benches/load_streams.py BASE_URL MODEL CLIENTS TOKENS

Each client streams one chat completion of TOKENS tokens (end-of-sequence banned so every client
does the same work) with the official openai package; prints completion counts, malformed chunks
and aggregate tokens/s.
"""

import sys
import threading
import time

from openai import OpenAI

base, model, clients, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600)
results, errors = [], []


def one(i):
    try:
        got, finished = 0, False
        for c in client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Tell me fact number {i} about the sea."}],
            max_tokens=tokens,
            temperature=0,
            logit_bias={"0": -100, "2": -100},
            stream=True,
            stream_options={"include_usage": True},
        ):
            if c.usage:
                got = c.usage.completion_tokens
            finished |= any(ch.finish_reason for ch in c.choices)
        results.append((got, finished))
    except Exception as e:  # a malformed chunk fails the SDK's parsing and lands here
        errors.append(repr(e))


start = time.time()
threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
secs = time.time() - start
total = sum(g for g, _ in results)
done = sum(1 for _, f in results if f)
print(f"{clients} clients: {done} finished, {len(errors)} errors, {total} tokens in {secs:.1f} s "
      f"= {total / secs:.1f} tokens/s aggregate")
for e in errors[:3]:
    print("error:", e)
sys.exit(1 if errors or done != clients else 0)
