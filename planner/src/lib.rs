//! Plans: the DAG format of batch jobs and its validation. This crate does no IO.
//!
//! A [`Plan`] is a list of [`Node`]s whose `depends_on` edges form a directed
//! acyclic graph. For now a node runs one of the built-in test steps (`sleep`,
//! `echo`, `fail`); MCP tool calls, LLM steps and fan-outs extend [`Node`] later
//! with more optional step fields, under the same "exactly one step" rule.

use std::collections::{HashMap, HashSet};

use petgraph::algo::toposort;
use petgraph::graphmap::DiGraphMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Most nodes a plan may have.
pub const MAX_NODES: usize = 1000;
/// Highest `max_parallel` accepted.
pub const MAX_PARALLEL: u32 = 256;
/// `max_parallel` when a plan does not say.
pub const DEFAULT_PARALLEL: u32 = 8;
/// Longest `sleep` step, in milliseconds (one hour).
pub const MAX_SLEEP_MS: u64 = 3_600_000;

/// A batch plan: nodes and the data-free ordering between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "nodes": [
        {"id": "wait", "sleep": {"ms": 200}},
        {"id": "hello", "echo": {"text": "hello"}, "depends_on": ["wait"]},
        {"id": "world", "echo": "world", "depends_on": ["wait"]}
    ],
    "max_parallel": 4
}))]
pub struct Plan {
    /// The steps, each with a unique `id`.
    pub nodes: Vec<Node>,
    /// How many nodes may run at once (1–256, default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// The job's output; when absent, the output is every node's output by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

/// One step of a plan. Exactly one of `sleep`, `echo` and `fail` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique within the plan: letters, digits, `_` and `-`, at most 64 characters.
    pub id: String,
    /// Ids of nodes that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Waits, then outputs `{"slept_ms": ms}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepStep>,
    /// Outputs this value unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub echo: Option<Value>,
    /// Fails, for testing retries and failure paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<FailStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepStep {
    /// Milliseconds to wait (0–3,600,000).
    pub ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailStep {
    /// The error message.
    #[serde(default = "default_fail_message")]
    pub message: String,
    /// Fail only in the first `times` attempts of the job (then succeed);
    /// absent: fail in every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// Whether the job may be retried after this failure (default true).
    #[serde(default = "default_true")]
    pub retryable: bool,
}

fn default_fail_message() -> String {
    "step failed as the plan asked".into()
}

fn default_true() -> bool {
    true
}

/// What a node does, once validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Step<'a> {
    Sleep(&'a SleepStep),
    Echo(&'a Value),
    Fail(&'a FailStep),
}

impl Node {
    /// The node's single step; `None` when zero or several are set (validation
    /// rejects such plans).
    pub fn step(&self) -> Option<Step<'_>> {
        let steps: Vec<Step<'_>> = [
            self.sleep.as_ref().map(Step::Sleep),
            self.echo.as_ref().map(Step::Echo),
            self.fail.as_ref().map(Step::Fail),
        ]
        .into_iter()
        .flatten()
        .collect();
        match steps.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }
}

impl Plan {
    pub fn max_parallel(&self) -> usize {
        self.max_parallel.unwrap_or(DEFAULT_PARALLEL) as usize
    }
}

/// One problem found in a plan, with the JSON path of the offending field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanIssue {
    /// Path of the field, e.g. `nodes[2].depends_on[0]`.
    pub field: String,
    pub message: String,
}

fn issue(field: impl Into<String>, message: impl Into<String>) -> PlanIssue {
    PlanIssue { field: field.into(), message: message.into() }
}

/// Checks a plan; returns every problem found (empty when valid).
pub fn validate(plan: &Plan) -> Vec<PlanIssue> {
    let mut issues = Vec::new();
    if plan.nodes.len() > MAX_NODES {
        issues.push(issue("nodes", format!("a plan has at most {MAX_NODES} nodes; this one has {}", plan.nodes.len())));
    }
    if let Some(p) = plan.max_parallel
        && !(1..=MAX_PARALLEL).contains(&p)
    {
        issues.push(issue("max_parallel", format!("must be between 1 and {MAX_PARALLEL}; got {p}")));
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, node) in plan.nodes.iter().enumerate() {
        let at = format!("nodes[{i}]");
        if !valid_id(&node.id) {
            issues.push(issue(
                format!("{at}.id"),
                format!("{:?} is not a valid id: use 1–64 letters, digits, '_' or '-'", node.id),
            ));
        } else if let Some(first) = index.insert(&node.id, i) {
            issues
                .push(issue(format!("{at}.id"), format!("duplicate id {:?}: nodes[{first}] has it already", node.id)));
        }
        if node.step().is_none() {
            issues.push(issue(at.clone(), "set exactly one step: sleep, echo or fail"));
        }
        if let Some(s) = &node.sleep
            && s.ms > MAX_SLEEP_MS
        {
            issues.push(issue(format!("{at}.sleep.ms"), format!("at most {MAX_SLEEP_MS}; got {}", s.ms)));
        }
    }
    let mut graph = DiGraphMap::<usize, ()>::new();
    for i in 0..plan.nodes.len() {
        graph.add_node(i);
    }
    for (i, node) in plan.nodes.iter().enumerate() {
        let mut seen = HashSet::new();
        for (j, dep) in node.depends_on.iter().enumerate() {
            let at = format!("nodes[{i}].depends_on[{j}]");
            match index.get(dep.as_str()) {
                None => issues.push(issue(at, format!("no node has id {dep:?}"))),
                Some(&d) if d == i => issues.push(issue(at, "a node cannot depend on itself")),
                Some(&d) => {
                    if seen.insert(d) {
                        graph.add_edge(d, i, ());
                    }
                }
            }
        }
    }
    if let Err(cycle) = toposort(&graph, None) {
        let path = cycle_path(&graph, cycle.node_id());
        let names: Vec<&str> = path.iter().map(|&i| plan.nodes[i].id.as_str()).collect();
        issues.push(issue("nodes", format!("dependency cycle: {}", names.join(" -> "))));
    }
    issues
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A cycle through `start` (a node toposort found on one), as a closed path.
fn cycle_path(graph: &DiGraphMap<usize, ()>, start: usize) -> Vec<usize> {
    // Depth-first search from `start` back to `start`.
    let mut stack = vec![(start, vec![start])];
    let mut visited = HashSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.neighbors(node) {
            if next == start {
                let mut closed = path.clone();
                closed.push(start);
                return closed;
            }
            if visited.insert(next) {
                let mut longer = path.clone();
                longer.push(next);
                stack.push((next, longer));
            }
        }
    }
    vec![start]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(plan: Value, expected: &[&str]) {
        let plan: Plan = serde_json::from_value(plan).expect("plan parses");
        let got: Vec<String> = validate(&plan).into_iter().map(|i| format!("{}: {}", i.field, i.message)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn valid_diamond() {
        check(
            json!({"nodes": [
                {"id": "a", "echo": 1},
                {"id": "b", "sleep": {"ms": 5}, "depends_on": ["a"]},
                {"id": "c", "echo": 2, "depends_on": ["a"]},
                {"id": "d", "echo": 3, "depends_on": ["b", "c"]}
            ]}),
            &[],
        );
    }

    #[test]
    fn duplicate_and_bad_ids() {
        check(
            json!({"nodes": [{"id": "a", "echo": 1}, {"id": "a", "echo": 2}, {"id": "no spaces", "echo": 3}]}),
            &[
                "nodes[1].id: duplicate id \"a\": nodes[0] has it already",
                "nodes[2].id: \"no spaces\" is not a valid id: use 1–64 letters, digits, '_' or '-'",
            ],
        );
    }

    #[test]
    fn exactly_one_step() {
        check(
            json!({"nodes": [{"id": "a"}, {"id": "b", "echo": 1, "sleep": {"ms": 1}}]}),
            &[
                "nodes[0]: set exactly one step: sleep, echo or fail",
                "nodes[1]: set exactly one step: sleep, echo or fail",
            ],
        );
    }

    #[test]
    fn unknown_dependency_and_self() {
        check(
            json!({"nodes": [{"id": "a", "echo": 1, "depends_on": ["zz", "a"]}]}),
            &[
                "nodes[0].depends_on[0]: no node has id \"zz\"",
                "nodes[0].depends_on[1]: a node cannot depend on itself",
            ],
        );
    }

    #[test]
    fn cycle_is_reported_with_its_path() {
        let plan: Plan = serde_json::from_value(json!({"nodes": [
            {"id": "a", "echo": 1, "depends_on": ["c"]},
            {"id": "b", "echo": 1, "depends_on": ["a"]},
            {"id": "c", "echo": 1, "depends_on": ["b"]},
            {"id": "free", "echo": 1}
        ]}))
        .unwrap();
        let issues = validate(&plan);
        assert_eq!(issues.len(), 1, "{issues:?}");
        let msg = &issues[0].message;
        assert!(msg.starts_with("dependency cycle: "), "{msg}");
        for id in ["a", "b", "c"] {
            assert!(msg.contains(id), "{msg}");
        }
        assert!(!msg.contains("free"), "{msg}");
    }

    #[test]
    fn limits() {
        check(
            json!({"nodes": [{"id": "a", "sleep": {"ms": 3_600_001}}], "max_parallel": 0}),
            &["max_parallel: must be between 1 and 256; got 0", "nodes[0].sleep.ms: at most 3600000; got 3600001"],
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err =
            serde_json::from_value::<Plan>(json!({"nodes": [{"id": "a", "echo": 1, "colour": "red"}]})).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }
}
