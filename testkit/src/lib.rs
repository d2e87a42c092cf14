//! Test support shared by the crates' tests: a real `redis-server` per test on a
//! free loopback port, stopped when dropped. A missing `redis-server` fails the
//! test loudly; the README's test command installs it. [`model_api`] is a
//! fake model API (Anthropic, Gemini, OpenAI) on loopback for the real CLIs,
//! used by the tests and by `orch bench clis`.

pub mod model_api;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private redis-server with no persistence, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts redis-server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir for redis-server");
            let port = free_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (the README's test command installs it)");
            let mut server = RedisServer { child, port, _dir: dir };
            if server.wait_ready(Duration::from_secs(10)) {
                return server;
            }
            let _ = server.child.kill();
        }
        panic!("redis-server did not start on a free port after 5 tries");
    }

    /// Stops the server as an operator would (`SHUTDOWN SAVE`: its data is
    /// kept on disk); the port refuses connections until [`RedisServer::restart`].
    pub fn stop(&mut self) {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.write_all(b"SHUTDOWN SAVE\r\n");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the stopped server again on the same port, with its saved data.
    pub fn restart(&mut self) {
        self.child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server restarts");
        assert!(self.wait_ready(Duration::from_secs(10)), "redis-server restarts on port {}", self.port);
    }

    /// Sends one command (inline form) and returns the first line of the answer.
    pub fn command(&self, line: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("redis-server answers");
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        s.write_all(format!("{line}\r\n").as_bytes()).expect("command sent");
        let mut answer = String::new();
        let _ = BufReader::new(&s).read_line(&mut answer);
        answer.trim_end().to_owned()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut line = String::new();
                    if BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with("+PONG") {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis primary, one replica and three Sentinels watching them as service
/// `orch`, all on loopback, for failover tests. Sentinels call the primary
/// down after 1 s without an answer and need two of them to agree.
pub struct SentinelSet {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<(Child, u16)>,
    dir: tempfile::TempDir,
}

impl SentinelSet {
    /// Starts the five servers and waits until the sentinels see the replica
    /// and agree they could fail over.
    pub fn start() -> SentinelSet {
        let primary = RedisServer::start();
        let replica = RedisServer::start();
        // Redis waits 5 s before a diskless full sync by default.
        for server in [&primary, &replica] {
            assert_eq!(server.command("CONFIG SET repl-diskless-sync-delay 0"), "+OK");
        }
        assert_eq!(replica.command(&format!("REPLICAOF 127.0.0.1 {}", primary.port())), "+OK");
        let deadline = Instant::now() + Duration::from_secs(30);
        // In sync once a write reaches the replica.
        loop {
            primary.command("SET orch-testkit-sync 1");
            if primary.command("WAIT 1 200") == ":1" {
                break;
            }
            assert!(Instant::now() < deadline, "the replica did not sync within 30 s");
        }
        let dir = tempfile::tempdir().expect("temp dir for sentinels");
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor orch 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds orch 1000\nsentinel failover-timeout orch 10000\n\
                     sentinel parallel-syncs orch 1\n",
                    dir.path().display(),
                    primary.port()
                ),
            )
            .expect("sentinel config written");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel starts");
            sentinels.push((child, port));
        }
        let set = SentinelSet { primary, replica, sentinels, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = set.sentinels.iter().all(|(_, port)| {
                sentinel_command(*port, "SENTINEL ckquorum orch").starts_with("+OK")
                    && sentinel_command(*port, "SENTINEL replicas orch").starts_with("*1")
            });
            if ready {
                return set;
            }
            assert!(Instant::now() < deadline, "the sentinels did not see the primary and its replica within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis+sentinel://` naming the three sentinels and service `orch`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|(_, port)| format!("127.0.0.1:{port}")).collect();
        format!("redis+sentinel://{}/orch", hosts.join(","))
    }

    /// The primary's port as the first sentinel answering names it.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|(_, port)| {
            let mut s = TcpStream::connect(("127.0.0.1", *port)).ok()?;
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            s.write_all(b"SENTINEL get-master-addr-by-name orch\r\n").ok()?;
            // *2, $9, 127.0.0.1, $5, PORT
            let lines: Vec<String> = BufReader::new(s).lines().take(5).collect::<Result<_, _>>().ok()?;
            lines.get(4)?.trim().parse().ok()
        })
    }

    /// Where the sentinels keep their files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One inline command to the server on `port`; the first line of the answer.
fn sentinel_command(port: u16, line: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("{line}\r\n").as_bytes()).is_err() {
        return String::new();
    }
    let mut answer = String::new();
    let _ = BufReader::new(&s).read_line(&mut answer);
    answer.trim_end().to_owned()
}

impl RedisServer {
    /// The server's process id (to stop or kill it as a crash would).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The reference MCP server `@modelcontextprotocol/server-everything` (and its
/// siblings `server-memory` and `server-filesystem`), from the npm packages
/// pinned in `mcp/tests/servers` (the README's test command installs them).
/// Missing Node.js or a missing package fails the test loudly.
pub mod everything {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// The `node` command, after checking it runs.
    pub fn node() -> String {
        let ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(ok, "these tests run MCP servers with Node.js: install node 20+ and put it on PATH");
        "node".into()
    }

    /// server-everything's entry point.
    pub fn entry() -> String {
        reference_entry("everything")
    }

    /// The entry point of `@modelcontextprotocol/server-{name}`: `everything`,
    /// `memory` or `filesystem`.
    pub fn reference_entry(name: &str) -> String {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../mcp/tests/servers/node_modules/@modelcontextprotocol/server-{name}/dist/index.js"));
        assert!(
            path.exists(),
            "{} is missing: run `(cd mcp/tests/servers && npm ci --no-audit --no-fund)` (scripts/test does)",
            path.display()
        );
        path.display().to_string()
    }

    /// server-everything in an HTTP mode (`sse` or `streamableHttp`); killed on drop.
    pub struct HttpServer {
        pub port: u16,
        child: Child,
    }

    impl HttpServer {
        /// On a free port.
        pub fn start(mode: &str) -> HttpServer {
            HttpServer::start_on(mode, super::free_port())
        }

        /// On `port`, once it listens.
        pub fn start_on(mode: &str, port: u16) -> HttpServer {
            let child = Command::new(node())
                .arg(entry())
                .arg(mode)
                .env("PORT", port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start server-everything");
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "server-everything {mode} did not listen on port {port} within 30s");
                std::thread::sleep(Duration::from_millis(50));
            }
            HttpServer { port, child }
        }
    }

    impl Drop for HttpServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
