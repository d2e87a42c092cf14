//! OpenAI's Responses API: `POST /v1/responses`, streamed and not, with
//! function tools, for n8n's OpenAI Chat Model node on its defaults ("Use
//! Responses API" on) and the official clients' `responses.create`.
//!
//! A response is one chat turn run as a job, exactly as a chat completion is
//! ([`crate::openai`]): the input items become the same conversation, functions
//! are offered and read back by the same machinery ([`crate::tool_calls`],
//! [`ToolTurn`]), and only the request and answer shapes differ. Orch keeps no
//! Responses state between calls: every turn is kept as its job (input,
//! answer, usage: `GET /v1/jobs/{orch.job_id}`), whatever `store` says, but
//! `previous_response_id` is refused and `GET /v1/responses/{id}` is not
//! served; clients resend the conversation in `input`, as n8n does.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use orch_store::JobId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::Sender;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Principal;
use crate::error::responses::{BadRequest, Forbidden, Invalid, NotJson, TooLarge, Unauthorized, Unavailable};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::jobs;
use crate::json::ApiJson;
use crate::openai::{self, ToolDone, ToolTurn, TurnEvent, WaitedChat};
use crate::tool_calls::{self, Answer, Call, ToolSpec, Transcript};

/// A Responses API request. Sampling settings (`temperature`, `top_p`,
/// `reasoning`, `truncation`, `user`, ...) are accepted and ignored: the CLIs
/// do not take them.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"model": "auto", "instructions": "Answer in one sentence.", "input": "What is n8n?"}))]
pub struct ResponsesRequest {
    /// `auto`, a provider, or `provider/model` (see `GET /v1/models`).
    pub model: String,
    /// A string (one user message) or a list of items: messages
    /// `{"type": "message", "role", "content"}` (content a string or
    /// `input_text`/`output_text` parts; role `user`, `assistant`, `system`
    /// or `developer`), earlier calls `{"type": "function_call", "call_id",
    /// "name", "arguments"}` and their results `{"type":
    /// "function_call_output", "call_id", "output"}`. `reasoning` items are
    /// skipped.
    #[schema(value_type = Object)]
    pub input: Value,
    /// A system message before the input.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Stream the typed events (`response.created` ... `response.completed`).
    #[serde(default)]
    pub stream: bool,
    /// Functions the model may call: `{"type": "function", "name",
    /// "description", "parameters", "strict"}`. As on chat completions, Orch
    /// offers them in the prompt and checks the answer against each schema
    /// (asking again once), so the output is a message or `function_call`
    /// items with valid JSON arguments. With tools, a streamed answer arrives
    /// when the turn ends.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `auto` (default), `none`, `required`, or `{"type": "function", "name"}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Whether one answer may call several functions (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Accepted and echoed; not enforced (the CLIs take no output limit).
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// Up to 16 string values (keys up to 64 characters, values up to 512),
    /// echoed in the response and kept in the job's metadata under `responses`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Accepted. Every turn is kept as its job (`GET /v1/jobs/{orch.job_id}`)
    /// whatever it says; responses cannot be fetched or continued by id, so
    /// the answer says `store: false`.
    #[serde(default)]
    pub store: Option<bool>,
    /// Refused (422): Orch keeps no Responses state; send the whole
    /// conversation in `input`.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// `{}` or `{"format": {"type": "text"}}`; structured output formats are refused.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub text: Option<Value>,
    /// Orch's routing hint for `auto`: coding, reasoning, planning, fast, general.
    #[serde(default)]
    pub task_type: Option<String>,
    /// Orch's cap on what this turn may cost, in US dollars, as on chat completions.
    #[serde(default)]
    pub max_budget_usd: Option<f64>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub ignored: Map<String, Value>,
}

/// A response (`object: "response"`), as OpenAI shapes it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "resp_019a8a5e3c1e7d3a9a570c2f7e1d4b11", "object": "response", "created_at": 1763715600, "status": "completed", "error": null, "incomplete_details": null, "instructions": null, "max_output_tokens": null, "model": "claude/claude-sonnet-4-5",
    "output": [{"type": "message", "id": "msg_019a8a5e3c1e7d3a9a570c2f7e1d4b11", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": "n8n is a workflow automation tool.", "annotations": [], "logprobs": []}]}],
    "parallel_tool_calls": true, "previous_response_id": null, "store": false, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "truncation": "disabled",
    "usage": {"input_tokens": 25, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 34}, "metadata": {},
    "orch": {"job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "routed_to": "claude/claude-sonnet-4-5", "route_reason": "explicit model claude"}}))]
pub struct ResponseObject {
    /// `resp_` and the job id.
    pub id: String,
    pub object: &'static str,
    pub created_at: i64,
    /// `completed` (also `in_progress` and `failed` in streamed events).
    pub status: &'static str,
    /// `{"code", "message"}` when the turn failed (streamed `response.failed`).
    #[schema(value_type = Option<Object>)]
    pub error: Value,
    #[schema(value_type = Option<Object>)]
    pub incomplete_details: Value,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u64>,
    /// Where the turn ran (`provider/model`); the model asked for until known.
    pub model: String,
    /// `message` and `function_call` items.
    #[schema(value_type = Vec<Object>)]
    pub output: Vec<Value>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub store: bool,
    #[schema(value_type = Object)]
    pub text: Value,
    #[schema(value_type = Object)]
    pub tool_choice: Value,
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    pub truncation: &'static str,
    /// Input and output tokens of every turn the answer took (null until it ends).
    #[schema(value_type = Option<Object>)]
    pub usage: Value,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Orch's own: the job behind the response and the routing decision.
    #[schema(value_type = Object)]
    pub orch: Value,
}

/// Create a model response (OpenAI Responses API).
///
/// Runs one chat turn as a job, like `POST /v1/chat/completions`, and answers
/// with a `response` object: `output` holds a `message` with `output_text`,
/// or `function_call` items when tools were offered and the model calls
/// them. With `stream: true` the answer is a text/event-stream of typed
/// events with `sequence_number`s: `response.created`,
/// `response.in_progress`, `response.output_item.added`,
/// `response.content_part.added`, `response.output_text.delta` ... `.done`,
/// `response.content_part.done` (or `response.function_call_arguments.delta`
/// and `.done` for a call), `response.output_item.done`, and
/// `response.completed` (or `response.failed` and an `error` event). Closing the
/// connection cancels the job. The job id is in `X-Orch-Job-Id` and
/// `orch.job_id`. `previous_response_id` is refused: resend the conversation.
#[utoipa::path(
    post, path = "/v1/responses", tag = "chat",
    request_body = ResponsesRequest,
    responses(
        (status = 200, description = "The response (JSON), or with `stream: true` a text/event-stream of typed events", body = ResponseObject),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = TooLarge),
        (status = 415, response = NotJson),
        (status = 422, response = Invalid),
        (status = 429, description = "Every provider tried is at its usage limit; `Retry-After` and `details.retry_at` say when one takes turns again", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the earliest provider of the chain takes turns again"))),
        (status = 502, description = "The provider failed, or answered with no usable function call twice; `code` says how", body = ErrorBody),
        (status = 503, response = Unavailable),
        (status = 504, description = "No answer within the configured wait (the job is cancelled)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_response(
    State(state): State<AppState>,
    principal: Principal,
    body: ApiJson<ResponsesRequest>,
) -> ApiResult<Response> {
    principal.require("jobs:write")?;
    let req = body.value;
    if req.previous_response_id.is_some() {
        return Err(ApiError::invalid_field(
            "previous_response_id",
            "is not supported: Orch keeps no Responses state between calls; send the whole conversation in `input`",
        ));
    }
    check_text(req.text.as_ref())?;
    let metadata = check_metadata(req.metadata.as_ref())?;
    let functions =
        tool_calls::responses_functions(req.tools.as_deref().unwrap_or_default()).map_err(openai::field_error)?;
    let choice = tool_calls::choice(req.tool_choice.as_ref(), &functions).map_err(openai::field_error)?;
    let spec = ToolSpec { functions, choice, parallel: req.parallel_tool_calls.unwrap_or(true) };
    jobs::check_model(&state.router, Some(&req.model), req.task_type.as_deref())?;
    jobs::check_budget(req.max_budget_usd)?;
    let transcript = transcript_of(&req)?;
    let mut input = openai::finish_input(&state, &req.model, req.task_type.as_deref(), transcript.messages, &spec)?;
    if let Some(usd) = req.max_budget_usd {
        input["max_budget_usd"] = json!(usd);
    }
    input["key_id"] = json!(principal.key.id);
    jobs::limit_providers(&state, Some(&principal), &mut input)?;
    let mut job_metadata = Map::from_iter([("source".to_owned(), json!("openai"))]);
    job_metadata.insert("responses".to_owned(), metadata.clone());
    let chat = openai::start_turn(&state, &principal, &input, job_metadata).await?;
    let id = chat.id;
    let shape = Shape {
        id: format!("resp_{}", id.simple()),
        created_at: chrono::Utc::now().timestamp(),
        request: req,
        tool_choice: choice_json(&spec),
        parallel: spec.parallel,
        metadata,
    };
    let mut response = if spec.active() {
        let turn = ToolTurn { state: state.clone(), chat, input, spec };
        if shape.request.stream {
            stream_tool_turn(turn, shape).into_response()
        } else {
            let done = turn.run().await?;
            Json(shape.finished(&done.answer, done.id, &done.result, done.tokens)).into_response()
        }
    } else if shape.request.stream {
        stream_text_turn(state, chat, shape).into_response()
    } else {
        let (id, text, result) = chat.answer().await?;
        Json(shape.finished(&Answer::Text(text), id, &result, openai::tokens_of(&result))).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert("x-orch-job-id", value);
    }
    Ok(response)
}

/// `text`: only plain text output.
fn check_text(text: Option<&Value>) -> ApiResult<()> {
    match text.map(|t| &t["format"]) {
        None | Some(Value::Null) => Ok(()),
        Some(format) if format["type"] == "text" => Ok(()),
        Some(format) => Err(ApiError::invalid_field(
            "text.format",
            format!(
                "{} is not supported; only {{\"type\": \"text\"}} (ask for JSON in the instructions instead)",
                format["type"]
            ),
        )),
    }
}

/// `metadata`: at most 16 string values, keys up to 64 characters, values up to 512.
fn check_metadata(metadata: Option<&Value>) -> ApiResult<Value> {
    let map = match metadata {
        None | Some(Value::Null) => return Ok(json!({})),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ApiError::invalid_field("metadata", "must be an object of string values")),
    };
    if map.len() > 16 {
        return Err(ApiError::invalid_field("metadata", format!("has {} keys; at most 16 are allowed", map.len())));
    }
    for (key, value) in map {
        let field = format!("metadata.{key}");
        if key.chars().count() > 64 {
            return Err(ApiError::invalid_field(&field, "keys are at most 64 characters"));
        }
        match value.as_str() {
            Some(v) if v.chars().count() <= 512 => {}
            Some(_) => return Err(ApiError::invalid_field(&field, "values are at most 512 characters")),
            None => return Err(ApiError::invalid_field(&field, "must be a string")),
        }
    }
    Ok(Value::Object(map.clone()))
}

/// The conversation of a request: `instructions`, then the input items.
fn transcript_of(req: &ResponsesRequest) -> ApiResult<Transcript> {
    let mut transcript = Transcript::default();
    if let Some(instructions) = req.instructions.as_ref().filter(|i| !i.is_empty()) {
        transcript.say("system", instructions.clone());
    }
    let items = match &req.input {
        Value::String(text) => {
            transcript.say("user", text.clone());
            return Ok(transcript);
        }
        Value::Array(items) => items,
        _ => return Err(ApiError::invalid_field("input", "must be a string or a list of input items")),
    };
    for (i, item) in items.iter().enumerate() {
        let field = |f: &str| format!("input[{i}].{f}");
        let string = |f: &str| item[f].as_str().ok_or_else(|| ApiError::invalid_field(&field(f), "must be a string"));
        match item["type"].as_str() {
            None | Some("message") => {
                let content =
                    openai::text_of(&item["content"]).map_err(|e| ApiError::invalid_field(&field("content"), e))?;
                match string("role")? {
                    "system" | "developer" => transcript.say("system", content),
                    "user" => transcript.say("user", content),
                    "assistant" => transcript.say("assistant", content),
                    other => {
                        return Err(ApiError::invalid_field(
                            &field("role"),
                            format!("unsupported role {other:?}; allowed: user, assistant, system, developer"),
                        ));
                    }
                }
            }
            Some("function_call") => transcript.call(string("name")?, &item["arguments"], string("call_id")?),
            Some("function_call_output") => {
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    parts @ Value::Array(_) => {
                        openai::text_of(parts).map_err(|e| ApiError::invalid_field(&field("output"), e))?
                    }
                    _ => return Err(ApiError::invalid_field(&field("output"), "must be a string or text parts")),
                };
                transcript.result(string("call_id")?, None, &output);
            }
            // Orch's answers have no reasoning items; another model's carry nothing the CLIs can use.
            Some("reasoning") => {}
            Some(other) => {
                return Err(ApiError::invalid_field(
                    &field("type"),
                    format!("unsupported item type {other:?}; allowed: message, function_call, function_call_output"),
                ));
            }
        }
    }
    Ok(transcript)
}

/// `tool_choice` as the response echoes it.
fn choice_json(spec: &ToolSpec) -> Value {
    match &spec.choice {
        tool_calls::Choice::Auto => json!("auto"),
        tool_calls::Choice::None => json!("none"),
        tool_calls::Choice::Required => json!("required"),
        tool_calls::Choice::Named(name) => json!({"type": "function", "name": name}),
    }
}

/// What every response object of one request shares.
struct Shape {
    id: String,
    created_at: i64,
    request: ResponsesRequest,
    tool_choice: Value,
    parallel: bool,
    metadata: Value,
}

fn usage((input, output): (u64, u64)) -> Value {
    json!({
        "input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn call_item(call: &Call, arguments: &str, status: &str) -> Value {
    let id = format!("fc_{}", call.id.strip_prefix("call_").unwrap_or(&call.id));
    json!({"type": "function_call", "id": id, "call_id": call.id, "name": call.name, "arguments": arguments, "status": status})
}

impl Shape {
    fn message_id(&self) -> String {
        format!("msg_{}", self.id.trim_start_matches("resp_"))
    }

    fn object(
        &self,
        status: &'static str,
        model: &str,
        output: Vec<Value>,
        usage: Value,
        orch: Value,
    ) -> ResponseObject {
        let r = &self.request;
        ResponseObject {
            id: self.id.clone(),
            object: "response",
            created_at: self.created_at,
            status,
            error: Value::Null,
            incomplete_details: Value::Null,
            instructions: r.instructions.clone(),
            max_output_tokens: r.max_output_tokens,
            model: model.to_owned(),
            output,
            parallel_tool_calls: self.parallel,
            previous_response_id: None,
            store: false,
            text: json!({"format": {"type": "text"}}),
            tool_choice: self.tool_choice.clone(),
            tools: r.tools.clone().unwrap_or_default(),
            truncation: "disabled",
            usage,
            metadata: self.metadata.clone(),
            orch,
        }
    }

    fn output(&self, answer: &Answer) -> Vec<Value> {
        match answer {
            Answer::Text(text) => vec![message_item(&self.message_id(), "completed", vec![text_part(text)])],
            Answer::Calls(calls) => calls.iter().map(|c| call_item(c, &c.arguments, "completed")).collect(),
        }
    }

    /// The completed response of a turn that answered `answer`.
    fn finished(&self, answer: &Answer, id: JobId, result: &Value, tokens: (u64, u64)) -> ResponseObject {
        let model = result["routed_to"].as_str().filter(|m| !m.is_empty()).unwrap_or(&self.request.model);
        self.object("completed", model, self.output(answer), usage(tokens), openai::orch_of(id, result))
    }

    fn in_progress(&self) -> ResponseObject {
        self.object("in_progress", &self.request.model, Vec::new(), Value::Null, json!({}))
    }

    fn failed(&self, err: &ApiError) -> ResponseObject {
        let mut object = self.object("failed", &self.request.model, Vec::new(), Value::Null, json!({}));
        object.error = json!({"code": err.code, "message": err.message});
        if let Some(details) = &err.details {
            object.orch = json!({"error_details": details});
        }
        object
    }
}

/// Writes a stream's typed events, numbering them.
struct Events {
    tx: Sender<Result<Event, Infallible>>,
    sequence: u64,
}

impl Events {
    /// Sends one event; false when the client went away.
    async fn send(&mut self, kind: &str, mut data: Value) -> bool {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        self.tx.send(Ok(Event::default().event(kind).data(data.to_string()))).await.is_ok()
    }

    async fn response(&mut self, kind: &str, object: &ResponseObject) -> bool {
        self.send(kind, json!({"response": object})).await
    }

    async fn begin(&mut self, shape: &Shape) -> bool {
        let object = shape.in_progress();
        self.response("response.created", &object).await && self.response("response.in_progress", &object).await
    }

    async fn open_message(&mut self, index: usize, id: &str) -> bool {
        let item = message_item(id, "in_progress", Vec::new());
        self.send("response.output_item.added", json!({"output_index": index, "item": item})).await
            && self
                .send(
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": text_part("")}),
                )
                .await
    }

    async fn text_delta(&mut self, index: usize, id: &str, delta: &str) -> bool {
        let data = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []});
        self.send("response.output_text.delta", data).await
    }

    async fn close_message(&mut self, index: usize, id: &str, text: &str) -> bool {
        let at = json!({"item_id": id, "output_index": index, "content_index": 0});
        let mut done = at.clone();
        done["text"] = json!(text);
        done["logprobs"] = json!([]);
        let mut part = at;
        part["part"] = text_part(text);
        let item = message_item(id, "completed", vec![text_part(text)]);
        self.send("response.output_text.done", done).await
            && self.send("response.content_part.done", part).await
            && self.send("response.output_item.done", json!({"output_index": index, "item": item})).await
    }

    async fn call(&mut self, index: usize, call: &Call) -> bool {
        let added = call_item(call, "", "in_progress");
        let at = json!({"item_id": added["id"], "output_index": index});
        let mut delta = at.clone();
        delta["delta"] = json!(call.arguments);
        let mut done = at;
        done["arguments"] = json!(call.arguments);
        self.send("response.output_item.added", json!({"output_index": index, "item": added})).await
            && self.send("response.function_call_arguments.delta", delta).await
            && self.send("response.function_call_arguments.done", done).await
            && self
                .send(
                    "response.output_item.done",
                    json!({"output_index": index, "item": call_item(call, &call.arguments, "completed")}),
                )
                .await
    }

    /// `response.completed`; or `response.failed`, then an `error` event in
    /// the one error shape (with OpenAI's `code` and `message` beside it),
    /// which the official clients raise.
    async fn end(&mut self, shape: &Shape, outcome: ApiResult<ResponseObject>) {
        match outcome {
            Ok(object) => {
                self.response("response.completed", &object).await;
            }
            Err(err) => {
                if self.response("response.failed", &shape.failed(&err)).await {
                    let mut data = openai::error_json(&err);
                    data["code"] = json!(err.code);
                    data["message"] = json!(err.message);
                    data["param"] = err.details.as_ref().map_or(Value::Null, |d| d["field"].clone());
                    self.send("error", data).await;
                }
            }
        }
    }
}

fn sse(
    produce: impl FnOnce(Events) -> futures::future::BoxFuture<'static, ()> + 'static,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let stream = jobs::async_stream(move |tx| produce(Events { tx, sequence: 0 }));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A streamed turn without functions: the text as it comes.
fn stream_text_turn(
    state: AppState,
    chat: WaitedChat,
    shape: Shape,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    sse(move |mut events| {
        Box::pin(async move {
            if !events.begin(&shape).await {
                return;
            }
            let id = chat.id;
            let message = shape.message_id();
            let mut opened = false;
            let mut turn = Box::pin(openai::follow_turn(state, chat));
            while let Some(event) = turn.next().await {
                match event {
                    TurnEvent::Model(_) => {}
                    TurnEvent::Text(text) => {
                        if !std::mem::replace(&mut opened, true) && !events.open_message(0, &message).await {
                            return;
                        }
                        if !events.text_delta(0, &message, &text).await {
                            return;
                        }
                    }
                    TurnEvent::Done(Ok((text, result))) => {
                        if !opened && !events.open_message(0, &message).await {
                            return;
                        }
                        if !events.close_message(0, &message, &text).await {
                            return;
                        }
                        let tokens = openai::tokens_of(&result);
                        events.end(&shape, Ok(shape.finished(&Answer::Text(text), id, &result, tokens))).await;
                    }
                    TurnEvent::Done(Err(err)) => events.end(&shape, Err(err)).await,
                }
            }
        })
    })
}

/// A streamed turn with functions offered: the answer is known when the turn
/// ends, then sent as a message or as `function_call` items.
fn stream_tool_turn(turn: ToolTurn, shape: Shape) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    sse(move |mut events| {
        Box::pin(async move {
            if !events.begin(&shape).await {
                return;
            }
            let closed = events.tx.clone();
            let outcome = tokio::select! {
                outcome = turn.run() => outcome,
                // The client went away: dropping the turn cancels its job.
                _ = closed.closed() => return,
            };
            let outcome = match outcome {
                Ok(ToolDone { id, answer, result, tokens }) => {
                    let sent = match &answer {
                        Answer::Text(text) => {
                            let message = shape.message_id();
                            events.open_message(0, &message).await
                                && events.text_delta(0, &message, text).await
                                && events.close_message(0, &message, text).await
                        }
                        Answer::Calls(calls) => {
                            let mut sent = true;
                            for (i, call) in calls.iter().enumerate() {
                                sent = sent && events.call(i, call).await;
                            }
                            sent
                        }
                    };
                    if !sent {
                        return;
                    }
                    Ok(shape.finished(&answer, id, &result, tokens))
                }
                Err(err) => Err(err),
            };
            events.end(&shape, outcome).await;
        })
    })
}
