//! One server's pool of connections and its supervisor: calls go to the
//! least-busy connection under the server's concurrency limit; the supervisor
//! pings, restarts what closed (with exponential backoff), grows the pool when
//! every connection is busy, reaps idle connections down to `pool.min`, and
//! re-lists tools when the server says they changed.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, JsonObject, MetaObject, Prompt, RequestMetaObject, Resource,
    ResourceTemplate, Tool,
};
use rmcp::service::ServiceError;
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::ServerConfig;
use crate::conn::{self, Connection, Signals};
use crate::egress::{Clients, describe};
use crate::error::Error;
use crate::registry::{RegistryEvent, RegistryOptions};

/// How a server is doing, as shown to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Connected and answering.
    Up,
    /// Working, but a connection failed or a ping went unanswered recently.
    Degraded,
    /// No working connection; the supervisor keeps retrying with backoff.
    Down,
    /// `"disabled": true` in the config; never connected.
    Disabled,
}

/// A snapshot of one server for status pages.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    pub name: String,
    pub transport: &'static str,
    pub state: ServerState,
    pub last_error: Option<String>,
    /// Round trip of the last successful ping (or of the handshake).
    pub latency: Option<Duration>,
    pub tools: usize,
    pub connections: Vec<ConnectionStatus>,
    /// Connections that closed unexpectedly and were replaced.
    pub restarts: u64,
}

#[derive(Debug, Clone)]
pub struct ConnectionStatus {
    /// The child's pid (also its process group), for stdio servers.
    pub pid: Option<u32>,
    pub in_flight: usize,
}

/// What the server offers, as last listed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Catalog {
    pub tools: Vec<Tool>,
    pub resources: Vec<Resource>,
    pub resource_templates: Vec<ResourceTemplate>,
    pub prompts: Vec<Prompt>,
}

pub(crate) struct ServerPool {
    pub config: ServerConfig,
    options: Arc<RegistryOptions>,
    http: Clients,
    signals: Arc<Signals>,
    permits: Semaphore,
    /// Serialises connection attempts made by callers, so a burst of calls to a
    /// server with no connection opens one, not one each.
    connecting: tokio::sync::Mutex<()>,
    inner: Mutex<Inner>,
    events: broadcast::Sender<RegistryEvent>,
    /// Stops the supervisor when the pool goes away.
    _stop: DropGuard,
}

#[derive(Default)]
struct Inner {
    conns: Vec<Arc<Connection>>,
    catalog: Option<Catalog>,
    state: Option<ServerState>,
    last_error: Option<String>,
    latency: Option<Duration>,
    /// Consecutive failures (failed connects, connections that died young);
    /// the backoff before the next attempt doubles with each.
    failures: u32,
    next_attempt: Option<Instant>,
    restarts: u64,
    last_ping: Option<Instant>,
    /// Every connection was busy when a call arrived: open another (up to max).
    want_more: bool,
}

/// A connection that lived less than this and died counts as a failure, so a
/// crash loop backs off instead of spinning.
const STABLE_AFTER: Duration = Duration::from_secs(10);

impl ServerPool {
    /// Creates the pool, makes the first connection (bounded by the server's
    /// timeout; a failure leaves it down and retrying) and starts its supervisor.
    pub async fn start(
        config: ServerConfig,
        options: Arc<RegistryOptions>,
        http: Clients,
        events: broadcast::Sender<RegistryEvent>,
        stop: CancellationToken,
    ) -> Arc<ServerPool> {
        let pool = Arc::new(ServerPool {
            permits: Semaphore::new(config.pool.concurrency),
            config,
            options,
            http,
            signals: Arc::default(),
            connecting: tokio::sync::Mutex::new(()),
            inner: Mutex::new(Inner::default()),
            events,
            _stop: stop.clone().drop_guard(),
        });
        if pool.config.disabled {
            pool.set_state(ServerState::Disabled);
            return pool;
        }
        match pool.connect_one().await {
            // The rest of `pool.min`; the supervisor retries any that fail.
            Ok(_) => {
                for _ in 1..pool.config.pool.min {
                    if pool.connect_one().await.is_err() {
                        break;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(server = %pool.config.name, %error, "MCP server did not start; retrying in the background")
            }
        }
        tokio::spawn(supervise(Arc::downgrade(&pool), pool.signals.clone(), stop, pool.options.health_interval));
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner inconsistent in a
        // way that matters more than stopping the server would.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn catalog(&self) -> Option<Catalog> {
        self.lock().catalog.clone()
    }

    /// Whether the server listed `tool`; `None` before its first listing.
    /// (On every call: looks under the lock instead of cloning the catalog.)
    pub fn lists_tool(&self, tool: &str) -> Option<bool> {
        self.lock().catalog.as_ref().map(|c| c.tools.iter().any(|t| t.name == tool))
    }

    pub fn status(&self) -> ServerStatus {
        let inner = self.lock();
        ServerStatus {
            name: self.config.name.clone(),
            transport: self.config.transport.kind(),
            state: inner.state.unwrap_or(ServerState::Down),
            last_error: inner.last_error.clone(),
            latency: inner.latency,
            tools: inner.catalog.as_ref().map_or(0, |c| c.tools.len()),
            connections: inner
                .conns
                .iter()
                .filter(|c| !c.is_closed())
                .map(|c| ConnectionStatus { pid: c.pid(), in_flight: c.in_flight.load(Ordering::Relaxed) })
                .collect(),
            restarts: inner.restarts,
        }
    }

    fn set_state(&self, state: ServerState) {
        let (changed, last_error) = {
            let mut inner = self.lock();
            let changed = inner.state != Some(state);
            inner.state = Some(state);
            (changed, inner.last_error.clone())
        };
        if changed {
            tracing::info!(server = %self.config.name, ?state, last_error = last_error.as_deref(), "MCP server state");
            let _ =
                self.events.send(RegistryEvent::ServerState { server: self.config.name.clone(), state, last_error });
        }
    }

    /// Works out the state from the connections and the last errors.
    fn update_state(&self) {
        let state = {
            let inner = self.lock();
            let live = inner.conns.iter().filter(|c| !c.is_closed()).count();
            match (live, inner.failures) {
                (0, _) if inner.failures > 0 || inner.catalog.is_none() => ServerState::Down,
                // No connection and no failure: idle connections were reaped (pool.min 0).
                (_, 0) => ServerState::Up,
                _ => ServerState::Degraded,
            }
        };
        self.set_state(state);
    }

    fn backoff(&self, failures: u32) -> Duration {
        let initial = self.options.backoff_initial;
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        initial.saturating_mul(factor).min(self.options.backoff_max)
    }

    fn record_failure(&self, error: String) {
        {
            let mut inner = self.lock();
            inner.failures += 1;
            let delay = self.backoff(inner.failures);
            inner.next_attempt = Some(Instant::now() + delay);
            inner.last_error = Some(error);
        }
        self.update_state();
    }

    /// Opens a connection and adds it; lists the catalog if there is none yet.
    async fn connect_one(&self) -> Result<Arc<Connection>, Error> {
        let start = Instant::now();
        let conn = match conn::connect(&self.config, &self.http, self.signals.clone()).await {
            Ok(conn) => Arc::new(conn),
            Err(reason) => {
                self.record_failure(reason.clone());
                return Err(Error::Connect { server: self.config.name.clone(), reason });
            }
        };
        let handshake = start.elapsed();
        // List on the first connection, and again after losing them all: a
        // restarted server may have other tools.
        let needs_catalog = {
            let inner = self.lock();
            inner.catalog.is_none() || inner.conns.iter().all(|c| c.is_closed())
        };
        if needs_catalog {
            match self.list(&conn).await {
                Ok(catalog) => self.set_catalog(catalog),
                Err(reason) => {
                    self.record_failure(reason.clone());
                    return Err(Error::Connect { server: self.config.name.clone(), reason });
                }
            }
        }
        {
            let mut inner = self.lock();
            inner.conns.push(conn.clone());
            inner.latency.get_or_insert(handshake);
            inner.next_attempt = None;
        }
        tracing::info!(server = %self.config.name, pid = conn.pid(), "MCP connection opened");
        self.update_state();
        Ok(conn)
    }

    /// Lists tools (every page), and resources, resource templates and
    /// prompts when the server has them.
    async fn list(&self, conn: &Connection) -> Result<Catalog, String> {
        let peer = conn.service.peer();
        let capabilities = peer.peer_info().map(|info| info.capabilities.clone()).unwrap_or_default();
        let timeout = self.config.timeout;
        let within = |what: &str| format!("listing {what} did not finish within {}s", timeout.as_secs());
        let mut catalog = Catalog::default();
        if capabilities.tools.is_some() {
            catalog.tools = tokio::time::timeout(timeout, peer.list_all_tools())
                .await
                .map_err(|_| within("tools"))?
                .map_err(|e| format!("tools/list failed: {}", describe(&self.config, &e.to_string())))?;
        }
        // Resources and prompts are extras: a server that fails to list them
        // still serves its tools.
        if capabilities.resources.is_some() {
            match tokio::time::timeout(timeout, peer.list_all_resources()).await {
                Ok(Ok(resources)) => catalog.resources = resources,
                Ok(Err(e)) => {
                    tracing::warn!(server = %self.config.name, error = %describe(&self.config, &e.to_string()), "resources/list failed")
                }
                Err(_) => tracing::warn!(server = %self.config.name, "{}", within("resources")),
            }
            match tokio::time::timeout(timeout, peer.list_all_resource_templates()).await {
                Ok(Ok(templates)) => catalog.resource_templates = templates,
                Ok(Err(e)) => {
                    tracing::warn!(server = %self.config.name, error = %describe(&self.config, &e.to_string()), "resources/templates/list failed")
                }
                Err(_) => tracing::warn!(server = %self.config.name, "{}", within("resource templates")),
            }
        }
        if capabilities.prompts.is_some() {
            match tokio::time::timeout(timeout, peer.list_all_prompts()).await {
                Ok(Ok(prompts)) => catalog.prompts = prompts,
                Ok(Err(e)) => {
                    tracing::warn!(server = %self.config.name, error = %describe(&self.config, &e.to_string()), "prompts/list failed")
                }
                Err(_) => tracing::warn!(server = %self.config.name, "{}", within("prompts")),
            }
        }
        Ok(catalog)
    }

    fn set_catalog(&self, catalog: Catalog) {
        let changed = {
            let mut inner = self.lock();
            let changed = inner.catalog.as_ref().is_none_or(|old| old.tools != catalog.tools);
            inner.catalog = Some(catalog);
            changed
        };
        if changed {
            let _ = self.events.send(RegistryEvent::ToolsChanged { server: self.config.name.clone() });
        }
    }

    /// Re-lists the catalog through any live connection.
    async fn refresh(&self) {
        let Some(conn) = self.live().into_iter().next() else { return };
        match self.list(&conn).await {
            Ok(catalog) => self.set_catalog(catalog),
            Err(error) => tracing::warn!(server = %self.config.name, %error, "re-listing after list_changed failed"),
        }
    }

    fn live(&self) -> Vec<Arc<Connection>> {
        self.lock().conns.iter().filter(|c| !c.is_closed()).cloned().collect()
    }

    /// The least-busy live connection, opening one if there is none (waiting
    /// out the backoff if it ends before `deadline`).
    async fn checkout(&self, deadline: Instant) -> Result<Arc<Connection>, Error> {
        loop {
            let (best, total) = {
                let inner = self.lock();
                let best = inner
                    .conns
                    .iter()
                    .filter(|c| !c.is_closed())
                    .min_by_key(|c| c.in_flight.load(Ordering::Relaxed))
                    .cloned();
                (best, inner.conns.iter().filter(|c| !c.is_closed()).count())
            };
            if let Some(conn) = best {
                if conn.in_flight.load(Ordering::Relaxed) > 0 && total < self.config.pool.max {
                    self.lock().want_more = true;
                    self.signals.wake.notify_one();
                }
                return Ok(conn);
            }
            let _turn = self.connecting.lock().await;
            if !self.live().is_empty() {
                continue;
            }
            let (next_attempt, last_error) = {
                let inner = self.lock();
                (inner.next_attempt, inner.last_error.clone())
            };
            if let Some(at) = next_attempt.filter(|at| *at > Instant::now()) {
                if at > deadline {
                    let reason = last_error.unwrap_or_else(|| "not connected".into());
                    return Err(Error::Down { server: self.config.name.clone(), reason });
                }
                tokio::time::sleep_until(at.into()).await;
            }
            return self.connect_one().await;
        }
    }

    /// Calls a tool: waits for a concurrency permit and a connection, then
    /// calls; all of it within the timeout. Dropping the returned future (or
    /// the timeout, or `cancel`) drops rmcp's request, which sends
    /// `notifications/cancelled` upstream.
    pub async fn call(
        &self,
        tool: &str,
        arguments: Option<JsonObject>,
        options: crate::registry::CallOptions,
    ) -> Result<CallToolResult, Error> {
        let crate::registry::CallOptions { timeout, cancel, meta } = options;
        let mut params = CallToolRequestParams::new(tool.to_string());
        params.arguments = arguments;
        params.meta = meta.map(|m| RequestMetaObject(MetaObject(m)));
        let send = move |conn: Arc<Connection>| async move { conn.service.call_tool(params).await };
        let what = Operation { name: tool, label: &format!("tools/call {tool}"), keep_refusals: false };
        self.exchange(what, timeout, cancel, send).await
    }

    /// Sends one request that is not a tool call (`resources/read`,
    /// `prompts/get`) under the rules of [`ServerPool::call`]: a concurrency
    /// permit, the least-busy connection, the server's timeout and `cancel`.
    /// An error the server answered keeps its JSON-RPC code ([`Error::Refused`]).
    pub async fn request<T, F, Fut>(
        &self,
        operation: &str,
        cancel: Option<CancellationToken>,
        send: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(Arc<Connection>) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        let what = Operation { name: operation, label: operation, keep_refusals: true };
        self.exchange(what, None, cancel, send).await
    }

    /// What [`ServerPool::call`] and [`ServerPool::request`] share: a permit,
    /// a connection, `timeout` (the server's by default) and `cancel` around
    /// `send`, and its errors named after `what`.
    async fn exchange<T, F, Fut>(
        &self,
        what: Operation<'_>,
        timeout: Option<Duration>,
        cancel: Option<CancellationToken>,
        send: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(Arc<Connection>) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        let server = &self.config.name;
        if self.config.disabled {
            return Err(Error::Disabled { server: server.clone() });
        }
        let timeout = timeout.unwrap_or(self.config.timeout);
        let deadline = Instant::now() + timeout;
        let request = async {
            let _permit = self.permits.acquire().await.map_err(|_| Error::Shutdown)?;
            let conn = self.checkout(deadline).await?;
            let _busy = Busy::new(&conn);
            send(conn.clone()).await.map_err(|error| match error {
                ServiceError::TransportClosed | ServiceError::TransportSend(_) => {
                    self.signals.wake.notify_one();
                    Error::ConnectionLost { server: server.clone(), tool: what.name.to_owned() }
                }
                ServiceError::McpError(error) if what.keep_refusals => Error::Refused {
                    server: server.clone(),
                    operation: what.label.to_owned(),
                    code: error.code.0,
                    message: error.message.into_owned(),
                },
                other => Error::Upstream {
                    server: server.clone(),
                    operation: what.label.to_owned(),
                    reason: other.to_string(),
                },
            })
        };
        let cancelled = async {
            match &cancel {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = tokio::time::timeout_at(deadline.into(), request) => result.unwrap_or_else(|_| Err(Error::Timeout {
                server: server.clone(),
                tool: what.name.to_owned(),
                timeout,
            })),
            () = cancelled => Err(Error::Cancelled { server: server.clone(), tool: what.name.to_owned() }),
        }
    }

    /// One round of supervision: drop closed connections, restart, grow, ping, reap.
    async fn maintain(&self) {
        let now = Instant::now();
        // Closed connections out; an unexpected close counts toward the backoff.
        let dead: Vec<Arc<Connection>> = {
            let mut inner = self.lock();
            let (dead, live): (Vec<_>, Vec<_>) = inner.conns.drain(..).partition(|c| c.is_closed());
            inner.conns = live;
            dead
        };
        for conn in &dead {
            let lived = conn.opened.elapsed();
            let error = format!("connection closed after {}s (process exited or stream ended)", lived.as_secs());
            tracing::warn!(server = %self.config.name, pid = conn.pid(), %error, "MCP connection lost");
            {
                let mut inner = self.lock();
                inner.restarts += 1;
                if lived >= STABLE_AFTER {
                    inner.failures = 0;
                }
            }
            self.record_failure(error);
        }
        drop(dead);

        let (live, target, due, want_more) = {
            let mut inner = self.lock();
            let live = inner.conns.len();
            // Grow while every connection has a call in flight (a call that
            // found them all busy asked for this), up to max.
            let all_busy = inner.conns.iter().all(|c| c.in_flight.load(Ordering::Relaxed) > 0);
            let want_more = std::mem::take(&mut inner.want_more) && all_busy && live < self.config.pool.max;
            let target = self.config.pool.min.max(usize::from(inner.catalog.is_none()));
            let due = inner.next_attempt.is_none_or(|at| at <= now);
            (live, target, due, want_more)
        };
        if (live < target || want_more) && due {
            let _turn = self.connecting.lock().await;
            if let Err(error) = self.connect_one().await {
                tracing::warn!(server = %self.config.name, %error, "MCP reconnect failed");
            }
        }

        // A connection that has stayed up long enough forgives earlier failures.
        {
            let mut inner = self.lock();
            if inner.failures > 0
                && !inner.conns.is_empty()
                && inner.conns.iter().all(|c| c.opened.elapsed() >= STABLE_AFTER)
            {
                inner.failures = 0;
                inner.last_error = None;
            }
        }

        let ping_due = self.lock().last_ping.is_none_or(|at| at.elapsed() >= self.options.health_interval);
        if ping_due {
            self.lock().last_ping = Some(Instant::now());
            for conn in self.live() {
                match conn.ping(self.config.timeout.min(self.options.ping_timeout)).await {
                    Ok(latency) => self.lock().latency = Some(latency),
                    Err(error) => {
                        // A connection that cannot answer a ping is hung: replace it.
                        let error = describe(&self.config, &error);
                        tracing::warn!(server = %self.config.name, pid = conn.pid(), %error, "MCP ping failed");
                        self.lock().last_error = Some(error);
                        conn.closed.cancel();
                        if let Some(group) = &conn.group {
                            group.signal(libc::SIGKILL);
                        }
                    }
                }
            }
        }

        // Reap idle connections above min.
        let idle_timeout = self.options.idle_timeout;
        {
            let mut inner = self.lock();
            let min = self.config.pool.min;
            while inner.conns.len() > min {
                let Some(i) = inner
                    .conns
                    .iter()
                    .position(|c| c.in_flight.load(Ordering::Relaxed) == 0 && c.idle_for() >= idle_timeout)
                else {
                    break;
                };
                let conn = inner.conns.remove(i);
                tracing::info!(server = %self.config.name, pid = conn.pid(), "reaping idle MCP connection");
            }
        }
        self.update_state();
    }

    /// Closes every connection: asks each to close (stdio: closes the child's
    /// stdin), waits up to `grace` for the children to exit, then kills their groups.
    pub async fn shutdown(&self, grace: Duration) {
        let conns: Vec<Arc<Connection>> = std::mem::take(&mut self.lock().conns);
        for conn in &conns {
            conn.service.cancellation_token().cancel();
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && conns.iter().any(|c| c.group.as_ref().is_some_and(|g| g.is_alive())) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Dropping the connections kills whatever is left of their groups.
    }

    /// How long until the next attempt is due, for the supervisor's sleep.
    fn next_wakeup(&self) -> Option<Instant> {
        self.lock().next_attempt
    }
}

/// Counts a call on a connection while it runs.
struct Busy<'a>(&'a Connection);

impl<'a> Busy<'a> {
    fn new(conn: &'a Connection) -> Self {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.touch();
        Busy(conn)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The supervisor loop. It holds the pool weakly so dropping the registry
/// drops the pool (and kills its children) even while this task sleeps.
async fn supervise(pool: Weak<ServerPool>, signals: Arc<Signals>, stop: CancellationToken, tick: Duration) {
    loop {
        let wake_at = pool.upgrade().and_then(|p| p.next_wakeup());
        let sleep_until = wake_at.map_or(Instant::now() + tick, |at| at.min(Instant::now() + tick));
        let mut relist = false;
        tokio::select! {
            () = stop.cancelled() => return,
            () = signals.wake.notified() => {}
            () = signals.lists_changed.notified() => relist = true,
            () = tokio::time::sleep_until(sleep_until.into()) => {}
        }
        let Some(pool) = pool.upgrade() else { return };
        if relist {
            pool.refresh().await;
        }
        pool.maintain().await;
    }
}

/// How a request is named in its errors: `name` (the tool, or the method) in
/// timeouts, cancellations and lost connections, `label` in upstream errors;
/// `keep_refusals` turns an error the server answered into [`Error::Refused`]
/// with its JSON-RPC code (a tool call's stays [`Error::Upstream`]).
#[derive(Clone, Copy)]
struct Operation<'a> {
    name: &'a str,
    label: &'a str,
    keep_refusals: bool,
}
