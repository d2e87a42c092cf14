//! Test harness: the real API and worker on port 0 over a fresh store (SQLite
//! in a temp dir, or a private redis-server), plus a small HTTP client.
#![allow(dead_code)]

pub mod deployment;
/// The fake model API lives in the testkit, which `orch bench clis` uses too.
#[allow(unused_imports)]
pub use orch_testkit::model_api;
pub mod procs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_api::servers::{McpSettings, McpSources};
use orch_store::{Store, StoreOptions, StoreUrl};
use orch_testkit::RedisServer;
use orch_worker::{Executors, WorkerConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Redis,
}

/// Where a test's state lives; dropping it removes the data / stops Redis.
pub struct StoreHandle {
    pub url: StoreUrl,
    pub store: Arc<dyn Store>,
    pub redis: Option<RedisServer>,
    pub dir: tempfile::TempDir,
}

pub async fn fresh_store(backend: Backend) -> StoreHandle {
    let dir = tempfile::tempdir().unwrap();
    let (url, redis) = match backend {
        Backend::Sqlite => (StoreUrl::Sqlite(dir.path().join("orch.db")), None),
        Backend::Redis => {
            let server = RedisServer::start();
            (StoreUrl::Redis(server.url()), Some(server))
        }
    };
    let store = orch_store::open(&url, &StoreOptions::default()).await.expect("store opens");
    StoreHandle { url, store, redis, dir }
}

/// How a test wants its app.
pub struct Options {
    /// Run a worker in the process.
    pub worker: bool,
    pub tweak: Box<dyn FnOnce(&mut WorkerConfig) + Send>,
    pub max_body: usize,
    /// mcp-config.json and whether the API may register stdio servers; the
    /// servers are started (with those stored) before the app answers.
    pub mcp: McpSettings,
    /// Watch the MCP config file this often (`None`: only `POST /v1/servers/reload`).
    pub watch: Option<Duration>,
    /// Webhook settings of the API and the worker.
    pub webhooks: orch_webhooks::WebhookConfig,
    /// Providers and routing of the API and worker (default: [`echo_router`]).
    pub router: Option<Arc<orch_providers::Router>>,
    /// What plans' `llm` nodes call instead of the router's providers (a fake in tests).
    pub llm: Option<Arc<dyn orch_worker::llm::Llm>>,
    /// How long unused chat sessions are kept (default 1 h).
    pub session_ttl: Option<Duration>,
    /// How long an unused MCP session is kept (default 5 min).
    pub mcp_session_idle: Option<Duration>,
    /// Changes to the API settings (timeouts and caps of connections and streams).
    pub api: Box<dyn FnOnce(&mut orch_api::ApiConfig) + Send>,
    /// ORCH_PUBLIC_URL (default: none).
    pub public_url: String,
    /// ORCH_PLAN_MAX_ITEMS and ORCH_PLAN_MAX_OUTPUT_BYTES of the API and the worker.
    pub plan_limits: orch_planner::PlanLimits,
    /// ORCH_MCP_ALLOW (default: loopback, where the tests' MCP servers listen).
    pub mcp_allow: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            worker: true,
            tweak: Box::new(|_| {}),
            max_body: 64 * 1024,
            mcp: McpSettings::default(),
            watch: None,
            webhooks: Default::default(),
            router: None,
            llm: None,
            session_ttl: None,
            mcp_session_idle: None,
            api: Box::new(|_| {}),
            public_url: String::new(),
            plan_limits: Default::default(),
            mcp_allow: vec!["127.0.0.0/8".into(), "::1".into(), "localhost".into()],
        }
    }
}

/// Test worker settings: fast retries and leases, so tests stay short.
pub fn quick_worker() -> WorkerConfig {
    let mut config = WorkerConfig::new(orch_worker::worker_id());
    config.lease = Duration::from_secs(2);
    config.poll_interval = Duration::from_millis(20);
    config.retry_base = Duration::from_millis(50);
    config.retry_max = Duration::from_millis(200);
    config.shutdown_grace = Duration::from_secs(2);
    config
}

pub struct TestApp {
    pub base: String,
    pub admin: String,
    pub client: reqwest::Client,
    pub store: Arc<dyn Store>,
    pub handle: StoreHandle,
    pub shutdown: CancellationToken,
    pub worker: Option<tokio::task::JoinHandle<()>>,
    pub registry: orch_mcp::Registry,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, Options::default()).await
}

pub async fn spawn_app_with(backend: Backend, options: Options) -> TestApp {
    let handle = fresh_store(backend).await;
    let admin = make_key(handle.store.as_ref(), &["admin"]).await;
    spawn_app_on(handle, admin, options).await
}

/// The app over an existing store, with `admin` as its admin key.
pub async fn spawn_app_on(handle: StoreHandle, admin: String, options: Options) -> TestApp {
    // reqwest has no TLS provider of its own (see orch_mcp::tls); tests build clients.
    orch_mcp::tls::install_crypto_provider();
    let store = handle.store.clone();
    let mut config = orch_api::ApiConfig {
        max_body: options.max_body,
        public_url: options.public_url.clone(),
        plan_limits: options.plan_limits,
        ..Default::default()
    };
    if let Some(idle) = options.mcp_session_idle {
        config.mcp_session_idle = idle;
    }
    if let Some(ttl) = options.session_ttl {
        config.session_ttl = ttl;
    }
    (options.api)(&mut config);
    let router = options.router.unwrap_or_else(echo_router);
    let mut state = orch_api::AppState::new(store.clone(), config);
    let webhooks = orch_webhooks::Webhooks::new(store.clone(), options.webhooks);
    state.webhooks = webhooks.clone();
    state.router = router.clone();
    let (allow, allow_hosts) = orch_egress::parse_allow(&options.mcp_allow, true).expect("a valid ORCH_MCP_ALLOW");
    let egress = orch_egress::Guard { allow, allow_hosts, ..orch_mcp::mcp_guard() };
    state.registry = orch_mcp::Registry::new(orch_mcp::RegistryOptions { egress, ..Default::default() })
        .expect("valid registry options");
    state.mcp = Arc::new(McpSources::new(options.mcp));
    state.mcp.reload(store.as_ref(), &state.registry).await.expect("MCP servers load");
    let shutdown = CancellationToken::new();
    state.shutdown = shutdown.clone();
    let registry = state.registry.clone();
    tokio::spawn(orch_api::webhooks::watch_servers(state.clone()));
    if let Some(every) = options.watch {
        tokio::spawn(orch_api::servers::watch_file(state.clone(), every));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(orch_api::serve::serve(listener, state, Duration::from_secs(2)));
    // As `orch api` does: the API reads the provider state the workers record.
    if !options.worker {
        router.providers().share_state(orch_worker::provider_state::StoreState::new(store.clone()));
    }
    let worker = options.worker.then(|| {
        let mut config = quick_worker();
        (options.tweak)(&mut config);
        // As `orch serve` does: provider state in the store, auth incidents to the webhooks.
        let shared = orch_worker::provider_state::StoreState::new(store.clone());
        shared.set_events(webhooks.clone());
        router.providers().share_state(shared);
        let limits = options.plan_limits;
        let mut executors = Executors::with_planner(
            router,
            Some(registry.clone()),
            Default::default(),
            orch_worker::plan::DEFAULT_INLINE_OUTPUT_BYTES,
            limits,
        );
        if let Some(llm) = options.llm {
            executors.batch = Box::new(orch_worker::PlanRunner {
                tools: Some(registry.clone()),
                llm: Some(llm),
                limits,
                ..Default::default()
            });
        }
        executors.delivery = Some(Box::new(orch_webhooks::DeliveryExecutor(webhooks.clone())));
        executors.followups = Some(webhooks.clone());
        tokio::spawn(orch_worker::run(store.clone(), Arc::new(executors), config, shutdown.clone()))
    });
    TestApp { base, admin, client: reqwest::Client::new(), store, handle, shutdown, worker, registry }
}

/// One provider, `echo`: a generic `cli` provider running /bin/echo, so the
/// answer is the prompt. The default model of test apps.
pub fn echo_router() -> Arc<orch_providers::Router> {
    router(
        "[echo]\nkind = 'cli'\ncommand = '/bin/echo'\nargs = ['{prompt}']\noutput = { format = 'text' }\n",
        "default_model = 'echo'\n",
    )
}

/// A router from `[providers]` and `[routing]` bodies; provider state in a fresh temporary dir.
pub fn router(providers: &str, routing: &str) -> Arc<orch_providers::Router> {
    let providers: orch_providers::ProvidersConfig = toml::from_str(providers).expect("providers TOML");
    let routing: orch_providers::RoutingConfig = toml::from_str(routing).expect("routing TOML");
    let dir = tempfile::tempdir().unwrap().keep();
    Arc::new(orch_providers::Router::from_config(&providers, routing, &dir).expect("valid providers"))
}

/// Creates a key with `scopes` straight in the store; returns its secret.
pub async fn make_key(store: &dyn Store, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    let new = orch_api::auth::new_key("test", &scopes).unwrap();
    store.create_key(&new.key, &new.hash).await.unwrap();
    new.secret
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestApp {
    pub async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> Reply {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, headers, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Some(&self.admin), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(&self.admin), Some(body)).await
    }

    /// Submits a batch plan; returns the job id.
    pub async fn submit_plan(&self, plan: Value) -> String {
        self.submit_batch(json!({"plan": plan})).await
    }

    pub async fn submit_batch(&self, body: Value) -> String {
        let r = self.post("/v1/jobs/batch", body).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    /// Polls the job until it reaches a terminal status; returns its view.
    pub async fn wait_finished(&self, id: &str, timeout: Duration) -> Value {
        self.wait_for(id, timeout, |j| {
            ["succeeded", "failed", "cancelled"].contains(&j["status"].as_str().unwrap_or(""))
        })
        .await
    }

    pub async fn wait_for(&self, id: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.get(&format!("/v1/jobs/{id}")).await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            if done(&r.body) {
                return r.body;
            }
            assert!(Instant::now() < deadline, "job {id} did not get there within {timeout:?}; last seen {}", r.body);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The job's whole event log, read through the SSE endpoint.
    pub async fn events(&self, id: &str, last_event_id: Option<u64>) -> Vec<(u64, String, Value)> {
        let mut req = self.client.get(format!("{}/v1/jobs/{id}/events", self.base)).bearer_auth(&self.admin);
        if let Some(last) = last_event_id {
            req = req.header("Last-Event-ID", last.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let text = tokio::time::timeout(Duration::from_secs(30), resp.text())
            .await
            .expect("stream ends after the terminal event")
            .unwrap();
        parse_sse(&text)
    }

    pub async fn stop(self) {
        drop(self.stop_keeping_store().await);
    }

    /// Stops the app (and its MCP children) and hands back its store, opened
    /// again from its URL as a restarted process would, for [`spawn_app_on`].
    pub async fn stop_keeping_store(mut self) -> (StoreHandle, String) {
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            let _ = worker.await;
        }
        self.registry.shutdown(Duration::from_secs(2)).await;
        let mut handle = self.handle;
        handle.store = orch_store::open(&handle.url, &StoreOptions::default()).await.expect("store opens again");
        (handle, self.admin)
    }
}

/// Parses an SSE body into (id, event, data) triples; comments are skipped.
pub fn parse_sse(text: &str) -> Vec<(u64, String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut id, mut event, mut data) = (None, None, String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        if let (Some(id), Some(event)) = (id, event) {
            out.push((id, event, serde_json::from_str(&data).unwrap()));
        }
    }
    out
}

/// Runs each listed async test body once per backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::support::Backend::Sqlite).await }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::support::Backend::Redis).await }
            )*
        }
    };
}

/// The orch-mcp test server, built beside this test binary (scripts/test
/// builds it; so does `cargo test --workspace`).
pub fn test_server() -> String {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/orch-mcp-test-server
    let path = exe.parent().and_then(std::path::Path::parent).unwrap().join("orch-mcp-test-server");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p orch-mcp --bin orch-mcp-test-server` (scripts/test does)",
        path.display()
    );
    path.display().to_string()
}
