"""The official OpenAI Python client's Responses API against Orch (tests/chat.rs runs this).

Prints one line per check; the Rust test compares them.
"""
import json
import os

import openai

client = openai.OpenAI(base_url=os.environ["ORCH_BASE_URL"], api_key=os.environ["ORCH_API_KEY"], max_retries=0)
model = os.environ["ORCH_MODEL"]
echo = {
    "type": "function",
    "name": "everything__echo",
    "description": "Echoes back the input string",
    "parameters": {
        "type": "object",
        "properties": {"message": {"type": "string"}},
        "required": ["message"],
        "additionalProperties": False,
    },
    "strict": True,
}

plain = client.responses.create(model=model, instructions="be brief", input="say hi", metadata={"run": "py"})
print(f"plain: {plain.status} {plain.output_text} usage={plain.usage.total_tokens == plain.usage.input_tokens + plain.usage.output_tokens} metadata={plain.metadata}")

kinds = []
numbers = []
text = ""
final = None
for event in client.responses.create(model=model, input=[{"role": "user", "content": "say hi"}], stream=True):
    kinds.append(event.type)
    numbers.append(event.sequence_number)
    if event.type == "response.output_text.delta":
        text += event.delta
    if event.type == "response.completed":
        final = event.response
print("stream events: " + ",".join(dict.fromkeys(kinds)))
print(f"stream: {text} final={final.output_text} numbered={numbers == list(range(len(kinds)))}")

call = client.responses.create(
    model=model, input="Echo 'ping from n8n'", tools=[echo], tool_choice="required", parallel_tool_calls=False
)
item = call.output[0]
print(f"call: {item.type} {item.name} {json.loads(item.arguments)} {item.call_id.startswith('call_')}")

answer = client.responses.create(
    model=model,
    input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Echo 'ping from n8n'"}]},
        {"type": "function_call", "call_id": item.call_id, "name": item.name, "arguments": item.arguments},
        {"type": "function_call_output", "call_id": item.call_id, "output": "Echo: ping from n8n"},
    ],
    tools=[echo],
)
print(f"answer: {answer.output[0].type} {answer.output_text}")

with client.responses.stream(model=model, input="Echo 'ping from n8n'", tools=[echo]) as stream:
    done = [e.type for e in stream if e.type.endswith(".done") or e.type == "response.completed"]
    streamed = stream.get_final_response()
print(f"stream call: {','.join(done)} {streamed.output[0].name} {json.loads(streamed.output[0].arguments)}")

try:
    client.responses.create(model="gpt-4o", input="x")
    print("error: none")
except openai.BadRequestError as e:
    print(f"error: {e.status_code} {e.body['code']}")
try:
    client.responses.create(model=model, input="x", previous_response_id=plain.id)
    print("previous: none")
except openai.UnprocessableEntityError as e:
    print(f"previous: {e.status_code} {e.body['details']['field']}")
