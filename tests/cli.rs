//! The real `orch` binary: first start, configuration errors, key commands,
//! and the split deployment surviving a worker killed with SIGKILL.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Backend;
use support::procs::{ORCH, Procs, orch};

/// Starts `orch <command>` (api or serve) on a free port on a new store and
/// reads the admin key its first start prints. Returns the base URL, the key
/// and the pid.
fn start_first(procs: &mut Procs, dir: &std::path::Path, store: &str, command: &str) -> (String, String, u32) {
    let port = orch_testkit::free_port();
    let mut child = orch(dir, store)
        .arg(command)
        .env("ORCH_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    procs.0.push(child);
    let mut key = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(k) = line.trim().strip_prefix("orch_") {
            key = Some(format!("orch_{k}"));
        }
        if line.contains("POST /v1/keys") {
            break;
        }
    }
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/health"));
    (base, key.expect("first start prints an admin key"), pid)
}

fn wait_http(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if matches!(http::status(url), Ok(200)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{url} did not answer 200 within 20 s");
}

mod http {
    //! The few blocking HTTP calls these tests make, over async reqwest.
    use reqwest::{Client, Method, Result};

    fn rt() -> tokio::runtime::Runtime {
        orch_mcp::tls::install_crypto_provider();
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    pub fn status(url: &str) -> Result<u16> {
        rt().block_on(async { Ok(Client::new().get(url).send().await?.status().as_u16()) })
    }

    pub fn call(method: Method, url: &str, key: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
        rt().block_on(async {
            let mut req = Client::new().request(method, url).bearer_auth(key);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(serde_json::Value::Null))
        })
    }
}

fn get(base: &str, path: &str, key: &str) -> Value {
    let (status, body) = http::call(reqwest::Method::GET, &format!("{base}{path}"), key, None);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[test]
fn first_start_prints_one_admin_key_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/orch.db", dir.path().display());
    let mut procs = Procs::default();
    let (base, key, _) = start_first(&mut procs, dir.path(), &store, "api");
    assert_eq!(get(&base, "/v1/keys", &key)["keys"].as_array().unwrap().len(), 1);
    drop(procs);

    // A second start finds the key and prints none.
    let port = orch_testkit::free_port();
    let mut second = orch(dir.path(), &store)
        .arg("api")
        .env("ORCH_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_http(&format!("http://127.0.0.1:{port}/health"));
    let _ = second.kill();
    let out = second.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("orch_"), "second start printed a key: {text}");
}

#[test]
fn serve_with_no_configuration_uses_orch_data() {
    let dir = tempfile::tempdir().unwrap();
    let port = orch_testkit::free_port();
    let mut procs = Procs::default();
    let child = Command::new(ORCH)
        .current_dir(dir.path())
        .env_clear()
        .env("ORCH_BIND", format!("127.0.0.1:{port}"))
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    procs.0.push(child);
    wait_http(&format!("http://127.0.0.1:{port}/health"));
    assert!(dir.path().join("orch-data/orch.db").exists());
}

#[test]
fn invalid_settings_stop_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("ORCH_BIND", "everywhere")], "ORCH_BIND"),
        (&[("ORCH_STORE", "postgres://u:hunter2@db/orch")], "ORCH_STORE"),
        (&[("ORCH_LOG_FORMAT", "xml")], "allowed: text, json"),
        (&[("ORCH_LEASE", "soon")], "--lease"),
        (&[("ORCH_MAX_ATTEMPTS", "99")], "ORCH_MAX_ATTEMPTS"),
        (&[("ORCH_PLAN_INLINE_OUTPUT_BYTES", "10")], "ORCH_PLAN_INLINE_OUTPUT_BYTES"),
        (
            &[("ORCH_PROVIDER_CLAUDE_CONCURRENCY", "many")],
            "ORCH_PROVIDER_CLAUDE_CONCURRENCY: \"many\" is not a whole number",
        ),
        (
            &[("ORCH_PROVIDER_CLAUDE_CONCURRENCY", "0")],
            "providers.claude.limits.concurrency: must be between 1 and 256",
        ),
        (
            &[("ORCH_DEFAULT_MODEL", "gpt-4o")],
            "routing.default_model: unknown model \"gpt-4o\"; configured: auto, claude",
        ),
        (
            &[("ORCH_PROVIDER_CLAUDE_ENV_CLAUDE_CODE_OAUTH_TOKEN", "hunter2"), ("ORCH_CHAT_WAIT", "0s")],
            "ORCH_CHAT_WAIT",
        ),
        (
            &[("ORCH_MCP_CA_FILE", "/nonexistent/ca.pem")],
            "ORCH_MCP_CA_FILE (--mcp-ca-file): cannot read /nonexistent/ca.pem",
        ),
        (
            &[("ORCH_MCP_CA_FILE", "/etc/hostname")],
            "ORCH_MCP_CA_FILE (--mcp-ca-file): /etc/hostname holds no PEM certificate",
        ),
        (
            &[("ORCH_WEBHOOK_PROGRESS_INTERVAL", "10ms")],
            "ORCH_WEBHOOK_PROGRESS_INTERVAL (--webhook-progress-interval): 10ms is out of range; allowed: 100ms to 1h",
        ),
        (&[("ORCH_WEBHOOK_PROGRESS_INTERVAL", "often")], "--webhook-progress-interval"),
    ];
    for (env, expected) in cases {
        let mut cmd = orch(dir.path(), "sqlite://orch.db");
        cmd.arg("serve");
        for (k, v) in env.iter() {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} was accepted");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "a password was printed: {stderr}");
    }

    std::fs::write(dir.path().join("orch.toml"), "bind = \"127.0.0.1:1\"\nworkers = 3\n").unwrap();
    let out = orch(dir.path(), "sqlite://orch.db").arg("serve").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("orch.toml") && stderr.contains("workers"), "{stderr}");

    let routing = "[providers.claude]\n[routing.table]\ncoding = ['claude', 'copilot']\n";
    std::fs::write(dir.path().join("orch.toml"), routing).unwrap();
    let out = orch(dir.path(), "sqlite://orch.db").arg("serve").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("routing.table.coding[1]: unknown model \"copilot\"; configured: auto, claude"),
        "{stderr}"
    );
}

#[test]
fn keys_commands_create_list_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let store = "sqlite://orch.db";
    let out =
        orch(dir.path(), store).args(["keys", "create", "--name", "n8n", "--scopes", "jobs:read"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(secret.starts_with("orch_"));
    let list = orch(dir.path(), store).args(["keys", "list"]).output().unwrap();
    let text = String::from_utf8(list.stdout).unwrap();
    assert!(text.contains("n8n") && text.contains("jobs:read"), "{text}");
    assert!(!text.contains(&secret), "a listing must not show secrets");
    let id = text.lines().find(|l| l.contains("n8n")).unwrap().split_whitespace().next().unwrap().to_owned();
    let revoke = orch(dir.path(), store).args(["keys", "revoke", &id]).output().unwrap();
    assert!(revoke.status.success());
    let list = orch(dir.path(), store).args(["keys", "list"]).output().unwrap();
    assert!(String::from_utf8(list.stdout).unwrap().contains("(revoked)"));
    let bad = orch(dir.path(), store).args(["keys", "create", "--name", "x", "--scopes", "root"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("allowed: jobs:read, jobs:write, jobs:read_all, tools:call, metrics:read, admin")
    );
    let limited = ["keys", "create", "--name", "gh", "--scopes", "tools:call", "--servers", "github,a.b"];
    let bad = orch(dir.path(), store).args(limited).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--servers[1]: invalid server name `a.b`"));
}

/// Split deployment: one `orch api`, two `orch worker`s. The worker running a
/// job is killed with SIGKILL; the other one finishes the job, and the caller
/// sees exactly one outcome.
fn worker_killed_mid_job_is_replaced(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let redis = (backend == Backend::Redis).then(orch_testkit::RedisServer::start);
    let store = match &redis {
        Some(r) => r.url(),
        None => format!("sqlite://{}/orch.db", dir.path().display()),
    };
    let mut procs = Procs::default();
    let (base, key, _) = start_first(&mut procs, dir.path(), &store, "api");
    let mut worker_pids = Vec::new();
    for _ in 0..2 {
        let child = orch(dir.path(), &store)
            .arg("worker")
            .env("ORCH_LEASE", "1s")
            .env("ORCH_POLL_INTERVAL", "50ms")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        worker_pids.push(child.id());
        procs.0.push(child);
    }
    let (status, accepted) = http::call(
        reqwest::Method::POST,
        &format!("{base}/v1/jobs/batch"),
        &key,
        Some(
            json!({"plan": {"nodes": [{"id": "slow", "sleep": {"ms": 2500}}, {"id": "after", "echo": "done", "depends_on": ["slow"]}]}}),
        ),
    );
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let running = loop {
        let job = get(&base, &format!("/v1/jobs/{id}"), &key);
        if job["status"] == "running" {
            break job;
        }
        assert!(Instant::now() < deadline, "job never started: {job}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Worker ids are host-pid-suffix.
    let holder = running["worker"].as_str().unwrap();
    let pid: u32 = holder.rsplit('-').nth(1).unwrap().parse().unwrap();
    assert!(worker_pids.contains(&pid), "{holder} is not one of {worker_pids:?}");
    let killed = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(killed.success());

    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let job = get(&base, &format!("/v1/jobs/{id}"), &key);
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
            break job;
        }
        assert!(Instant::now() < deadline, "job not finished after its worker died: {job}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let result = get(&base, &format!("/v1/jobs/{id}/result"), &key);
    assert_eq!(result["result"]["output"]["after"], "done");

    // Exactly one outcome in the job's history.
    let events = {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        orch_mcp::tls::install_crypto_provider();
        rt.block_on(async {
            let resp = reqwest::Client::new()
                .get(format!("{base}/v1/jobs/{id}/events"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            resp.text().await.unwrap()
        })
    };
    let kinds: Vec<String> = support::parse_sse(&events).into_iter().map(|(_, k, _)| k).collect();
    assert_eq!(
        kinds.iter().filter(|k| ["succeeded", "failed", "cancelled"].contains(&k.as_str())).count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| *k == "running").count(), 2, "{kinds:?}");
}

#[test]
fn sqlite_worker_killed_mid_job_is_replaced() {
    worker_killed_mid_job_is_replaced(Backend::Sqlite);
}

#[test]
fn redis_worker_killed_mid_job_is_replaced() {
    worker_killed_mid_job_is_replaced(Backend::Redis);
}

#[test]
fn sigterm_lets_the_running_job_finish_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/orch.db", dir.path().display());
    let mut procs = Procs::default();
    let (base, key, pid) = start_first(&mut procs, dir.path(), &store, "serve");
    let (status, accepted) = http::call(
        reqwest::Method::POST,
        &format!("{base}/v1/jobs/batch"),
        &key,
        Some(json!({"plan": {"nodes": [{"id": "a", "sleep": {"ms": 1500}}]}})),
    );
    assert_eq!(status, 202);
    let id = accepted["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&base, &format!("/v1/jobs/{id}"), &key)["status"] != "running" {
        assert!(Instant::now() < deadline, "job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let child = procs.0.last_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "orch serve did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let job = rt.block_on(async {
        let store = orch_store::open(&orch_store::StoreUrl::parse(&store).unwrap(), &Default::default()).await.unwrap();
        store.get_job(id.parse().unwrap()).await.unwrap().unwrap()
    });
    assert_eq!(job.status, orch_store::JobStatus::Succeeded, "{job:?}");
}

/// `orch doctor` reports each part of the deployment and how to fix what fails.
#[test]
fn doctor_checks_store_providers_and_mcp_servers() {
    let dir = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fake = repo.join("providers/tests/fake-cli/fake");
    let toml = format!(
        "[providers.claude]\ncommand = '{}'\nenv = {{ FAKE_VERSION = '2.1.197 (Claude Code)', CLAUDE_CODE_OAUTH_TOKEN = 'sk-ant-oat01-doctor-secret' }}\n\
         [providers.gemini]\ncommand = '/nonexistent/gemini'\n",
        fake.display()
    );
    std::fs::write(dir.path().join("orch.toml"), toml).unwrap();
    let config = json!({"mcpServers": {
        "t": {"command": support::test_server()},
        "gone": {"command": "/nonexistent/server"},
    }});
    std::fs::write(dir.path().join("mcp-config.json"), config.to_string()).unwrap();

    let out = orch(dir.path(), "sqlite://orch.db").arg("doctor").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "problems must fail the command:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(has("[ok]  store sqlite://orch.db: reachable"), "{stdout}");
    assert!(
        has(&format!(
            "[ok]  provider claude (claude): 2.1.197 (Claude Code) at {}; credentials from CLAUDE_CODE_OAUTH_TOKEN",
            fake.display()
        )),
        "{stdout}"
    );
    // What the credential bills is said beside it (issue 16, "say what each subscription allows").
    assert!(lines.iter().any(|l| l.contains("CLAUDE_CODE_OAUTH_TOKEN (subscription)")), "{stdout}");
    assert!(stdout.contains("        billing: Claude Pro/Max/Team subscription: since 2026-06-15"), "{stdout}");
    assert!(has("[!!]  provider gemini (gemini): CLI not found; no credentials"), "{stdout}");
    assert!(stdout.contains("fix: \"/nonexistent/gemini\" not found: npm i -g @google/gemini-cli"), "{stdout}");
    assert!(has("[ok]  MCP server t (stdio): up, 7 tools"), "{stdout}");
    assert!(has("[!!]  MCP server gone (stdio): down: cannot start `/nonexistent/server`"), "{stdout}");
    assert!(stdout.ends_with("2 problems need fixing.\n"), "{stdout}");
    assert!(!stdout.contains("doctor-secret"), "a credential was printed:\n{stdout}");

    // Fixed: it says so and succeeds.
    // A Qwen OAuth login is flagged: its free tier ended on 2026-04-15.
    let qwen_home = dir.path().join("qwen-home");
    std::fs::create_dir_all(qwen_home.join(".qwen")).unwrap();
    std::fs::write(qwen_home.join(".qwen/oauth_creds.json"), r#"{"access_token": "q", "refresh_token": "r"}"#).unwrap();
    std::fs::write(
        dir.path().join("orch.toml"),
        format!(
            "[providers.claude]\ncommand = '{0}'\nenv = {{ CLAUDE_CODE_OAUTH_TOKEN = 'x' }}\n\
             [providers.qwen]\ncommand = '{0}'\nenv = {{ HOME = '{1}' }}\n",
            fake.display(),
            qwen_home.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("mcp-config.json"),
        json!({"mcpServers": {"t": {"command": support::test_server()}}}).to_string(),
    )
    .unwrap();
    let out = orch(dir.path(), "sqlite://orch.db").arg("doctor").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.ends_with("Everything Orch needs is in place.\n"), "{stdout}");
    assert!(stdout.contains("oauth_creds.json (subscription)"), "{stdout}");
    assert!(stdout.contains("note: provider qwen: Qwen OAuth login: the free OAuth tier ended 2026-04-15"), "{stdout}");
}

/// `orch` killed with SIGKILL runs none of its cleanup; the kernel still
/// ends its MCP children (PR_SET_PDEATHSIG), so none is left behind.
#[test]
fn mcp_children_die_with_orch_even_on_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    // The server ends on stdin EOF (as Orch's death closes it), but the shell
    // around it then lives on: only the kernel's signal ends the shell.
    let script = format!("{}; sleep 1000", support::test_server());
    let config = json!({"mcpServers": {"t": {"command": "sh", "args": ["-c", script], "pool": {"min": 2, "max": 2}}}});
    std::fs::write(dir.path().join("mcp-config.json"), config.to_string()).unwrap();
    let mut procs = Procs::default();
    let (_, _, pid) = start_first(&mut procs, dir.path(), "sqlite://orch.db", "serve");
    let children = |parent: u32| -> Vec<u32> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
            // After `(comm)`: state ppid ...
            let Some((_, rest)) = stat.rsplit_once(')') else { continue };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.len() > 1 && fields[1] == parent.to_string() && fields[0] != "Z" {
                out.push(child);
            }
        }
        out
    };
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let servers = loop {
        let found = children(pid);
        if found.len() == 2 {
            break found;
        }
        assert!(Instant::now() < deadline, "orch serve did not start 2 test servers: {found:?}");
        std::thread::sleep(Duration::from_millis(50));
    };

    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while servers.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "MCP children outlived a SIGKILLed orch: {servers:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The job's events as (kind, data), read over SSE.
fn job_events(base: &str, id: &str, key: &str) -> Vec<(String, Value)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    orch_mcp::tls::install_crypto_provider();
    let text = rt.block_on(async {
        let resp =
            reqwest::Client::new().get(format!("{base}/v1/jobs/{id}/events")).bearer_auth(key).send().await.unwrap();
        resp.text().await.unwrap()
    });
    support::parse_sse(&text).into_iter().map(|(_, k, d)| (k, d)).collect()
}

/// How many times node `node` started, as its events say.
fn starts(events: &[(String, Value)], node: &str) -> usize {
    events
        .iter()
        .filter(|(_, d)| {
            d.to_string().contains(&format!("\"node\":\"{node}\"")) && d.to_string().contains("\"status\":\"started\"")
        })
        .count()
}

fn wait_status(base: &str, id: &str, key: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        // The API answers 503 for a moment after the store comes back.
        let (status, job) = http::call(reqwest::Method::GET, &format!("{base}/v1/jobs/{id}"), key, None);
        if status == 200 && done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} not there after {timeout:?}: {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_worker(procs: &mut Procs, dir: &std::path::Path, store: &str, env: &[(&str, &str)]) -> u32 {
    let mut cmd = orch(dir, store);
    cmd.arg("worker").env("ORCH_POLL_INTERVAL", "50ms").stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    procs.0.push(child);
    pid
}

/// A node that finishes while the store is down (Redis stopped and started
/// again on the same port) keeps its checkpoint: when the worker is then
/// killed, the next attempt does not run that node again.
#[test]
fn node_events_of_a_store_outage_are_kept_so_a_retry_does_not_rerun_finished_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = orch_testkit::RedisServer::start();
    let store = redis.url();
    let mut procs = Procs::default();
    let (base, key, _) = start_first(&mut procs, dir.path(), &store, "api");
    let worker = spawn_worker(&mut procs, dir.path(), &store, &[("ORCH_LEASE", "6s")]);
    let plan = json!({"plan": {"nodes": [
        {"id": "a", "sleep": {"ms": 1500}},
        {"id": "b", "sleep": {"ms": 5000}, "depends_on": ["a"]},
    ]}});
    let (status, accepted) = http::call(reqwest::Method::POST, &format!("{base}/v1/jobs/batch"), &key, Some(plan));
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    wait_status(&base, &id, &key, Duration::from_secs(20), |j| j["status"] == "running");
    std::thread::sleep(Duration::from_millis(300));
    // `a` finishes during the outage.
    redis.stop();
    std::thread::sleep(Duration::from_millis(2500));
    redis.restart();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(Command::new("kill").args(["-KILL", &worker.to_string()]).status().unwrap().success());
    spawn_worker(&mut procs, dir.path(), &store, &[("ORCH_LEASE", "6s")]);
    let job = wait_status(&base, &id, &key, Duration::from_secs(40), |j| {
        ["succeeded", "failed", "cancelled"].contains(&j["status"].as_str().unwrap_or(""))
    });
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let events = job_events(&base, &id, &key);
    assert_eq!(starts(&events, "a"), 1, "node a ran again: {events:?}");
}

/// Rolling restart: a worker told to stop (SIGTERM) stops its job at
/// ORCH_SHUTDOWN_GRACE and exits at once, handing the job back without a
/// lease wait; the other worker runs it, never while the first still does.
#[test]
fn a_rolling_restart_stops_the_job_at_the_grace_and_never_runs_a_node_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let redis = orch_testkit::RedisServer::start();
    let store = redis.url();
    let mut procs = Procs::default();
    let (base, key, _) = start_first(&mut procs, dir.path(), &store, "api");
    let env = [("ORCH_LEASE", "20s"), ("ORCH_SHUTDOWN_GRACE", "1s")];
    let old = spawn_worker(&mut procs, dir.path(), &store, &env);
    let old_index = procs.0.len() - 1;
    let plan = json!({"plan": {"nodes": [{"id": "slow", "sleep": {"ms": 6000}}, {"id": "after", "echo": "done", "depends_on": ["slow"]}]}});
    let (status, accepted) = http::call(reqwest::Method::POST, &format!("{base}/v1/jobs/batch"), &key, Some(plan));
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    wait_status(&base, &id, &key, Duration::from_secs(20), |j| j["status"] == "running");
    spawn_worker(&mut procs, dir.path(), &store, &env);
    std::thread::sleep(Duration::from_millis(500));
    let term = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &old.to_string()]).status().unwrap().success());
    let exited = loop {
        if procs.0[old_index].try_wait().unwrap().is_some() {
            break term.elapsed();
        }
        assert!(term.elapsed() < Duration::from_secs(15), "the worker did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exited < Duration::from_millis(3500), "exited {exited:?} after SIGTERM with a 1 s grace");
    // Handed back at once: the other worker has it long before the 20 s lease.
    let job = wait_status(&base, &id, &key, Duration::from_secs(15), |j| j["status"] == "succeeded");
    assert_eq!(job["attempts"], 2, "{job}");
    let events = job_events(&base, &id, &key);
    let succeeded = events
        .iter()
        .filter(|(_, d)| {
            d.to_string().contains("\"node\":\"slow\"") && d.to_string().contains("\"status\":\"succeeded\"")
        })
        .count();
    assert_eq!(succeeded, 1, "{events:?}");
    drop(redis);
}
