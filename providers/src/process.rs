//! Runs a CLI as the leader of its own process group, with an output cap, a
//! timeout and cancellation, and leaves no process behind.
//!
//! Everything the CLI starts stays in its group (pipe mode: `process_group(0)`;
//! pty mode: portable-pty's `setsid`), so killing the group reaches
//! grandchildren too. The group is killed while its leader is not yet reaped
//! (`waitid(WNOWAIT)` watches it), so the group id cannot have been reused by
//! then. It is killed also after a normal exit, so helpers a CLI left behind
//! do not outlive the turn.

use std::io::{self, Read};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The last bytes of stderr kept for error messages.
const STDERR_TAIL: usize = 64 * 1024;
const CHUNK: usize = 64 * 1024;

/// What to run and under which limits.
pub(crate) struct Command<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub env_remove: &'a [&'a str],
    pub cwd: Option<&'a Path>,
    /// Written to stdin, which is then closed; None = stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    pub pty: bool,
    pub timeout: Duration,
    pub output_cap: u64,
}

/// A finished CLI. In pty mode stderr is merged into stdout and ANSI is stripped.
#[derive(Debug)]
pub(crate) struct RawOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit: Exit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
}

#[derive(Debug)]
pub(crate) enum RunError {
    Spawn(io::Error),
    Timeout,
    Cancelled,
    OutputTooLarge,
}

/// Orch's own settings in its environment (`ORCH_*`: the store URL with its
/// password, provider credentials): a CLI gets none of them unless its
/// provider's `env` names one.
fn orch_settings() -> impl Iterator<Item = String> {
    std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).filter(|k| k.starts_with("ORCH_"))
}

/// Runs `cmd` to its end, calling `on_line` with each stdout line as it arrives.
pub(crate) async fn run(
    cmd: Command<'_>,
    cancel: &CancellationToken,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<RawOutput, RunError> {
    if cmd.pty { run_pty(cmd, cancel, on_line).await } else { run_piped(cmd, cancel, on_line).await }
}

async fn run_piped(
    cmd: Command<'_>,
    cancel: &CancellationToken,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<RawOutput, RunError> {
    let input = cmd.stdin.clone();
    let (timeout, cap) = (cmd.timeout, cmd.output_cap);
    let started = spawn(Command { stdin: input.as_ref().map(|_| Vec::new()), ..cmd })?;
    started.finish(input, timeout, cap, cancel, on_line).await
}

/// A CLI started in pipe mode whose stdin is still open: it may wait there
/// for its input (a warm start). Dropping it kills its group.
pub(crate) struct Started {
    /// Dropped first: the group is killed while its leader is still unreaped.
    group: GroupGuard,
    child: tokio::process::Child,
    pid: i32,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: mpsc::Receiver<Vec<u8>>,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
}

/// Starts `cmd` in pipe mode (stdin piped when `cmd.stdin` is Some, whatever
/// its bytes; they are not written here) and returns at once.
pub(crate) fn spawn(cmd: Command<'_>) -> Result<Started, RunError> {
    let mut command = tokio::process::Command::new(cmd.program);
    command.args(cmd.args);
    for key in orch_settings().chain(cmd.env_remove.iter().map(|k| k.to_string())) {
        command.env_remove(key);
    }
    command.envs(cmd.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = cmd.cwd {
        command.current_dir(dir);
    }
    command
        .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().map_err(RunError::Spawn)?;
    let pid = child.id().expect("a child not yet waited for has a pid") as i32;
    let group = GroupGuard { pgid: pid, armed: true, reap_on_drop: false };
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(forward(child.stdout.take().expect("stdout is piped"), tx));
    let stderr = tokio::spawn(read_tail(child.stderr.take().expect("stderr is piped")));
    Ok(Started { stdin: child.stdin.take(), group, child, pid, stdout: rx, stderr })
}

impl Started {
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the CLI still runs (it is not reaped here, so its group id stays ours).
    pub(crate) fn alive(&self) -> bool {
        // SAFETY: waitid writes into the zeroed siginfo we own; WNOWAIT leaves the child waitable.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is ours and lives across the call; `pid` is our unreaped child.
        let rc = unsafe {
            libc::waitid(libc::P_PID, self.pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
        };
        // SAFETY: si_pid is valid after a successful waitid; 0 means no child changed state.
        rc == 0 && unsafe { info.si_pid() } == 0
    }

    /// Writes `input` to stdin (which is then closed) and runs the CLI to its
    /// end, like [`run`].
    pub(crate) async fn finish(
        mut self,
        input: Option<Vec<u8>>,
        timeout: Duration,
        cap: u64,
        cancel: &CancellationToken,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<RawOutput, RunError> {
        if let (Some(input), Some(mut stdin)) = (input, self.stdin.take()) {
            // A CLI that never reads stdin must not block the turn: write aside.
            tokio::spawn(async move {
                let _ = stdin.write_all(&input).await;
            });
        }
        let Started { mut child, pid, mut group, stdout, stderr, .. } = self;
        let result = supervise(pid, stdout, timeout, cap, false, cancel, on_line).await;
        group.armed = false;
        let _ = child.wait().await;
        let (stdout, exit) = result.inspect_err(|_| stderr.abort())?;
        // Every writer is gone once the group is killed; the bound is for one that escaped it.
        let stderr = match tokio::time::timeout(Duration::from_secs(1), stderr).await {
            Ok(Ok(tail)) => tail,
            _ => Vec::new(),
        };
        Ok(RawOutput {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            exit,
        })
    }
}

async fn run_pty(
    cmd: Command<'_>,
    cancel: &CancellationToken,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<RawOutput, RunError> {
    use portable_pty::{CommandBuilder, PtySize, native_pty_system};
    // Wide, so CLIs do not wrap lines of JSON.
    let size = PtySize { rows: 50, cols: 512, pixel_width: 0, pixel_height: 0 };
    let pair = native_pty_system().openpty(size).map_err(pty_error)?;
    let mut builder = CommandBuilder::new(cmd.program);
    builder.args(cmd.args);
    for key in orch_settings().chain(cmd.env_remove.iter().map(|k| k.to_string())) {
        builder.env_remove(key);
    }
    for (key, value) in cmd.env {
        builder.env(key, value);
    }
    match cmd.cwd {
        Some(dir) => builder.cwd(dir),
        None => builder.cwd(std::env::current_dir().map_err(RunError::Spawn)?),
    }
    let child = pair.slave.spawn_command(builder).map_err(pty_error)?;
    // Our copy of the slave must go, or reading the master never ends.
    drop(pair.slave);
    let pid = child.process_id().expect("a spawned pty child has a pid") as i32;
    let mut group = GroupGuard { pgid: pid, armed: true, reap_on_drop: true };
    let reader = pair.master.try_clone_reader().map_err(pty_error)?;
    let (tx, rx) = mpsc::channel(8);
    std::thread::spawn(move || forward_blocking(reader, tx));

    let result = supervise(pid, rx, cmd.timeout, cmd.output_cap, true, cancel, on_line).await;
    group.armed = false;
    // The leader already exited (supervise saw it): this returns at once.
    let _ = tokio::task::spawn_blocking(move || reap(pid)).await;
    drop(child);
    drop(pair.master);
    let (stdout, exit) = result?;
    Ok(RawOutput {
        stdout: String::from_utf8_lossy(&strip_ansi_escapes::strip(&stdout)).into_owned(),
        stderr: String::new(),
        exit,
    })
}

/// portable-pty reports errors as `anyhow::Error`; only their text is kept.
fn pty_error(err: impl std::fmt::Display) -> RunError {
    RunError::Spawn(io::Error::other(err.to_string()))
}

/// Reads the output until the leader has exited and every writer is gone,
/// enforcing the cap, the timeout and cancellation. Kills the group on every path.
async fn supervise(
    pid: i32,
    mut chunks: mpsc::Receiver<Vec<u8>>,
    timeout: Duration,
    cap: u64,
    pty: bool,
    cancel: &CancellationToken,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<(Vec<u8>, Exit), RunError> {
    let mut exit_wait = tokio::task::spawn_blocking(move || wait_exit(pid));
    let mut exit: Option<Exit> = None;
    let mut out = Vec::new();
    let reading = async {
        let mut line_start = 0;
        let mut eof = false;
        while !(eof && exit.is_some()) {
            tokio::select! {
                chunk = chunks.recv(), if !eof => match chunk {
                    None => eof = true,
                    Some(chunk) => {
                        if (out.len() + chunk.len()) as u64 > cap {
                            return Err(RunError::OutputTooLarge);
                        }
                        out.extend_from_slice(&chunk);
                        while let Some(pos) = out[line_start..].iter().position(|&b| b == b'\n') {
                            emit_line(&out[line_start..line_start + pos], pty, on_line);
                            line_start += pos + 1;
                        }
                    }
                },
                status = &mut exit_wait, if exit.is_none() => {
                    exit = Some(status.unwrap_or(Exit::Code(-1)));
                    // Whatever the CLI left running dies with the turn.
                    kill_group(pid);
                }
            }
        }
        if line_start < out.len() {
            emit_line(&out[line_start..], pty, on_line);
        }
        Ok(())
    };
    let outcome = tokio::select! {
        result = reading => result,
        _ = tokio::time::sleep(timeout) => Err(RunError::Timeout),
        _ = cancel.cancelled() => Err(RunError::Cancelled),
    };
    match outcome {
        Ok(()) => Ok((out, exit.expect("reading ends only after the exit"))),
        Err(err) => {
            kill_group(pid);
            if exit.is_none() {
                let _ = exit_wait.await;
            }
            Err(err)
        }
    }
}

fn emit_line(line: &[u8], pty: bool, on_line: &mut (dyn FnMut(&str) + Send)) {
    if pty {
        on_line(&String::from_utf8_lossy(&strip_ansi_escapes::strip(line)));
    } else {
        on_line(String::from_utf8_lossy(line).trim_end_matches('\r'));
    }
}

async fn forward(mut from: impl AsyncRead + Unpin, to: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0; CHUNK];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if to.send(buf[..n].to_vec()).await.is_err() {
            break;
        }
    }
}

/// The pty master only has a blocking reader; it ends with EIO once the group is gone.
fn forward_blocking(mut from: Box<dyn Read + Send>, to: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0; CHUNK];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if to.blocking_send(buf[..n].to_vec()).is_err() {
            break;
        }
    }
}

async fn read_tail(mut from: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = vec![0; CHUNK];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 2 * STDERR_TAIL {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
    }
    if tail.len() > STDERR_TAIL {
        tail.drain(..tail.len() - STDERR_TAIL);
    }
    tail
}

/// Blocks until `pid` exits, without reaping it (so its group id stays ours).
fn wait_exit(pid: i32) -> Exit {
    loop {
        // SAFETY: waitid writes into the zeroed siginfo we own; WNOWAIT leaves the child waitable.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is ours and lives across the call; `pid` is our child.
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            // SAFETY: si_status is valid for the CLD_* codes waitid returns.
            let status = unsafe { info.si_status() };
            return if info.si_code == libc::CLD_EXITED { Exit::Code(status) } else { Exit::Signal(status) };
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // Only if someone else reaped it; the status is lost.
            return Exit::Code(-1);
        }
    }
}

fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: plain waitpid on our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } == -1
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
}

fn kill_group(pgid: i32) {
    // SAFETY: signals a process group we created; ESRCH (already gone) is fine.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// Kills the group when a turn's future is dropped mid-run (the worker cancels
/// jobs by dropping their future).
struct GroupGuard {
    pgid: i32,
    armed: bool,
    /// pty children are not reaped by tokio; reap them on a thread.
    reap_on_drop: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            kill_group(self.pgid);
            if self.reap_on_drop {
                let pid = self.pgid;
                std::thread::spawn(move || reap(pid));
            }
        }
    }
}
