//! What a valid plan looks like before it runs: topological levels, width,
//! critical path and an estimated duration; and the graph as Mermaid or
//! Graphviz DOT, optionally with each node's state and timing from a run.

use std::collections::HashMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Plan, Step, dependencies};

/// Expected durations, in milliseconds.
#[derive(Debug, Clone)]
pub struct Estimates {
    /// Recorded latencies by tool name (`server.tool`).
    pub tools: HashMap<String, f64>,
    /// A tool without a recorded latency.
    pub tool_ms: f64,
    pub llm_ms: f64,
}

impl Default for Estimates {
    fn default() -> Self {
        Estimates { tools: HashMap::new(), tool_ms: 1000.0, llm_ms: 15_000.0 }
    }
}

/// The shape of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"levels": [["a", "b"], ["c"]], "width": 2, "depth": 2, "critical_path": ["b", "c"], "estimated_ms": 1100.0, "total_work_ms": 2100.0, "node_estimates_ms": {"a": 1000.0, "b": 100.0, "c": 1000.0}}))]
pub struct Analysis {
    /// Nodes by topological level: level 0 needs nothing, level k needs some node of level k-1.
    pub levels: Vec<Vec<String>>,
    /// The largest level: how many nodes can usefully run at once.
    pub width: usize,
    /// Number of levels (the longest chain, in nodes).
    pub depth: usize,
    /// The longest chain by estimated duration.
    pub critical_path: Vec<String>,
    /// Estimated duration of the whole plan under its `max_parallel`.
    pub estimated_ms: f64,
    /// Sum of all nodes' estimates (the duration one after another).
    pub total_work_ms: f64,
    pub node_estimates_ms: HashMap<String, f64>,
}

/// Estimated duration of each node.
pub fn node_estimate(plan: &Plan, i: usize, estimates: &Estimates) -> f64 {
    fn step_ms(step: &Step<'_>, estimates: &Estimates) -> f64 {
        match step {
            Step::Tool { name, .. } => estimates.tools.get(*name).copied().unwrap_or(estimates.tool_ms),
            Step::Llm(_) => estimates.llm_ms,
            Step::Sleep(s) => s.ms as f64,
            Step::Value(_) | Step::Echo(_) | Step::Fail(_) => 0.0,
            Step::Map(map) => {
                let per_item = map.node.step().map_or(0.0, |s| step_ms(&s, estimates));
                // A list known now gives its rounds; a referenced one counts as one round.
                let items = map.over.as_array().map_or(1, Vec::len);
                items.div_ceil(map.concurrency().max(1)) as f64 * per_item
            }
        }
    }
    plan.nodes[i].step().map_or(0.0, |s| step_ms(&s, estimates))
}

/// Analyses a valid plan (one [`crate::validate`] accepted).
pub fn analyse(plan: &Plan, estimates: &Estimates) -> Analysis {
    let n = plan.nodes.len();
    let deps = dependencies(plan);
    let order = topological_order(&deps);
    let cost: Vec<f64> = (0..n).map(|i| node_estimate(plan, i, estimates)).collect();
    let mut level = vec![0usize; n];
    let mut finish = vec![0f64; n];
    let mut via: Vec<Option<usize>> = vec![None; n];
    for &i in &order {
        let mut start = 0.0;
        for &d in &deps[i] {
            level[i] = level[i].max(level[d] + 1);
            if finish[d] > start || via[i].is_none() && finish[d] >= start {
                start = finish[d];
                via[i] = Some(d);
            }
        }
        finish[i] = start + cost[i];
    }
    let depth = level.iter().max().map_or(0, |m| m + 1);
    let mut levels = vec![Vec::new(); depth];
    for (i, node) in plan.nodes.iter().enumerate() {
        levels[level[i]].push(node.id.clone());
    }
    let mut critical_path = Vec::new();
    let mut at = (0..n).max_by(|&a, &b| finish[a].total_cmp(&finish[b]));
    while let Some(i) = at {
        critical_path.push(plan.nodes[i].id.clone());
        at = via[i];
    }
    critical_path.reverse();
    let critical_ms = finish.iter().copied().fold(0.0, f64::max);
    let total_work_ms: f64 = cost.iter().sum();
    let width = levels.iter().map(Vec::len).max().unwrap_or(0);
    // Work-bound when parallelism is the limit (Brent's bound, upper form).
    let estimated_ms = critical_ms.max(total_work_ms / plan.max_parallel().max(1) as f64);
    Analysis {
        levels,
        width,
        depth,
        critical_path,
        estimated_ms,
        total_work_ms,
        node_estimates_ms: plan.nodes.iter().map(|n| n.id.clone()).zip(cost).collect(),
    }
}

/// Kahn's order over `deps` (acyclic).
fn topological_order(deps: &[Vec<usize>]) -> Vec<usize> {
    let n = deps.len();
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &next in &dependents[i] {
            waiting[next] -= 1;
            if waiting[next] == 0 {
                ready.push(next);
            }
        }
    }
    order
}

/// A node's state in a run, for drawing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeState {
    /// `pending`, `running`, `succeeded`, `failed`, `skipped`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
}

fn kind(plan: &Plan, i: usize) -> String {
    match plan.nodes[i].step() {
        Some(Step::Tool { name, .. }) => name.to_owned(),
        Some(Step::Llm(llm)) => format!("llm {}", llm.model.as_deref().unwrap_or("default")),
        Some(Step::Map(map)) => {
            let inner = match map.node.step() {
                Some(Step::Tool { name, .. }) => name.to_owned(),
                Some(Step::Llm(_)) => "llm".to_owned(),
                _ => "step".to_owned(),
            };
            format!("map {inner}")
        }
        Some(Step::Value(_)) => "value".into(),
        Some(Step::Sleep(s)) => format!("sleep {}ms", s.ms),
        Some(Step::Echo(_)) => "echo".into(),
        Some(Step::Fail(_)) => "fail".into(),
        None => "?".into(),
    }
}

fn label(plan: &Plan, i: usize, states: Option<&HashMap<String, NodeState>>) -> String {
    let id = &plan.nodes[i].id;
    let mut label = format!("{id}\\n{}", kind(plan, i));
    if let Some(state) = states.and_then(|s| s.get(id)) {
        let _ = write!(label, "\\n{}", state.status);
        if let Some(ms) = state.duration_ms {
            let _ = write!(label, " {ms:.0} ms");
        }
    }
    label.replace('"', "'")
}

/// The plan as a Mermaid flowchart; with states, nodes are coloured by status.
pub fn mermaid(plan: &Plan, states: Option<&HashMap<String, NodeState>>) -> String {
    let mut out = String::from("flowchart TD\n");
    for i in 0..plan.nodes.len() {
        let text = label(plan, i, states).replace("\\n", "<br/>");
        let _ = writeln!(out, "    n{i}[\"{text}\"]");
    }
    for (i, deps) in dependencies(plan).iter().enumerate() {
        for d in deps {
            let _ = writeln!(out, "    n{d} --> n{i}");
        }
    }
    if let Some(states) = states {
        for (class, colour) in STATUS_COLOURS {
            let _ = writeln!(out, "    classDef {class} fill:{colour}");
        }
        for (i, node) in plan.nodes.iter().enumerate() {
            let status = states.get(&node.id).map_or("pending", |s| s.status.as_str());
            let _ = writeln!(out, "    class n{i} {status}");
        }
    }
    out
}

const STATUS_COLOURS: [(&str, &str); 5] = [
    ("pending", "#eeeeee"),
    ("running", "#fff3b0"),
    ("succeeded", "#c8e6c9"),
    ("failed", "#ffcdd2"),
    ("skipped", "#e0e0e0"),
];

/// The plan as Graphviz DOT; with states, nodes are filled by status.
pub fn dot(plan: &Plan, states: Option<&HashMap<String, NodeState>>) -> String {
    let mut out = String::from(
        "digraph plan {\n    rankdir=TB;\n    node [shape=box, style=\"rounded,filled\", fillcolor=\"#ffffff\"];\n",
    );
    for (i, node) in plan.nodes.iter().enumerate() {
        let fill = states
            .and_then(|s| s.get(&node.id))
            .and_then(|s| STATUS_COLOURS.iter().find(|(c, _)| *c == s.status))
            .map(|(_, colour)| format!(", fillcolor=\"{colour}\""))
            .unwrap_or_default();
        let _ = writeln!(out, "    \"{}\" [label=\"{}\"{fill}];", node.id, label(plan, i, states));
    }
    for (i, deps) in dependencies(plan).iter().enumerate() {
        for &d in deps {
            let _ = writeln!(out, "    \"{}\" -> \"{}\";", plan.nodes[d].id, plan.nodes[i].id);
        }
    }
    out.push_str("}\n");
    out
}
