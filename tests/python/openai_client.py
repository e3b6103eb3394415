"""The official `openai` Python package against a running clerk server.

    python openai_client.py BASE_URL MODEL EMBEDDER [KEYED_BASE_URL KEY]

Run by the Rust integration test `server::the_python_openai_client_works`, which starts the server on
a free loopback port. Exits non-zero with the failed check's message on any mismatch.
"""

import sys

import openai
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)
question = [{"role": "user", "content": "What is the capital of France?"}]

# Chat, whole.
whole = client.chat.completions.create(model=model, messages=question, temperature=0, max_tokens=16)
text = whole.choices[0].message.content
assert whole.object == "chat.completion", whole
assert text, whole
assert whole.choices[0].finish_reason in ("stop", "length"), whole
u = whole.usage
assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
assert 1 <= u.completion_tokens <= 16, u

# Chat, streamed with usage: same text, one id, usage last.
chunks = list(
    client.chat.completions.create(
        model=model,
        messages=question,
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
)
assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
assert len({c.id for c in chunks}) == 1
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == text, (streamed, text)
assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u.completion_tokens, chunks[-1]
assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason

# Legacy completions.
comp = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0)
assert comp.choices[0].text, comp
streamed = "".join(
    c.choices[0].text
    for c in client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True)
    if c.choices
)
assert streamed == comp.choices[0].text, (streamed, comp)

# Embeddings: the SDK asks for base64 by default and decodes it.
embedder = sys.argv[3]
emb = client.embeddings.create(model=embedder, input=["How do I return shoes?", "Refund policy for footwear"])
assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384, emb
assert abs(sum(x * x for x in emb.data[0].embedding) - 1.0) < 1e-3
assert emb.usage.prompt_tokens > 0

# Models.
assert [m.id for m in client.models.list().data] == [model, embedder]
assert client.models.retrieve(model).id == model

# Errors raise the SDK's usual exception classes.
try:
    client.chat.completions.create(model="gpt-17", messages=question)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404 and e.body["code"] == "model_not_found", e.body
try:
    client.chat.completions.create(model=model, messages=question, max_tokens=10_000_000)
    raise AssertionError("context overflow accepted")
except openai.BadRequestError as e:
    assert e.body["code"] == "context_length_exceeded", e.body
try:
    client.chat.completions.create(model=model, messages=question, temperature=9)
    raise AssertionError("bad temperature accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "temperature", e.body

# Extra body fields (clerk's top_k / min_p) pass through the SDK's extra_body.
res = client.chat.completions.create(
    model=model, messages=question, max_tokens=4, extra_body={"top_k": 1, "min_p": 0.1}
)
assert res.choices[0].message.content is not None

# Tools: `required` gives a call to a declared function with arguments valid for its schema, whole
# and streamed; the result goes back as a `tool` message on the next turn.
import json

tools = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Look up an order by its id",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "pattern": "^#W[0-9]{7}$"}},
                "required": ["order_id"],
                "additionalProperties": False,
            },
        },
    }
]
ask = [{"role": "user", "content": "Where is my order #W2378156?"}]
res = client.chat.completions.create(
    model=model, messages=ask, tools=tools, tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=60
)
msg = res.choices[0].message
assert res.choices[0].finish_reason == "tool_calls", res
assert msg.content is None and len(msg.tool_calls) == 1, msg
call = msg.tool_calls[0]
assert call.type == "function" and call.function.name == "lookup_order", call
args = json.loads(call.function.arguments)
assert set(args) == {"order_id"} and len(args["order_id"]) == 9 and args["order_id"].startswith("#W"), args

streamed_calls = {}
finish = None
for c in client.chat.completions.create(
    model=model,
    messages=ask,
    tools=tools,
    tool_choice={"type": "function", "function": {"name": "lookup_order"}},
    temperature=0,
    max_tokens=60,
    stream=True,
):
    for ch in c.choices:
        for tc in ch.delta.tool_calls or []:
            entry = streamed_calls.setdefault(tc.index, {"name": "", "arguments": ""})
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
        finish = ch.finish_reason or finish
assert finish == "tool_calls", finish
assert streamed_calls[0]["name"] == "lookup_order", streamed_calls
json.loads(streamed_calls[0]["arguments"])

follow = client.chat.completions.create(
    model=model,
    messages=ask
    + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"status": "delivered"}'},
    ],
    tools=tools,
    temperature=0,
    max_tokens=40,
)
assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls"), follow

# `auto`, streamed: the reply is either text or calls to a declared function, never call markup.
text, calls, finish = "", {}, None
for c in client.chat.completions.create(
    model=model,
    messages=ask,
    tools=tools,
    tool_choice="auto",
    parallel_tool_calls=False,
    temperature=0,
    max_tokens=60,
    stream=True,
):
    for ch in c.choices:
        text += ch.delta.content or ""
        for tc in ch.delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
        finish = ch.finish_reason or finish
if calls:
    assert finish in ("tool_calls", "length") and not text, (finish, text)
    for entry in calls.values():
        assert entry["name"] == "lookup_order", calls
        json.loads(entry["arguments"])
else:
    assert text and "<tool_call>" not in text and finish in ("stop", "length"), (text, finish)

# Tool errors name the parameter, as OpenAI's do.
try:
    client.chat.completions.create(
        model=model, messages=ask, tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}}
    )
    raise AssertionError("a choice of an undeclared function accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "tool_choice", e.body

# A malformed body gets the same error shape (the SDK can't send one, so its HTTP library does).
import httpx

r = httpx.post(f"{base}/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"})
assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text

# API keys: a server started with one refuses a wrong key with the SDK's AuthenticationError.
if len(sys.argv) > 5:
    keyed, key = sys.argv[4], sys.argv[5]
    try:
        OpenAI(base_url=keyed, api_key="sk-wrong-key-0123456789", max_retries=0).models.list()
        raise AssertionError("a wrong key accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401 and e.body["code"] == "invalid_api_key", e.body
    assert [m.id for m in OpenAI(base_url=keyed, api_key=key, max_retries=0).models.list().data]

# Structured output: `json_schema` and `json_object` always parse.
res = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Rate our shop from 1 to 5 with a comment, as JSON."}],
    response_format={
        "type": "json_schema",
        "json_schema": {
            "name": "rating",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                    "comment": {"type": "string", "maxLength": 80},
                },
                "required": ["stars", "comment"],
                "additionalProperties": False,
            },
        },
    },
    temperature=0.8,
    seed=7,
    max_tokens=120,
)
rating = json.loads(res.choices[0].message.content)
assert 1 <= rating["stars"] <= 5 and isinstance(rating["comment"], str), rating
res = client.chat.completions.create(
    model=model, messages=question, response_format={"type": "json_object"}, temperature=0, max_tokens=80
)
assert isinstance(json.loads(res.choices[0].message.content), dict), res

print("all python client checks passed")
