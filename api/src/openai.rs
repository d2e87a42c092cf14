//! OpenAI-compatible chat: `POST /v1/chat/completions` and `GET /v1/models`,
//! so n8n's OpenAI Chat Model node (or any OpenAI client) can use Orch as its
//! base URL.
//!
//! A completion is a chat job like any other: stored durably, run by a worker
//! under the provider limits, routed and fallen back the same way. The request
//! waits for it (or streams its progress) and cancels it if the caller goes
//! away first.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use orch_store::{JobId, JobKind, JobStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Principal;
use crate::error::responses::{BadRequest, Forbidden, Invalid, NotJson, TooLarge, Unauthorized, Unavailable};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::jobs::{self, JobOptions};
use crate::json::ApiJson;
use crate::tool_calls::{self, Answer, ToolSpec, Transcript};

/// A chat completion request in OpenAI's format. Sampling settings OpenAI
/// clients send (`temperature`, `max_tokens`, ...) are accepted and ignored:
/// the CLIs do not take them.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"model": "auto", "messages": [{"role": "system", "content": "Answer in one sentence."}, {"role": "user", "content": "What is n8n?"}], "stream": false}))]
pub struct CompletionRequest {
    /// `auto`, a provider, or `provider/model` (see `GET /v1/models`).
    #[schema(min_length = 1)]
    pub model: String,
    pub messages: Vec<CompletionMessage>,
    /// Stream `chat.completion.chunk` events (Server-Sent Events) ending in `[DONE]`.
    #[serde(default)]
    pub stream: bool,
    /// Orch's routing hint for `auto`: coding, reasoning, planning, fast, general.
    #[serde(default)]
    pub task_type: Option<String>,
    /// Continue (or start) this chat session, like the `X-Session-ID` header.
    /// Clients that resend the whole conversation each call (OpenAI clients,
    /// n8n) are detected by an `assistant` message in `messages`: the provider
    /// gets the messages as sent, and the session records only the user
    /// messages after the last assistant one, then the answer. Without an
    /// `assistant` message, the session's history goes before the messages,
    /// as on `POST /v1/jobs/chat`.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Must be 1 when given.
    #[serde(default)]
    pub n: Option<u32>,
    /// Functions the model may call: `{"type": "function", "function":
    /// {"name", "description", "parameters"}}`. The CLIs do not speak function
    /// calling: Orch offers the functions in the prompt with a strict answer
    /// format and checks the answer against each function's schema (asking
    /// again once), so the answer is text or `tool_calls` with valid JSON
    /// arguments. With tools, a streamed answer arrives when the turn ends.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `auto` (default), `none`, `required`, or `{"type": "function", "function": {"name"}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Whether one answer may call several functions (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `{"include_usage": true}` adds a last chunk with `usage` and no choices.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<Value>,
    /// Orch's cap on what this turn may cost, in US dollars (more than 0, at
    /// most 1000): Claude stops a turn that passes it (`--max-budget-usd`)
    /// and the answer is 402 `budget_exceeded`. Other CLIs report no cost.
    #[serde(default)]
    pub max_budget_usd: Option<f64>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub ignored: Map<String, Value>,
}

/// One message; `content` is a string or a list of `{"type": "text", "text"}` parts.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionMessage {
    /// `system` (or `developer`), `user`, `assistant` or `tool`.
    pub role: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub content: Value,
    /// An assistant message's earlier function calls: `[{"id", "type": "function", "function": {"name", "arguments"}}]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Vec<Value>>,
    /// A `tool` message: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// A finished completion.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "chatcmpl-019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "object": "chat.completion", "created": 1763715600, "model": "claude/claude-sonnet-4-5", "choices": [{"index": 0, "message": {"role": "assistant", "content": "n8n is a workflow automation tool."}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 25, "completion_tokens": 9, "total_tokens": 34}, "orch": {"job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "routed_to": "claude/claude-sonnet-4-5", "route_reason": "auto: task type fast (inferred: prompt of 12 characters); chain gemini → claude; gemini failed (usage_limit), fell back; ran on claude"}}))]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    /// Where the turn ran (`provider/model`).
    pub model: String,
    #[schema(value_type = Vec<Object>)]
    pub choices: Vec<Value>,
    #[schema(value_type = Object)]
    pub usage: Value,
    /// Orch's own: the job behind the completion and the routing decision.
    #[schema(value_type = Object)]
    pub orch: Value,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"object": "list", "data": [{"id": "auto", "object": "model", "created": 0, "owned_by": "orch"}, {"id": "claude", "object": "model", "created": 0, "owned_by": "claude"}, {"id": "claude/sonnet", "object": "model", "created": 0, "owned_by": "claude"}]}))]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    /// The provider (`orch` for `auto`).
    pub owned_by: String,
}

/// List the models chat can use.
///
/// `auto`, every configured provider, and each provider's configured models
/// as `provider/model`, in OpenAI's format.
#[utoipa::path(
    get, path = "/v1/models", tag = "chat",
    responses(
        (status = 200, description = "The models", body = ModelList),
        (status = 401, response = Unauthorized),
    ),
    security(("bearer" = []))
)]
pub async fn list_models(State(state): State<AppState>, _principal: Principal) -> Json<ModelList> {
    let data = state
        .router
        .model_names()
        .into_iter()
        .map(|id| {
            let owned_by = if id == "auto" { "orch".to_owned() } else { id.split('/').next().unwrap_or("").to_owned() };
            Model { id, object: "model", created: 0, owned_by }
        })
        .collect();
    Json(ModelList { object: "list", data })
}

/// One Server-Sent Event of a streamed chat completion, as an SSE parser reads
/// it: the stream names no event type, so each is a `message`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CompletionChunkSse {
    #[schema(pattern = "^message$")]
    event: String,
    /// A `chat.completion.chunk` object as JSON (or an `{"error": …}` object
    /// when the turn fails mid-stream); the last event is `[DONE]`.
    data: String,
}

/// Chat, OpenAI-compatible.
///
/// Runs one chat turn as a job (durable, under the worker's provider limits,
/// routed with fallback) and answers when it ends. With `stream: true` the
/// answer arrives as `chat.completion.chunk` events ending in `data: [DONE]`;
/// the last chunk carries `usage`. Closing the connection cancels the job.
/// The job id is in the `X-Orch-Job-Id` header and in `orch.job_id`.
/// `X-Session-ID` (or `session_id`) records the turn in a session; see
/// `session_id` for how a resent conversation is not recorded twice.
#[utoipa::path(
    post, path = "/v1/chat/completions", tag = "chat",
    request_body = CompletionRequest,
    params(("X-Session-ID" = Option<String>, Header, description = "Chat session to continue and record the turn in; 1–128 of A-Z a-z 0-9 . _ : -, starting with a letter or digit", pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")),
    responses(
        (status = 200, description = "The answer (JSON), or with `stream: true` a text/event-stream of chunks (its schema is one event as an SSE parser reads it)",
            content((Completion = "application/json"), (CompletionChunkSse = "text/event-stream"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = TooLarge),
        (status = 415, response = NotJson),
        (status = 422, response = Invalid),
        (status = 429, description = "Every provider tried is at its usage limit (or cooling down after one); the `Retry-After` header and `details.retry_at` give the earliest time one takes turns again", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the earliest provider of the chain takes turns again")),
            example = json!({"error": {"code": "usage_limit", "message": "claude: usage limit reached (resets at 2026-11-21T15:00:00+00:00): ...", "details": {"job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "retry_at": "2026-11-21T15:00:00Z"}}})),
        (status = 502, description = "The provider failed (auth, crash, unreadable output); `code` says how", body = ErrorBody),
        (status = 503, response = Unavailable),
        (status = 504, description = "No answer within the configured wait (the job is cancelled)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    body: ApiJson<CompletionRequest>,
) -> ApiResult<Response> {
    principal.require("jobs:write")?;
    let req = body.value;
    let spec = completion_tools(&req)?;
    let mut input = completion_input(&state, &req, &spec)?;
    input["key_id"] = json!(principal.key.id);
    jobs::limit_providers(&state, Some(&principal), &mut input)?;
    if let Some(id) = jobs::session_of(&headers, req.session_id.as_ref())? {
        crate::sessions::attach(&state, Some(&principal), &mut input, &id).await?;
        // The client resends the conversation: it is the history, not the session's copy.
        if input["messages"].as_array().is_some_and(|m| m.iter().any(|m| m["role"] == "assistant")) {
            input["session"]["client_history"] = json!(true);
        }
    }
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o["include_usage"] == true);
    let metadata = Map::from_iter([("source".to_owned(), json!("openai"))]);
    let chat = start_turn(&state, &principal, &input, metadata).await?;
    let id = chat.id;
    let mut response = if spec.active() {
        let turn = ToolTurn { state: state.clone(), chat, input, spec };
        if req.stream {
            stream_tool_completion(turn, req.model, include_usage).into_response()
        } else {
            let done = turn.run().await?;
            Json(tool_completion(&done)).into_response()
        }
    } else if req.stream {
        stream_completion(state, chat, req.model).into_response()
    } else {
        wait_completion(chat).await?.into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert("x-orch-job-id", value);
    }
    Ok(response)
}

/// Stores the chat job of an OpenAI-compatible turn `principal` asked for and
/// will wait for (counted against its daily job quota).
pub async fn start_turn(
    state: &AppState,
    principal: &Principal,
    input: &Value,
    metadata: Map<String, Value>,
) -> ApiResult<WaitedChat> {
    let metadata = Some(metadata);
    let options = JobOptions {
        metadata: &metadata,
        max_attempts: None,
        owner: &principal.key.id,
        jobs_per_day: crate::rate::jobs_per_day(&state.config, Some(principal)),
    };
    WaitedChat::start(state, input.clone(), options).await
}

pub fn field_error((field, message): tool_calls::FieldError) -> ApiError {
    ApiError::invalid_field(&field, message)
}

/// The tool spec of a completion request.
fn completion_tools(req: &CompletionRequest) -> ApiResult<ToolSpec> {
    let functions = tool_calls::chat_functions(req.tools.as_deref().unwrap_or_default()).map_err(field_error)?;
    let choice = tool_calls::choice(req.tool_choice.as_ref(), &functions).map_err(field_error)?;
    Ok(ToolSpec { functions, choice, parallel: req.parallel_tool_calls.unwrap_or(true) })
}

/// The chat job input of a completion request, checked like `POST /v1/jobs/chat`.
fn completion_input(state: &AppState, req: &CompletionRequest, spec: &ToolSpec) -> ApiResult<Value> {
    jobs::check_model(&state.router, Some(&req.model), req.task_type.as_deref())?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_field("n", "only 1 choice per request is supported"));
    }
    let mut transcript = Transcript::default();
    for (i, m) in req.messages.iter().enumerate() {
        let field = |f: &str| format!("messages[{i}].{f}");
        let content = text_of(&m.content).map_err(|e| ApiError::invalid_field(&field("content"), e))?;
        match m.role.as_str() {
            "system" | "developer" => transcript.say("system", content),
            "user" => transcript.say("user", content),
            "assistant" => {
                transcript.say("assistant", content);
                for (j, call) in m.tool_calls.iter().flatten().enumerate() {
                    let name = call["function"]["name"].as_str().ok_or_else(|| {
                        ApiError::invalid_field(&field(&format!("tool_calls[{j}].function.name")), "must be a string")
                    })?;
                    transcript.call(name, &call["function"]["arguments"], call["id"].as_str().unwrap_or_default());
                }
            }
            "tool" | "function" => {
                transcript.result(m.tool_call_id.as_deref().unwrap_or_default(), m.name.as_deref(), &content);
            }
            other => {
                return Err(ApiError::invalid_field(
                    &field("role"),
                    format!("unsupported role {other:?}; allowed: system, developer, user, assistant, tool"),
                ));
            }
        }
    }
    jobs::check_budget(req.max_budget_usd)?;
    let mut input = finish_input(state, &req.model, req.task_type.as_deref(), transcript.messages, spec)?;
    if let Some(usd) = req.max_budget_usd {
        input["max_budget_usd"] = json!(usd);
    }
    Ok(input)
}

/// A chat job input from converted `messages`: the tool instructions added,
/// the end and the size checked.
pub fn finish_input(
    state: &AppState,
    model: &str,
    task_type: Option<&str>,
    mut messages: Vec<Value>,
    spec: &ToolSpec,
) -> ApiResult<Value> {
    if messages.last().is_none_or(|m| m["role"] != "user" && m["role"] != "tool") {
        return Err(ApiError::invalid_field("messages", "must end with a user (or tool) message"));
    }
    if spec.active() {
        let at = messages.iter().take_while(|m| m["role"] == "system").count();
        messages.insert(at, json!({"role": "system", "content": tool_calls::instructions(spec)}));
    }
    let bytes = messages.iter().map(|m| m["content"].as_str().map_or(0, str::len)).sum();
    jobs::check_prompt_size(&state.config, bytes)?;
    let mut input = json!({"model": model, "messages": messages});
    if let Some(task) = task_type {
        input["task_type"] = json!(task);
    }
    Ok(input)
}

/// The text of a message's content: a string, or text parts joined (`text`
/// in chat completions; `input_text` and `output_text` in the Responses API).
pub fn text_of(content: &Value) -> Result<String, String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text" | "input_text" | "output_text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(format!(
                            "part {i} is not a text part; only {{\"type\": \"text\", \"text\"}} parts \
                             (input_text or output_text in the Responses API) are supported"
                        ));
                    }
                }
            }
            Ok(text)
        }
        Value::Null => Ok(String::new()),
        _ => Err("must be a string or a list of text parts".into()),
    }
}

/// A chat job someone waits for: cancelled when dropped before it finished
/// (the client hung up, or the wait timed out).
pub struct WaitedChat {
    state: AppState,
    pub id: JobId,
    done: bool,
}

impl WaitedChat {
    /// Stores a chat job with `input` for a caller who will wait for it.
    pub async fn start(state: &AppState, input: Value, options: JobOptions<'_>) -> ApiResult<WaitedChat> {
        let (accepted, _) = jobs::submit_job(state, JobKind::Chat, input, options, || Ok(None)).await?;
        Ok(WaitedChat { state: state.clone(), id: accepted.id, done: false })
    }

    /// Waits for the terminal event, within `ORCH_CHAT_WAIT`; a failed wait
    /// leaves the job to be cancelled on drop.
    pub async fn wait(&mut self) -> ApiResult<()> {
        wait_terminal(&self.state, self.id).await?;
        self.finished();
        Ok(())
    }

    /// Waits for the job, then its answer text and result (or its failure).
    pub async fn answer(mut self) -> ApiResult<(JobId, String, Value)> {
        self.wait().await?;
        let (text, result) = finished(&self.state, self.id).await?;
        Ok((self.id, text, result))
    }

    fn finished(&mut self) {
        self.done = true;
    }
}

impl Drop for WaitedChat {
    fn drop(&mut self) {
        if !self.done {
            let id = self.id;
            let store = self.state.store.clone();
            tokio::spawn(async move {
                if let Err(err) = store.cancel_job(id).await {
                    tracing::warn!(job = %id, error = %err, "cancelling an abandoned completion failed");
                }
            });
        }
    }
}

/// How a finished chat job reads as a completion, or its error.
pub async fn finished(state: &AppState, id: JobId) -> ApiResult<(String, Value)> {
    let job = state.store.get_job(id).await?.ok_or_else(|| ApiError::not_found("job", id))?;
    match job.status {
        JobStatus::Succeeded => {
            let result = state.store.get_result(id).await?.unwrap_or(Value::Null);
            Ok((result["text"].as_str().unwrap_or_default().to_owned(), result))
        }
        JobStatus::Cancelled => {
            Err(ApiError::new(StatusCode::CONFLICT, "job_cancelled", format!("job {id} was cancelled")))
        }
        _ => {
            let error = job.error.unwrap_or_else(|| orch_store::JobError::new("failed", "the turn failed", false));
            let status = match error.code.as_str() {
                "usage_limit" => StatusCode::TOO_MANY_REQUESTS,
                "budget_exceeded" => StatusCode::PAYMENT_REQUIRED,
                "invalid_input" | "invalid_request" => StatusCode::BAD_REQUEST,
                "timeout" => StatusCode::GATEWAY_TIMEOUT,
                "not_installed" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            };
            let code: &'static str = match error.code.as_str() {
                "usage_limit" => "usage_limit",
                "budget_exceeded" => "budget_exceeded",
                "auth" => "provider_auth",
                "timeout" => "timeout",
                "not_installed" => "not_installed",
                "providers_exhausted" => "providers_exhausted",
                "invalid_input" | "invalid_request" => "invalid_request",
                _ => "provider_failed",
            };
            let mut details = json!({"job_id": id});
            let mut err = ApiError::new(status, code, error.message);
            // A usage limit says when to come back: the earliest reset of the providers tried.
            if code == "usage_limit"
                && let Some(at) = error.retry_at
            {
                details["retry_at"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                let secs = ((at - chrono::Utc::now()).num_milliseconds().max(0) as u64).div_ceil(1000);
                err.retry_after = Some(secs.max(1));
            }
            Err(err.with_details(details))
        }
    }
}

fn usage_of(result: &Value) -> Value {
    let input = result["usage"]["input_tokens"].as_u64().unwrap_or(0);
    let output = result["usage"]["output_tokens"].as_u64().unwrap_or(0);
    json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output})
}

pub fn orch_of(id: JobId, result: &Value) -> Value {
    json!({"job_id": id, "routed_to": result["routed_to"], "route_reason": result["route_reason"], "cost_usd": result["cost_usd"]})
}

/// Waits for the job's terminal event, within the configured wait.
async fn wait_terminal(state: &AppState, id: JobId) -> ApiResult<()> {
    let mut events = Box::pin(jobs::follow_events(state.clone(), id, 0));
    let wait = state.config.chat_wait;
    let ended = tokio::time::timeout(wait, async {
        while let Some(event) = events.next().await {
            if event.is_terminal() {
                return true;
            }
        }
        false
    })
    .await;
    match ended {
        Ok(true) => Ok(()),
        Ok(false) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down"))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("no answer within {} s (ORCH_CHAT_WAIT); the job is cancelled", wait.as_secs()),
        )),
    }
}

/// Runs a chat job with `input` and waits for it (cancelling it if the wait is
/// abandoned); its answer text and result, or its failure as an HTTP error.
pub async fn run_chat(
    state: &AppState,
    input: Value,
    source: &str,
    principal: Option<&Principal>,
) -> ApiResult<(JobId, String, Value)> {
    let metadata = Some(Map::from_iter([("source".to_owned(), json!(source))]));
    let options = JobOptions {
        metadata: &metadata,
        max_attempts: None,
        owner: jobs::owner_of(principal),
        jobs_per_day: crate::rate::jobs_per_day(&state.config, principal),
    };
    WaitedChat::start(state, input, options).await?.answer().await
}

async fn wait_completion(chat: WaitedChat) -> ApiResult<Json<Completion>> {
    let (id, text, result) = chat.answer().await?;
    Ok(Json(Completion {
        id: format!("chatcmpl-{id}"),
        object: "chat.completion",
        created: chrono::Utc::now().timestamp(),
        model: result["routed_to"].as_str().unwrap_or_default().to_owned(),
        choices: vec![json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})],
        usage: usage_of(&result),
        orch: orch_of(id, &result),
    }))
}

/// What a followed turn without functions reports, in order.
pub enum TurnEvent {
    /// The `provider/model` the turn runs on (again when it falls back, and
    /// the answer's before the last text).
    Model(String),
    /// More answer text (CLIs that print the answer only at the end send it in one piece).
    Text(String),
    /// The end: the whole answer and the job's result, or why there is none
    /// (a wait past `ORCH_CHAT_WAIT` cancels the job).
    Done(ApiResult<(String, Value)>),
}

/// Follows a chat job to its end as [`TurnEvent`]s; dropping the stream
/// before the end cancels the job.
pub fn follow_turn(state: AppState, mut guard: WaitedChat) -> impl futures::Stream<Item = TurnEvent> {
    jobs::async_stream(move |tx| async move {
        let id = guard.id;
        let mut streamed = String::new();
        let mut events = Box::pin(jobs::follow_events(state.clone(), id, 0));
        let wait = tokio::time::sleep(state.config.chat_wait);
        tokio::pin!(wait);
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                _ = &mut wait => None,
                _ = tx.closed() => return,
            };
            let Some(event) = event else {
                // Timed out or shutting down: the guard cancels the job.
                let err = ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    "no answer within the configured wait; the job is cancelled",
                );
                let _ = tx.send(TurnEvent::Done(Err(err))).await;
                return;
            };
            if event.kind == "progress" && event.data["type"] == "model" {
                if let Some(provider) = event.data["provider"].as_str() {
                    let model = match event.data["model"].as_str() {
                        Some(m) => format!("{provider}/{m}"),
                        None => provider.to_owned(),
                    };
                    if tx.send(TurnEvent::Model(model)).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            if event.kind == "progress" && event.data["type"] == "text" {
                let text = event.data["text"].as_str().unwrap_or_default();
                streamed.push_str(text);
                if tx.send(TurnEvent::Text(text.to_owned())).await.is_err() {
                    return;
                }
                continue;
            }
            if !event.is_terminal() {
                continue;
            }
            guard.finished();
            let done = finished(&state, id).await;
            if let Ok((text, result)) = &done {
                if let Some(routed) = result["routed_to"].as_str().filter(|r| !r.is_empty()) {
                    let _ = tx.send(TurnEvent::Model(routed.to_owned())).await;
                }
                let rest = text.strip_prefix(streamed.as_str()).unwrap_or(if streamed.is_empty() { text } else { "" });
                if !rest.is_empty() {
                    let _ = tx.send(TurnEvent::Text(rest.to_owned())).await;
                }
            }
            let _ = tx.send(TurnEvent::Done(done)).await;
            return;
        }
    })
}

/// The one error shape, as an SSE event's data.
pub fn error_json(err: &ApiError) -> Value {
    let mut error = json!({"code": err.code, "message": err.message});
    if let Some(details) = &err.details {
        error["details"] = details.clone();
    }
    json!({"error": error})
}

fn stream_completion(
    state: AppState,
    guard: WaitedChat,
    model: String,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let id = guard.id;
    let created = chrono::Utc::now().timestamp();
    let chunk_id = format!("chatcmpl-{id}");
    // `extra` adds top-level fields (the last chunk's `usage` and `orch`).
    // Every chunk names the model as the answer does (`provider/model`): the
    // one the turn's `model` progress events said last, then the answer's.
    let chunk = move |model: &str, delta: Value, finish: Option<&str>, extra: &[(&str, Value)]| {
        let mut c = json!({
            "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        for (key, value) in extra {
            c[*key] = value.clone();
        }
        Ok(Event::default().data(c.to_string()))
    };
    let stream = jobs::async_stream(move |tx| async move {
        let mut model = model;
        // The role chunk waits for the first text (or the end), when the model is known.
        let mut began = false;
        let role = || json!({"role": "assistant", "content": ""});
        let mut turn = Box::pin(follow_turn(state, guard));
        while let Some(event) = turn.next().await {
            match event {
                TurnEvent::Model(m) => model = m,
                TurnEvent::Text(text) => {
                    if !std::mem::replace(&mut began, true) && tx.send(chunk(&model, role(), None, &[])).await.is_err()
                    {
                        return;
                    }
                    if tx.send(chunk(&model, json!({"content": text}), None, &[])).await.is_err() {
                        return;
                    }
                }
                TurnEvent::Done(Ok((_, result))) => {
                    if !began {
                        let _ = tx.send(chunk(&model, role(), None, &[])).await;
                    }
                    let extra = [("usage", usage_of(&result)), ("orch", orch_of(id, &result))];
                    let _ = tx.send(chunk(&model, json!({}), Some("stop"), &extra)).await;
                }
                TurnEvent::Done(Err(err)) => {
                    let _ = tx.send(Ok(Event::default().data(error_json(&err).to_string()))).await;
                }
            }
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A turn with functions offered: its chat job started with `input`, its
/// answer read under `spec`, asked again once when unusable.
pub struct ToolTurn {
    pub state: AppState,
    pub chat: WaitedChat,
    pub input: Value,
    pub spec: ToolSpec,
}

/// How a [`ToolTurn`] ended.
pub struct ToolDone {
    /// The job whose answer was used.
    pub id: JobId,
    pub answer: Answer,
    pub result: Value,
    /// Input and output tokens of every turn it took.
    pub tokens: (u64, u64),
}

pub fn tokens_of(result: &Value) -> (u64, u64) {
    (result["usage"]["input_tokens"].as_u64().unwrap_or(0), result["usage"]["output_tokens"].as_u64().unwrap_or(0))
}

impl ToolTurn {
    pub async fn run(self) -> ApiResult<ToolDone> {
        let ToolTurn { state, chat, mut input, spec } = self;
        let (first, text, result) = chat.answer().await?;
        let tokens = tokens_of(&result);
        let problems = match tool_calls::read_answer(&text, &spec) {
            Ok(answer) => return Ok(ToolDone { id: first, answer, result, tokens }),
            Err(problems) => problems,
        };
        tracing::info!(job = %first, problems = ?problems, "the answer is no usable tool call; asking again");
        if let Some(messages) = input["messages"].as_array_mut() {
            messages.push(json!({"role": "assistant", "content": text}));
            messages.push(json!({"role": "user", "content": tool_calls::repair_message(&problems)}));
        }
        if let Some(fields) = input.as_object_mut() {
            // The first turn recorded the exchange in the session already.
            fields.remove("session");
        }
        let metadata =
            Some(Map::from_iter([("source".to_owned(), json!("openai")), ("repairs".to_owned(), json!(first))]));
        // The repair belongs to the key that asked for the first turn.
        let owner = input["key_id"].as_str().unwrap_or_default().to_owned();
        // A repair is part of the turn asked for: not counted again.
        let options = JobOptions { metadata: &metadata, max_attempts: None, owner: &owner, jobs_per_day: 0 };
        let (again, text, result) = WaitedChat::start(&state, input, options).await?.answer().await?;
        let more = tokens_of(&result);
        let tokens = (tokens.0 + more.0, tokens.1 + more.1);
        match tool_calls::read_answer(&text, &spec) {
            Ok(answer) => Ok(ToolDone { id: again, answer, result, tokens }),
            Err(problems) => Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "invalid_tool_call",
                format!("the model answered with no usable tool call or text, twice: {}", problems.join("; ")),
            )
            .with_details(json!({"job_id": again, "problems": problems}))),
        }
    }
}

fn chat_usage((input, output): (u64, u64)) -> Value {
    json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output})
}

/// The answer as a chat completion `message` and its `finish_reason`.
fn tool_message(answer: &Answer) -> (Value, &'static str) {
    match answer {
        Answer::Text(text) => (json!({"role": "assistant", "content": text}), "stop"),
        Answer::Calls(calls) => {
            let calls: Vec<Value> = calls
                .iter()
                .map(
                    |c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}),
                )
                .collect();
            (json!({"role": "assistant", "content": null, "tool_calls": calls}), "tool_calls")
        }
    }
}

fn tool_completion(done: &ToolDone) -> Completion {
    let (message, finish) = tool_message(&done.answer);
    Completion {
        id: format!("chatcmpl-{}", done.id),
        object: "chat.completion",
        created: chrono::Utc::now().timestamp(),
        model: done.result["routed_to"].as_str().unwrap_or_default().to_owned(),
        choices: vec![json!({"index": 0, "message": message, "finish_reason": finish})],
        usage: chat_usage(done.tokens),
        orch: orch_of(done.id, &done.result),
    }
}

/// A streamed completion with functions offered: the answer is known only
/// when the turn ends, then sent as chunks (text, or `delta.tool_calls`),
/// the finish reason, the usage, `[DONE]`.
fn stream_tool_completion(
    turn: ToolTurn,
    model: String,
    include_usage: bool,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let created = chrono::Utc::now().timestamp();
    let chunk_id = format!("chatcmpl-{}", turn.chat.id);
    let chunk = move |choices: Value, extra: &[(&str, Value)]| {
        let mut c = json!({"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices});
        for (key, value) in extra {
            c[*key] = value.clone();
        }
        Ok(Event::default().data(c.to_string()))
    };
    let stream = jobs::async_stream(move |tx| async move {
        let outcome = tokio::select! {
            outcome = turn.run() => outcome,
            // The client went away: dropping the turn cancels its job.
            _ = tx.closed() => return,
        };
        match outcome {
            Ok(done) => {
                let (message, finish) = tool_message(&done.answer);
                let delta = match &done.answer {
                    Answer::Text(text) => json!({"role": "assistant", "content": text}),
                    Answer::Calls(_) => {
                        let calls: Vec<Value> = message["tool_calls"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .enumerate()
                            .map(|(i, c)| {
                                let mut c = c.clone();
                                c["index"] = json!(i);
                                c
                            })
                            .collect();
                        json!({"role": "assistant", "content": null, "tool_calls": calls})
                    }
                };
                let _ = tx.send(chunk(json!([{"index": 0, "delta": delta, "finish_reason": null}]), &[])).await;
                let orch = ("orch", orch_of(done.id, &done.result));
                let last = json!([{"index": 0, "delta": {}, "finish_reason": finish}]);
                if include_usage {
                    let _ = tx.send(chunk(last, &[orch])).await;
                    let _ = tx.send(chunk(json!([]), &[("usage", chat_usage(done.tokens))])).await;
                } else {
                    let _ = tx.send(chunk(last, &[("usage", chat_usage(done.tokens)), orch])).await;
                }
            }
            Err(err) => {
                let _ = tx.send(Ok(Event::default().data(error_json(&err).to_string()))).await;
            }
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
