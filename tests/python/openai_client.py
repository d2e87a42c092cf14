"""The official OpenAI Python client against Orch (tests/chat.rs runs this).

Prints one line per check; the Rust test compares them.
"""
import os

import openai

client = openai.OpenAI(base_url=os.environ["ORCH_BASE_URL"], api_key=os.environ["ORCH_API_KEY"], max_retries=0)

models = [m.id for m in client.models.list()]
print("models: " + ",".join(models))

plain = client.chat.completions.create(
    model="claude",
    messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hi"}],
    temperature=0.1,
)
print("plain: " + plain.choices[0].message.content)

text = ""
usage = None
for chunk in client.chat.completions.create(
    model="claude",
    messages=[{"role": "user", "content": "say hi"}],
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage is not None:
        usage = chunk.usage
print("stream: " + text)
print("usage: " + ("yes" if usage is not None and usage.total_tokens > 0 else "no"))

try:
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    print("error: none")
except openai.BadRequestError as e:
    print(f"error: {e.status_code} {e.body['code'] if isinstance(e.body, dict) and 'code' in e.body else e.body}")
