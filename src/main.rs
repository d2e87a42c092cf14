//! `orch`: argument parsing and the glue that starts the API, the worker, or both.

mod bench;
mod bench_chat;
mod bench_clis;
mod bench_gateway;
mod bench_layers;
mod bench_plans;
mod bench_rate;
mod bench_wakeups;
mod config;
mod doctor;
mod mcp;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use orch_store::{Store, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::config::{ApiArgs, GlobalArgs, Settings, WorkerArgs};

/// Orch: a job service for n8n. Chat and batch jobs, queued durably, run by workers.
#[derive(Debug, Parser)]
#[command(name = "orch", version, about, max_term_width = 110)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// API and worker in one process (the embedded SQLite store by default).
    Serve {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        worker: WorkerArgs,
    },
    /// The HTTP API alone (scale out with ORCH_STORE=redis://...).
    Api {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A worker alone (scale out with ORCH_STORE=redis://...).
    Worker {
        #[command(flatten)]
        worker: WorkerArgs,
    },
    /// A stdio MCP server with every MCP server's tools plus Orch's own (for Claude Desktop,
    /// Cursor, Cline); logs go to stderr.
    Mcp {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Check the store, each provider's CLI and credentials, and each MCP server; say how to
    /// fix what fails (exit status 1 when something does).
    Doctor {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Benchmarks that print measured figures.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print its secret (shown once).
    Create {
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: jobs:read, jobs:write, jobs:read_all, tools:call, metrics:read, admin.
        #[arg(long, value_delimiter = ',', default_value = "jobs:read,jobs:write")]
        scopes: Vec<String>,
        /// Comma-separated MCP servers the key may see and call [default: every server].
        #[arg(long, value_delimiter = ',')]
        servers: Option<Vec<String>>,
        #[command(flatten)]
        access: KeyAccessArgs,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
    /// Give a key a new secret (printed once); the old one keeps working for --overlap.
    Rotate {
        id: String,
        /// How long the old secret keeps working, up to 30d.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "24h")]
        overlap: std::time::Duration,
    },
    /// Change a key's expiry, allow-lists, rate limit or job quota (what is not given stays).
    Update {
        id: String,
        /// Comma-separated MCP servers the key may see and call.
        #[arg(long, value_delimiter = ',', conflicts_with = "all_servers")]
        servers: Option<Vec<String>>,
        /// Remove the server limit.
        #[arg(long)]
        all_servers: bool,
        /// Remove the tool limit.
        #[arg(long, conflicts_with = "tools")]
        all_tools: bool,
        /// Remove the provider limit.
        #[arg(long, conflicts_with = "providers")]
        all_providers: bool,
        /// Remove the expiry.
        #[arg(long, conflicts_with_all = ["expires_at", "expires_in"])]
        no_expiry: bool,
        /// Give the key the server's default rate limit (ORCH_RATE_LIMIT_PER_MINUTE) again.
        #[arg(long, conflicts_with = "rate_limit_per_minute")]
        default_rate_limit: bool,
        /// Give the key the server's default job quota (ORCH_JOBS_PER_DAY) again.
        #[arg(long, conflicts_with = "jobs_per_day")]
        default_jobs_per_day: bool,
        #[command(flatten)]
        access: KeyAccessArgs,
    },
}

/// Expiry and tool and provider limits of `orch keys create` and `update`.
#[derive(Debug, clap::Args)]
struct KeyAccessArgs {
    /// Comma-separated tool globs over `server.tool` the key may use, e.g. `github.*,*.read_*` [default: every tool].
    #[arg(long, value_delimiter = ',')]
    tools: Option<Vec<String>>,
    /// Comma-separated chat providers the key may use [default: every provider].
    #[arg(long, value_delimiter = ',')]
    providers: Option<Vec<String>>,
    /// When the key stops working (RFC 3339, e.g. 2027-01-31T00:00:00Z).
    #[arg(long, value_name = "TIME", conflicts_with = "expires_in")]
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Or: how long from now the key works (e.g. 90d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    expires_in: Option<std::time::Duration>,
    /// Requests a minute the key may make, 0 for unlimited [default: ORCH_RATE_LIMIT_PER_MINUTE].
    #[arg(long, value_name = "N")]
    rate_limit_per_minute: Option<u32>,
    /// Jobs a UTC day the key may submit, 0 for unlimited [default: ORCH_JOBS_PER_DAY].
    #[arg(long, value_name = "N")]
    jobs_per_day: Option<u32>,
}

impl KeyAccessArgs {
    /// Checks the limits into `key` (the API's rules; providers only for not being empty).
    fn apply(&self, key: &mut orch_store::ApiKey) -> Result<()> {
        if let Some(tools) = &self.tools {
            orch_api::auth::check_tools(tools).map_err(|e| anyhow::anyhow!("--{}", e.message))?;
            key.tools = Some(tools.clone());
        }
        if let Some(providers) = &self.providers {
            if let Some(i) = providers.iter().position(|p| p.trim().is_empty()) {
                anyhow::bail!("--providers[{i}]: empty provider name");
            }
            key.providers = Some(providers.clone());
        }
        let expires_at = match (self.expires_at, self.expires_in) {
            (Some(at), _) => Some(at),
            (None, Some(d)) => Some(chrono::Utc::now() + chrono::Duration::from_std(d).context("--expires-in")?),
            (None, None) => None,
        };
        if let Some(at) = expires_at {
            if at <= chrono::Utc::now() {
                anyhow::bail!("--expires-at: {} is not in the future", at.to_rfc3339());
            }
            key.expires_at = Some(at);
        }
        for (flag, value, field) in [
            ("--rate-limit-per-minute", self.rate_limit_per_minute, &mut key.rate_limit_per_minute),
            ("--jobs-per-day", self.jobs_per_day, &mut key.jobs_per_day),
        ] {
            if let Some(n) = value {
                if n > orch_api::keys::MAX_LIMIT {
                    anyhow::bail!("{flag}: {n} is too large; allowed: 0 (unlimited) to {}", orch_api::keys::MAX_LIMIT);
                }
                *field = Some(n);
            }
        }
        Ok(())
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; use a duration like 30s, 10m, 24h, 90d"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // reqwest has no TLS provider of its own here: every client needs this first.
    orch_mcp::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let no_api = ApiArgs::default();
    let no_worker = WorkerArgs::default();
    let (api, worker) = match &cli.command {
        Command::Serve { api, worker } => (api, worker),
        Command::Api { api } => (api, &no_worker),
        Command::Worker { worker } => (&no_api, worker),
        Command::Mcp { api } => (api, &no_worker),
        Command::Doctor { api } => (api, &no_worker),
        _ => (&no_api, &no_worker),
    };
    let settings = config::resolve(&cli.global, api, worker)?;
    match cli.command {
        Command::Mcp { .. } => {
            init_logging(&settings)?;
            mcp::run(&settings).await
        }
        Command::Doctor { .. } => {
            // The report says what failed; log lines would only repeat it.
            tracing_subscriber::fmt().with_env_filter("off").with_writer(std::io::stderr).init();
            if doctor::run(&settings).await? {
                Ok(())
            } else {
                Err(anyhow::anyhow!("orch doctor found problems (above)"))
            }
        }
        Command::Openapi => {
            print!("{}", orch_api::openapi_json());
            Ok(())
        }
        Command::Serve { .. } => {
            init_logging(&settings)?;
            let store = open_store(&settings).await?;
            first_key(store.as_ref()).await?;
            let router = providers(&settings, Some(&store))?;
            let shutdown = shutdown_signal();
            let state = api_state(&settings, store.clone(), router.clone(), shutdown.clone()).await?;
            share_provider_state(&settings, &router, &state);
            serve_metrics(&settings, &state).await?;
            // The worker calls plan tools through the API's registry: one pool per process.
            let worker = tokio::spawn(orch_worker::run(
                store.clone(),
                executors(&settings, router.clone(), &state),
                settings.worker.clone(),
                shutdown.clone(),
            ));
            serve_api(&settings, state).await?;
            worker.await.context("worker task")?;
            // Warm CLIs waiting for a turn go with us.
            router.providers().shutdown();
            Ok(())
        }
        Command::Api { .. } => {
            init_logging(&settings)?;
            let store = open_store(&settings).await?;
            first_key(store.as_ref()).await?;
            let shutdown = shutdown_signal();
            let router = providers(&settings, None)?;
            // `/v1/providers`, `/health/tokens` and routing checks read the state the workers record.
            router.providers().share_state(orch_worker::provider_state::StoreState::new(store.clone()));
            let state = api_state(&settings, store, router, shutdown.clone()).await?;
            serve_metrics(&settings, &state).await?;
            serve_api(&settings, state).await
        }
        Command::Worker { .. } => {
            init_logging(&settings)?;
            let store = open_store(&settings).await?;
            let shutdown = shutdown_signal();
            let router = providers(&settings, Some(&store))?;
            // The same MCP servers as an API process: the file and those registered in the store.
            let state = api_state(&settings, store.clone(), router.clone(), shutdown.clone()).await?;
            share_provider_state(&settings, &router, &state);
            serve_metrics(&settings, &state).await?;
            let registry = state.registry.clone();
            orch_worker::run(store, executors(&settings, router.clone(), &state), settings.worker.clone(), shutdown)
                .await;
            registry.shutdown(MCP_CHILD_GRACE).await;
            router.providers().shutdown();
            Ok(())
        }
        Command::Keys { command } => {
            let store = open_store(&settings).await?;
            keys(store.as_ref(), command).await
        }
        Command::Bench { command } => {
            if matches!(command, bench::BenchCommand::Layers(_)) {
                // The request span is enabled as under `orch serve`'s default filter; lines go nowhere.
                tracing_subscriber::fmt().with_env_filter("info").with_writer(std::io::sink).init();
            } else {
                init_logging_quiet();
            }
            bench::run(command).await
        }
    }
}

/// Logs to stderr: colours only on a terminal (a file or pipe gets plain text);
/// JSON lines carry the fields of every span they are in (`job_id`,
/// `node_id`, `provider`, `server`, `request_id`), so they filter by job.
/// Installs the metrics recorder too, so what happens before the first scrape counts.
fn init_logging(settings: &Settings) -> Result<()> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log).map_err(|e| {
        anyhow::anyhow!("ORCH_LOG (--log): {:?} is not a log filter: {e}; e.g. info or orch_worker=debug", settings.log)
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if settings.log_json {
        builder.json().with_current_span(true).with_span_list(true).init();
    } else {
        builder.init();
    }
    orch_api::metrics::install();
    Ok(())
}

/// With `ORCH_METRICS_ADDR`, serves `GET /metrics` there without a key until shutdown.
async fn serve_metrics(settings: &Settings, state: &orch_api::AppState) -> Result<()> {
    let Some(addr) = settings.metrics_addr else { return Ok(()) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (ORCH_METRICS_ADDR / --metrics-addr)"))?;
    tracing::info!(addr = %listener.local_addr()?, "Prometheus metrics at http://{addr}/metrics (no key)");
    tokio::spawn(orch_api::metrics::serve_scrape(listener, state.clone()));
    Ok(())
}

fn init_logging_quiet() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>> {
    let options = StoreOptions { redis_prefix: settings.redis_prefix.clone() };
    orch_store::open(&settings.store, &options)
        .await
        .with_context(|| format!("cannot open the store ({}); check ORCH_STORE", describe_store(&settings.store)))
}

fn describe_store(url: &orch_store::StoreUrl) -> String {
    match url {
        orch_store::StoreUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
        orch_store::StoreUrl::Redis(u) => orch_store::redact_url(u),
    }
}

/// On the very first start (no key yet), makes an admin key and prints it once.
async fn first_key(store: &dyn Store) -> Result<()> {
    let new = orch_api::auth::new_key("first admin key", &[orch_api::auth::ADMIN.to_owned()])
        .map_err(|e| anyhow::anyhow!(e.message))?;
    if store.create_first_key(&new.key, &new.hash).await? {
        // Written, not println!: a closed stdout must not stop the service.
        let text = format!(
            "Created an admin API key. It is shown only this once; keep it somewhere safe:\n\n    {}\n\n\
             Webhooks of jobs it submits are signed with {}\n\
             Use it as `Authorization: Bearer <key>`. Make keys for your workflows with\n    \
             orch keys create --name n8n --scopes jobs:read,jobs:write\n\
             or POST /v1/keys with this admin key.\n\n",
            new.secret,
            orch_webhooks::Secret::for_api_key(&new.secret)
        );
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
    Ok(())
}

/// The configured providers and routing; says at start-up what it will not pass on.
/// With `store` (a worker on Redis), each provider's concurrency limit holds
/// across every worker sharing it.
fn providers(settings: &Settings, store: Option<&Arc<dyn Store>>) -> Result<Arc<orch_providers::Router>> {
    let router = match store {
        Some(store) if matches!(settings.store, orch_store::StoreUrl::Redis(_)) => settings
            .shared_router(Arc::new(orch_worker::limit::StoreLimit::new(store.clone(), settings.worker.id.clone())))?,
        _ => settings.router()?,
    };
    for warning in router.providers().warnings() {
        tracing::warn!("{warning}");
    }
    let names: Vec<&str> = router.providers().iter().map(|p| p.name()).collect();
    tracing::info!(providers = ?names, default_model = %router.config().default_model, "chat providers");
    Ok(Arc::new(router))
}

/// Workers keep provider state (cooldowns, errors, auth incidents) in the
/// store, where every worker and API process sees it, report
/// `provider.auth_expired` through the webhooks, and check hourly for
/// credentials entering the warning window (`provider.auth_expiring`).
fn share_provider_state(settings: &Settings, router: &Arc<orch_providers::Router>, state: &orch_api::AppState) {
    let shared = orch_worker::provider_state::StoreState::new(state.store.clone());
    shared.set_events(state.webhooks.clone());
    router.providers().share_state(shared);
    tokio::spawn(orch_worker::provider_state::watch_expiry(
        router.clone(),
        state.webhooks.clone(),
        settings.api.token_warn_days,
        EXPIRY_CHECK,
        state.shutdown.clone(),
    ));
}

/// The executors of a worker: chat, plans' `llm` steps and the planner on
/// `router`, plan tools through `state`'s registry, and webhook deliveries.
fn executors(
    settings: &Settings,
    router: Arc<orch_providers::Router>,
    state: &orch_api::AppState,
) -> Arc<orch_worker::Executors> {
    Arc::new(orch_worker::Executors {
        delivery: Some(Box::new(orch_webhooks::DeliveryExecutor(state.webhooks.clone()))),
        followups: Some(state.webhooks.clone()),
        ..orch_worker::Executors::with_planner(
            router,
            Some(state.registry.clone()),
            settings.planner.clone(),
            settings.plan_inline_output_bytes,
            settings.plan_limits,
        )
    })
}

/// The API's state with the providers, the MCP servers connected and the config file watched.
async fn api_state(
    settings: &Settings,
    store: Arc<dyn Store>,
    router: Arc<orch_providers::Router>,
    shutdown: CancellationToken,
) -> Result<orch_api::AppState> {
    let mut state = orch_api::AppState::new(store.clone(), settings.api.clone());
    state.webhooks = orch_webhooks::Webhooks::new(store, settings.webhooks.clone());
    state.router = router;
    state.shutdown = shutdown;
    start_mcp(settings, &mut state).await?;
    tokio::spawn(orch_api::servers::watch_file(state.clone(), MCP_CONFIG_POLL));
    tokio::spawn(orch_api::webhooks::watch_servers(state.clone()));
    Ok(state)
}

/// Serves the API until `state.shutdown` fires.
async fn serve_api(settings: &Settings, state: orch_api::AppState) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .with_context(|| format!("cannot listen on {} (ORCH_BIND / --bind)", settings.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = state.store.backend(), "Orch API listening; Swagger UI at http://{addr}/docs");
    let registry = state.registry.clone();
    // Requests in flight get the shutdown grace to finish, then are dropped.
    let grace = settings.worker.shutdown_grace;
    orch_api::serve::serve(listener, state, grace).await;
    // Every MCP child's process group goes with us.
    registry.shutdown(grace.min(MCP_CHILD_GRACE)).await;
    Ok(())
}

/// How often mcp-config.json is checked for changes.
const MCP_CONFIG_POLL: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest wait for MCP children to exit after their stdin closes.
/// How often workers look for credentials about to expire.
const EXPIRY_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);
const MCP_CHILD_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects the MCP servers of mcp-config.json and of the store. Invalid
/// entries are logged (server and field) and left out; the others start.
async fn start_mcp(settings: &Settings, state: &mut orch_api::AppState) -> Result<()> {
    let options = orch_mcp::RegistryOptions {
        separator: settings.mcp_separator.clone(),
        ca_file: settings.mcp_ca_file.clone(),
        egress: settings.mcp_egress.clone(),
        ..Default::default()
    };
    state.registry =
        orch_mcp::Registry::new(options).map_err(|e| anyhow::anyhow!("ORCH_MCP_SEPARATOR / ORCH_MCP_CA_FILE: {e}"))?;
    state.mcp = Arc::new(orch_api::servers::McpSources::new(settings.mcp.clone()));
    let report = state
        .mcp
        .reload(state.store.as_ref(), &state.registry)
        .await
        .context("cannot read the MCP servers registered through the API")?;
    if let Some(file) = &settings.mcp.file {
        tracing::info!(file = %file.display(), "MCP config; changes apply on save");
    }
    tracing::info!(servers = ?report.added, invalid = report.invalid.len(), "MCP servers started");
    Ok(())
}

/// A token cancelled on SIGINT or SIGTERM.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down: no new work; finishing what runs");
        trigger.cancel();
    });
    token
}

async fn keys(store: &dyn Store, command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Create { name, scopes, servers, access } => {
            let mut new = orch_api::auth::new_key(&name, &scopes).map_err(|e| anyhow::anyhow!(e.message))?;
            if let Some(servers) = &servers {
                orch_api::auth::check_servers(servers).map_err(|e| anyhow::anyhow!("--{}", e.message))?;
            }
            new.key.servers = servers;
            access.apply(&mut new.key)?;
            store.create_key(&new.key, &new.hash).await?;
            println!("{}", new.secret);
            eprintln!(
                "Created key {} ({}) with scopes {}. The secret above is shown only once.\n\
                 Webhooks of jobs it submits are signed with {}",
                new.key.id,
                new.key.name,
                new.key.scopes.join(","),
                orch_webhooks::Secret::for_api_key(&new.secret)
            );
        }
        KeysCommand::List => {
            println!("{:<18} {:<14} {:<28} {:<25} NAME", "ID", "PREFIX", "SCOPES", "CREATED");
            for k in store.list_keys().await? {
                let state = if k.revoked_at.is_some() {
                    " (revoked)".to_owned()
                } else if let Some(at) = k.expires_at {
                    let word = if at <= chrono::Utc::now() { "expired" } else { "expires" };
                    format!(" ({word} {})", at.format("%Y-%m-%d %H:%M:%S UTC"))
                } else {
                    String::new()
                };
                let limits = match (k.rate_limit_per_minute, k.jobs_per_day) {
                    (None, None) => String::new(),
                    (rate, jobs) => {
                        let show = |n: Option<u32>| match n {
                            None => "default".to_owned(),
                            Some(0) => "unlimited".to_owned(),
                            Some(n) => n.to_string(),
                        };
                        format!(" [{}/min, {} jobs/day]", show(rate), show(jobs))
                    }
                };
                let state = state + &limits;
                println!(
                    "{:<18} {:<14} {:<28} {:<25} {}{state}",
                    k.id,
                    k.prefix,
                    k.scopes.join(","),
                    k.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    k.name
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke_key(&id).await? {
                anyhow::bail!("no unrevoked key has the id {id:?}; `orch keys list` shows the ids");
            }
            println!("Revoked {id}. API processes stop accepting it within 5 seconds.");
        }
        KeysCommand::Rotate { id, overlap } => {
            if overlap > std::time::Duration::from_secs(orch_api::keys::MAX_OVERLAP) {
                anyhow::bail!("--overlap: {} is too long; at most 30d", humantime::format_duration(overlap));
            }
            let until = chrono::Utc::now() + chrono::Duration::from_std(overlap).context("--overlap")?;
            let (prefix, hash, secret) = orch_api::auth::new_secret();
            if !store.rotate_key(&id, &prefix, &hash, until).await? {
                anyhow::bail!("no unrevoked key has the id {id:?}; `orch keys list` shows the ids");
            }
            println!("{secret}");
            eprintln!(
                "Rotated {id}. The secret above is shown only once; the old secret works until {}.\n\
                 Webhooks of jobs it submits are now signed with {}",
                until.format("%Y-%m-%d %H:%M:%S UTC"),
                orch_webhooks::Secret::for_api_key(&secret)
            );
        }
        KeysCommand::Update {
            id,
            servers,
            all_servers,
            all_tools,
            all_providers,
            no_expiry,
            default_rate_limit,
            default_jobs_per_day,
            access,
        } => {
            let Some(mut key) = store.list_keys().await?.into_iter().find(|k| k.id == id && k.revoked_at.is_none())
            else {
                anyhow::bail!("no unrevoked key has the id {id:?}; `orch keys list` shows the ids");
            };
            if let Some(servers) = &servers {
                orch_api::auth::check_servers(servers).map_err(|e| anyhow::anyhow!("--{}", e.message))?;
                key.servers = Some(servers.clone());
            }
            if all_servers {
                key.servers = None;
            }
            if all_tools {
                key.tools = None;
            }
            if all_providers {
                key.providers = None;
            }
            if no_expiry {
                key.expires_at = None;
            }
            if default_rate_limit {
                key.rate_limit_per_minute = None;
            }
            if default_jobs_per_day {
                key.jobs_per_day = None;
            }
            access.apply(&mut key)?;
            if !store.update_key(&key).await? {
                anyhow::bail!("no unrevoked key has the id {id:?}; `orch keys list` shows the ids");
            }
            println!("Updated {id}. API processes apply it within 5 seconds.");
        }
    }
    Ok(())
}
