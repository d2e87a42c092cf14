//! `orch bench clis`: the real chat CLIs, cold and warm, bare and through Orch.
//!
//! The pinned CLIs (`npm ci` in providers/tests/real-clis) talk to the fake
//! model API on loopback (`orch_testkit::model_api`), which answers at once,
//! so a turn's time is the CLI's own work plus Orch's. An `orch serve` child
//! has two providers per CLI: `NAME`, started cold for each turn through a
//! small bash wrapper that notes the command line and the CLI's own start
//! and end (`$EPOCHREALTIME`, no fork), and, for the CLIs that can start
//! ahead (Claude, Qwen Code), `NAMEwarm` with `warm = 1`. Per CLI, one turn
//! at a time (each way's first turn is not counted):
//! - bare: the command line Orch ran, replayed directly (same arguments,
//!   environment, working directory and stdin), until the CLI exits;
//! - cold through Orch: `POST /v1/chat/completions` until the answer;
//! - Orch's overhead: each cold turn's time minus the CLI's own time inside it
//!   (paired per turn, so the CLI's variance drops out; it includes the
//!   wrapper's bash start, timed alone for reference);
//! - warm through Orch: the same request to `NAMEwarm`, each sent once the
//!   pool has had time to refill (the slowest bare start plus a second);
//! - memory: RSS of a ready warm CLI's whole process group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use orch_testkit::model_api::{ModelApi, REPLY};
use serde_json::{Value, json};

use crate::bench::{ServeChild, proc_status_kib};

#[derive(Debug, Args)]
pub struct ClisArgs {
    /// Counted turns per CLI and way of running it.
    #[arg(long, default_value_t = 5)]
    pub turns: usize,
    /// The CLIs to run (claude, codex, gemini, qwen).
    #[arg(long, value_delimiter = ',', default_value = "claude,codex,gemini,qwen")]
    pub clis: Vec<String>,
    /// Where the pinned CLIs' executables are (`npm ci` in providers/tests/real-clis).
    #[arg(long, default_value = "providers/tests/real-clis/node_modules/.bin")]
    pub bin: PathBuf,
}

const KNOWN: [&str; 4] = ["claude", "codex", "gemini", "qwen"];
/// The CLIs that can start before their prompt (see the providers' `warm`).
const WARMABLE: [&str; 2] = ["claude", "qwen"];

pub async fn clis(args: ClisArgs) -> Result<()> {
    ensure!(args.turns > 0, "--turns must be at least 1");
    for cli in &args.clis {
        ensure!(KNOWN.contains(&cli.as_str()), "--clis: {cli:?} is not one of {}", KNOWN.join(", "));
        let exe = args.bin.join(cli);
        ensure!(
            exe.exists(),
            "{} is missing: run `npm ci` in providers/tests/real-clis (or give --bin)",
            exe.display()
        );
    }
    let bin = std::fs::canonicalize(&args.bin).context("--bin")?;
    let api = ModelApi::start().await;
    let dir = tempfile::Builder::new().prefix("orch-bench-clis-").tempdir().context("temp dir")?;
    let root = dir.path();
    let mut vars = Vec::new();
    for cli in &args.clis {
        vars.extend(provider_vars(root, &bin, cli, &api.url)?);
    }
    let mut serve = ServeChild::start(root, |command| {
        command.envs(vars.iter().map(|(k, v)| (k, v)));
    })
    .await?;
    let wrapper_start = wrapper_baseline(root, 50).await?;
    println!(
        "== real CLIs against a fake model API on loopback (answers at once); one turn at a time, {} counted per way ==",
        args.turns
    );
    println!("timing wrapper alone (bash start, counted in Orch's overhead below): p50 {}", ms(wrapper_start));
    let mut result = Ok(());
    for cli in &args.clis {
        if let Err(err) = measure(&serve, root, &bin, cli, args.turns).await {
            result = Err(err.context(cli.clone()));
            break;
        }
    }
    serve.stop().await;
    result
}

/// Per turn in ms: p50 and the spread.
fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort_unstable();
    if samples.is_empty() {
        return "-".into();
    }
    format!("p50 {}  (min {}, max {})", ms(median(&samples)), ms(samples[0]), ms(*samples.last().unwrap()))
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() - 1) / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

async fn measure(serve: &ServeChild, root: &Path, bin: &Path, cli: &str, turns: usize) -> Result<()> {
    println!("-- {cli}");
    // Cold through Orch (plus one first turn, not counted).
    turn(serve, cli).await?;
    let already = wrapper_times(root, cli)?.len();
    let mut cold = Vec::new();
    for _ in 0..turns {
        cold.push(turn(serve, cli).await?);
    }
    let inside = wrapper_times(root, cli)?;
    ensure!(inside.len() == already + turns, "the wrapper noted {} starts, not {}", inside.len(), already + turns);
    let overhead: Vec<Duration> =
        cold.iter().zip(&inside[already..]).map(|(total, cli_time)| total.saturating_sub(*cli_time)).collect();

    // The same command line, bare.
    let recorded = Recorded::read(&root.join(format!("last-{cli}")), bin.join(cli))?;
    recorded.run().await?;
    let mut bare = Vec::new();
    for _ in 0..turns {
        bare.push(recorded.run().await?);
    }
    println!("bare CLI (Orch's command line, replayed)      {}", summary(bare.clone()));
    println!("cold through Orch (POST /v1/chat/completions) {}", summary(cold.clone()));
    println!("Orch's overhead (cold turn - CLI's own time)  {}", summary(overhead));

    if !WARMABLE.contains(&cli) {
        println!("warm: not available ({cli} cannot start before its prompt)");
        return Ok(());
    }
    let model = format!("{cli}warm");
    let refill = *bare.iter().max().expect("turns > 0") + Duration::from_secs(1);
    turn(serve, &model).await?;
    let mut warm = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..turns {
        tokio::time::sleep(refill).await;
        let ready = warm_clis(serve.pid)?;
        ensure!(ready.len() == 1, "{} warm {cli} CLIs ready, not 1", ready.len());
        rss.push(group_rss_kib(ready[0]));
        warm.push(turn(serve, &model).await?);
    }
    println!("warm through Orch (warm = 1)                  {}", summary(warm.clone()));
    let (mut warm_sorted, mut cold_sorted) = (warm, cold);
    warm_sorted.sort_unstable();
    cold_sorted.sort_unstable();
    println!(
        "warm / cold (p50)                             {:.2}",
        median(&warm_sorted).as_secs_f64() / median(&cold_sorted).as_secs_f64()
    );
    rss.sort_unstable();
    println!(
        "memory held per ready warm CLI (RSS of its process group)  p50 {:.0} MiB (min {:.0}, max {:.0})",
        rss[(rss.len() - 1) / 2] as f64 / 1024.0,
        rss[0] as f64 / 1024.0,
        rss[rss.len() - 1] as f64 / 1024.0
    );
    Ok(())
}

/// One completion on `model`; its time. Fails unless the fake's answer comes back.
async fn turn(serve: &ServeChild, model: &str) -> Result<Duration> {
    let started = Instant::now();
    let response = serve
        .client
        .post(format!("{}/v1/chat/completions", serve.url))
        .bearer_auth(&serve.key)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "say hi"}]}))
        .send()
        .await
        .context("POST /v1/chat/completions")?;
    let status = response.status();
    let body: Value = response.json().await.context("completion body")?;
    let took = started.elapsed();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    ensure!(status.is_success() && text == REPLY, "a {model} turn failed: {status} {body}");
    Ok(took)
}

/// `ORCH_PROVIDER_*` variables for `cli` (and `CLIwarm`), its homes under `root`.
fn provider_vars(root: &Path, bin: &Path, cli: &str, url: &str) -> Result<Vec<(String, String)>> {
    let home = root.join(format!("home-{cli}"));
    std::fs::create_dir_all(&home)?;
    let mut env: Vec<(&str, String)> = vec![("HOME", home.display().to_string())];
    match cli {
        "claude" => env.extend([
            ("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-fake-token".into()),
            ("ANTHROPIC_BASE_URL", url.into()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        ]),
        "gemini" => {
            std::fs::create_dir_all(home.join(".gemini"))?;
            std::fs::write(
                home.join(".gemini/settings.json"),
                json!({"privacy": {"usageStatisticsEnabled": false}}).to_string(),
            )?;
            env.extend([("GEMINI_API_KEY", "fake-gemini-key".into()), ("GOOGLE_GEMINI_BASE_URL", url.into())]);
        }
        "codex" => {
            let codex_home = root.join("codex-home");
            std::fs::create_dir_all(&codex_home)?;
            std::fs::write(
                codex_home.join("config.toml"),
                format!(
                    "check_for_update_on_startup = false\nmodel = \"fake-model\"\nmodel_provider = \"fake\"\n\
                     [model_providers.fake]\nname = \"fake\"\nbase_url = \"{url}/v1\"\nenv_key = \"OPENAI_API_KEY\"\n\
                     wire_api = \"responses\"\n[analytics]\nenabled = false\n[features]\nplugins = false\n"
                ),
            )?;
            env.extend([
                ("CODEX_HOME", codex_home.display().to_string()),
                ("OPENAI_API_KEY", "fake-openai-key".into()),
            ]);
        }
        "qwen" => {
            std::fs::create_dir_all(home.join(".qwen"))?;
            std::fs::write(
                home.join(".qwen/settings.json"),
                json!({"privacy": {"usageStatisticsEnabled": false}}).to_string(),
            )?;
            env.extend([
                ("OPENAI_API_KEY", "fake-qwen-key".into()),
                ("OPENAI_BASE_URL", format!("{url}/v1")),
                ("OPENAI_MODEL", "fake-model".into()),
            ]);
        }
        other => bail!("unknown CLI {other}"),
    }
    let wrapper = root.join(format!("timed-{cli}"));
    // Notes the command line (arguments, environment, working directory,
    // stdin) and the CLI's own time, then answers with the CLI's output and status.
    let script = format!(
        "#!/bin/bash\nlast='{last}'\nmkdir -p \"$last\"\nprintf '%s\\0' \"$@\" > \"$last/args\"\n\
         env -0 > \"$last/env\"\npwd > \"$last/cwd\"\ncat > \"$last/stdin\"\n\
         start=$EPOCHREALTIME\n'{exe}' \"$@\" < \"$last/stdin\"\nrc=$?\n\
         echo \"$start $EPOCHREALTIME\" >> '{times}'\nexit $rc\n",
        last = root.join(format!("last-{cli}")).display(),
        exe = bin.join(cli).display(),
        times = root.join(format!("times-{cli}")).display(),
    );
    std::fs::write(&wrapper, script)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;

    let upper = |name: &str| name.to_uppercase().replace('-', "_");
    let mut vars = Vec::new();
    let mut provider = |name: &str, command: String, warm: bool| {
        let p = format!("ORCH_PROVIDER_{}", upper(name));
        vars.push((format!("{p}_KIND"), cli.to_owned()));
        vars.push((format!("{p}_COMMAND"), command));
        if warm {
            vars.push((format!("{p}_WARM"), "1".to_owned()));
        }
        for (k, v) in &env {
            vars.push((format!("{p}_ENV_{k}"), v.clone()));
        }
    };
    provider(cli, wrapper.display().to_string(), false);
    if WARMABLE.contains(&cli) {
        provider(&format!("{cli}warm"), bin.join(cli).display().to_string(), true);
    }
    Ok(vars)
}

/// The CLI's own time of each turn the wrapper ran, in order.
fn wrapper_times(root: &Path, cli: &str) -> Result<Vec<Duration>> {
    let text = std::fs::read_to_string(root.join(format!("times-{cli}"))).unwrap_or_default();
    text.lines()
        .map(|line| {
            let (start, end) = line.split_once(' ').context("a wrapper time line")?;
            let (start, end): (f64, f64) = (start.parse()?, end.parse()?);
            Ok(Duration::from_secs_f64((end - start).max(0.0)))
        })
        .collect()
}

/// How long the wrapper's bash takes to start and note a time, alone.
async fn wrapper_baseline(root: &Path, n: usize) -> Result<Duration> {
    let script = root.join("bash-start");
    std::fs::write(&script, "#!/bin/bash\nx=$EPOCHREALTIME\n")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let status = tokio::process::Command::new(&script).stdin(Stdio::null()).status().await?;
        ensure!(status.success(), "bash failed");
        times.push(started.elapsed());
    }
    times.sort_unstable();
    Ok(median(&times))
}

/// A command line the wrapper noted.
struct Recorded {
    program: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: PathBuf,
    stdin: Vec<u8>,
}

impl Recorded {
    fn read(dir: &Path, program: PathBuf) -> Result<Recorded> {
        let nul_separated = |name: &str| -> Result<Vec<String>> {
            let bytes = std::fs::read(dir.join(name)).with_context(|| format!("{}/{name}", dir.display()))?;
            Ok(bytes.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into()).collect())
        };
        let env = nul_separated("env")?
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        Ok(Recorded {
            program,
            args: nul_separated("args")?,
            env,
            cwd: std::fs::read_to_string(dir.join("cwd"))?.trim_end().into(),
            stdin: std::fs::read(dir.join("stdin"))?,
        })
    }

    /// Runs the command line once, to the CLI's exit; its time. Fails unless it answered.
    async fn run(&self) -> Result<Duration> {
        use tokio::io::AsyncWriteExt;
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .env_clear()
            .envs(&self.env)
            .current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let input = self.stdin.clone();
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
        let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .context("the bare CLI did not end within 120 s")??;
        let took = started.elapsed();
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            stdout.contains(REPLY),
            "the bare CLI did not answer: {}",
            stdout.chars().take(500).collect::<String>()
        );
        Ok(took)
    }
}

/// The ready warm CLIs of `orch serve` (its children waiting with stream-json input).
fn warm_clis(serve: u32) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() < 2 || fields[0] == "Z" || fields[1] != serve.to_string() {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|a| a == b"--input-format=stream-json") {
            out.push(pid);
        }
    }
    Ok(out)
}

/// RSS of every process in group `pgid`, in KiB.
fn group_rss_kib(pgid: u32) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() {
            total += proc_status_kib(pid, "VmRSS").unwrap_or(0);
        }
    }
    total
}
