//! Plans: the DAG format of batch jobs, its validation and its analysis.
//! This crate does no IO: what it needs to know about the outside (the tools
//! and their input schemas, recorded latencies) is passed in.
//!
//! A [`Plan`] is a list of [`Node`]s. Each node has exactly one step: an MCP
//! `tool` call, an `llm` completion, a `map` (a step template run once per
//! item of a list), a plain `value`, or one of the built-in test steps
//! (`sleep`, `echo`, `fail`). Edges are data dependencies: a reference such
//! as `{{nodes.fetch.output.items[0]}}` (see [`reference`]) makes the node
//! depend on `fetch`; `depends_on` adds ordering without data.
//! [`validate`] finds every problem with the field that has it;
//! [`analysis::analyse`] gives levels, width, critical path and an estimate,
//! and [`analysis::mermaid`] / [`analysis::dot`] draw the graph. [`prompt`]
//! is the pure half of the LLM planner: its prompts and reading its answers.

pub mod analysis;
pub mod prompt;
pub mod reference;

use std::collections::{HashMap, HashSet};

use petgraph::algo::toposort;
use petgraph::graphmap::DiGraphMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::reference::{Found, Reference, Root};

/// Most nodes a plan may have.
pub const MAX_NODES: usize = 1000;
/// Longest chain of dependent nodes.
pub const MAX_DEPTH: usize = 256;
/// Highest `max_parallel` (and map `concurrency`) accepted.
pub const MAX_PARALLEL: u32 = 256;
/// `max_parallel` when a plan does not say.
pub const DEFAULT_PARALLEL: u32 = 8;
/// `map.concurrency` when a map does not say.
pub const DEFAULT_MAP_CONCURRENCY: u32 = 4;
/// Most items a map runs over by default (`ORCH_PLAN_MAX_ITEMS`).
pub const MAX_MAP_ITEMS: usize = 10_000;
/// Most bytes of node outputs (as JSON) one job holds by default
/// (`ORCH_PLAN_MAX_OUTPUT_BYTES`): 64 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;
/// Longest `sleep` step, in milliseconds (one hour).
pub const MAX_SLEEP_MS: u64 = 3_600_000;
/// Longest node `timeout`, in seconds (one hour).
pub const MAX_TIMEOUT_S: f64 = 3600.0;
/// Most `retries` of one node.
pub const MAX_RETRIES: u32 = 10;

/// What one plan may make Orch do and hold, as the operator set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Most items one map runs over, whether its list is written in the plan
    /// or comes from a reference (checked again on the resolved list at run time).
    pub max_items: usize,
    /// Most bytes (as JSON text) of node outputs, map items included, one job
    /// holds while it runs; the node whose output crosses it fails.
    pub max_output_bytes: usize,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits { max_items: MAX_MAP_ITEMS, max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES }
    }
}

/// A batch plan: nodes, their inputs and the job's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "input": {"topic": "rust"},
    "nodes": [
        {"id": "a", "tool": "test.echo", "args": {"message": "about {{input.topic}}"}},
        {"id": "b", "tool": "test.sleep", "args": {"ms": 100}, "timeout": 5, "retries": 2},
        {"id": "each", "map": {"over": ["x", "y", "z"], "concurrency": 2, "node": {"tool": "test.echo", "args": {"message": "{{item}}"}}}},
        {"id": "sum", "value": {"a": "{{nodes.a.output}}", "items": "{{nodes.each.output}}"}, "depends_on": ["b"], "on_error": {"fallback": {}}}
    ],
    "max_parallel": 4,
    "output": {"summary": "{{nodes.sum.output}}"}
}))]
pub struct Plan {
    /// The steps, each with a unique `id`.
    pub nodes: Vec<Node>,
    /// How many nodes may run at once (1–256, default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// The job's output, a template over node outputs (`{{nodes.x.output}}`);
    /// when absent, every node's output by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// Values the nodes reference as `{{input.<name>}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input: Option<Map<String, Value>>,
}

/// One step of a plan. Exactly one of `tool`, `llm`, `map`, `value`, `sleep`,
/// `echo` and `fail` is set. Strings anywhere in the step may hold references.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique within the plan: letters, digits, `_` and `-`, at most 64 characters.
    pub id: String,
    /// Ids of nodes that must finish before this one starts (references add their nodes on their own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// An MCP tool, `server.tool` as `GET /v1/tools` names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The tool's arguments, checked against its input schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub args: Option<Value>,
    /// An LLM completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmStep>,
    /// A step run once per item of a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<Box<MapStep>>,
    /// Outputs this value, references resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    /// Test step: waits, then outputs `{"slept_ms": ms}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepStep>,
    /// Test step: outputs this value (as `value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub echo: Option<Value>,
    /// Test step: fails, for testing retries and failure paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<FailStep>,
    /// Seconds one attempt of the step may take (of each item, in a map); at most 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Extra attempts after a retryable error, with exponential backoff from 0.1 s (at most 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// What a failure (after retries) does: `fail` the job (default), `continue`
    /// with a `null` output, or `{"fallback": <value>}` as the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>, example = json!({"fallback": []}))]
    pub on_error: Option<OnError>,
}

/// A step without id or policies: the template of a `map`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub args: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub echo: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<FailStep>,
}

/// An LLM completion; the output is the answer's text, or its JSON when `schema` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmStep {
    /// As in chat: `provider/model`, a provider, or `auto`; default: the default provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// JSON Schema the answer must satisfy (the answer is parsed as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
}

/// Runs `node` once per item of `over`; the output is the list of the items' outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MapStep {
    /// A list, or a reference to one (`{{nodes.list.output.items}}`).
    #[schema(value_type = Object)]
    pub over: Value,
    /// Items running at once (1–256, default 4), within the plan's `max_parallel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// The step per item; `{{item}}` is the item.
    pub node: StepTemplate,
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

/// What a node's failure does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The job fails; running nodes are stopped.
    Fail,
    /// Dependents run; the node's output is `null`.
    Continue,
    /// Dependents run with this value as the node's output.
    Fallback(Value),
}

/// What a node or map template does, once validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Step<'a> {
    Tool { name: &'a str, args: Option<&'a Value> },
    Llm(&'a LlmStep),
    Map(&'a MapStep),
    Value(&'a Value),
    Sleep(&'a SleepStep),
    Echo(&'a Value),
    Fail(&'a FailStep),
}

#[allow(clippy::too_many_arguments)]
fn one_step<'a>(
    tool: &'a Option<String>,
    args: &'a Option<Value>,
    llm: &'a Option<LlmStep>,
    map: Option<&'a MapStep>,
    value: &'a Option<Value>,
    sleep: &'a Option<SleepStep>,
    echo: &'a Option<Value>,
    fail: &'a Option<FailStep>,
) -> Option<Step<'a>> {
    let steps: Vec<Step<'a>> = [
        tool.as_deref().map(|name| Step::Tool { name, args: args.as_ref() }),
        llm.as_ref().map(Step::Llm),
        map.map(Step::Map),
        value.as_ref().map(Step::Value),
        sleep.as_ref().map(Step::Sleep),
        echo.as_ref().map(Step::Echo),
        fail.as_ref().map(Step::Fail),
    ]
    .into_iter()
    .flatten()
    .collect();
    match steps.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

impl Node {
    /// The node's single step; `None` when zero or several are set (validation
    /// rejects such plans).
    pub fn step(&self) -> Option<Step<'_>> {
        one_step(
            &self.tool,
            &self.args,
            &self.llm,
            self.map.as_deref(),
            &self.value,
            &self.sleep,
            &self.echo,
            &self.fail,
        )
    }

    pub fn on_error(&self) -> &OnError {
        self.on_error.as_ref().unwrap_or(&OnError::Fail)
    }
}

impl StepTemplate {
    pub fn step(&self) -> Option<Step<'_>> {
        one_step(&self.tool, &self.args, &self.llm, None, &self.value, &self.sleep, &self.echo, &self.fail)
    }
}

impl MapStep {
    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or(DEFAULT_MAP_CONCURRENCY) as usize
    }
}

impl Plan {
    pub fn max_parallel(&self) -> usize {
        self.max_parallel.unwrap_or(DEFAULT_PARALLEL) as usize
    }

    /// The plan's input values as one object (empty when absent).
    pub fn input_value(&self) -> Value {
        Value::Object(self.input.clone().unwrap_or_default())
    }
}

/// The tools a plan may call, by namespaced name (`server.tool`), with the
/// JSON Schema of their arguments.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    pub tools: HashMap<String, Value>,
}

/// A catalogue with each tool's input schema compiled once per validation.
struct Tools<'a> {
    catalogue: &'a Catalogue,
    validators: HashMap<&'a str, Option<jsonschema::Validator>>,
}

impl<'a> Tools<'a> {
    /// Compiles the schemas of the tools `plan` names.
    fn new(catalogue: &'a Catalogue, plan: &Plan) -> Tools<'a> {
        let mut validators = HashMap::new();
        let named =
            plan.nodes.iter().flat_map(|n| [n.tool.as_deref(), n.map.as_ref().and_then(|m| m.node.tool.as_deref())]);
        for name in named.flatten() {
            if let Some((key, schema)) = catalogue.tools.get_key_value(name) {
                validators.entry(key.as_str()).or_insert_with(|| jsonschema::validator_for(schema).ok());
            }
        }
        Tools { catalogue, validators }
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

/// Every reference of a node (its step, and for a map its list and template), with fields.
pub fn node_references(node: &Node, at: &str) -> Vec<Found> {
    let mut found = Vec::new();
    if let Some(step) = node.step() {
        step_references(&step, at, &mut found);
    }
    found
}

fn step_references(step: &Step<'_>, at: &str, found: &mut Vec<Found>) {
    match step {
        Step::Tool { args: Some(args), .. } => reference::collect(args, &format!("{at}.args"), found),
        Step::Tool { args: None, .. } | Step::Sleep(_) | Step::Fail(_) => {}
        Step::Llm(llm) => {
            reference::collect(&Value::String(llm.prompt.clone()), &format!("{at}.llm.prompt"), found);
            if let Some(system) = &llm.system {
                reference::collect(&Value::String(system.clone()), &format!("{at}.llm.system"), found);
            }
        }
        Step::Map(map) => {
            reference::collect(&map.over, &format!("{at}.map.over"), found);
            if let Some(step) = map.node.step() {
                step_references(&step, &format!("{at}.map.node"), found);
            }
        }
        Step::Value(v) => reference::collect(v, &format!("{at}.value"), found),
        Step::Echo(v) => reference::collect(v, &format!("{at}.echo"), found),
    }
}

/// Each node's dependencies (indexes): `depends_on` and the nodes its
/// references name. Unknown ids are left out (validation reports them).
pub fn dependencies(plan: &Plan) -> Vec<Vec<usize>> {
    let index: HashMap<&str, usize> = plan.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    plan.nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut deps: Vec<usize> = Vec::new();
            let referenced = node_references(node, "").into_iter().filter_map(|f| match f.reference {
                Ok(Reference { root: Root::Node(id), .. }) => Some(id),
                _ => None,
            });
            for id in node.depends_on.iter().cloned().chain(referenced) {
                if let Some(&d) = index.get(id.as_str())
                    && d != i
                    && !deps.contains(&d)
                {
                    deps.push(d);
                }
            }
            deps
        })
        .collect()
}

/// Checks a plan; returns every problem found (empty when valid). With a
/// catalogue, tool names must be in it and literal arguments must match the
/// tool's input schema; without one (a worker re-reading a stored plan),
/// tools are not checked. Maps are held to the default [`PlanLimits`].
pub fn validate(plan: &Plan, catalogue: Option<&Catalogue>) -> Vec<PlanIssue> {
    validate_with(plan, catalogue, &PlanLimits::default())
}

/// As [`validate`], with the operator's limits: a map's list, written in the
/// plan or a reference to plan input (or to a `value` node without
/// references), has at most `limits.max_items` items.
pub fn validate_with(plan: &Plan, catalogue: Option<&Catalogue>, limits: &PlanLimits) -> Vec<PlanIssue> {
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
    }
    let known = Known { plan, index: &index, max_items: limits.max_items };
    let tools = catalogue.map(|c| Tools::new(c, plan));
    for (i, node) in plan.nodes.iter().enumerate() {
        let at = format!("nodes[{i}]");
        check_node(node, &at, &known, tools.as_ref(), &mut issues);
    }

    // The graph: explicit dependencies and those implied by references.
    let mut graph = DiGraphMap::<usize, ()>::new();
    for i in 0..plan.nodes.len() {
        graph.add_node(i);
    }
    for (i, node) in plan.nodes.iter().enumerate() {
        for (j, dep) in node.depends_on.iter().enumerate() {
            let at = format!("nodes[{i}].depends_on[{j}]");
            match index.get(dep.as_str()) {
                None => {
                    issues.push(issue(at, format!("node {:?} depends on {dep:?}, but no node has that id", node.id)))
                }
                Some(&d) if d == i => issues.push(issue(at, "a node cannot depend on itself")),
                Some(_) => {}
            }
        }
    }
    for (i, deps) in dependencies(plan).into_iter().enumerate() {
        for d in deps {
            graph.add_edge(d, i, ());
        }
    }
    match toposort(&graph, None) {
        Err(cycle) => {
            let path = cycle_path(&graph, cycle.node_id());
            let names: Vec<&str> = path.iter().map(|&i| plan.nodes[i].id.as_str()).collect();
            issues.push(issue("nodes", format!("dependency cycle: {}", names.join(" -> "))));
        }
        Ok(order) => {
            let mut depth = vec![1usize; plan.nodes.len()];
            for &n in &order {
                for next in graph.neighbors(n) {
                    depth[next] = depth[next].max(depth[n] + 1);
                }
            }
            if let Some(&deepest) = depth.iter().max()
                && deepest > MAX_DEPTH
            {
                issues.push(issue(
                    "nodes",
                    format!("the longest chain of dependent nodes has {deepest} nodes; at most {MAX_DEPTH}"),
                ));
            }
        }
    }
    if let Some(output) = &plan.output {
        let mut found = Vec::new();
        reference::collect(output, "output", &mut found);
        for f in found {
            check_reference(&f, None, &known, false, &mut issues);
        }
    }
    issues
}

/// What validation knows of the plan while checking one node.
struct Known<'a> {
    plan: &'a Plan,
    index: &'a HashMap<&'a str, usize>,
    /// Most items of a map's list.
    max_items: usize,
}

impl Known<'_> {
    /// The value a reference will have at run time, when it is already known:
    /// plan input, or the output of a `value` node without references.
    fn value(&self, reference: &Reference) -> Option<Value> {
        struct Static<'a>(&'a Known<'a>, Value);
        impl reference::Scope for Static<'_> {
            fn root(&self, root: &Root) -> Option<&Value> {
                match root {
                    Root::Input => Some(&self.1),
                    Root::Node(id) => {
                        let node = &self.0.plan.nodes[*self.0.index.get(id.as_str())?];
                        let v = node.value.as_ref().or(node.echo.as_ref())?;
                        let mut found = Vec::new();
                        reference::collect(v, "", &mut found);
                        found.is_empty().then_some(v)
                    }
                    Root::Item => None,
                }
            }
        }
        let scope = Static(self, self.plan.input_value());
        reference::lookup(&scope, reference).ok().cloned()
    }
}

fn check_node(node: &Node, at: &str, known: &Known<'_>, tools: Option<&Tools<'_>>, issues: &mut Vec<PlanIssue>) {
    let id = &node.id;
    let Some(step) = node.step() else {
        issues
            .push(issue(at, format!("node {id:?}: set exactly one step: tool, llm, map, value, sleep, echo or fail")));
        return;
    };
    if let Some(t) = node.timeout
        && !(t > 0.0 && t <= MAX_TIMEOUT_S)
    {
        issues.push(issue(
            format!("{at}.timeout"),
            format!("node {id:?}: seconds above 0 and at most {MAX_TIMEOUT_S}; got {t}"),
        ));
    }
    if let Some(r) = node.retries
        && r > MAX_RETRIES
    {
        issues.push(issue(format!("{at}.retries"), format!("node {id:?}: at most {MAX_RETRIES}; got {r}")));
    }
    check_step(id, &step, at, known, tools, false, issues);
    if node.args.is_some() && node.tool.is_none() {
        issues.push(issue(format!("{at}.args"), format!("node {id:?}: `args` goes with `tool`")));
    }
}

fn check_step(
    id: &str,
    step: &Step<'_>,
    at: &str,
    known: &Known<'_>,
    tools: Option<&Tools<'_>>,
    in_map: bool,
    issues: &mut Vec<PlanIssue>,
) {
    let mut found = Vec::new();
    match step {
        Step::Tool { name, args } => {
            if let Some(args) = args {
                reference::collect(args, &format!("{at}.args"), &mut found);
                if !args.is_object() {
                    issues.push(issue(format!("{at}.args"), format!("node {id:?}: `args` must be an object")));
                }
            }
            if let Some(tools) = tools {
                if !tools.catalogue.tools.contains_key(*name) {
                    issues.push(issue(
                        format!("{at}.tool"),
                        format!("node {id:?}: unknown tool {name:?}; GET /v1/tools lists the tools (`server.tool`)"),
                    ));
                } else if let Some(Some(validator)) = tools.validators.get(*name) {
                    let args = args.cloned().unwrap_or_else(|| Value::Object(Map::new()));
                    check_args(id, name, validator, &args, &format!("{at}.args"), known, issues);
                }
            }
        }
        Step::Llm(llm) => {
            if llm.prompt.trim().is_empty() {
                issues.push(issue(format!("{at}.llm.prompt"), format!("node {id:?}: must not be empty")));
            }
            if let Some(schema) = &llm.schema
                && let Err(e) = jsonschema::validator_for(schema)
            {
                issues.push(issue(format!("{at}.llm.schema"), format!("node {id:?}: not a usable JSON Schema: {e}")));
            }
        }
        Step::Map(map) => {
            let max = known.max_items;
            let too_many = |n: usize, what: &str| {
                issue(
                    format!("{at}.map.over"),
                    format!("node {id:?}: a map runs over at most {max} items (ORCH_PLAN_MAX_ITEMS); {what} has {n}"),
                )
            };
            let not_a_list = || {
                issue(
                    format!("{at}.map.over"),
                    format!(
                        "node {id:?}: give a list, or one reference to a list such as \"{{{{nodes.x.output.items}}}}\""
                    ),
                )
            };
            match &map.over {
                Value::Array(items) if items.len() > max => issues.push(too_many(items.len(), "the list")),
                Value::Array(_) => {}
                Value::String(s) => match reference::pieces(s).as_deref() {
                    // One reference: when it names a value known now (plan
                    // input, a `value` node without references), its length is
                    // checked now; any other list when the map starts.
                    Some([reference::Piece::Ref(r)]) => {
                        if let Ok(r) = r
                            && let Some(Value::Array(items)) = known.value(r)
                            && items.len() > max
                        {
                            issues.push(too_many(items.len(), s.trim()));
                        }
                    }
                    _ => issues.push(not_a_list()),
                },
                _ => issues.push(not_a_list()),
            }
            if let Some(c) = map.concurrency
                && !(1..=MAX_PARALLEL).contains(&c)
            {
                issues.push(issue(
                    format!("{at}.map.concurrency"),
                    format!("node {id:?}: must be between 1 and {MAX_PARALLEL}; got {c}"),
                ));
            }
            reference::collect(&map.over, &format!("{at}.map.over"), &mut found);
            let inner = format!("{at}.map.node");
            match map.node.step() {
                None => issues.push(issue(
                    inner,
                    format!(
                        "node {id:?}: the map template needs exactly one step: tool, llm, value, sleep, echo or fail"
                    ),
                )),
                Some(step) => check_step(id, &step, &inner, known, tools, true, issues),
            }
            if map.node.args.is_some() && map.node.tool.is_none() {
                issues.push(issue(format!("{at}.map.node.args"), format!("node {id:?}: `args` goes with `tool`")));
            }
        }
        Step::Value(v) => reference::collect(v, &format!("{at}.value"), &mut found),
        Step::Echo(v) => reference::collect(v, &format!("{at}.echo"), &mut found),
        Step::Sleep(s) => {
            if s.ms > MAX_SLEEP_MS {
                issues.push(issue(
                    format!("{at}.sleep.ms"),
                    format!("node {id:?}: at most {MAX_SLEEP_MS}; got {}", s.ms),
                ));
            }
        }
        Step::Fail(_) => {}
    }
    if let Step::Llm(llm) = step {
        reference::collect(&Value::String(llm.prompt.clone()), &format!("{at}.llm.prompt"), &mut found);
        if let Some(system) = &llm.system {
            reference::collect(&Value::String(system.clone()), &format!("{at}.llm.system"), &mut found);
        }
    }
    for f in found {
        // `{{item}}` belongs to the map template, not to the map's list.
        let item_allowed = in_map && !f.field.contains(".map.over");
        check_reference(&f, Some(id), known, item_allowed, issues);
    }
}

fn check_reference(f: &Found, node: Option<&str>, known: &Known<'_>, item_allowed: bool, issues: &mut Vec<PlanIssue>) {
    let whose = node.map(|id| format!("node {id:?}: ")).unwrap_or_default();
    let reference = match &f.reference {
        Err(e) => return issues.push(issue(&f.field, format!("{whose}{e}"))),
        Ok(r) => r,
    };
    match &reference.root {
        Root::Node(target) => {
            if !known.index.contains_key(target.as_str()) {
                issues.push(issue(
                    &f.field,
                    format!("{whose}{{{{{reference}}}}} names node {target:?}, but no node has that id"),
                ));
            } else if Some(target.as_str()) == node {
                issues.push(issue(
                    &f.field,
                    format!("{whose}{{{{{reference}}}}}: a node cannot reference its own output"),
                ));
            }
        }
        Root::Input => {
            if known.value(reference).is_none() {
                let names: Vec<&str> = known.plan.input.iter().flat_map(|m| m.keys().map(String::as_str)).collect();
                issues.push(issue(
                    &f.field,
                    format!("{whose}{{{{{reference}}}}} does not resolve in the plan's `input` (it has {names:?})"),
                ));
            }
        }
        Root::Item => {
            if !item_allowed {
                issues.push(issue(&f.field, format!("{whose}{{{{item}}}} is only defined inside a map's `node`")));
            }
        }
    }
}

/// Checks tool arguments against the input schema. Positions holding a
/// reference are checked with the value when it is known before running
/// (plan input, static `value` nodes); a string with references inside text
/// is checked as a string; other positions are checked at run time.
fn check_args(
    id: &str,
    tool: &str,
    validator: &jsonschema::Validator,
    args: &Value,
    at: &str,
    known: &Known<'_>,
    issues: &mut Vec<PlanIssue>,
) {
    let mut loose = Vec::new();
    let probe = probe(args, String::new(), known, &mut loose);
    for error in validator.iter_errors(&probe) {
        let pointer = error.instance_path().as_str().to_owned();
        let skip = loose.iter().any(|(p, text)| {
            if *text {
                pointer == *p && !matches!(error.kind(), jsonschema::error::ValidationErrorKind::Type { .. })
            } else {
                pointer == *p || pointer.starts_with(&format!("{p}/"))
            }
        });
        if !skip {
            issues.push(issue(
                format!("{at}{}", dotted(&pointer)),
                format!("node {id:?}: does not match the input schema of {tool}: {error}"),
            ));
        }
    }
}

/// `args` with known references replaced; `loose` gets the JSON pointers of
/// positions whose value is unknown (false) or a text template (true).
fn probe(value: &Value, pointer: String, known: &Known<'_>, loose: &mut Vec<(String, bool)>) -> Value {
    match value {
        Value::String(s) => match reference::pieces(s) {
            None => value.clone(),
            Some(pieces) => {
                if let [reference::Piece::Ref(Ok(r))] = pieces.as_slice()
                    && let Some(v) = known.value(r)
                {
                    return v;
                }
                let whole = pieces.len() == 1;
                loose.push((pointer, !whole));
                if whole { Value::Null } else { Value::String(String::new()) }
            }
        },
        Value::Array(items) => Value::Array(
            items.iter().enumerate().map(|(i, v)| probe(v, format!("{pointer}/{i}"), known, loose)).collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = k.replace('~', "~0").replace('/', "~1");
                    (k.clone(), probe(v, format!("{pointer}/{key}"), known, loose))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `/items/2/name` → `.items[2].name`.
fn dotted(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.parse::<usize>().is_ok() {
            path.push_str(&format!("[{segment}]"));
        } else {
            path.push('.');
            path.push_str(&segment);
        }
    }
    path
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
mod tests;
