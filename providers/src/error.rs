//! Why a turn failed, in the terms a router and a user act on.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A failed chat turn: what kind of failure (for the router) and a message
/// for the user. Messages never contain credentials: the provider redacts
/// secret environment values before building one.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct TurnError {
    pub kind: ErrorKind,
    pub message: String,
}

/// The kinds of failure a caller treats differently.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ErrorKind {
    /// The subscription's usage or rate limit was hit; `resets_at` when the CLI said.
    UsageLimit { resets_at: Option<DateTime<Utc>> },
    /// Credentials are missing, invalid or (`expired`) out of date.
    Auth { expired: bool },
    /// The turn ran past the provider's timeout; its process group was killed.
    Timeout { after: Duration },
    /// The CLI is not on this machine; `hint` says how to install it.
    NotInstalled { hint: String },
    /// The CLI exited without an answer (`exit` is None when a signal killed it).
    Crashed { exit: Option<i32>, signal: Option<i32>, stderr_tail: String },
    /// The CLI answered something this adapter cannot read.
    Malformed { detail: String },
    /// The CLI printed more than the provider's output cap; it was killed.
    OutputTooLarge { limit: u64 },
    /// The caller cancelled the turn; its process group was killed.
    Cancelled,
    /// The model API behind the CLI failed (status when known, e.g. 500).
    Upstream { status: Option<u16> },
    /// The request cannot run on this provider (unknown model, prompt unfit for a pty, ...).
    InvalidRequest { field: String },
    /// The turn cost more than its budget (`max_budget_usd`) and was stopped;
    /// `cost_usd` as the CLI reported it.
    BudgetExceeded { cost_usd: Option<f64> },
}

impl TurnError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> TurnError {
        TurnError { kind, message: message.into() }
    }

    /// Whether trying the same provider again later may succeed.
    pub fn retryable(&self) -> bool {
        match &self.kind {
            ErrorKind::Timeout { .. } | ErrorKind::Crashed { .. } | ErrorKind::Malformed { .. } => true,
            ErrorKind::Upstream { status } => status.is_none_or(|s| s >= 500 || s == 408),
            ErrorKind::UsageLimit { .. }
            | ErrorKind::Auth { .. }
            | ErrorKind::NotInstalled { .. }
            | ErrorKind::OutputTooLarge { .. }
            | ErrorKind::Cancelled
            | ErrorKind::InvalidRequest { .. }
            | ErrorKind::BudgetExceeded { .. } => false,
        }
    }

    /// Whether a router should try the next provider in its chain: the
    /// failure belongs to this provider, not to the request.
    pub fn should_fall_back(&self) -> bool {
        match &self.kind {
            ErrorKind::UsageLimit { .. }
            | ErrorKind::Auth { .. }
            | ErrorKind::Timeout { .. }
            | ErrorKind::NotInstalled { .. }
            | ErrorKind::Crashed { .. }
            | ErrorKind::Malformed { .. }
            | ErrorKind::Upstream { .. } => true,
            // Another CLI would get the same oversized or cancelled request;
            // a budget is the caller's cap on what the turn may cost.
            ErrorKind::OutputTooLarge { .. }
            | ErrorKind::Cancelled
            | ErrorKind::InvalidRequest { .. }
            | ErrorKind::BudgetExceeded { .. } => false,
        }
    }

    /// A short stable name of the kind, for job error codes and metrics.
    pub fn code(&self) -> &'static str {
        match self.kind {
            ErrorKind::UsageLimit { .. } => "usage_limit",
            ErrorKind::Auth { .. } => "auth",
            ErrorKind::Timeout { .. } => "timeout",
            ErrorKind::NotInstalled { .. } => "not_installed",
            ErrorKind::Crashed { .. } => "crashed",
            ErrorKind::Malformed { .. } => "malformed",
            ErrorKind::OutputTooLarge { .. } => "output_too_large",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Upstream { .. } => "upstream",
            ErrorKind::InvalidRequest { .. } => "invalid_request",
            ErrorKind::BudgetExceeded { .. } => "budget_exceeded",
        }
    }

    pub(crate) fn malformed(detail: impl Into<String>) -> TurnError {
        let detail = detail.into();
        TurnError::new(ErrorKind::Malformed { detail: detail.clone() }, format!("unreadable CLI output: {detail}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: ErrorKind, retryable: bool, fall_back: bool) {
        let err = TurnError::new(kind.clone(), "x");
        assert_eq!((err.retryable(), err.should_fall_back()), (retryable, fall_back), "{kind:?}");
    }

    #[test]
    fn retry_and_fallback_per_kind() {
        check(ErrorKind::UsageLimit { resets_at: None }, false, true);
        check(ErrorKind::Auth { expired: true }, false, true);
        check(ErrorKind::Timeout { after: Duration::from_secs(1) }, true, true);
        check(ErrorKind::NotInstalled { hint: "npm i -g x".into() }, false, true);
        check(ErrorKind::Crashed { exit: Some(1), signal: None, stderr_tail: String::new() }, true, true);
        check(ErrorKind::Malformed { detail: "x".into() }, true, true);
        check(ErrorKind::OutputTooLarge { limit: 1 }, false, false);
        check(ErrorKind::Cancelled, false, false);
        check(ErrorKind::Upstream { status: Some(500) }, true, true);
        check(ErrorKind::Upstream { status: Some(400) }, false, true);
        check(ErrorKind::InvalidRequest { field: "model".into() }, false, false);
        check(ErrorKind::BudgetExceeded { cost_usd: Some(0.2) }, false, false);
    }
}
