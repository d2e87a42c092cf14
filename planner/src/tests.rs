//! Validation and analysis cases: a plan in, the problems (or the shape) out.

use serde_json::{Value, json};

use super::analysis::{Estimates, NodeState, analyse, dot, mermaid};
use super::*;

fn catalogue() -> Catalogue {
    Catalogue {
        tools: HashMap::from([
            (
                "t.echo".to_owned(),
                json!({"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}),
            ),
            (
                "t.sleep".to_owned(),
                json!({"type": "object", "properties": {"ms": {"type": "integer"}}, "required": ["ms"]}),
            ),
        ]),
    }
}

fn plan(value: Value) -> Plan {
    serde_json::from_value(value).expect("plan parses")
}

fn check(value: Value, expected: &[&str]) {
    let got: Vec<String> =
        validate(&plan(value), Some(&catalogue())).into_iter().map(|i| format!("{}: {}", i.field, i.message)).collect();
    assert_eq!(got, expected);
}

#[test]
fn valid_diamond() {
    check(
        json!({"nodes": [
            {"id": "a", "echo": "one"},
            {"id": "b", "sleep": {"ms": 5}, "depends_on": ["a"]},
            {"id": "c", "tool": "t.echo", "args": {"message": "{{nodes.a.output}}"}},
            {"id": "d", "value": ["{{nodes.b.output}}", "{{nodes.c.output}}"]}
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
        json!({"nodes": [{"id": "a"}, {"id": "b", "echo": 1, "tool": "t.echo"}]}),
        &[
            "nodes[0]: node \"a\": set exactly one step: tool, llm, map, value, sleep, echo or fail",
            "nodes[1]: node \"b\": set exactly one step: tool, llm, map, value, sleep, echo or fail",
        ],
    );
}

#[test]
fn unknown_dependency_and_self() {
    check(
        json!({"nodes": [{"id": "a", "echo": 1, "depends_on": ["zz", "a"]}]}),
        &[
            "nodes[0].depends_on[0]: node \"a\" depends on \"zz\", but no node has that id",
            "nodes[0].depends_on[1]: a node cannot depend on itself",
        ],
    );
}

#[test]
fn cycle_is_reported_with_its_path() {
    let issues = validate(
        &plan(json!({"nodes": [
            {"id": "a", "echo": 1, "depends_on": ["c"]},
            {"id": "b", "echo": 1, "depends_on": ["a"]},
            {"id": "c", "echo": 1, "depends_on": ["b"]},
            {"id": "free", "echo": 1}
        ]})),
        None,
    );
    assert_eq!(issues.len(), 1, "{issues:?}");
    let msg = &issues[0].message;
    assert!(msg.starts_with("dependency cycle: "), "{msg}");
    for id in ["a", "b", "c"] {
        assert!(msg.contains(id), "{msg}");
    }
    assert!(!msg.contains("free"), "{msg}");
}

#[test]
fn references_make_cycles_too() {
    check(
        json!({"nodes": [
            {"id": "a", "value": "{{nodes.b.output}}"},
            {"id": "b", "tool": "t.echo", "args": {"message": "{{nodes.a.output}}"}}
        ]}),
        &["nodes: dependency cycle: b -> a -> b"],
    );
}

#[test]
fn limits() {
    check(
        json!({"nodes": [{"id": "a", "sleep": {"ms": 3_600_001}, "timeout": 0, "retries": 11}], "max_parallel": 0}),
        &[
            "max_parallel: must be between 1 and 256; got 0",
            "nodes[0].timeout: node \"a\": seconds above 0 and at most 3600; got 0",
            "nodes[0].retries: node \"a\": at most 10; got 11",
            "nodes[0].sleep.ms: node \"a\": at most 3600000; got 3600001",
        ],
    );
    let chain: Vec<Value> = (0..=MAX_DEPTH)
        .map(|i| {
            if i == 0 {
                json!({"id": "n0", "echo": 0})
            } else {
                json!({"id": format!("n{i}"), "echo": i, "depends_on": [format!("n{}", i - 1)]})
            }
        })
        .collect();
    check(json!({"nodes": chain}), &["nodes: the longest chain of dependent nodes has 257 nodes; at most 256"]);
}

#[test]
fn unknown_fields_are_rejected() {
    let err = serde_json::from_value::<Plan>(json!({"nodes": [{"id": "a", "echo": 1, "colour": "red"}]})).unwrap_err();
    assert!(err.to_string().contains("unknown field `colour`"), "{err}");
}

#[test]
fn on_error_forms() {
    let p = plan(json!({"nodes": [
        {"id": "a", "echo": 1, "on_error": "continue"},
        {"id": "b", "echo": 1, "on_error": {"fallback": {"x": 1}}},
        {"id": "c", "echo": 1}
    ]}));
    assert_eq!(p.nodes[0].on_error(), &OnError::Continue);
    assert_eq!(p.nodes[1].on_error(), &OnError::Fallback(json!({"x": 1})));
    assert_eq!(p.nodes[2].on_error(), &OnError::Fail);
    assert!(serde_json::from_value::<Plan>(json!({"nodes": [{"id": "a", "echo": 1, "on_error": "ignore"}]})).is_err());
}

#[test]
fn tools_must_exist_and_args_match_the_schema() {
    check(
        json!({"nodes": [
            {"id": "a", "tool": "t.nope"},
            {"id": "b", "tool": "t.echo", "args": {"message": 5}},
            {"id": "c", "tool": "t.echo", "args": {}},
            {"id": "d", "tool": "t.sleep", "args": {"ms": "soon"}}
        ]}),
        &[
            "nodes[0].tool: node \"a\": unknown tool \"t.nope\"; GET /v1/tools lists the tools (`server.tool`)",
            "nodes[1].args.message: node \"b\": does not match the input schema of t.echo: 5 is not of type \"string\"",
            "nodes[2].args: node \"c\": does not match the input schema of t.echo: \"message\" is a required property",
            "nodes[3].args.ms: node \"d\": does not match the input schema of t.sleep: \"soon\" is not of type \"integer\"",
        ],
    );
}

#[test]
fn template_positions_are_checked_by_type_where_known() {
    check(
        json!({"input": {"n": 5, "word": "hi"}, "nodes": [
            {"id": "v", "value": {"ms": "ten"}},
            // Known values: plan input and static value nodes.
            {"id": "a", "tool": "t.echo", "args": {"message": "{{input.n}}"}},
            {"id": "b", "tool": "t.sleep", "args": {"ms": "{{nodes.v.output.ms}}"}},
            {"id": "ok1", "tool": "t.sleep", "args": {"ms": "{{input.n}}"}},
            // Text around a reference is a string, whatever the reference holds.
            {"id": "c", "tool": "t.sleep", "args": {"ms": "{{input.n}}0"}},
            {"id": "ok2", "tool": "t.echo", "args": {"message": "n={{input.n}}"}},
            // Unknown until run time: not judged now.
            {"id": "t", "tool": "t.echo", "args": {"message": "x"}},
            {"id": "ok3", "tool": "t.sleep", "args": {"ms": "{{nodes.t.output}}"}}
        ]}),
        &[
            "nodes[1].args.message: node \"a\": does not match the input schema of t.echo: 5 is not of type \"string\"",
            "nodes[2].args.ms: node \"b\": does not match the input schema of t.sleep: \"ten\" is not of type \"integer\"",
            "nodes[4].args.ms: node \"c\": does not match the input schema of t.sleep: \"\" is not of type \"integer\"",
        ],
    );
}

#[test]
fn references_must_resolve() {
    check(
        json!({"input": {"repo": "x"}, "nodes": [
            {"id": "a", "value": "{{nodes.ghost.output}}"},
            {"id": "b", "value": "{{input.missing}}"},
            {"id": "c", "value": "{{item}}"},
            {"id": "d", "value": "{{nodes.d.output}}"},
            {"id": "e", "value": "{{env.HOME}}"}
        ], "output": "{{nodes.nobody.output}}"}),
        &[
            "nodes[0].value: node \"a\": {{nodes.ghost.output}} names node \"ghost\", but no node has that id",
            "nodes[1].value: node \"b\": {{input.missing}} does not resolve in the plan's `input` (it has [\"repo\"])",
            "nodes[2].value: node \"c\": {{item}} is only defined inside a map's `node`",
            "nodes[3].value: node \"d\": {{nodes.d.output}}: a node cannot reference its own output",
            "nodes[4].value: node \"e\": {{env.HOME}}: unknown reference; use nodes.<id>.output, input.<name> or item, followed by .field or [index]",
            "output: {{nodes.nobody.output}} names node \"nobody\", but no node has that id",
        ],
    );
}

#[test]
fn maps() {
    check(
        json!({"nodes": [
            {"id": "list", "value": ["a", "b"]},
            {"id": "ok", "map": {"over": "{{nodes.list.output}}", "concurrency": 2, "node": {"tool": "t.echo", "args": {"message": "{{item}}"}}}},
            {"id": "bad", "map": {"over": 5, "concurrency": 0, "node": {"tool": "t.echo", "args": {"message": 1}}}},
            {"id": "none", "map": {"over": [], "node": {}}},
            {"id": "item_in_over", "map": {"over": "{{item}}", "node": {"value": 1}}}
        ]}),
        &[
            "nodes[2].map.over: node \"bad\": give a list, or one reference to a list such as \"{{nodes.x.output.items}}\"",
            "nodes[2].map.concurrency: node \"bad\": must be between 1 and 256; got 0",
            "nodes[2].map.node.args.message: node \"bad\": does not match the input schema of t.echo: 1 is not of type \"string\"",
            "nodes[3].map.node: node \"none\": the map template needs exactly one step: tool, llm, value, sleep, echo or fail",
            "nodes[4].map.over: node \"item_in_over\": {{item}} is only defined inside a map's `node`",
        ],
    );
}

#[test]
fn llm_steps() {
    check(
        json!({"nodes": [
            {"id": "a", "llm": {"prompt": "Summarise {{nodes.b.output}}", "schema": {"type": "object"}}},
            {"id": "b", "llm": {"prompt": " ", "schema": {"type": 12}}}
        ]}),
        &[
            "nodes[1].llm.prompt: node \"b\": must not be empty",
            "nodes[1].llm.schema: node \"b\": not a usable JSON Schema: 12 is not valid under any of the schemas listed in the 'anyOf' keyword",
        ],
    );
}

#[test]
fn without_a_catalogue_tools_are_not_checked() {
    let p = plan(json!({"nodes": [{"id": "a", "tool": "anything.goes", "args": {"x": 1}}]}));
    assert_eq!(validate(&p, None), vec![]);
}

#[test]
fn dependencies_join_depends_on_and_references() {
    let p = plan(json!({"nodes": [
        {"id": "a", "echo": 1},
        {"id": "b", "echo": 2},
        {"id": "c", "value": "{{nodes.a.output}} {{nodes.a.output}}", "depends_on": ["b"]},
        {"id": "m", "map": {"over": "{{nodes.c.output}}", "node": {"value": "{{nodes.b.output}} {{item}}"}}}
    ]}));
    assert_eq!(dependencies(&p), vec![vec![], vec![], vec![1, 0], vec![2, 1]]);
}

fn analysed(value: Value) -> analysis::Analysis {
    let p = plan(value);
    assert_eq!(validate(&p, None), vec![]);
    let estimates = Estimates { tools: HashMap::from([("t.slow".to_owned(), 500.0)]), tool_ms: 100.0, llm_ms: 1000.0 };
    analyse(&p, &estimates)
}

#[test]
fn analysis_of_a_diamond() {
    let a = analysed(json!({"nodes": [
        {"id": "a", "sleep": {"ms": 10}},
        {"id": "b", "tool": "t.slow", "depends_on": ["a"]},
        {"id": "c", "tool": "t.fast", "depends_on": ["a"]},
        {"id": "d", "llm": {"prompt": "{{nodes.b.output}} {{nodes.c.output}}"}}
    ]}));
    assert_eq!(a.levels, vec![vec!["a"], vec!["b", "c"], vec!["d"]]);
    assert_eq!((a.width, a.depth), (2, 3));
    assert_eq!(a.critical_path, vec!["a", "b", "d"]);
    assert_eq!(a.estimated_ms, 1510.0);
    assert_eq!(a.total_work_ms, 1610.0);
}

#[test]
fn analysis_respects_max_parallel_and_maps() {
    let a = analysed(json!({"max_parallel": 2, "nodes": [
        {"id": "a", "sleep": {"ms": 100}}, {"id": "b", "sleep": {"ms": 100}},
        {"id": "c", "sleep": {"ms": 100}}, {"id": "d", "sleep": {"ms": 100}},
        {"id": "m", "map": {"over": [1, 2, 3, 4, 5], "concurrency": 2, "node": {"sleep": {"ms": 10}}}}
    ]}));
    assert_eq!(a.width, 5);
    assert_eq!(a.node_estimates_ms["m"], 30.0);
    assert_eq!(a.estimated_ms, 215.0);
}

#[test]
fn graphs_as_mermaid_and_dot() {
    let p = plan(json!({"nodes": [
        {"id": "a", "tool": "t.echo", "args": {"message": "hi"}},
        {"id": "b", "value": "{{nodes.a.output}}"}
    ]}));
    assert_eq!(mermaid(&p, None), "flowchart TD\n    n0[\"a<br/>t.echo\"]\n    n1[\"b<br/>value\"]\n    n0 --> n1\n");
    let states = HashMap::from([("a".to_owned(), NodeState { status: "succeeded".into(), duration_ms: Some(12.4) })]);
    let drawn = mermaid(&p, Some(&states));
    assert!(drawn.contains("n0[\"a<br/>t.echo<br/>succeeded 12 ms\"]"), "{drawn}");
    assert!(drawn.contains("class n0 succeeded\n") && drawn.contains("class n1 pending\n"), "{drawn}");
    let drawn = dot(&p, Some(&states));
    assert!(drawn.starts_with("digraph plan {"), "{drawn}");
    assert!(drawn.contains("\"a\" [label=\"a\\nt.echo\\nsucceeded 12 ms\", fillcolor=\"#c8e6c9\"];"), "{drawn}");
    assert!(drawn.contains("\"a\" -> \"b\";"), "{drawn}");
}

#[test]
fn validating_and_analysing_1000_nodes_is_fast() {
    let nodes: Vec<Value> = (0..1000)
        .map(|i| {
            let deps: Vec<String> = if i < 20 { vec![] } else { vec![format!("n{}", i - 20), format!("n{}", i - 7)] };
            json!({"id": format!("n{i}"), "tool": "t.echo", "args": {"message": format!("{{{{nodes.n{}.output}}}}", i.max(20) - 20)}, "depends_on": deps})
        })
        .collect();
    let mut nodes = nodes;
    for (i, node) in nodes.iter_mut().enumerate().take(20) {
        *node = json!({"id": format!("n{i}"), "tool": "t.echo", "args": {"message": "start"}});
    }
    let p = plan(json!({"nodes": nodes, "max_parallel": 20}));
    let started = std::time::Instant::now();
    assert_eq!(validate(&p, Some(&catalogue())), vec![]);
    let a = analyse(&p, &Estimates::default());
    let took = started.elapsed();
    eprintln!("validate + analyse, 1000 nodes: {took:?}");
    assert_eq!(a.levels.iter().map(Vec::len).sum::<usize>(), 1000);
    // Debug builds are slower than release; the release figure is in `orch bench plans`.
    assert!(took.as_millis() < 500, "took {took:?}");
}

#[test]
fn the_map_limit_holds_for_references_known_before_running() {
    let limits = PlanLimits { max_items: 3, ..PlanLimits::default() };
    let p = plan(json!({
        "input": {"xs": [1, 2, 3, 4], "few": [1, 2]},
        "nodes": [
            {"id": "lit", "map": {"over": [1, 2, 3, 4], "node": {"echo": "{{item}}"}}},
            {"id": "inp", "map": {"over": "{{input.xs}}", "node": {"echo": "{{item}}"}}},
            {"id": "list", "value": [1, 2, 3, 4]},
            {"id": "val", "map": {"over": "{{nodes.list.output}}", "node": {"echo": "{{item}}"}}},
            {"id": "ok", "map": {"over": "{{input.few}}", "node": {"echo": "{{item}}"}}},
            // Known only at run time: checked when the map starts.
            {"id": "later", "value": "{{input.xs}}"},
            {"id": "run", "map": {"over": "{{nodes.later.output}}", "node": {"echo": "{{item}}"}}}
        ]
    }));
    let got: Vec<String> =
        validate_with(&p, None, &limits).into_iter().map(|i| format!("{}: {}", i.field, i.message)).collect();
    assert_eq!(
        got,
        [
            "nodes[0].map.over: node \"lit\": a map runs over at most 3 items (ORCH_PLAN_MAX_ITEMS); the list has 4",
            "nodes[1].map.over: node \"inp\": a map runs over at most 3 items (ORCH_PLAN_MAX_ITEMS); {{input.xs}} has 4",
            "nodes[3].map.over: node \"val\": a map runs over at most 3 items (ORCH_PLAN_MAX_ITEMS); {{nodes.list.output}} has 4",
        ]
    );
    assert_eq!(validate(&p, None), vec![]);
}

/// n8n evaluates `{{...}}` in expressions, so plans sent from n8n use
/// `${...}`: it orders and validates as `{{...}}` does, and a `${...}` that
/// names no plan value (`${HOME}`) is text.
#[test]
fn n8n_eats_plan_references() {
    let p = plan(json!({"input": {"xs": ["a"]}, "nodes": [
        {"id": "a", "echo": 1},
        {"id": "b", "echo": 2},
        {"id": "c", "value": "${nodes.a.output} ${HOME}", "depends_on": ["b"]},
        {"id": "m", "map": {"over": "${ nodes.c.output }", "node": {"value": "${nodes.b.output} ${item}"}}},
        {"id": "x", "map": {"over": "${input.xs}", "node": {"tool": "t.echo", "args": {"message": "${item}"}}}}
    ]}));
    assert_eq!(dependencies(&p), vec![vec![], vec![], vec![1, 0], vec![2, 1], vec![]]);
    assert_eq!(validate(&p, Some(&catalogue())), vec![]);
    check(
        json!({"nodes": [
            {"id": "a", "value": "${nodes.ghost.output}"},
            {"id": "b", "value": "${item}"},
            {"id": "c", "value": "${env.HOME} ${PATH}"}
        ]}),
        &[
            "nodes[0].value: node \"a\": {{nodes.ghost.output}} names node \"ghost\", but no node has that id",
            "nodes[1].value: node \"b\": {{item}} is only defined inside a map's `node`",
        ],
    );
}
