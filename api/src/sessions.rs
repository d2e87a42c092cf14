//! Chat sessions: `X-Session-ID` continues a conversation across chat jobs;
//! `/v1/sessions` reads, lists and forgets them, and exports one as an
//! Obsidian-ready markdown note (optionally with an LLM summary).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use orch_store::{Session, SessionMessage};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Principal;
use crate::error::responses::{Forbidden, Invalid, NotFound, Unauthorized};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};

/// Owner of sessions started over stdio MCP (`orch mcp`), which has no key.
const LOCAL_OWNER: &str = crate::jobs::LOCAL_OWNER;

/// Checks a session id: 1–128 of `A-Z a-z 0-9 . _ : -`, starting with a letter
/// or digit (so `..` or `-rf` is never a session id).
pub fn check_id(field: &str, id: &str) -> ApiResult<()> {
    let ok = (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            format!(
                "{id:?} is not a session id; use 1–128 characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit"
            ),
        ))
    }
}

/// Whether `principal` may continue or forget the session: its owner, or admin
/// (`None`, stdio MCP, may).
fn may_change(principal: Option<&Principal>, session: &Session) -> bool {
    principal.is_none_or(|p| p.may_change(Some(&session.owner)))
}

/// Adds the session to a chat job's input: the worker gives the provider its
/// history and appends this turn. A session of another key is refused (ids are
/// chosen by callers, so that refusal cannot be avoided: choose unguessable ids).
pub async fn attach(state: &AppState, principal: Option<&Principal>, input: &mut Value, id: &str) -> ApiResult<()> {
    check_id("session_id", id)?;
    if let Some(session) = state.store.get_session(id).await?
        && !may_change(principal, &session)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "session_forbidden",
            format!("session {id} belongs to another API key; use another session id"),
        ));
    }
    let owner = principal.map_or(LOCAL_OWNER, |p| p.key.id.as_str());
    input["session"] = json!({"id": id, "owner": owner, "ttl_secs": state.config.session_ttl.as_secs().max(1)});
    Ok(())
}

/// A session the caller may read (`None`: over stdio, no key, reads all); 404
/// as for an unknown one when it belongs to another key.
pub async fn load(state: &AppState, principal: Option<&Principal>, id: &str) -> ApiResult<Session> {
    check_id("id", id)?;
    state
        .store
        .get_session(id)
        .await?
        .filter(|session| principal.is_none_or(|p| p.may_read(Some(&session.owner))))
        .ok_or_else(|| ApiError::not_found("session", id))
}

/// A session the caller may forget: its own (any, for admin); 404 otherwise.
async fn load_to_change(state: &AppState, principal: &Principal, id: &str) -> ApiResult<Session> {
    let session = load(state, Some(principal), id).await?;
    if may_change(Some(principal), &session) { Ok(session) } else { Err(ApiError::not_found("session", id)) }
}

/// Where the session view of a session goes, with its messages.
pub fn view(session: Session) -> Value {
    json!(SessionView::of(session, true))
}

/// A session's memory note: `{session, summary, markdown, filename}`. With
/// `summarize`, an LLM turn on `provider` (as chat's model) writes the summary.
pub async fn memory(
    state: &AppState,
    principal: Option<&Principal>,
    id: &str,
    summarize: bool,
    provider: Option<&str>,
) -> ApiResult<Value> {
    let session = load(state, principal, id).await?;
    let summary = if summarize {
        if let Some(p) = principal {
            p.require("jobs:write")?;
        }
        if let Some(model) = provider {
            crate::jobs::check_model_shape("provider", model)?;
        }
        if let Some(model) = provider
            && model != "auto"
            && state.router.target(model).is_err()
        {
            return Err(crate::jobs::unknown_model(&state.router, "provider", model));
        }
        let mut input = json!({"messages": [
            {"role": "system", "content": SUMMARY_SYSTEM},
            {"role": "user", "content": transcript(&session)},
        ], "task_type": "reasoning"});
        if let Some(model) = provider {
            input["model"] = json!(model);
        }
        let (_, text, _) = crate::openai::run_chat(state, input, "session-memory", principal).await?;
        Some(text)
    } else {
        None
    };
    let now = Utc::now();
    let markdown = note(&session, summary.as_deref(), now);
    let filename = format!("session_{}_{}.md", session.id.replace(':', "-"), now.format("%Y%m%dT%H%M%SZ"));
    Ok(
        json!({"session": SessionView::of(session, true), "summary": summary, "markdown": markdown, "filename": filename}),
    )
}

/// A session with its messages.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "n8n-weekly-42", "created_at": "2026-11-21T09:00:00Z", "updated_at": "2026-11-21T09:02:10Z", "expires_at": "2026-11-21T10:02:10Z", "message_count": 2, "last_routed_to": "claude/claude-sonnet-4-5", "messages": [{"role": "user", "content": "Summarise this week's issues", "at": "2026-11-21T09:02:01Z"}, {"role": "assistant", "content": "Three themes stood out…", "at": "2026-11-21T09:02:10Z", "routed_to": "claude/claude-sonnet-4-5", "job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11"}]}))]
pub struct SessionView {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Each turn moves this to one session TTL (`ORCH_SESSION_TTL`) later.
    pub expires_at: DateTime<Utc>,
    pub message_count: usize,
    /// Where the last answer ran.
    pub last_routed_to: Option<String>,
    /// Left out in listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub messages: Option<Vec<SessionMessage>>,
}

impl SessionView {
    fn of(session: Session, with_messages: bool) -> SessionView {
        SessionView {
            last_routed_to: last_routed_to(&session),
            id: session.id,
            created_at: session.created_at,
            updated_at: session.updated_at,
            expires_at: session.expires_at,
            message_count: session.messages.len(),
            messages: with_messages.then_some(session.messages),
        }
    }
}

fn last_routed_to(session: &Session) -> Option<String> {
    session.messages.iter().rev().find_map(|m| m.routed_to.clone())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionPage {
    pub sessions: Vec<SessionView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SessionListParams {
    /// Page size, 1–200 (default 50).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List sessions.
///
/// Unexpired sessions of the calling key (every key's for `admin` and
/// `jobs:read_all`), most recently used first. Another key's session answers
/// 404 on every route, as an unknown one does.
#[utoipa::path(
    get, path = "/v1/sessions", tag = "sessions",
    params(SessionListParams),
    responses(
        (status = 200, description = "A page of sessions (without their messages)", body = SessionPage),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 422, response = Invalid),
    ),
    security(("bearer" = []))
)]
pub async fn list_sessions(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<SessionListParams>,
) -> ApiResult<Json<SessionPage>> {
    principal.require("jobs:read")?;
    let limit = crate::jobs::page_limit(params.limit.as_deref())?;
    let offset = match params.cursor.as_deref() {
        None => 0,
        Some(text) => {
            text.parse::<usize>().map_err(|_| ApiError::invalid_field("cursor", "not a cursor from next_cursor"))?
        }
    };
    let owner = (!principal.reads_all()).then_some(principal.key.id.as_str());
    let sessions = state.store.list_sessions(owner, offset, limit).await?;
    let next_cursor = (sessions.len() == limit).then(|| (offset + limit).to_string());
    Ok(Json(SessionPage { sessions: sessions.into_iter().map(|s| SessionView::of(s, false)).collect(), next_cursor }))
}

/// Get a session with its messages.
#[utoipa::path(
    get, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "Session id: 1–128 of A-Z a-z 0-9 . _ : -, starting with a letter or digit", pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []))
)]
pub async fn get_session(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SessionView>> {
    principal.require("jobs:read")?;
    Ok(Json(SessionView::of(load(&state, Some(&principal), &id).await?, true)))
}

/// Forget a session.
#[utoipa::path(
    delete, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "Session id: 1–128 of A-Z a-z 0-9 . _ : -, starting with a letter or digit", pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")),
    responses(
        (status = 204, description = "Forgotten"),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []))
)]
pub async fn delete_session(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    principal.require("jobs:write")?;
    load_to_change(&state, &principal, &id).await?;
    state.store.delete_session(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct MemoryParams {
    /// Add an LLM summary (topics, decisions, action items); runs a chat turn (needs `jobs:write`).
    pub summarize: Option<bool>,
    /// Model of the summary, as in chat (`claude`, `claude/sonnet`, `auto`); default: the routing default.
    pub provider: Option<String>,
    /// `markdown` (default; a file download) or `json`.
    pub format: Option<String>,
}

/// Export a session as a note.
///
/// A markdown document with YAML front matter (Obsidian-ready: title, tags,
/// dates, provider, message count), an optional LLM summary, and the
/// transcript with timestamps; as a download
/// (`Content-Disposition: attachment; filename="session_<id>_<timestamp>.md"`),
/// or with `format=json` as `{session, summary, markdown, filename}`.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/memory", tag = "sessions",
    params(("id" = String, Path, description = "Session id: 1–128 of A-Z a-z 0-9 . _ : -, starting with a letter or digit", pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"), MemoryParams),
    responses(
        (status = 200, description = "text/markdown download, or JSON with `format=json`", content_type = "text/markdown", body = String,
            example = json!("---\ntitle: \"Session n8n-weekly-42\"\nsession_id: \"n8n-weekly-42\"\n...")),
        (status = 400, description = "Unknown summary model", body = crate::error::ErrorBody),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound), (status = 422, response = Invalid),
        (status = 429, description = "The summary's providers are at their usage limit", body = crate::error::ErrorBody),
        (status = 502, description = "The summary's provider failed", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn export_memory(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<MemoryParams>,
) -> ApiResult<Response> {
    principal.require("jobs:read")?;
    let json_format = match params.format.as_deref() {
        None | Some("markdown") | Some("md") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "format",
                format!("{other:?} is not a format; allowed: markdown, json"),
            ));
        }
    };
    let memory =
        memory(&state, Some(&principal), &id, params.summarize.unwrap_or(false), params.provider.as_deref()).await?;
    if json_format {
        return Ok(Json(memory).into_response());
    }
    let markdown = memory["markdown"].as_str().unwrap_or_default().to_owned();
    let filename = memory["filename"].as_str().unwrap_or_default().to_owned();
    let mut response = markdown.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/markdown; charset=utf-8"));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

const SUMMARY_SYSTEM: &str = "You summarise conversations for a personal knowledge base. Answer in markdown with \
exactly three sections: `### Topics`, `### Decisions` and `### Action items`, each a bullet list (write \
`- none` when empty). Be brief and concrete; do not add anything the conversation does not say.";

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The conversation as plain text for the summary prompt.
fn transcript(session: &Session) -> String {
    let mut text = String::from("Summarise this conversation.\n");
    for m in &session.messages {
        text.push_str(&format!("\n[{}] {}: {}\n", rfc3339(m.at), m.role, m.content));
    }
    text
}

/// A YAML string: JSON's quoting is valid YAML.
fn yaml(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialize")
}

/// The note: YAML front matter, the summary, the transcript.
fn note(session: &Session, summary: Option<&str>, now: DateTime<Utc>) -> String {
    let provider = last_routed_to(session);
    let mut out = String::from("---\n");
    out.push_str(&format!("title: {}\n", yaml(&format!("Session {}", session.id))));
    out.push_str(&format!("session_id: {}\n", yaml(&session.id)));
    out.push_str(&format!("created: {}\n", rfc3339(session.created_at)));
    out.push_str(&format!("ended: {}\n", rfc3339(session.updated_at)));
    out.push_str(&format!("exported: {}\n", rfc3339(now)));
    out.push_str(&format!("provider: {}\n", provider.as_deref().map_or("null".to_owned(), yaml)));
    out.push_str(&format!("message_count: {}\n", session.messages.len()));
    out.push_str(&format!("summarized: {}\n", summary.is_some()));
    out.push_str("source: orch\ntags:\n  - orch\n  - chat-session\n---\n\n");
    out.push_str(&format!("# Session {}\n\n", session.id));
    if let Some(summary) = summary {
        out.push_str("## Summary\n\n");
        out.push_str(summary.trim());
        out.push_str("\n\n");
    }
    out.push_str("## Transcript\n");
    for m in &session.messages {
        let who = if m.role == "assistant" { "Assistant" } else { "User" };
        let via = m.routed_to.as_deref().map(|r| format!(" · {r}")).unwrap_or_default();
        out.push_str(&format!("\n**{who}**{via} · {}\n\n{}\n", rfc3339(m.at), m.content.trim_end()));
    }
    out
}
