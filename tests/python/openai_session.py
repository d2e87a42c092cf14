"""The OpenAI Python client continuing a session the way n8n's OpenAI Chat
Model node does: every call resends the whole conversation, with the session
in an `X-Session-ID` header (tests/chat.rs runs this and reads the session).

Prints each answer on one line (newlines as |); the Rust test compares them.
"""
import os

import openai

client = openai.OpenAI(base_url=os.environ["ORCH_BASE_URL"], api_key=os.environ["ORCH_API_KEY"], max_retries=0)
session = {"X-Session-ID": os.environ["ORCH_SESSION"]}

history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first question"}]
first = client.chat.completions.create(model="echo", messages=history, extra_headers=session)
answer = first.choices[0].message.content
print("first: " + answer.replace("\n", "|"))

history += [{"role": "assistant", "content": answer}, {"role": "user", "content": "second question"}]
second = client.chat.completions.create(model="echo", messages=history, extra_headers=session)
print("second: " + second.choices[0].message.content.replace("\n", "|"))
