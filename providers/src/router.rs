//! Routing: which provider (and model) runs a turn, and what happens when it
//! cannot.
//!
//! A request's `model` is `provider/model`, a provider name, or `auto`. `auto`
//! picks a chain of targets from the routing table by task type: given by the
//! caller, or inferred from the prompt by configurable keyword rules. A turn
//! tries the chain in order, moving on after a failure that belongs to the
//! provider (usage limit, auth, timeout, missing CLI, crash); a failure that
//! belongs to the request (cancelled, output too large, invalid) ends it. The
//! chosen target and the reason are returned so jobs can record them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ProvidersConfig};
use crate::error::{ErrorKind, TurnError};
use crate::provider::{Provider, Providers};
use crate::turn::{TurnControl, TurnOutput, TurnRequest};

/// What kind of work a turn is; `auto` routes by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    Coding,
    Reasoning,
    Planning,
    Fast,
    General,
}

impl TaskType {
    pub const ALL: [TaskType; 5] =
        [TaskType::Coding, TaskType::Reasoning, TaskType::Planning, TaskType::Fast, TaskType::General];
    pub const NAMES: &'static str = "coding, reasoning, planning, fast, general";

    pub fn name(self) -> &'static str {
        match self {
            TaskType::Coding => "coding",
            TaskType::Reasoning => "reasoning",
            TaskType::Planning => "planning",
            TaskType::Fast => "fast",
            TaskType::General => "general",
        }
    }

    pub fn parse(name: &str) -> Option<TaskType> {
        TaskType::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[routing]` in `orch.toml`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The model of a request that names none: `auto`, a provider, or `provider/model`.
    pub default_model: String,
    /// Per task type, the targets `auto` tries in order (`provider` or `provider/model`).
    /// Task types left out keep the built-in chain.
    pub table: BTreeMap<TaskType, Vec<String>>,
    /// How `auto` infers a task type the caller did not give: the first rule
    /// that matches wins; none matching means `general`.
    pub rules: Vec<Rule>,
    /// Targets tried after an explicitly named provider fails (empty: none).
    pub fallback: Vec<String>,
}

/// An inference rule: matches when the prompt contains any of `keywords`
/// (case-insensitive; none = any prompt) and is at most `max_chars` long.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub task_type: TaskType,
    #[serde(default)]
    pub keywords: Vec<String>,
    pub max_chars: Option<usize>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        RoutingConfig {
            default_model: "auto".into(),
            table: BTreeMap::new(),
            rules: vec![
                Rule {
                    task_type: TaskType::Coding,
                    keywords: words(&[
                        "```",
                        "code",
                        "function",
                        "bug",
                        "compile",
                        "refactor",
                        "stack trace",
                        "unit test",
                        "regex",
                        "sql",
                        "python",
                        "rust",
                        "javascript",
                        "typescript",
                    ]),
                    max_chars: None,
                },
                Rule {
                    task_type: TaskType::Planning,
                    keywords: words(&["plan", "roadmap", "milestone", "step by step", "schedule", "break down"]),
                    max_chars: None,
                },
                Rule {
                    task_type: TaskType::Reasoning,
                    keywords: words(&["why", "prove", "analy", "reason", "compare", "trade-off", "tradeoff", "decide"]),
                    max_chars: None,
                },
                Rule { task_type: TaskType::Fast, keywords: Vec::new(), max_chars: Some(200) },
            ],
            fallback: Vec::new(),
        }
    }
}

/// The chain `auto` uses for a task type the table leaves out; providers that
/// are not configured are skipped.
fn builtin_chain(task: TaskType) -> &'static [&'static str] {
    match task {
        TaskType::Coding => &["qwen", "codex", "claude", "gemini"],
        TaskType::Reasoning | TaskType::Planning => &["claude", "gemini", "codex", "qwen"],
        TaskType::Fast => &["gemini", "qwen", "claude", "codex"],
        TaskType::General => &["claude", "gemini", "codex", "qwen"],
    }
}

/// One place a turn can run: a provider and optionally one of its models.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub provider: String,
    pub model: Option<String>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.model {
            Some(model) => write!(f, "{}/{model}", self.provider),
            None => f.write_str(&self.provider),
        }
    }
}

/// The chain a request will try, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub chain: Vec<Target>,
    /// The task type `auto` routed by (None for an explicit model).
    pub task_type: Option<TaskType>,
    pub reason: String,
}

/// A request the router cannot route; `field` is `model` or `task_type`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RouteError {
    pub field: &'static str,
    pub message: String,
}

/// A target that failed before the turn found one that answered.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailedAttempt {
    pub target: String,
    pub error: TurnError,
    /// The provider was not tried: it cools down, or its credential was
    /// refused and no probe is due. Nothing ran, so nothing is booked on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// How long the attempt took, slot wait included.
    pub elapsed_ms: u64,
}

impl FailedAttempt {
    /// The provider's configured name (the target without its model).
    pub fn provider(&self) -> &str {
        self.target.split_once('/').map_or(&self.target, |(p, _)| p)
    }

    /// The model the target named, if any.
    pub fn model(&self) -> Option<&str> {
        self.target.split_once('/').map(|(_, m)| m)
    }
}

/// A turn that ran somewhere.
#[derive(Clone, Debug, PartialEq)]
pub struct Routed {
    pub output: TurnOutput,
    pub target: Target,
    pub task_type: Option<TaskType>,
    /// Why this target: the routing decision plus any fallbacks taken.
    pub reason: String,
    pub failed: Vec<FailedAttempt>,
}

/// Every target failed (or one failed in a way no other could fix).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Exhausted {
    pub failed: Vec<FailedAttempt>,
    pub message: String,
    /// Every target failed for a usage limit: the earliest time one of them
    /// takes turns again (a `Retry-After`).
    pub retry_at: Option<DateTime<Utc>>,
}

impl Exhausted {
    /// The error of the last target tried.
    pub fn last(&self) -> &TurnError {
        &self.failed.last().expect("a chain is never empty").error
    }

    /// Whether running the whole turn again soon may succeed: some target
    /// failed for a passing reason (timeout, crash, upstream error). Usage
    /// limits last until their reset, auth and missing CLIs until a human acts.
    pub fn retryable(&self) -> bool {
        self.failed.iter().any(|f| f.error.retryable())
    }

    /// Whether every target failed for a usage limit.
    pub fn all_limited(&self) -> bool {
        self.failed.iter().all(|f| matches!(f.error.kind, ErrorKind::UsageLimit { .. }))
    }

    /// One stable code: the single error's own, `usage_limit` when every
    /// target is at its usage limit, or `providers_exhausted`.
    pub fn code(&self) -> &'static str {
        match self.failed.as_slice() {
            [only] => only.error.code(),
            _ if self.all_limited() => "usage_limit",
            _ => "providers_exhausted",
        }
    }
}

/// The configured providers and the routing over them.
pub struct Router {
    providers: Arc<Providers>,
    config: RoutingConfig,
}

impl Router {
    /// Checks the routing against the configured providers (every target names
    /// one, with a model it allows) and builds the router.
    pub fn new(providers: Arc<Providers>, config: RoutingConfig) -> Result<Router, ConfigError> {
        let router = Router { providers, config };
        let bad = |field: String, message: String| Err(ConfigError { field, message });
        if router.config.default_model != "auto"
            && let Err(e) = router.target(&router.config.default_model)
        {
            return bad("routing.default_model".into(), e.message);
        }
        for (task, chain) in &router.config.table {
            if chain.is_empty() {
                return bad(format!("routing.table.{task}"), "an empty chain; name at least one provider".into());
            }
            for (i, target) in chain.iter().enumerate() {
                if let Err(e) = router.target(target) {
                    return bad(format!("routing.table.{task}[{i}]"), e.message);
                }
            }
        }
        for (i, target) in router.config.fallback.iter().enumerate() {
            if let Err(e) = router.target(target) {
                return bad(format!("routing.fallback[{i}]"), e.message);
            }
        }
        for (i, rule) in router.config.rules.iter().enumerate() {
            if rule.keywords.is_empty() && rule.max_chars.is_none() {
                return bad(format!("routing.rules[{i}]"), "give keywords, max_chars or both".into());
            }
        }
        Ok(router)
    }

    /// Providers from their configuration, with `routing`.
    pub fn from_config(
        providers: &ProvidersConfig,
        routing: RoutingConfig,
        data_dir: &std::path::Path,
    ) -> Result<Router, ConfigError> {
        Router::new(Arc::new(Providers::new(providers, data_dir)?), routing)
    }

    /// Like [`Router::from_config`], with each provider's concurrency limit also
    /// enforced by `shared` across processes.
    pub fn from_config_shared(
        providers: &ProvidersConfig,
        routing: RoutingConfig,
        data_dir: &std::path::Path,
        shared: Arc<dyn crate::SharedLimit>,
    ) -> Result<Router, ConfigError> {
        Router::new(Arc::new(Providers::with_shared_limit(providers, data_dir, shared)?), routing)
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// Every model a request may name: `auto`, each provider, and each
    /// provider's configured models as `provider/model`.
    pub fn model_names(&self) -> Vec<String> {
        let mut names = vec!["auto".to_owned()];
        for p in self.providers.iter() {
            names.push(p.name().to_owned());
            names.extend(p.config().models.iter().map(|m| format!("{}/{m}", p.name())));
        }
        names
    }

    /// Parses `provider` or `provider/model` against the configuration.
    pub fn target(&self, text: &str) -> Result<Target, RouteError> {
        let (name, model) = match text.split_once('/') {
            Some((p, m)) => (p, Some(m)),
            None => (text, None),
        };
        let unknown = || RouteError {
            field: "model",
            message: format!("unknown model {text:?}; configured: {}", self.model_names().join(", ")),
        };
        let provider = self.providers.get(name).ok_or_else(unknown)?;
        if let Some(model) = model {
            if let Err(message) = crate::config::check_model_name(model) {
                return Err(RouteError { field: "model", message });
            }
            let models = &provider.config().models;
            if model.is_empty() || (!models.is_empty() && !models.iter().any(|m| m == model)) {
                return Err(unknown());
            }
        }
        Ok(Target { provider: name.to_owned(), model: model.map(str::to_owned) })
    }

    /// Decides the chain for a request. `model` None means the configured
    /// default; `task_type` is used (or inferred from `prompt`) only for `auto`.
    pub fn route(&self, model: Option<&str>, task_type: Option<TaskType>, prompt: &str) -> Result<Route, RouteError> {
        let model = model.unwrap_or(&self.config.default_model);
        if model != "auto" {
            let first = self.target(model)?;
            let mut chain = vec![first];
            for text in &self.config.fallback {
                let target = self.target(text)?;
                if !chain.contains(&target) {
                    chain.push(target);
                }
            }
            let reason = if chain.len() > 1 {
                format!("model {model:?} requested; fallback {}", join(&chain[1..]))
            } else {
                format!("model {model:?} requested")
            };
            return Ok(Route { chain, task_type: None, reason });
        }
        let (task, why) = match task_type {
            Some(task) => (task, "given".to_owned()),
            None => self.infer(prompt),
        };
        let chain: Vec<Target> = match self.config.table.get(&task) {
            Some(targets) => targets.iter().map(|t| self.target(t)).collect::<Result<_, _>>()?,
            None => builtin_chain(task)
                .iter()
                .filter(|p| self.providers.get(p).is_some())
                .map(|p| Target { provider: (*p).to_owned(), model: None })
                .collect(),
        };
        let chain = if chain.is_empty() {
            // A configuration without any of the built-in names: every provider, in name order.
            self.providers.iter().map(|p| Target { provider: p.name().to_owned(), model: None }).collect()
        } else {
            chain
        };
        if chain.is_empty() {
            return Err(RouteError { field: "model", message: "no provider is configured".into() });
        }
        let reason = format!("auto: task type {task} ({why}); chain {}", join(&chain));
        Ok(Route { chain, task_type: Some(task), reason })
    }

    /// The task type of a prompt by the configured rules, and which rule said so.
    pub fn infer(&self, prompt: &str) -> (TaskType, String) {
        let lower = prompt.to_lowercase();
        let length = prompt.chars().count();
        for rule in &self.config.rules {
            if rule.max_chars.is_some_and(|max| length > max) {
                continue;
            }
            if rule.keywords.is_empty() {
                return (rule.task_type, format!("inferred: prompt of {length} characters"));
            }
            if let Some(word) = rule.keywords.iter().find(|w| lower.contains(&w.to_lowercase())) {
                return (rule.task_type, format!("inferred: keyword {word:?}"));
            }
        }
        (TaskType::General, "inferred: no rule matched".into())
    }

    /// Runs a turn along `route`'s chain. `request.model` is replaced by each
    /// target's model (or the provider's default).
    pub async fn run(&self, route: &Route, request: &TurnRequest, control: &TurnControl) -> Result<Routed, Exhausted> {
        let mut failed: Vec<FailedAttempt> = Vec::new();
        for (i, target) in route.chain.iter().enumerate() {
            let provider: &Arc<Provider> =
                self.providers.get(&target.provider).expect("routes name configured providers");
            // A provider cooling down or with a refused credential is skipped at once.
            if let Err(error) = provider.available().await {
                failed.push(FailedAttempt { target: target.to_string(), error, skipped: true, elapsed_ms: 0 });
                continue;
            }
            let started = std::time::Instant::now();
            let request = TurnRequest { model: target.model.clone(), ..request.clone() };
            let control = TurnControl { fallback: i + 1 < route.chain.len(), ..control.clone() };
            let model = request.model.clone().or_else(|| provider.config().default_model.clone());
            control.report(crate::turn::ProgressEvent::Model { provider: target.provider.clone(), model });
            match provider.attempt(&request, &control).await {
                Ok(output) => {
                    let mut reason = route.reason.clone();
                    for f in &failed {
                        let how = if f.skipped { "skipped" } else { "failed" };
                        reason.push_str(&format!("; {} {how} ({}), fell back", f.target, f.error.code()));
                    }
                    reason.push_str(&format!("; ran on {target}"));
                    return Ok(Routed { output, target: target.clone(), task_type: route.task_type, reason, failed });
                }
                Err(error) => {
                    let fall_back = error.should_fall_back();
                    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    failed.push(FailedAttempt { target: target.to_string(), error, skipped: false, elapsed_ms });
                    if !fall_back {
                        break;
                    }
                }
            }
        }
        let limited = failed.iter().all(|f| matches!(f.error.kind, ErrorKind::UsageLimit { .. }));
        // The earliest time a target takes turns again: its cooldown (which a
        // reset time already past never sets).
        let retry_at = limited
            .then(|| {
                failed
                    .iter()
                    .filter_map(|f| self.providers.get(f.provider()).and_then(|p| p.status().cooldown_until))
                    .min()
            })
            .flatten();
        // Messages start with the provider's name already.
        let said = |f: &FailedAttempt| {
            if f.error.message.starts_with(&format!("{}:", f.provider())) {
                f.error.message.clone()
            } else {
                format!("{}: {}", f.target, f.error.message)
            }
        };
        let message = match failed.as_slice() {
            [only] => only.error.message.clone(),
            all if limited => format!(
                "every provider is at its usage limit{}: {}",
                retry_at.map(|t| format!(" (the first takes turns again at {})", t.to_rfc3339())).unwrap_or_default(),
                all.iter().map(said).collect::<Vec<_>>().join("; ")
            ),
            all => format!("every provider failed: {}", all.iter().map(said).collect::<Vec<_>>().join("; ")),
        };
        Err(Exhausted { failed, message, retry_at })
    }
}

fn join(chain: &[Target]) -> String {
    chain.iter().map(Target::to_string).collect::<Vec<_>>().join(" → ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(providers: &str, routing: &str) -> Result<Router, ConfigError> {
        let providers: ProvidersConfig = toml::from_str(providers).unwrap();
        let routing: RoutingConfig = toml::from_str(routing).unwrap();
        Router::from_config(&providers, routing, std::path::Path::new("/nonexistent"))
    }

    const FOUR: &str = "[claude]\nmodels = ['sonnet', 'opus']\n[gemini]\n[codex]\n[qwen]\n";

    #[test]
    fn explicit_models() {
        let r = router(FOUR, "").unwrap();
        let route = r.route(Some("claude/opus"), None, "hi").unwrap();
        assert_eq!(route.chain, [Target { provider: "claude".into(), model: Some("opus".into()) }]);
        assert_eq!(route.task_type, None);
        assert_eq!(r.route(Some("gemini"), None, "hi").unwrap().chain[0].to_string(), "gemini");
        let err = r.route(Some("claude/haiku"), None, "hi").unwrap_err();
        assert_eq!(err.field, "model");
        assert!(err.message.contains("configured: auto, claude, claude/sonnet, claude/opus, codex"), "{err}");
        assert!(r.route(Some("gpt-4"), None, "hi").is_err());
        // Any model of a provider that lists none.
        assert_eq!(
            r.route(Some("gemini/gemini-2.5-pro"), None, "x").unwrap().chain[0].to_string(),
            "gemini/gemini-2.5-pro"
        );
    }

    #[test]
    fn auto_by_given_and_inferred_task_type() {
        let r = router(FOUR, "").unwrap();
        let route = r.route(Some("auto"), Some(TaskType::Reasoning), "anything").unwrap();
        assert_eq!(route.chain[0].provider, "claude");
        assert!(route.reason.contains("task type reasoning (given)"), "{}", route.reason);
        let route = r.route(None, None, "Please refactor this module for clarity").unwrap();
        assert_eq!(route.task_type, Some(TaskType::Coding));
        assert_eq!(
            route.chain.iter().map(|t| t.provider.as_str()).collect::<Vec<_>>(),
            ["qwen", "codex", "claude", "gemini"]
        );
        assert!(route.reason.contains("keyword \"refactor\""), "{}", route.reason);
        assert_eq!(r.route(None, None, "hello there").unwrap().task_type, Some(TaskType::Fast));
        let long = "tell me a story about a lighthouse keeper ".repeat(10);
        assert_eq!(r.route(None, None, &long).unwrap().task_type, Some(TaskType::General));
    }

    #[test]
    fn configured_table_and_fallback() {
        let r = router(FOUR, "[table]\ncoding = ['claude/opus', 'gemini']\n").unwrap();
        let route = r.route(None, Some(TaskType::Coding), "x").unwrap();
        assert_eq!(route.chain.iter().map(Target::to_string).collect::<Vec<_>>(), ["claude/opus", "gemini"]);
        let r = router(FOUR, "fallback = ['gemini']\n").unwrap();
        let route = r.route(Some("claude"), None, "x").unwrap();
        assert_eq!(route.chain.iter().map(Target::to_string).collect::<Vec<_>>(), ["claude", "gemini"]);
        // Only configured providers are in built-in chains.
        let r = router("[claude]\n[qwen]\n", "").unwrap();
        let route = r.route(None, Some(TaskType::Reasoning), "x").unwrap();
        assert_eq!(route.chain.iter().map(Target::to_string).collect::<Vec<_>>(), ["claude", "qwen"]);
    }

    #[test]
    fn bad_routing_names_the_field() {
        let err = router(FOUR, "[table]\ncoding = ['claude', 'copilot']\n").err().unwrap();
        assert_eq!(err.field, "routing.table.coding[1]");
        assert!(err.message.contains("unknown model \"copilot\""), "{err}");
        assert_eq!(router(FOUR, "default_model = 'claude/x'\n").err().unwrap().field, "routing.default_model");
        assert_eq!(router(FOUR, "[table]\nfast = []\n").err().unwrap().field, "routing.table.fast");
        assert_eq!(router(FOUR, "[[rules]]\ntask_type = 'fast'\n").err().unwrap().field, "routing.rules[0]");
        assert!(toml::from_str::<RoutingConfig>("[table]\nwriting = ['claude']\n").is_err());
    }
}
