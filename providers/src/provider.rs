//! A configured provider at run time: its slots (concurrency limit, Claude's
//! config dir per slot), cooldown after a usage limit, and running one turn.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::adapters::{self, Setup};
use crate::config::{ConfigError, ProviderConfig, ProviderKind, ProvidersConfig};
use crate::error::{ErrorKind, TurnError};
use crate::process::{self, RunError};
use crate::turn::{ProgressEvent, TurnControl, TurnOutput, TurnRequest};

/// A limit on turns across all workers (Redis, later). The per-worker
/// semaphore is always applied first; this is asked for a permit after it.
#[async_trait]
pub trait SharedLimit: Send + Sync {
    /// Waits for a permit for one turn on `provider`, which allows `limit` at once.
    /// The permit is released when dropped; a holder that dies without
    /// releasing it loses it after `max_hold` (the turn's timeout plus a margin).
    async fn acquire(&self, provider: &str, limit: u32, max_hold: Duration) -> Result<SharedPermit, TurnError>;
}

/// Holds a shared-limit permit until dropped.
pub struct SharedPermit(pub Box<dyn Send + Sync>);

/// The default: no limit beyond each worker's own.
pub struct NoSharedLimit;

#[async_trait]
impl SharedLimit for NoSharedLimit {
    async fn acquire(&self, _provider: &str, _limit: u32, _max_hold: Duration) -> Result<SharedPermit, TurnError> {
        Ok(SharedPermit(Box::new(())))
    }
}

/// Provider state shared by every process on one store: a cooldown or an
/// authentication failure one worker met is known to the others.
#[async_trait]
pub trait SharedState: Send + Sync {
    /// What other processes recorded about `provider`.
    async fn load(&self, provider: &Provider) -> Result<SharedSnapshot, String>;

    /// Records how a turn on `provider` ended: `error` None means it succeeded
    /// (only recorded while an authentication failure is open);
    /// `cooldown_until` is set after a usage limit.
    async fn record(&self, provider: &Provider, cooldown_until: Option<DateTime<Utc>>, error: Option<&TurnError>);
}

/// A provider's shared state, as a turn needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedSnapshot {
    pub cooldown_until: Option<DateTime<Utc>>,
    /// The failure that started the cooldown (a usage limit or an outage).
    pub cooldown_cause: Option<TurnError>,
    /// Some turn was refused for the credential and none succeeded since.
    pub auth_failing: bool,
    /// The latest refusal of the open authentication incident.
    pub auth_failure_at: Option<DateTime<Utc>>,
    /// The open incident's error, as recorded.
    pub auth_error: Option<TurnError>,
    /// A failed turn is recorded that no success has cleared since.
    pub has_error: bool,
    /// The last recorded outcome worth showing: a failure (Some) or, when a
    /// success cleared it, None; with its time.
    pub last_error: Option<TurnError>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// All configured providers, built from a validated configuration.
pub struct Providers {
    providers: BTreeMap<String, Arc<Provider>>,
}

impl Providers {
    /// Validates `config` and builds each provider; per-provider state lives
    /// under `data_dir/NAME/` (Claude's slot config dirs, the CLIs' working dir).
    pub fn new(config: &ProvidersConfig, data_dir: &Path) -> Result<Providers, ConfigError> {
        Providers::with_shared_limit(config, data_dir, Arc::new(NoSharedLimit))
    }

    /// Like [`Providers::new`], with a limit shared by all workers (Redis) on top
    /// of each worker's own.
    pub fn with_shared_limit(
        config: &ProvidersConfig,
        data_dir: &Path,
        shared: Arc<dyn SharedLimit>,
    ) -> Result<Providers, ConfigError> {
        config.validate()?;
        let providers = config
            .0
            .iter()
            .map(|(name, c)| {
                let mut provider = Provider::build(name, c.clone(), data_dir);
                provider.shared = shared.clone();
                (name.clone(), Arc::new(provider))
            })
            .collect();
        Ok(Providers { providers })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.values()
    }

    /// Shares every provider's state through `state` from now on (set once;
    /// later calls are ignored).
    pub fn share_state(&self, state: Arc<dyn SharedState>) {
        for provider in self.iter() {
            let _ = provider.shared_state.set(state.clone());
        }
    }

    /// Stops every provider's ready warm CLIs (at shutdown).
    pub fn shutdown(&self) {
        for provider in self.iter() {
            provider.shutdown();
        }
    }

    /// Things to say at start-up, e.g. an `ANTHROPIC_API_KEY` Orch will not pass on.
    pub fn warnings(&self) -> Vec<String> {
        self.iter().flat_map(|p| p.warnings()).collect()
    }
}

/// One provider: configuration plus its run-time state.
pub struct Provider {
    name: String,
    kind: ProviderKind,
    config: ProviderConfig,
    dir: PathBuf,
    permits: Arc<Semaphore>,
    free_slots: Arc<Mutex<Vec<u32>>>,
    /// Ready CLIs started ahead (`warm > 0`).
    warm: Option<Arc<crate::warm::Pool>>,
    shared: Arc<dyn SharedLimit>,
    shared_state: std::sync::OnceLock<Arc<dyn SharedState>>,
    state: Mutex<State>,
    /// When this configuration was loaded: an auth incident recorded before
    /// it may be fixed by it, so it does not make turns skip the provider.
    loaded_at: DateTime<Utc>,
}

#[derive(Default)]
struct State {
    cooldown_until: Option<DateTime<Utc>>,
    /// The failure that started the cooldown (a usage limit or an outage).
    cooldown_cause: Option<TurnError>,
    last_error: Option<TurnError>,
    last_error_at: Option<DateTime<Utc>>,
    /// The open authentication incident: its latest refusal and error.
    auth_incident: Option<(DateTime<Utc>, TurnError)>,
    /// The shared state shows a failure a success here should clear.
    shared_trouble: bool,
}

/// What `GET /v1/providers` shows about one provider.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProviderStatus {
    pub name: String,
    pub kind: ProviderKind,
    pub in_use: u32,
    pub limit: u32,
    pub cooldown_until: Option<DateTime<Utc>>,
    /// Why it cools down (a usage limit or an outage of the model API).
    pub cooldown_cause: Option<TurnError>,
    /// The last failed turn, unless a turn succeeded since.
    pub last_error: Option<TurnError>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// The open authentication incident (a turn refused for the credential,
    /// none succeeded since): when it was last refused, and why.
    pub auth_failure: Option<(DateTime<Utc>, TurnError)>,
    /// While an auth incident is open, turns skip the provider until then
    /// (a probe turn is let through at that time).
    pub auth_probe_at: Option<DateTime<Utc>>,
}

impl Provider {
    /// Builds one provider from a validated configuration.
    pub fn new(name: &str, config: ProviderConfig, data_dir: &Path) -> Result<Provider, ConfigError> {
        config.validate(name)?;
        Ok(Provider::build(name, config, data_dir))
    }

    fn build(name: &str, config: ProviderConfig, data_dir: &Path) -> Provider {
        let limit = config.limits.concurrency;
        let permits = Arc::new(Semaphore::new(limit as usize));
        // Popped from the end: slot 1 is used first.
        let free_slots = Arc::new(Mutex::new((1..=limit).rev().collect()));
        let warm =
            (config.warm > 0).then(|| crate::warm::Pool::new(name, config.warm, permits.clone(), free_slots.clone()));
        Provider {
            name: name.to_owned(),
            kind: config.resolved_kind(name).expect("validated: the kind is known"),
            dir: data_dir.join(name),
            permits,
            free_slots,
            warm,
            shared: Arc::new(NoSharedLimit),
            shared_state: std::sync::OnceLock::new(),
            state: Mutex::new(State::default()),
            loaded_at: Utc::now(),
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    pub fn status(&self) -> ProviderStatus {
        let limit = self.config.limits.concurrency;
        let state = self.state.lock().expect("provider state lock");
        let now = Utc::now();
        let cooling = state.cooldown_until.filter(|t| *t > now);
        ProviderStatus {
            name: self.name.clone(),
            kind: self.kind,
            // Slots held by ready warm CLIs are not turns.
            in_use: limit
                .saturating_sub(self.permits.available_permits() as u32)
                .saturating_sub(self.warm.as_ref().map_or(0, |pool| pool.stats().ready)),
            limit,
            cooldown_until: cooling,
            cooldown_cause: cooling.and(state.cooldown_cause.clone()),
            last_error: state.last_error.clone(),
            last_error_at: state.last_error_at,
            auth_failure: state.auth_incident.clone(),
            auth_probe_at: state.auth_incident.as_ref().and_then(|(at, _)| self.probe_at(*at)),
        }
    }

    /// When a turn may probe a credential last refused at `at`; None when
    /// the refusal predates this configuration (the next turn probes).
    pub fn probe_at(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        (at >= self.loaded_at).then(|| at + Duration::from_secs(self.config.limits.auth_probe_secs))
    }

    /// How to replace a credential the provider refused or that expires:
    /// the API key its env carries when it runs on one (Codex and Qwen Code
    /// use `OPENAI_API_KEY` before any login, Gemini `GEMINI_API_KEY`), else
    /// the kind's login.
    pub fn renew_hint(&self) -> String {
        let set = |k: &str| {
            self.config.env.0.get(k).cloned().or_else(|| std::env::var(k).ok()).is_some_and(|v| !v.is_empty())
        };
        let keys: &[&str] = match self.kind {
            ProviderKind::Codex => &["CODEX_API_KEY", "OPENAI_API_KEY"],
            ProviderKind::Qwen => &["OPENAI_API_KEY", "DASHSCOPE_API_KEY"],
            ProviderKind::Gemini => &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
            _ => &[],
        };
        match keys.iter().find(|k| set(k)) {
            Some(key) => format!("replace {key} in the provider's env with a valid key (it was refused)"),
            None => self.kind.renew_hint().to_owned(),
        }
    }

    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.kind == ProviderKind::Claude {
            let configured = self.config.env.0.contains_key("ANTHROPIC_API_KEY");
            if configured || std::env::var_os("ANTHROPIC_API_KEY").is_some() {
                warnings.push(format!(
                    "ANTHROPIC_API_KEY is set{}; provider {} removes it from the CLI's environment, because it \
                     would bill the API key instead of the subscription (CLAUDE_CODE_OAUTH_TOKEN)",
                    if configured { " in its env" } else { "" },
                    self.name
                ));
            }
        }
        warnings
    }

    /// The command to run: configured, or the kind's default looked up on PATH.
    pub fn command(&self) -> PathBuf {
        self.config
            .command
            .clone()
            .unwrap_or_else(|| PathBuf::from(self.kind.default_command().expect("validated: cli has a command")))
    }

    /// Where the command resolves, using the PATH the CLI would get.
    pub fn resolve_command(&self) -> Option<PathBuf> {
        let path = self.config.env.0.get("PATH").map(OsString::from).or_else(|| std::env::var_os("PATH"));
        resolve_program(&self.command(), path.as_deref())
    }

    pub(crate) fn not_installed(&self) -> TurnError {
        let hint = self.kind.install_hint().to_owned();
        TurnError::new(
            ErrorKind::NotInstalled { hint: hint.clone() },
            format!("{}: command {:?} not found; {hint}", self.name, self.command()),
        )
    }

    /// Whether a turn may start now: refuses at once (without starting the
    /// CLI) while the provider cools down after a usage limit or an outage,
    /// and while an authentication incident is open and no probe is due.
    /// State recorded by other processes (shared state) counts too.
    pub async fn available(&self) -> Result<(), TurnError> {
        // The store being away must not stop chat: this process's own state still applies.
        self.refresh().await;
        self.refusal().map_or(Ok(()), Err)
    }

    /// Reads what other processes recorded (shared state) into this
    /// provider's state, so [`Provider::status`] tells the whole story.
    pub async fn refresh(&self) {
        if let Some(shared) = self.shared_state.get() {
            match shared.load(self).await {
                Ok(snapshot) => self.merge(snapshot),
                Err(err) => tracing::warn!(provider = %self.name, error = %err, "reading shared provider state failed"),
            }
        }
    }

    fn merge(&self, snapshot: SharedSnapshot) {
        let mut state = self.state.lock().expect("provider state lock");
        state.shared_trouble = snapshot.has_error || snapshot.auth_failing;
        if let Some(at) = snapshot.last_error_at
            && state.last_error_at.is_none_or(|mine| mine < at)
        {
            state.last_error_at = snapshot.last_error.is_some().then_some(at);
            state.last_error = snapshot.last_error;
        }
        if let Some(until) = snapshot.cooldown_until
            && state.cooldown_until.is_none_or(|t| t < until)
        {
            state.cooldown_until = Some(until);
            state.cooldown_cause = snapshot.cooldown_cause.or(state.cooldown_cause.take());
        }
        match (snapshot.auth_failing, snapshot.auth_failure_at) {
            (true, Some(at)) if state.auth_incident.as_ref().is_none_or(|(mine, _)| *mine < at) => {
                let error =
                    snapshot.auth_error.or_else(|| state.auth_incident.take().map(|(_, e)| e)).unwrap_or_else(|| {
                        TurnError::new(ErrorKind::Auth { expired: false }, "the credential was refused")
                    });
                state.auth_incident = Some((at, error));
            }
            // Another process saw a turn succeed.
            (false, _) => state.auth_incident = None,
            _ => {}
        }
    }

    /// Why a turn must not start now, if it must not.
    fn refusal(&self) -> Option<TurnError> {
        let state = self.state.lock().expect("provider state lock");
        let now = Utc::now();
        let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if let Some(until) = state.cooldown_until.filter(|t| *t > now) {
            return Some(match state.cooldown_cause.as_ref().map(|e| &e.kind) {
                Some(ErrorKind::Upstream { status }) => TurnError::new(
                    ErrorKind::Upstream { status: *status },
                    format!(
                        "{}: skipped: its model API failed{} and it cools down until {}",
                        self.name,
                        status.map(|s| format!(" (status {s})")).unwrap_or_default(),
                        stamp(until)
                    ),
                ),
                _ => TurnError::new(
                    ErrorKind::UsageLimit { resets_at: Some(until) },
                    format!("{}: cooling down after a usage limit until {}", self.name, until.to_rfc3339()),
                ),
            });
        }
        let (at, error) = state.auth_incident.as_ref()?;
        let probe = self.probe_at(*at).filter(|p| *p > now)?;
        let expired = matches!(error.kind, ErrorKind::Auth { expired: true });
        Some(TurnError::new(
            ErrorKind::Auth { expired },
            format!(
                "{}: skipped: its credential was refused at {} ({}); the next probe is at {}, or sooner after a \
                 configuration change and restart; {}",
                self.name,
                stamp(*at),
                error.message,
                stamp(probe),
                self.renew_hint()
            ),
        ))
    }

    /// Runs one turn: checks [`Provider::available`], then [`Provider::attempt`].
    pub async fn run(&self, request: &TurnRequest, control: &TurnControl) -> Result<TurnOutput, TurnError> {
        self.available().await?;
        self.attempt(request, control).await
    }

    /// Runs one turn without checking availability first: waits for a slot,
    /// runs the CLI under the provider's limits, reads its answer, and records
    /// the outcome (cooldown after a usage limit or an outage, the auth
    /// incident) here and in the shared state.
    pub async fn attempt(&self, request: &TurnRequest, control: &TurnControl) -> Result<TurnOutput, TurnError> {
        let span = tracing::info_span!("turn", provider = %self.name);
        let started = std::time::Instant::now();
        let result = tracing::Instrument::instrument(self.run_inner(request, control), span.clone()).await;
        span.in_scope(|| self.observe(&result, started.elapsed()));
        let now = Utc::now();
        let mut cooldown = None;
        let mut clear = false;
        {
            let mut state = self.state.lock().expect("provider state lock");
            match &result {
                Err(err) if !matches!(err.kind, ErrorKind::Cancelled) => {
                    let pause = match err.kind {
                        ErrorKind::UsageLimit { resets_at } => {
                            let fallback = now + Duration::from_secs(self.config.limits.cooldown_secs);
                            // A reset time already past (clock skew, stale event) still earns the default pause.
                            Some(resets_at.filter(|t| *t > now).unwrap_or(fallback))
                        }
                        ErrorKind::Upstream { .. }
                            if err.retryable() && self.config.limits.outage_cooldown_secs > 0 =>
                        {
                            Some(now + Duration::from_secs(self.config.limits.outage_cooldown_secs))
                        }
                        _ => None,
                    };
                    if let Some(until) = pause
                        && state.cooldown_until.is_none_or(|t| t < until)
                    {
                        state.cooldown_until = Some(until);
                        state.cooldown_cause = Some(err.clone());
                        cooldown = Some(until);
                        metrics::counter!("orch_provider_cooldowns_total", "provider" => self.name.clone(), "cause" => err.code())
                            .increment(1);
                    }
                    if matches!(err.kind, ErrorKind::Auth { .. }) {
                        state.auth_incident = Some((now, err.clone()));
                    }
                    state.last_error = Some(err.clone());
                    state.last_error_at = Some(now);
                }
                Ok(_) => {
                    clear = std::mem::take(&mut state.shared_trouble)
                        || state.last_error.is_some()
                        || state.auth_incident.is_some();
                    state.last_error = None;
                    state.last_error_at = None;
                    state.auth_incident = None;
                }
                Err(_) => {}
            }
        }
        if let Some(shared) = self.shared_state.get() {
            match &result {
                Err(err) if !matches!(err.kind, ErrorKind::Cancelled) => shared.record(self, cooldown, Some(err)).await,
                // Ends what other processes may still show: an open incident, a last error.
                Ok(_) if clear => shared.record(self, None, None).await,
                _ => {}
            }
        }
        result
    }

    /// Counts a turn: by outcome, its duration, the tokens the CLI reported,
    /// and its error code when it failed.
    fn observe(&self, result: &Result<TurnOutput, TurnError>, took: Duration) {
        let provider = self.name.clone();
        let outcome = match result {
            Ok(_) => "ok",
            Err(err) => err.code(),
        };
        tracing::debug!(outcome, ms = took.as_millis() as u64, "turn finished");
        metrics::counter!("orch_provider_turns_total", "provider" => provider.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("orch_provider_turn_duration_seconds", "provider" => provider.clone(), "outcome" => outcome)
            .record(took.as_secs_f64());
        match result {
            Ok(output) => {
                let usage = &output.usage;
                metrics::counter!("orch_provider_tokens_total", "provider" => provider.clone(), "direction" => "input")
                    .increment(usage.input_tokens);
                metrics::counter!("orch_provider_tokens_total", "provider" => provider, "direction" => "output")
                    .increment(usage.output_tokens);
            }
            Err(err) => metrics::counter!("orch_provider_errors_total", "provider" => provider, "code" => err.code())
                .increment(1),
        }
    }

    async fn run_inner(&self, request: &TurnRequest, control: &TurnControl) -> Result<TurnOutput, TurnError> {
        let model = self.model(request)?;
        let cancelled = || TurnError::new(ErrorKind::Cancelled, format!("{}: cancelled", self.name));
        // A CLI started ahead for a turn of this shape, if the provider keeps some.
        let warm = self.warm.as_ref().and_then(|pool| Some((pool, self.warm_start(request, model.as_deref())?)));
        let taken = warm.as_ref().and_then(|(pool, start)| pool.take(&start.recipe));
        let (slot, started) = match taken {
            Some((process, slot)) => (slot, Some(process)),
            None => {
                let slot = tokio::select! {
                    slot = self.acquire_slot() => slot,
                    _ = control.cancel.cancelled() => return Err(cancelled()),
                };
                (slot, None)
            }
        };
        let _shared = tokio::select! {
            permit = self.shared.acquire(
                &self.name,
                self.config.limits.concurrency,
                Duration::from_secs(self.config.limits.timeout_secs + 60),
            ) => permit?,
            _ = control.cancel.cancelled() => return Err(cancelled()),
        };
        // Another turn may have hit the limit while this one waited.
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let launch = match (started, &warm) {
            (Some(process), Some((_, start))) => Some((process, start.message.clone())),
            _ => None,
        };
        let was_warm = launch.is_some();
        let (mut result, heard) = self.execute(request, control, model.clone(), &slot, launch).await;
        // A warm CLI that failed before saying anything (it died after the
        // pool's check, its stdin broke) is not the provider's failure: the
        // turn starts cold, as if it had never been warm.
        if was_warm
            && !heard
            && !control.cancel.is_cancelled()
            && matches!(&result, Err(e) if matches!(e.kind, ErrorKind::Crashed { .. } | ErrorKind::Malformed { .. }))
        {
            tracing::info!(provider = %self.name, "a warm CLI failed before answering; starting one cold");
            result = self.execute(request, control, model, &slot, None).await.0;
        }
        drop(slot);
        // Refill in the background, unless the provider is paused anyway.
        if let Some((pool, start)) = warm
            && self.refusal().is_none()
        {
            pool.fill(start.recipe);
        }
        result
    }

    /// How to start a CLI ahead for `request` (None when this turn cannot
    /// be served warm: see `adapters::warm_invocation`).
    fn warm_start(&self, request: &TurnRequest, model: Option<&str>) -> Option<WarmStart> {
        // A per-turn MCP config file may be gone by the next turn.
        if request.mcp_config.is_some() {
            return None;
        }
        let setup = Setup { kind: self.kind, config: &self.config, model, slot_dir: None, home: None };
        let invocation = adapters::warm_invocation(&setup, request)?;
        let program = self.resolve_command()?;
        let program_mtime = std::fs::metadata(&program).and_then(|m| m.modified()).ok();
        let recipe = crate::warm::Recipe {
            program,
            args: invocation.args,
            env: invocation.env,
            env_remove: invocation.env_remove,
            workdir: self.dir.join("work"),
            slot_dirs: (self.kind == ProviderKind::Claude).then(|| self.dir.clone()),
            model: model.map(str::to_owned),
            program_mtime,
        };
        Some(WarmStart { recipe, message: invocation.stdin.unwrap_or_default().into_bytes() })
    }

    /// Ready warm CLIs and what the pool did so far (None: `warm = 0`).
    pub fn warm_stats(&self) -> Option<crate::warm::WarmStats> {
        self.warm.as_ref().map(|pool| pool.stats())
    }

    /// The process ids of the ready warm CLIs.
    pub fn warm_pids(&self) -> Vec<i32> {
        self.warm.as_ref().map(|pool| pool.pids()).unwrap_or_default()
    }

    /// Stops every ready warm CLI (at shutdown; dropping the provider does too).
    pub fn shutdown(&self) {
        if let Some(pool) = &self.warm {
            pool.close();
        }
    }

    /// Runs the CLI once (`warm`: a started CLI and its message; None: a
    /// cold start) and reads its answer; also says whether the CLI said
    /// anything past its start-up line.
    async fn execute(
        &self,
        request: &TurnRequest,
        control: &TurnControl,
        model: Option<String>,
        slot: &Slot,
        warm: Option<(process::Started, Vec<u8>)>,
    ) -> (Result<TurnOutput, TurnError>, bool) {
        let heard = std::sync::atomic::AtomicBool::new(false);
        let result = self.execute_inner(request, control, model, slot, warm, &heard).await;
        (result, heard.load(std::sync::atomic::Ordering::Relaxed))
    }

    async fn execute_inner(
        &self,
        request: &TurnRequest,
        control: &TurnControl,
        model: Option<String>,
        slot: &Slot,
        warm: Option<(process::Started, Vec<u8>)>,
        heard: &std::sync::atomic::AtomicBool,
    ) -> Result<TurnOutput, TurnError> {
        let cancelled = || TurnError::new(ErrorKind::Cancelled, format!("{}: cancelled", self.name));
        let program = self.resolve_command().ok_or_else(|| self.not_installed())?;
        let slot_dir = (self.kind == ProviderKind::Claude).then(|| self.dir.join(format!("slot-{}", slot.number)));
        let workdir = self.dir.join("work");
        for dir in slot_dir.iter().chain([&workdir]) {
            std::fs::create_dir_all(dir).map_err(|e| {
                TurnError::new(
                    ErrorKind::Crashed { exit: None, signal: None, stderr_tail: String::new() },
                    format!("{}: cannot create {}: {e}", self.name, dir.display()),
                )
            })?;
        }
        let home = match self.kind {
            ProviderKind::Gemini => {
                adapters::gemini::prepare_home(&self.config, &self.dir.join("home")).map_err(|e| {
                    TurnError::new(
                        ErrorKind::Crashed { exit: None, signal: None, stderr_tail: String::new() },
                        format!("{}: preparing the CLI's home: {e}", self.name),
                    )
                })?
            }
            _ => None,
        };
        let setup = Setup {
            kind: self.kind,
            config: &self.config,
            model: model.as_deref(),
            slot_dir: slot_dir.as_deref(),
            home: home.as_deref(),
        };
        let invocation = adapters::invocation(&setup, request)
            .map_err(|err| TurnError { message: format!("{}: {}", self.name, err.message), ..err })?;
        let secrets = secrets(&invocation.env);
        let limits = &self.config.limits;
        let timeout = Duration::from_secs(limits.timeout_secs);
        let command = process::Command {
            program: &program,
            args: &invocation.args,
            env: &invocation.env,
            env_remove: &invocation.env_remove,
            cwd: Some(&workdir),
            stdin: invocation.stdin.map(String::into_bytes),
            pty: self.config.pty,
            timeout,
            output_cap: limits.output_cap_bytes,
        };
        let kind = self.kind;
        // With a fallback waiting, the turn is given up at the first sign of an
        // outage (why: `gave_up`), rather than after the CLI's own retries.
        let abort = control.cancel.child_token();
        let gave_up: Mutex<Option<TurnError>> = Mutex::new(None);
        let give_up = |error: TurnError| {
            gave_up.lock().expect("give-up lock").get_or_insert(error);
            abort.cancel();
        };
        let mut model_told = false;
        let mut on_line = |line: &str| {
            if adapters::is_reply(kind, line) {
                heard.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            if !model_told && let Some(model) = adapters::reported_model(kind, line) {
                model_told = true;
                control.report(ProgressEvent::Model { provider: self.name.clone(), model: Some(model) });
            }
            if let Some(event) = adapters::progress(kind, line) {
                if control.fallback
                    && let ProgressEvent::ApiRetry { status, error, .. } = &event
                {
                    let why = adapters::retry_failure(kind, *status, error.as_deref());
                    let fix = match why.kind {
                        ErrorKind::Auth { .. } => format!("; {}", self.renew_hint()),
                        _ => String::new(),
                    };
                    give_up(TurnError { message: format!("{}: {}{fix}", self.name, why.message), ..why });
                }
                control.report(event);
            }
        };
        let silent = match limits.silent_secs {
            Some(secs) => secs,
            None if kind == ProviderKind::Qwen => 90,
            None => 0,
        };
        let watchdog = async {
            if !control.fallback || silent == 0 {
                return std::future::pending().await;
            }
            tokio::time::sleep(Duration::from_secs(silent)).await;
            if !heard.load(std::sync::atomic::Ordering::Relaxed) {
                give_up(TurnError::new(
                    ErrorKind::Upstream { status: None },
                    format!(
                        "{}: no reply within {silent} s (limits.silent_secs); the CLI was stopped for the fallback. \
                         Qwen Code retries rate limits (429) and server errors (5xx) without saying so",
                        self.name
                    ),
                ));
            }
            std::future::pending::<()>().await
        };
        let started = Instant::now();
        let running = async {
            match warm {
                Some((process, message)) => {
                    process.finish(Some(message), timeout, limits.output_cap_bytes, &abort, &mut on_line).await
                }
                None => process::run(command, &abort, &mut on_line).await,
            }
        };
        let ran = tokio::select! {
            ran = running => ran,
            () = watchdog => unreachable!("the watchdog never ends"),
        };
        if let (ProviderKind::Gemini, Some(home)) = (kind, &home) {
            let stdout = ran.as_ref().map_or("", |raw| raw.stdout.as_str());
            adapters::gemini::forget_turn(home, &workdir, stdout, timeout + Duration::from_secs(60));
        }
        if let Some(error) = gave_up.lock().expect("give-up lock").take()
            && !control.cancel.is_cancelled()
        {
            return Err(error);
        }
        let raw = ran.map_err(|err| match err {
            RunError::Spawn(e) if e.kind() == std::io::ErrorKind::NotFound => self.not_installed(),
            RunError::Spawn(e) => TurnError::new(
                ErrorKind::Crashed { exit: None, signal: None, stderr_tail: String::new() },
                format!("{}: cannot start {}: {e}", self.name, program.display()),
            ),
            RunError::Timeout => TurnError::new(
                ErrorKind::Timeout { after: timeout },
                format!("{}: no answer within {} s; the CLI was killed", self.name, timeout.as_secs()),
            ),
            RunError::Cancelled => cancelled(),
            RunError::OutputTooLarge => TurnError::new(
                ErrorKind::OutputTooLarge { limit: limits.output_cap_bytes },
                format!(
                    "{}: the CLI printed more than {} bytes (limits.output_cap_bytes); it was killed",
                    self.name, limits.output_cap_bytes
                ),
            ),
        })?;
        let duration = started.elapsed();
        match adapters::parse(kind, &self.config, &raw) {
            Ok(output) => {
                Ok(TurnOutput { provider: self.name.clone(), duration, model: output.model.or(model), ..output })
            }
            Err(err) => {
                let mut message = format!("{}: {}", self.name, err.message);
                // Codex says only what failed; the fix depends on the credential it runs on.
                if kind == ProviderKind::Codex && matches!(err.kind, ErrorKind::Auth { .. }) {
                    message = format!("{message}; {}", self.renew_hint());
                }
                Err(redact(TurnError { message, ..err }, &secrets))
            }
        }
    }

    fn model(&self, request: &TurnRequest) -> Result<Option<String>, TurnError> {
        let model = request.model.clone().or_else(|| self.config.default_model.clone());
        // Defence in depth: the API checks too, but no caller text reaches a command line unchecked.
        if let Some(m) = &model
            && let Err(message) = crate::config::check_model_name(m)
        {
            return Err(TurnError::new(
                ErrorKind::InvalidRequest { field: "model".into() },
                format!("{}: {message}", self.name),
            ));
        }
        if let Some(m) = &model
            && !self.config.models.is_empty()
            && !self.config.models.contains(m)
        {
            return Err(TurnError::new(
                ErrorKind::InvalidRequest { field: "model".into() },
                format!("{}: unknown model {m:?}; configured: {}", self.name, self.config.models.join(", ")),
            ));
        }
        Ok(model)
    }

    /// Waits for a free slot; while every slot is held by an idle warm CLI
    /// (of another turn shape), one is stopped to make room.
    async fn acquire_slot(&self) -> Slot {
        loop {
            let changed = self.warm.as_ref().map(|pool| pool.changed.notified());
            let mut changed = std::pin::pin!(changed);
            if let Some(notified) = changed.as_mut().as_pin_mut() {
                notified.enable();
            }
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                return Slot::new(permit, self.free_slots.clone());
            }
            if self.warm.as_ref().is_some_and(|pool| pool.evict_one()) {
                continue;
            }
            let added = async {
                match changed.as_mut().as_pin_mut() {
                    Some(notified) => notified.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => {
                    return Slot::new(permit.expect("the semaphore is never closed"), self.free_slots.clone());
                }
                () = added => {}
            }
        }
    }
}

/// A CLI to start ahead for a turn's shape, and the turn's message for it.
struct WarmStart {
    recipe: crate::warm::Recipe,
    message: Vec<u8>,
}

/// A concurrency slot; its number names Claude's config dir (`slot-N`).
pub(crate) struct Slot {
    number: u32,
    free: Arc<Mutex<Vec<u32>>>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// The slot a permit of the provider's semaphore stands for.
    pub(crate) fn new(permit: OwnedSemaphorePermit, free: Arc<Mutex<Vec<u32>>>) -> Slot {
        let number = free.lock().expect("slot lock").pop().expect("a permit guarantees a free slot");
        Slot { number, free, _permit: permit }
    }

    pub(crate) fn number(&self) -> u32 {
        self.number
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Returned before the permit (a later field) is released.
        self.free.lock().expect("slot lock").push(self.number);
    }
}

/// Looks `program` up like a shell would: a path is taken as is, a bare name on PATH.
pub(crate) fn resolve_program(program: &Path, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.components().count() > 1 {
        return executable(program).then(|| program.to_owned());
    }
    std::env::split_paths(path?).map(|dir| dir.join(program)).find(|p| executable(p))
}

/// Values of credential-like variables the CLI sees, to keep out of messages.
fn secrets(env: &[(String, String)]) -> Vec<String> {
    let secret_name = |k: &str| ["TOKEN", "KEY", "SECRET", "PASSWORD"].iter().any(|w| k.to_uppercase().contains(w));
    let inherited = std::env::vars().filter(|(k, _)| secret_name(k));
    env.iter()
        .filter(|(k, _)| secret_name(k))
        .cloned()
        .chain(inherited)
        .map(|(_, v)| v)
        .filter(|v| v.len() >= 8)
        .collect()
}

fn redact(mut err: TurnError, secrets: &[String]) -> TurnError {
    for secret in secrets {
        err.message = err.message.replace(secret.as_str(), "[redacted]");
        if let ErrorKind::Crashed { stderr_tail, .. } = &mut err.kind {
            *stderr_tail = stderr_tail.replace(secret.as_str(), "[redacted]");
        }
    }
    err
}
