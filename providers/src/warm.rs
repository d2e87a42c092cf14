//! Warm starts: CLIs started ahead of their turn, waiting on stdin for it.
//!
//! Most of a short turn is the CLI starting (Node loading its bundle, reading
//! settings). Claude Code and Qwen Code started with
//! `--input-format=stream-json` do all that and then wait for a user message
//! on stdin. A provider with `warm = N` keeps up to N of them ready per model,
//! each started exactly as a cold start of the same turn would be (same
//! program, arguments, environment, working directory, slot), except that
//! the prompt comes later, on stdin, as a JSON event: never as an argument.
//!
//! Each ready CLI serves one turn: it is taken out of the pool, given its
//! message, stdin is closed, and it exits after its answer. Ready CLIs hold a
//! concurrency slot (Claude's config dir `slot-N` with it), so the pool never
//! runs more CLIs than `limits.concurrency`; a cold turn that finds every
//! slot held by an idle warm CLI of another shape stops one. The pool is
//! refilled in the background after each turn, for the shape that turn had
//! (its model, system prompt, tools: the whole command line), replacing
//! ready CLIs of the same model with another shape. A ready CLI that died or
//! is older than [`MAX_AGE`], or whose executable changed since it started,
//! is not used: the turn starts cold and nobody notices. Dropping the pool
//! (a new configuration, the end of the process) kills every ready CLI.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, Semaphore};

use crate::process::{self, Started};
use crate::provider::Slot;

/// A ready CLI older than this is replaced (its start-up context, such as
/// the date Claude tells the model, would be old).
pub(crate) const MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// How often ready CLIs are checked for death and age.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// How to start one warm CLI. Two turns with equal recipes would run the
/// same command line: either may take a CLI started for the other.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Recipe {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Without the slot's own variable (`slot_env`), added at start.
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<&'static str>,
    pub workdir: PathBuf,
    /// Claude: `CLAUDE_CONFIG_DIR` = this dir's `slot-N` for the slot it holds.
    pub slot_dirs: Option<PathBuf>,
    pub model: Option<String>,
    /// The executable's modification time when the recipe was made: a CLI
    /// upgraded in place since is not used.
    pub program_mtime: Option<SystemTime>,
}

impl Recipe {
    fn slot_dir(&self, slot: u32) -> Option<PathBuf> {
        self.slot_dirs.as_ref().map(|d| d.join(format!("slot-{slot}")))
    }
}

struct Ready {
    recipe: Arc<Recipe>,
    /// Dropped before the slot: its group is killed before the slot is given back.
    process: Started,
    slot: Slot,
    born: Instant,
}

/// What a pool did, for `GET /v1/providers`-style reporting and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WarmStats {
    /// CLIs ready now.
    pub ready: u32,
    /// CLIs started ahead so far.
    pub started: u64,
    /// Turns served by a ready CLI.
    pub served: u64,
    /// Ready CLIs found dead, stale or replaced by another shape, and stopped.
    pub discarded: u64,
}

/// One provider's ready CLIs.
pub(crate) struct Pool {
    /// Ready CLIs per model (turn shapes of one model replace each other).
    size: u32,
    ready: Mutex<Vec<Ready>>,
    permits: Arc<Semaphore>,
    free_slots: Arc<Mutex<Vec<u32>>>,
    /// Fires when a ready CLI is added, so a cold turn waiting for a slot
    /// can stop it instead.
    pub(crate) changed: Notify,
    started: AtomicU64,
    served: AtomicU64,
    discarded: AtomicU64,
    provider: String,
}

impl Pool {
    pub(crate) fn new(
        provider: &str,
        size: u32,
        permits: Arc<Semaphore>,
        free_slots: Arc<Mutex<Vec<u32>>>,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            size,
            ready: Mutex::new(Vec::new()),
            permits,
            free_slots,
            changed: Notify::new(),
            started: AtomicU64::new(0),
            served: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            provider: provider.to_owned(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(keep(Arc::downgrade(&pool)));
        }
        pool
    }

    pub(crate) fn stats(&self) -> WarmStats {
        WarmStats {
            ready: self.lock().len() as u32,
            started: self.started.load(Ordering::Relaxed),
            served: self.served.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
        }
    }

    /// The process ids of the ready CLIs (for tests and benchmarks).
    pub(crate) fn pids(&self) -> Vec<i32> {
        self.lock().iter().map(|r| r.process.pid()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Ready>> {
        self.ready.lock().expect("warm pool lock")
    }

    /// Takes a ready CLI started for `recipe`, if one is alive and fresh;
    /// dead and stale ones met on the way are stopped.
    pub(crate) fn take(&self, recipe: &Recipe) -> Option<(Started, Slot)> {
        let mut discarded = Vec::new();
        let taken = {
            let mut ready = self.lock();
            loop {
                let Some(at) = ready.iter().position(|r| *r.recipe == *recipe) else { break None };
                let candidate = ready.remove(at);
                if usable(&candidate) {
                    break Some(candidate);
                }
                discarded.push(candidate);
            }
        };
        self.discarded.fetch_add(discarded.len() as u64, Ordering::Relaxed);
        drop(discarded);
        let ready = taken?;
        self.served.fetch_add(1, Ordering::Relaxed);
        Some((ready.process, ready.slot))
    }

    /// Stops one idle ready CLI (the oldest) to free its slot for a cold turn.
    pub(crate) fn evict_one(&self) -> bool {
        let victim = {
            let mut ready = self.lock();
            let oldest = ready.iter().enumerate().min_by_key(|(_, r)| r.born).map(|(i, _)| i);
            oldest.map(|i| ready.remove(i))
        };
        let evicted = victim.is_some();
        if evicted {
            self.discarded.fetch_add(1, Ordering::Relaxed);
        }
        evicted
    }

    /// Starts CLIs for `recipe` in the background until `size` are ready for
    /// it, as far as free slots allow; ready CLIs of the same model with
    /// another recipe are stopped first.
    pub(crate) fn fill(self: &Arc<Self>, recipe: Recipe) {
        let pool = Arc::downgrade(self);
        let recipe = Arc::new(recipe);
        tokio::spawn(async move {
            if let Some(pool) = pool.upgrade() {
                pool.fill_now(&recipe);
            }
        });
    }

    fn fill_now(&self, recipe: &Arc<Recipe>) {
        let replaced: Vec<Ready> = {
            let mut ready = self.lock();
            let (other, keep): (Vec<Ready>, Vec<Ready>) =
                ready.drain(..).partition(|r| r.recipe.model == recipe.model && *r.recipe != **recipe);
            *ready = keep;
            other
        };
        self.discarded.fetch_add(replaced.len() as u64, Ordering::Relaxed);
        drop(replaced);
        loop {
            let have = self.lock().iter().filter(|r| *r.recipe == **recipe).count() as u32;
            if have >= self.size {
                return;
            }
            // Never wait: a turn waiting for a slot comes first.
            let Ok(permit) = self.permits.clone().try_acquire_owned() else { return };
            let slot = Slot::new(permit, self.free_slots.clone());
            match start(recipe, &slot) {
                Ok(process) => {
                    self.started.fetch_add(1, Ordering::Relaxed);
                    self.lock().push(Ready { recipe: recipe.clone(), process, slot, born: Instant::now() });
                    self.changed.notify_waiters();
                }
                Err(err) => {
                    tracing::warn!(provider = %self.provider, error = %err, "starting a warm CLI failed");
                    return;
                }
            }
        }
    }

    /// Stops every ready CLI now.
    pub(crate) fn close(&self) {
        let all: Vec<Ready> = std::mem::take(&mut *self.lock());
        drop(all);
    }
}

/// Whether a ready CLI may serve a turn: alive, young enough, and its
/// executable unchanged since.
fn usable(ready: &Ready) -> bool {
    let program_mtime = std::fs::metadata(&ready.recipe.program).and_then(|m| m.modified()).ok();
    ready.process.alive() && ready.born.elapsed() < MAX_AGE && program_mtime == ready.recipe.program_mtime
}

fn start(recipe: &Recipe, slot: &Slot) -> Result<Started, String> {
    let slot_dir = recipe.slot_dir(slot.number());
    for dir in slot_dir.iter().chain([&recipe.workdir]) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut env = recipe.env.clone();
    if let Some(dir) = slot_dir {
        env.push(("CLAUDE_CONFIG_DIR".into(), dir.display().to_string()));
    }
    process::spawn(process::Command {
        program: &recipe.program,
        args: &recipe.args,
        env: &env,
        env_remove: &recipe.env_remove,
        cwd: Some(&recipe.workdir),
        // Piped and left open: the message is written when a turn takes it.
        stdin: Some(Vec::new()),
        pty: false,
        timeout: Duration::MAX,
        output_cap: 0,
    })
    .map_err(|e| match e {
        process::RunError::Spawn(e) => format!("cannot start {}: {e}", recipe.program.display()),
        _ => "cannot start the CLI".to_owned(),
    })
}

/// Replaces ready CLIs that died or grew stale, until the pool is dropped.
/// A dead one is not restarted here (a CLI that cannot stay up would be
/// restarted forever): the next turn of its shape starts cold and refills.
async fn keep(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let Some(pool) = pool.upgrade() else { return };
        let (dead, stale): (Vec<Ready>, Vec<Ready>) = {
            let mut ready = pool.lock();
            let (bad, good): (Vec<Ready>, Vec<Ready>) = ready.drain(..).partition(|r| !usable(r));
            *ready = good;
            bad.into_iter().partition(|r| !r.process.alive())
        };
        pool.discarded.fetch_add((dead.len() + stale.len()) as u64, Ordering::Relaxed);
        drop(dead);
        let recipes: Vec<Arc<Recipe>> = stale.iter().map(|r| r.recipe.clone()).collect();
        drop(stale);
        for recipe in recipes {
            // A CLI upgraded in place gets a recipe with the new time.
            let mut fresh = (*recipe).clone();
            fresh.program_mtime = std::fs::metadata(&fresh.program).and_then(|m| m.modified()).ok();
            pool.fill_now(&Arc::new(fresh));
        }
    }
}
