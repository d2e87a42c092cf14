//! Orch's HTTP edge: routes, bearer-key auth, the JSON error shape and the
//! OpenAPI document. Only this crate knows HTTP; handlers read the request,
//! call the store or a plain function, and map the result.
//!
//! [`app`] builds the whole router from an [`AppState`], so tests drive it
//! with `tower::ServiceExt::oneshot` or serve it on port 0.

pub mod audit;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod health;
pub mod jobs;
pub mod json;
pub mod keys;
pub mod limits;
pub mod links;
pub mod mcp_server;
pub mod me;
pub mod metrics;
pub mod openai;
pub mod openai_responses;
pub mod planning;
pub mod plans;
pub mod providers;
pub mod rate;
pub mod seed;
pub mod serve;
pub mod servers;
pub mod sessions;
pub mod tool_calls;
pub mod tools;
pub mod usage;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::routing::{delete, get, post};
use orch_store::Store;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ApiError;

/// Settings of the HTTP edge.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Prefix of the URLs returned to callers (`status_url`, `Location`);
    /// empty for relative URLs.
    pub public_url: String,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// `max_attempts` of jobs that do not say.
    pub default_max_attempts: u32,
    /// Largest chat prompt (all messages together), in bytes; more is 413.
    pub max_prompt_bytes: usize,
    /// Longest `POST /v1/chat/completions` waits for its turn before 504.
    pub chat_wait: std::time::Duration,
    /// How long an unused chat session is kept; each turn restarts it.
    pub session_ttl: std::time::Duration,
    /// A credential expiring within this many days is `expiring` in `/health/tokens`.
    pub token_warn_days: u32,
    /// How long an MCP session of `/mcp` or `/mcp/{server}` is kept with no
    /// request and no open stream.
    pub mcp_session_idle: std::time::Duration,
    /// How long a connection may take to send a request's headers, counted from
    /// when it opens or its last response ends: slow, silent and idle
    /// keep-alive connections are closed after it.
    pub header_timeout: std::time::Duration,
    /// Most connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Most streams (SSE) open at once; more are 503.
    pub max_streams: usize,
    /// Most streams (SSE) one key may hold open; more are 429.
    pub max_streams_per_key: usize,
    /// Limits of one plan (map items, checked at submission where the list is known).
    pub plan_limits: orch_planner::PlanLimits,
    /// Requests a minute of keys that set none; 0 for unlimited.
    pub rate_limit_per_minute: u32,
    /// Jobs a UTC day of keys that set none; 0 for unlimited.
    pub jobs_per_day: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            public_url: String::new(),
            max_body: 2 * 1024 * 1024,
            default_max_attempts: 3,
            max_prompt_bytes: 512 * 1024,
            chat_wait: std::time::Duration::from_secs(900),
            session_ttl: std::time::Duration::from_secs(3600),
            token_warn_days: 7,
            mcp_session_idle: std::time::Duration::from_secs(300),
            header_timeout: std::time::Duration::from_secs(30),
            max_connections: 4096,
            max_streams: 1000,
            max_streams_per_key: 100,
            plan_limits: orch_planner::PlanLimits::default(),
            rate_limit_per_minute: 0,
            jobs_per_day: 0,
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub config: Arc<ApiConfig>,
    pub keys: Arc<auth::KeyCache>,
    /// Fires on shutdown; long-lived responses (SSE) end when it does.
    pub shutdown: CancellationToken,
    /// The MCP servers Orch is connected to (empty until configured).
    pub registry: orch_mcp::Registry,
    /// Where the registry's servers come from (mcp-config.json, the store);
    /// [`servers::McpSources::reload`] applies them to `registry`.
    pub mcp: Arc<servers::McpSources>,
    /// The configured providers and routing: chat requests are checked
    /// against it, and `/v1/models` and `/v1/providers` describe it.
    pub router: Arc<orch_providers::Router>,
    /// Queues deliveries (cancel) and checks and test-sends webhook URLs.
    pub webhooks: Arc<orch_webhooks::Webhooks>,
    /// The last write probe of `/health` (at most one a second).
    pub write_probe: Arc<health::WriteProbe>,
    /// Where audit records go (written in batches).
    pub audit: orch_store::AuditLog,
    /// The streams (SSE) open now, for their caps.
    pub streams: Arc<limits::Streams>,
}

impl AppState {
    /// State with no MCP servers; set `registry` to serve some.
    pub fn new(store: Arc<dyn Store>, config: ApiConfig) -> AppState {
        let registry = orch_mcp::Registry::new(orch_mcp::RegistryOptions::default())
            .expect("the default registry options are valid");
        AppState {
            webhooks: orch_webhooks::Webhooks::new(store.clone(), Default::default()),
            audit: orch_store::AuditLog::new(store.clone()),
            store,
            config: Arc::new(config),
            keys: Arc::default(),
            shutdown: CancellationToken::new(),
            registry,
            mcp: Arc::default(),
            router: Arc::new(default_router()),
            write_probe: Arc::default(),
            streams: Arc::default(),
        }
    }
}

/// The built-in providers with default settings and routing; their state
/// (Claude's slot dirs) under the system's temporary directory.
pub fn default_router() -> orch_providers::Router {
    orch_providers::Router::from_config(
        &orch_providers::ProvidersConfig::default(),
        orch_providers::RoutingConfig::default(),
        &std::env::temp_dir().join("orch-providers"),
    )
    .expect("the default provider configuration is valid")
}

/// The whole HTTP API, with a request id, a span and counters per request
/// ([`metrics::observe`]).
pub fn app(state: AppState) -> Router {
    metrics::observe(routes(state))
}

/// The routes of the API without [`metrics::observe`]'s layers (for measuring their cost).
pub fn routes(state: AppState) -> Router {
    let max_body = state.config.max_body;
    Router::new()
        .route("/health", get(health::health))
        .route("/health/tokens", get(providers::token_health))
        .route("/metrics", get(metrics::metrics_route))
        .route("/v1/jobs", get(jobs::list_jobs))
        .route("/v1/jobs/chat", post(jobs::submit_chat))
        .route("/v1/jobs/batch", post(jobs::submit_batch))
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/jobs/{id}/result", get(jobs::get_result))
        .route("/v1/jobs/{id}/input", get(me::job_input))
        .route("/v1/jobs/{id}/events", get(jobs::job_events))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/v1/jobs/{id}/deliveries", get(webhooks::job_deliveries))
        .route("/v1/deliveries", get(webhooks::list_deliveries))
        .route("/v1/deliveries/{id}/redeliver", post(webhooks::redeliver))
        .route("/v1/webhooks", get(webhooks::list_webhooks).post(webhooks::create_webhook))
        .route("/v1/webhooks/test", post(webhooks::test_webhook))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get_webhook).put(webhooks::replace_webhook).delete(webhooks::delete_webhook),
        )
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/responses", post(openai_responses::create_response))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/providers", get(providers::list_providers))
        .route("/v1/usage", get(usage::usage))
        .route("/v1/sessions", get(sessions::list_sessions))
        .route("/v1/sessions/{id}", get(sessions::get_session).delete(sessions::delete_session))
        .route("/v1/sessions/{id}/memory", get(sessions::export_memory))
        .route("/v1/jobs/{id}/graph", get(plans::job_graph))
        .route("/v1/jobs/{id}/outputs/{node}", get(plans::node_output))
        .route("/v1/plans", post(plans::preview_plan))
        .route("/v1/keys", get(keys::list_keys).post(keys::create_key))
        .route("/v1/keys/{id}", delete(keys::revoke_key).patch(keys::update_key))
        .route("/v1/keys/{id}/rotate", post(keys::rotate_key))
        .route("/v1/me", get(me::me))
        .route("/v1/audit", get(audit::list_audit))
        .route("/v1/tools", get(tools::list_tools))
        .route("/v1/tools/{server}/{tool}", get(tools::get_tool).post(tools::call_tool))
        .route("/v1/servers", get(servers::list_servers).post(servers::create_server))
        .route("/v1/servers/reload", post(servers::reload_servers))
        .route(
            "/v1/servers/{name}",
            get(servers::get_server).put(servers::replace_server).delete(servers::delete_server),
        )
        .route("/v1/servers/{name}/test", post(servers::test_server))
        .route("/tools", get(seed::list_tools))
        .route("/tools/{name}", get(seed::server_tools).post(seed::call_tool))
        .route("/batch/execute", post(seed::batch_execute))
        .route("/batch/status/{id}", get(seed::batch_status))
        .route("/batch/result/{id}", get(seed::batch_result))
        .route("/batch/cancel/{id}", delete(seed::batch_cancel))
        .route("/servers", get(seed::list_servers))
        .route("/servers/reload", post(seed::reload_servers))
        .merge(mcp_server::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audit::middleware))
        .route_layer(axum::middleware::from_fn(rate::headers))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi()))
        .merge(dashboard::routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), limits::limit_streams))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(links::layer))
        .with_state(state)
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}; the API is described at /docs", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}; see /docs for the methods it takes", uri.path()),
    )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Orch",
        description = "Job service for n8n: chat and batch jobs run by workers, followed by polling, Server-Sent Events or webhooks.\n\nEvery route except `/health`, `/docs`, `/ui` (the dashboard) and `/openapi.json` needs `Authorization: Bearer <key>`. Errors are always `{\"error\": {\"code\", \"message\", \"details\"?}}`.\n\nMCP clients connect to `/mcp` and `/mcp/{server}` (streamable HTTP) and `/sse/{server}` (legacy SSE) with a key that has `tools:call`; those endpoints speak MCP, not REST, so they are not listed here.",
        license(name = "Apache-2.0")
    ),
    paths(
        jobs::submit_chat, jobs::submit_batch, jobs::list_jobs, jobs::get_job, jobs::get_result,
        jobs::job_events, jobs::cancel_job, me::job_input, plans::job_graph, plans::node_output, plans::preview_plan,
        openai::chat_completions, openai_responses::create_response, openai::list_models, providers::list_providers, providers::token_health, usage::usage,
        sessions::list_sessions, sessions::get_session, sessions::delete_session, sessions::export_memory,
        keys::create_key, keys::list_keys, keys::revoke_key, keys::update_key, keys::rotate_key, me::me, audit::list_audit,
        tools::list_tools, tools::get_tool, tools::call_tool,
        servers::list_servers, servers::create_server, servers::get_server, servers::replace_server,
        servers::delete_server, servers::test_server, servers::reload_servers,
        webhooks::create_webhook, webhooks::list_webhooks, webhooks::get_webhook, webhooks::replace_webhook,
        webhooks::delete_webhook,
        webhooks::test_webhook, webhooks::job_deliveries, webhooks::list_deliveries, webhooks::redeliver,
        health::health, metrics::metrics_route,
        seed::list_tools, seed::server_tools, seed::call_tool, seed::batch_execute, seed::batch_status,
        seed::batch_result, seed::batch_cancel, seed::list_servers, seed::reload_servers,
    ),
    components(
        schemas(
            orch_planner::Plan, orch_planner::Node, orch_planner::SleepStep, orch_planner::FailStep,
            orch_planner::LlmStep, orch_planner::MapStep, orch_planner::StepTemplate, webhooks::WebhookPayload, webhooks::ProviderEventPayload, plans::GraphFormat,
        ),
        responses(
            error::responses::BadRequest, error::responses::Unauthorized, error::responses::Forbidden,
            error::responses::NotFound, error::responses::IdempotencyConflict, error::responses::TooLarge, error::responses::NotJson,
            error::responses::Invalid, error::responses::Unavailable, error::responses::TooManyRequests,
        )
    ),
    modifiers(&BearerAuth, &RateLimited, &Refusals),
    tags(
        (name = "jobs", description = "Submit and follow chat and batch jobs"),
        (name = "chat", description = "Chat on the providers, OpenAI-compatible (base URL `<orch>/v1`), and the providers' state"),
        (name = "plans", description = "Batch plans: validate, analyse and draw without running"),
        (name = "sessions", description = "Chat sessions (`X-Session-ID`): read, list, forget, export as a markdown note"),
        (name = "keys", description = "API keys (admin)"),
        (name = "tools", description = "Tools of the MCP servers: list, schema, call"),
        (name = "servers", description = "MCP servers: status; registering, testing and reloading (admin)"),
        (name = "webhooks", description = "Job callbacks and global subscriptions: signed (Standard Webhooks), durable, retried deliveries; the payload is the WebhookPayload schema"),
        (name = "health", description = "Liveness of the service and its store"),
        (name = "seed", description = "The routes of the MCP Orch seed documents, as aliases of the `/v1` routes they name: same scopes, bodies and answers; the batch routes add `task_id` (the job id)"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An Orch API key: `orch keys create --scopes jobs:read,jobs:write`"))
                    .build(),
            ),
        );
    }
}

/// Every route that takes a key is rate limited ([`rate`]): its successes carry
/// the `RateLimit` headers and it may answer 429.
struct RateLimited;

impl Modify for RateLimited {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{HeaderBuilder, Ref, RefOr, Type};
        let header = |description: &str| {
            HeaderBuilder::new()
                .schema(utoipa::openapi::Object::with_type(Type::String))
                .description(Some(description))
                .build()
        };
        let limited = "Over the key's request rate limit (`rate_limited`) or daily job quota (`job_quota_exceeded`), \
                       with `Retry-After`; see the TooManyRequests response";
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                if !responses.contains_key("401") {
                    continue;
                }
                for (status, response) in responses.iter_mut() {
                    if let (true, RefOr::T(response)) = (status.starts_with('2'), response) {
                        response.headers.insert(
                            "RateLimit".into(),
                            header("When the key is rate limited: `\"requests\";r=<remaining>;t=<seconds>` (draft-ietf-httpapi-ratelimit-headers)"),
                        );
                        response.headers.insert(
                            "RateLimit-Policy".into(),
                            header("When the key is rate limited: `\"requests\";q=<limit>;w=60`"),
                        );
                    }
                }
                match responses.get_mut("429") {
                    // The route's own 429 (a provider's usage limit) also stands for these.
                    Some(RefOr::T(own)) => own.description = format!("{} — or: {limited}", own.description),
                    Some(RefOr::Ref(_)) => {}
                    None => {
                        responses.insert("429".into(), RefOr::Ref(Ref::from_response_name("TooManyRequests")));
                    }
                }
            }
        }
    }
}

/// The refusals every route of a kind shares, added where a route does not
/// list its own: a query string is read by [`extract::ApiQuery`] (422 naming
/// the parameter), a JSON body by [`json::ApiJson`] (400 unparsable, 413 too
/// large, 415 not JSON, 422 naming the field).
struct Refusals;

impl Modify for Refusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::schema::{Schema, SchemaType, Type};
        use utoipa::openapi::{Ref, RefOr};
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                // A query string or header has no null: an optional one is absent.
                for parameter in operation.parameters.iter_mut().flatten() {
                    if matches!(parameter.parameter_in, ParameterIn::Query | ParameterIn::Header)
                        && let Some(RefOr::T(Schema::Object(object))) = &mut parameter.schema
                        && let SchemaType::Array(types) = &object.schema_type
                        && let [only] = types.iter().filter(|t| **t != Type::Null).collect::<Vec<_>>()[..]
                    {
                        object.schema_type = SchemaType::Type(only.clone());
                    }
                }
                let has_query =
                    operation.parameters.iter().flatten().any(|p| matches!(p.parameter_in, ParameterIn::Query));
                // A path or header parameter with a pattern is checked: 422 naming it.
                let has_pattern = operation.parameters.iter().flatten().any(|p| {
                    matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Header)
                        && matches!(&p.schema, Some(RefOr::T(Schema::Object(o))) if o.pattern.is_some())
                });
                let has_body = operation.request_body.is_some();
                let mut add = Vec::new();
                if has_query || has_body || has_pattern {
                    add.push(("422", "Invalid"));
                }
                if has_body {
                    add.extend([("400", "BadRequest"), ("413", "TooLarge"), ("415", "NotJson")]);
                }
                let responses = &mut operation.responses.responses;
                for (status, name) in add {
                    responses.entry(status.into()).or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
                }
            }
        }
    }
}

/// The OpenAPI document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The document as checked in at `openapi/openapi.json`.
pub fn openapi_json() -> String {
    let mut text = openapi().to_pretty_json().expect("the OpenAPI document serialises");
    text.push('\n');
    text
}
