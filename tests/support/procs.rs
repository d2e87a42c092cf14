//! The real `orch` binary as child processes of a test.

use std::process::{Child, Command};

pub const ORCH: &str = env!("CARGO_BIN_EXE_orch");

/// Child processes killed when the test ends, however it ends.
#[derive(Default)]
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `orch` in `dir` on `store`, with nothing of the caller's environment but `PATH`.
pub fn orch(dir: &std::path::Path, store: &str) -> Command {
    let mut cmd = Command::new(ORCH);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ORCH_STORE", store)
        .env("ORCH_LOG", "warn");
    cmd
}
