//! `orch bench`: benchmarks that print measured figures.

use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Queue drain rate per backend, HTTP submission rate and latency, peak memory.
    Queue,
}

pub async fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Queue => anyhow::bail!("not written yet"),
    }
}
