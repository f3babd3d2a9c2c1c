#!/usr/bin/env python3
"""The official `openai` Python client against a running `bamba serve` (the embedded tiny model):
completions, chat, streaming, n, logprobs, errors as the client raises them.

Usage: client_check.py BASE_URL   (e.g. http://127.0.0.1:8000)
"""
import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
model = client.models.list().data[0].id

done = client.completions.create(model=model, prompt="Phileas Fogg", max_tokens=12, temperature=0)
text = done.choices[0].text
assert done.usage.completion_tokens == 12 and done.choices[0].finish_reason == "length", done
assert text, done

streamed = client.completions.create(
    model=model, prompt="Phileas Fogg", max_tokens=12, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
pieces, usage = [], None
for chunk in streamed:
    if chunk.choices:
        pieces.append(chunk.choices[0].text)
    if chunk.usage:
        usage = chunk.usage
assert "".join(pieces) == text, (pieces, text)
assert usage is not None and usage.completion_tokens == 12, usage

chat = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Who is Passepartout?"}], max_tokens=10, temperature=0,
    n=2, logprobs=True, top_logprobs=2,
)
assert len(chat.choices) == 2 and chat.choices[0].message.role == "assistant", chat
assert chat.choices[0].message.content == chat.choices[1].message.content, "greedy choices differ"
assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens // 2

stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Who is Passepartout?"}], max_tokens=10, temperature=0,
    stream=True,
)
content = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
assert content == chat.choices[0].message.content, (content, chat.choices[0].message.content)

try:
    client.completions.create(model=model, prompt="x", max_tokens=10**6)
    raise AssertionError("a request past the context was accepted")
except openai.BadRequestError as e:
    assert "maximum context length" in str(e), e
try:
    client.completions.create(model="no-such-model", prompt="x")
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError:
    pass
print("openai client: completions, chat, streaming, n, logprobs and errors as expected")
