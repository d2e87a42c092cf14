//! Test support: providers whose command is the fake CLI, and reading what it recorded.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use orch_providers::{Provider, ProviderConfig, TurnControl, TurnError, TurnOutput, TurnRequest};
use tempfile::TempDir;

pub fn fake_cli() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-cli/fake")
}

pub fn captures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cli-captures")
}

pub fn outputs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-cli/outputs")
}

/// A provider named `name` from `toml` (a `[providers.NAME]` body), running the
/// fake CLI with `env`, its data dir in a fresh temporary directory that also
/// receives the fake's recordings (`Fixture::records`).
pub struct Fixture {
    pub provider: Provider,
    pub dir: TempDir,
}

pub fn fixture(name: &str, toml: &str, env: &[(&str, &str)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config: ProviderConfig = toml::from_str(toml).unwrap();
    config.command.get_or_insert_with(fake_cli);
    let records = dir.path().join("records");
    std::fs::create_dir(&records).unwrap();
    let mut full_env = BTreeMap::from([
        ("FAKE_CAPTURES".to_owned(), captures().display().to_string()),
        ("FAKE_RECORD_DIR".to_owned(), records.display().to_string()),
        ("FAKE_PIDS".to_owned(), dir.path().join("pids").display().to_string()),
    ]);
    full_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    config.env.0.extend(full_env);
    let provider = Provider::new(name, config, &dir.path().join("data")).unwrap();
    Fixture { provider, dir }
}

impl Fixture {
    pub async fn run(&self, prompt: &str) -> Result<TurnOutput, TurnError> {
        self.run_request(&TurnRequest { prompt: prompt.into(), ..Default::default() }).await
    }

    pub async fn run_request(&self, request: &TurnRequest) -> Result<TurnOutput, TurnError> {
        self.provider.run(request, &TurnControl::default()).await
    }

    /// Pids of every CLI process this fixture started, in start order.
    pub fn pids(&self) -> Vec<i32> {
        logged_pids(&self.dir.path().join("pids"))
    }

    pub fn records_dir(&self) -> PathBuf {
        self.dir.path().join("records")
    }

    /// Every invocation the fake recorded in `record` mode.
    pub fn records(&self) -> Vec<Record> {
        let mut pids: Vec<String> = std::fs::read_dir(self.records_dir())
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok()?.strip_suffix(".argv").map(str::to_owned))
            .collect();
        pids.sort();
        pids.into_iter().map(|pid| Record::read(&self.records_dir(), &pid)).collect()
    }

    pub fn record(&self) -> Record {
        let mut records = self.records();
        assert_eq!(records.len(), 1, "expected one invocation");
        records.remove(0)
    }
}

/// What the fake CLI saw: its arguments, environment, stdin and working dir.
#[derive(Debug)]
pub struct Record {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub stdin: String,
    /// Where fd 0 pointed (`/dev/null` when Orch gave it no stdin).
    pub stdin_source: String,
    pub cwd: PathBuf,
}

impl Record {
    fn read(dir: &Path, pid: &str) -> Record {
        let file = |ext: &str| std::fs::read_to_string(dir.join(format!("{pid}.{ext}"))).unwrap();
        Record {
            argv: file("argv").split_terminator('\0').map(str::to_owned).collect(),
            env: file("env").lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect(),
            stdin: file("stdin"),
            stdin_source: file("fd0").trim().to_owned(),
            cwd: file("cwd").trim().into(),
        }
    }
}

/// Whether a process exists (a zombie still counts as gone: it no longer runs).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits up to 5 s for `pid` to be gone (init reaps orphans asynchronously).
pub async fn gone(pid: i32) -> bool {
    for _ in 0..100 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Processes whose process group is `pgid`, zombies excluded.
pub fn group_members(pgid: i32) -> Vec<i32> {
    processes().into_iter().filter(|p| p.pgrp == pgid && p.state != 'Z').map(|p| p.pid).collect()
}

/// The command lines of processes still in group `pgid` after up to 5 s
/// (SIGKILL is delivered asynchronously).
pub async fn group_survivors(pgid: i32) -> Vec<String> {
    let mut members = Vec::new();
    for _ in 0..100 {
        members = group_members(pgid);
        if members.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    members
        .into_iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " "))
        .collect()
}

#[derive(Debug)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub state: char,
}

/// Every process in /proc (fields of `/proc/PID/stat`).
pub fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
            let state = rest.next()?.chars().next()?;
            let ppid = rest.next()?.parse().ok()?;
            let pgrp = rest.next()?.parse().ok()?;
            Some(Proc { pid, ppid, pgrp, state })
        })
        .collect()
}

/// The pids the fake appended to its `FAKE_PIDS` file (each the leader of its group).
pub fn logged_pids(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file).unwrap_or_default().lines().map(|l| l.parse().unwrap()).collect()
}
