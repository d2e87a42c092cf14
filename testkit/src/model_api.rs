//! A fake model API on loopback, for running the real CLIs behind Orch:
//! Anthropic Messages (streamed as SSE or one JSON message), Gemini
//! `generateContent` / `streamGenerateContent` / `countTokens`, OpenAI chat
//! completions (streamed or not) and Responses (streamed). Each API answers
//! as the test scripts it: text, a usage limit (429 with a reset), a refused
//! credential (401), a server error (500) or an overload (529; Gemini and
//! OpenAI have no 529 and answer 503), each in that API's own error shape.
//! Every request is recorded with the time it arrived.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Which API a request spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    Anthropic,
    Gemini,
    OpenAiChat,
    OpenAiResponses,
}

/// What an API answers until told otherwise.
#[derive(Clone, Debug)]
pub enum Answer {
    Text(String),
    /// 429: a usage limit that resets this long from now (Anthropic's
    /// unified rate-limit headers and `retry-after`; OpenAI's
    /// `insufficient_quota`; Gemini's daily quota).
    Limited {
        reset_in: Duration,
    },
    Unauthorized,
    ServerError,
    Overloaded,
    /// Anthropic only: the text, reporting [`COSTLY_INPUT_TOKENS`] input
    /// tokens (dollars at API rates), for turns with a budget.
    Costly(String),
    /// Anthropic only: 400 "Your credit balance is too low", what the API
    /// answers an account whose credit is used up.
    CreditExhausted,
}

/// Input tokens a [`Answer::Costly`] answer reports.
pub const COSTLY_INPUT_TOKENS: u64 = 2_000_000;

/// The text every API answers with by default.
pub const REPLY: &str = "FAKE-REPLY: hello from loopback";

/// Token counts each API reports for one answer (input, output).
pub const ANTHROPIC_USAGE: (u64, u64) = (12, 7);
pub const GEMINI_USAGE: (u64, u64) = (5, 3);
pub const CHAT_USAGE: (u64, u64) = (11, 6);
pub const RESPONSES_USAGE: (u64, u64) = (10, 5);

/// One request the fake received and what it answered.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: SystemTime,
    pub api: Option<Api>,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    answers: Mutex<HashMap<Api, Answer>>,
    hits: Mutex<Vec<Hit>>,
}

/// The running fake; it stops when the runtime that started it ends.
pub struct ModelApi {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
    inner: Arc<Inner>,
}

impl ModelApi {
    pub async fn start() -> ModelApi {
        let inner = Arc::new(Inner::default());
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        ModelApi { url, inner }
    }

    /// From now on `api` answers `answer` (the default is [`REPLY`]).
    pub fn answer(&self, api: Api, answer: Answer) {
        self.inner.answers.lock().unwrap().insert(api, answer);
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.inner.hits.lock().unwrap().clone()
    }

    /// The requests `api` received.
    pub fn hits_of(&self, api: Api) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.api == Some(api)).collect()
    }

    /// POSTs to paths none of the APIs knows (a CLI calling something
    /// unexpected). A `GET`/`HEAD` of a path (a connectivity probe) gets 200.
    pub fn unknown(&self) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.api.is_none() && h.method == "POST").collect()
    }
}

fn api_of(path: &str) -> Option<Api> {
    if path.contains("/messages") {
        Some(Api::Anthropic)
    } else if path.contains(":generateContent")
        || path.contains(":streamGenerateContent")
        || path.contains(":countTokens")
    {
        Some(Api::Gemini)
    } else if path.ends_with("/chat/completions") {
        Some(Api::OpenAiChat)
    } else if path.ends_with("/responses") {
        Some(Api::OpenAiResponses)
    } else {
        None
    }
}

async fn handle(State(inner): State<Arc<Inner>>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let api = api_of(&path).filter(|_| method == Method::POST);
    let answer = api.map(|a| inner.answers.lock().unwrap().get(&a).cloned().unwrap_or(Answer::Text(REPLY.into())));
    let response = match (api, answer) {
        (Some(api), Some(Answer::Text(text))) => success(api, &path, &body, &text, None),
        (Some(api), Some(Answer::Costly(text))) => success(api, &path, &body, &text, Some(COSTLY_INPUT_TOKENS)),
        (Some(api), Some(answer)) => failure(api, &answer),
        _ if method != Method::POST => axum::Json(json!({})).into_response(),
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"error": {"message": format!("no route {method} {path}")}})))
            .into_response(),
    };
    let hit =
        Hit { at: SystemTime::now(), api, method: method.to_string(), path, status: response.status().as_u16(), body };
    inner.hits.lock().unwrap().push(hit);
    response
}

fn sse(events: &[(Option<&str>, Value)], done: bool) -> Response {
    let mut text = String::new();
    for (event, data) in events {
        if let Some(event) = event {
            text.push_str(&format!("event: {event}\n"));
        }
        text.push_str(&format!("data: {data}\n\n"));
    }
    if done {
        text.push_str("data: [DONE]\n\n");
    }
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], text).into_response()
}

fn json_response(value: Value) -> Response {
    axum::Json(value).into_response()
}

/// `input_tokens`: what an Anthropic answer reports instead of [`ANTHROPIC_USAGE`]'s.
fn success(api: Api, path: &str, body: &Value, text: &str, input_tokens: Option<u64>) -> Response {
    let streamed = body["stream"].as_bool().unwrap_or(false);
    match api {
        Api::Anthropic if path.ends_with("/count_tokens") => json_response(json!({"input_tokens": ANTHROPIC_USAGE.0})),
        Api::Anthropic => {
            let model = body["model"].as_str().unwrap_or("claude-sonnet-5");
            let (input, output) = ANTHROPIC_USAGE;
            let input = input_tokens.unwrap_or(input);
            let message = |content: Value, stop: Value, output: u64| {
                json!({
                    "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                    "content": content, "stop_reason": stop, "stop_sequence": null,
                    "usage": {"input_tokens": input, "output_tokens": output},
                })
            };
            if !streamed {
                return json_response(message(json!([{"type": "text", "text": text}]), json!("end_turn"), output));
            }
            sse(
                &[
                    (
                        Some("message_start"),
                        json!({"type": "message_start", "message": message(json!([]), Value::Null, 1)}),
                    ),
                    (
                        Some("content_block_start"),
                        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                    ),
                    (
                        Some("content_block_delta"),
                        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
                    ),
                    (Some("content_block_stop"), json!({"type": "content_block_stop", "index": 0})),
                    (
                        Some("message_delta"),
                        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output}}),
                    ),
                    (Some("message_stop"), json!({"type": "message_stop"})),
                ],
                false,
            )
        }
        Api::Gemini => {
            let model = path.rsplit('/').next().and_then(|m| m.split(':').next()).unwrap_or("gemini-2.5-pro");
            let (input, output) = GEMINI_USAGE;
            if path.contains(":countTokens") {
                return json_response(json!({"totalTokens": input}));
            }
            let chunk = json!({
                "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": input, "candidatesTokenCount": output, "totalTokenCount": input + output},
                "modelVersion": model,
            });
            if path.contains(":streamGenerateContent") { sse(&[(None, chunk)], false) } else { json_response(chunk) }
        }
        Api::OpenAiChat => {
            let model = body["model"].as_str().unwrap_or("fake-model");
            let (input, output) = CHAT_USAGE;
            let usage = json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output});
            if !streamed {
                return json_response(json!({
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": now_secs(), "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": usage,
                }));
            }
            let chunk = |choices: Value, usage: Option<&Value>| {
                let mut c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": now_secs(), "model": model, "choices": choices});
                if let Some(u) = usage {
                    c["usage"] = u.clone();
                }
                (None, c)
            };
            sse(
                &[
                    chunk(
                        json!([{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": null}]),
                        None,
                    ),
                    chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]), None),
                    chunk(json!([]), Some(&usage)),
                ],
                true,
            )
        }
        Api::OpenAiResponses => {
            let (input, output) = RESPONSES_USAGE;
            let item = json!({"type": "message", "role": "assistant", "id": "msg_fake", "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}]});
            sse(
                &[
                    (Some("response.created"), json!({"type": "response.created", "response": {"id": "resp_fake"}})),
                    (
                        Some("response.output_item.done"),
                        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
                    ),
                    (
                        Some("response.completed"),
                        json!({"type": "response.completed", "response": {"id": "resp_fake", "usage": {
                            "input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
                            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
                            "total_tokens": input + output,
                        }}}),
                    ),
                ],
                false,
            )
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn failure(api: Api, answer: &Answer) -> Response {
    let status = match answer {
        Answer::Text(_) | Answer::Costly(_) => unreachable!("a text is a success"),
        Answer::Limited { .. } => 429,
        Answer::CreditExhausted => 400,
        Answer::Unauthorized => 401,
        Answer::ServerError => 500,
        Answer::Overloaded if api == Api::Anthropic => 529,
        Answer::Overloaded => 503,
    };
    let mut headers = Vec::new();
    let body = match api {
        Api::Anthropic => {
            let (kind, message) = match status {
                429 => ("rate_limit_error", "This request would exceed your account's rate limit."),
                401 => ("authentication_error", "invalid x-api-key"),
                400 => (
                    "invalid_request_error",
                    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to \
                     upgrade or purchase credits.",
                ),
                529 => ("overloaded_error", "Overloaded"),
                _ => ("api_error", "Internal server error"),
            };
            if let Answer::Limited { reset_in } = answer {
                let reset = now_secs() + reset_in.as_secs();
                headers.push(("anthropic-ratelimit-unified-status", "rejected".to_owned()));
                headers.push(("anthropic-ratelimit-unified-reset", reset.to_string()));
                headers.push(("retry-after", reset_in.as_secs().to_string()));
            }
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        Api::Gemini => {
            let (code, message) = match status {
                429 => (
                    "RESOURCE_EXHAUSTED",
                    "You exceeded your current quota, please check your plan and billing details.",
                ),
                401 => ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
                503 => ("UNAVAILABLE", "The model is overloaded. Please try again later."),
                _ => ("INTERNAL", "An internal error has occurred."),
            };
            let mut error = json!({"code": status, "message": message, "status": code});
            if status == 429 {
                error["details"] = json!([{
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}],
                }]);
            }
            json!({"error": error})
        }
        Api::OpenAiChat | Api::OpenAiResponses => {
            let (kind, code, message) = match status {
                429 => (
                    "insufficient_quota",
                    json!("insufficient_quota"),
                    "You exceeded your current quota, please check your plan and billing details.",
                ),
                401 => ("invalid_request_error", json!("invalid_api_key"), "Incorrect API key provided."),
                503 => ("server_error", Value::Null, "The engine is currently overloaded, please try again later."),
                _ => ("server_error", Value::Null, "The server had an error while processing your request."),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
    };
    let mut response = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    for (name, value) in headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
