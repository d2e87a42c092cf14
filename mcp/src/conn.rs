//! One connection to one server: the transport (child process, streamable-HTTP
//! session or SSE stream) under an rmcp client, plus what the pool needs to
//! know about it (in-flight calls, when it closed, the child's process group).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rmcp::model::{
    ClientCapabilities, ClientConfig, ClientJsonRpcMessage, ClientRequest, Implementation, PingRequest,
    ServerJsonRpcMessage,
};
use rmcp::service::{NotificationContext, RunningService, ServiceExt};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess, Transport};
use rmcp::{ClientHandler, RoleClient};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Secret, ServerConfig, TransportConfig};
use crate::egress::{Clients, classify, without_type_names};
use crate::session_http::SessionHttpClient;
use crate::sse::SseClientTransport;

/// Signals from a server's connections to its supervisor.
#[derive(Default)]
pub(crate) struct Signals {
    /// A connection closed, or the pool wants another one.
    pub wake: Notify,
    /// The server sent `notifications/tools/list_changed` (or prompts/resources).
    pub lists_changed: Notify,
}

/// Our side of the MCP session: answers the server's requests with rmcp's
/// defaults and passes list-changed notifications to the supervisor.
pub(crate) struct Handler {
    signals: Arc<Signals>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.signals.lists_changed.notify_one();
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.signals.lists_changed.notify_one();
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.signals.lists_changed.notify_one();
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(ClientCapabilities::default(), Implementation::new("orch", env!("CARGO_PKG_VERSION")))
    }
}

/// A live (or just closed) connection.
pub(crate) struct Connection {
    pub service: RunningService<RoleClient, Handler>,
    /// Cancelled when the transport reports end of stream (child exited, stream closed).
    pub closed: CancellationToken,
    pub in_flight: AtomicUsize,
    /// Milliseconds since `opened` of the last use; idle connections are reaped.
    last_used_ms: AtomicU64,
    pub opened: Instant,
    pub group: Option<ProcessGroup>,
}

impl Connection {
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled() || self.service.is_transport_closed()
    }

    pub fn touch(&self) {
        self.last_used_ms.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        self.opened.elapsed().saturating_sub(Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.group.as_ref().map(|g| g.0)
    }

    /// Round trip of a `ping`.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let ping =
            ClientRequest::PingRequest(PingRequest { method: Default::default(), extensions: Default::default() });
        match tokio::time::timeout(timeout, self.service.send_request(ping)).await {
            Ok(Ok(_)) => Ok(start.elapsed()),
            Ok(Err(error)) => Err(format!("ping failed: {error}")),
            Err(_) => Err(format!("ping not answered within {}s", timeout.as_secs_f64())),
        }
    }
}

/// A child's process group (the child is its leader, so the id is its pid).
/// Killing the group on drop also ends what the child started (`npx` starts
/// `node`, shells start pipelines), so nothing outlives the connection.
pub(crate) struct ProcessGroup(pub u32);

impl ProcessGroup {
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with a negative pid signals a process group; it has no
        // memory-safety preconditions. A group that is gone returns ESRCH.
        unsafe {
            libc::kill(-(self.0 as libc::pid_t), signal);
        }
    }

    pub fn is_alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the group exists.
        unsafe { libc::kill(-(self.0 as libc::pid_t), 0) == 0 }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// Wraps a transport to learn when it closes, without polling.
struct Watched<T> {
    inner: T,
    closed: CancellationToken,
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for Watched<T> {
    type Error = T::Error;

    fn send(&mut self, item: ClientJsonRpcMessage) -> impl Future<Output = Result<(), T::Error>> + Send + 'static {
        self.inner.send(item)
    }

    fn receive(&mut self) -> impl Future<Output = Option<ServerJsonRpcMessage>> + Send {
        let closed = self.closed.clone();
        let next = self.inner.receive();
        async move {
            let message = next.await;
            if message.is_none() {
                closed.cancel();
            }
            message
        }
    }

    fn close(&mut self) -> impl Future<Output = Result<(), T::Error>> + Send {
        self.closed.cancel();
        self.inner.close()
    }
}

/// Opens one connection and runs the MCP handshake, within `server.timeout`.
pub(crate) async fn connect(
    server: &ServerConfig,
    clients: &Clients,
    signals: Arc<Signals>,
) -> Result<Connection, String> {
    // The operator's client, or the guarded one (a guarded URL naming an address is checked here).
    let http = clients.for_server(server)?;
    let closed = CancellationToken::new();
    let handler = Handler { signals: signals.clone() };
    let timeout = server.timeout;
    let within =
        |what: &'static str| format!("{what} did not finish within {}s (the server's `timeout`)", timeout.as_secs());
    let (service, group) = match &server.transport {
        TransportConfig::Stdio { command, args, env, cwd } => {
            let mut cmd = tokio::process::Command::new(command);
            // Orch's own settings (`ORCH_*`: the store URL with its password, provider
            // credentials) stay with Orch unless the server's `env` names one.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("ORCH_") {
                    cmd.env_remove(key);
                }
            }
            cmd.args(args).envs(env.iter().map(|(k, v)| (k, v.expose())));
            if let Some(cwd) = cwd {
                cmd.current_dir(cwd);
            }
            // Its own group, so the whole tree can be killed at once (see ProcessGroup).
            cmd.process_group(0);
            die_with_orch(&mut cmd);
            let (child, stderr) = TokioChildProcess::builder(cmd)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start `{command}`: {e}"))?;
            let group = child.id().map(ProcessGroup);
            if let Some(stderr) = stderr {
                forward_stderr(server.name.clone(), stderr);
            }
            let transport = Watched { inner: child, closed: closed.clone() };
            let service = tokio::time::timeout(timeout, handler.serve(transport))
                .await
                .map_err(|_| within("starting and initialising the process"))?
                .map_err(|e| format!("initialisation failed: {}", without_type_names(&e.to_string())))?;
            (service, group)
        }
        TransportConfig::StreamableHttp { url, headers } => {
            let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                .custom_headers(header_map(headers).into_iter().filter_map(|(k, v)| Some((k?, v))).collect())
                // An expired session (404, or 400 through SessionHttpClient) is
                // re-initialised instead of failing the call.
                .reinit_on_expired_session(true);
            let transport = Watched {
                inner: StreamableHttpClientTransport::with_client(SessionHttpClient(http.clone()), config),
                closed: closed.clone(),
            };
            let service = tokio::time::timeout(timeout, handler.serve(transport))
                .await
                .map_err(|_| within("initialisation"))?
                .map_err(|e| format!("initialisation failed: {}", classify(&crate::error::chain(&e))))?;
            (service, None)
        }
        TransportConfig::Sse { url, headers } => {
            let start = Instant::now();
            let sse = SseClientTransport::connect(http.clone(), url, header_map(headers), timeout)
                .await
                .map_err(|e| format!("opening the event stream failed: {}", classify(&crate::error::chain(&e))))?;
            let transport = Watched { inner: sse, closed: closed.clone() };
            let left = timeout.saturating_sub(start.elapsed());
            let service = tokio::time::timeout(left, handler.serve(transport))
                .await
                .map_err(|_| within("initialisation"))?
                .map_err(|e| format!("initialisation failed: {}", classify(&crate::error::chain(&e))))?;
            (service, None)
        }
    };
    let wake = closed.clone();
    tokio::spawn(async move {
        wake.cancelled().await;
        signals.wake.notify_one();
    });
    Ok(Connection {
        service,
        closed,
        in_flight: AtomicUsize::new(0),
        last_used_ms: AtomicU64::new(0),
        opened: Instant::now(),
        group,
    })
}

/// The kernel sends the child SIGTERM when Orch dies, even by SIGKILL, when
/// nothing of Orch's own cleanup runs. SIGTERM rather than SIGKILL so wrappers
/// (`npx`, `uvx`, `docker run`) can pass it on to what they started; the
/// closed stdin ends well-behaved servers too.
///
/// The "parent" of PR_SET_PDEATHSIG is the thread that spawned the child, so
/// children must be spawned from threads that live as long as Orch: tokio's
/// worker threads (the supervisors' tasks), not `spawn_blocking` threads,
/// which exit when idle.
fn die_with_orch(cmd: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    {
        let orch = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls are allowed;
        // prctl, getppid and raise are, and the closure allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Orch died before the prctl: no signal will come.
                if libc::getppid() != orch {
                    libc::raise(libc::SIGTERM);
                }
                Ok(())
            });
        }
    }
}

/// Config headers as a header map, values marked sensitive so they never print.
/// The config parser already checked names and values.
fn header_map(headers: &std::collections::BTreeMap<String, Secret>) -> reqwest::header::HeaderMap {
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        let (Ok(name), Ok(mut value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(value.expose()),
        ) else {
            continue;
        };
        value.set_sensitive(true);
        map.insert(name, value);
    }
    map
}

/// Each line the child writes to stderr goes to the log under the server's name.
fn forward_stderr(server: String, stderr: tokio::process::ChildStderr) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "orch_mcp::stderr", server = %server, "{line}");
        }
    });
}
