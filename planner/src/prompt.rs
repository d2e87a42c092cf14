//! The LLM planner's pure half: the prompt that asks a model for a plan (the
//! request, a catalogue of the allowed tools ranked by relevance and trimmed,
//! the plan format, and the instruction to parallelise), the repair prompt
//! after a rejected answer, reading a plan out of an answer, and the cache key.
//! Running the model is the caller's job (orch-worker's `planning`).

use std::fmt::Write as _;

use serde_json::Value;

use crate::{Catalogue, Plan, PlanIssue, issue};

/// A tool the planner may use, as the prompt shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolInfo {
    /// `server.tool`.
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

/// The tools a prompt offers and how many were left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer<'a> {
    pub tools: Vec<&'a ToolInfo>,
    pub left_out: usize,
}

/// A schema longer than this is shown as its property names and types only.
const SCHEMA_CHARS: usize = 1200;
/// The previous answer quoted in a repair prompt is cut after this many characters.
const QUOTED_ANSWER_CHARS: usize = 6000;

/// The validation catalogue of these tools.
pub fn catalogue(tools: &[ToolInfo]) -> Catalogue {
    Catalogue { tools: tools.iter().map(|t| (t.name.clone(), t.input_schema.clone())).collect() }
}

/// The request as the cache sees it: lower case, whitespace collapsed.
pub fn normalise(request: &str) -> String {
    request.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
}

/// A stable fingerprint of the tools (names, descriptions, schemas), FNV-1a
/// over them in name order: a changed tool means a new plan.
pub fn fingerprint(tools: &[ToolInfo]) -> String {
    let mut sorted: Vec<&ToolInfo> = tools.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for tool in sorted {
        for part in [tool.name.as_str(), "\0", tool.description.as_str(), "\0", &tool.input_schema.to_string(), "\n"] {
            for byte in part.bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    format!("{hash:016x}")
}

/// What the plan cache is keyed by: the normalised request, the catalogue's
/// fingerprint and the planner model (`default` when none was asked for).
pub fn cache_key(request: &str, tools: &[ToolInfo], model: Option<&str>) -> String {
    format!("{}\n{}\n{}", model.unwrap_or("default"), fingerprint(tools), normalise(request))
}

fn words(text: &str) -> Vec<String> {
    const STOP: [&str; 24] = [
        "the", "and", "for", "with", "from", "into", "that", "this", "then", "than", "each", "all", "are", "was",
        "its", "their", "them", "what", "when", "which", "who", "how", "per", "our",
    ];
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 3)
        .map(str::to_lowercase)
        .filter(|w| !STOP.contains(&w.as_str()))
        .collect()
}

/// Whether two words are the same up to an ending ("issues" / "issue", "writes" / "write").
fn alike(a: &str, b: &str) -> bool {
    let stem = |w: &str| w.chars().take(5).collect::<String>();
    a == b || (a.len() >= 4 && b.len() >= 4 && stem(a) == stem(b))
}

/// How many of the request's words the tool's name and description mention.
fn relevance(request: &[String], tool: &ToolInfo) -> usize {
    let own = words(&format!("{} {}", tool.name, tool.description));
    request.iter().filter(|w| own.iter().any(|o| alike(w, o))).count()
}

/// The `max` tools most relevant to the request, most relevant first (ties by name).
pub fn offer<'a>(request: &str, tools: &'a [ToolInfo], max: usize) -> Offer<'a> {
    let request = words(request);
    let mut ranked: Vec<(usize, &ToolInfo)> = tools.iter().map(|t| (relevance(&request, t), t)).collect();
    ranked.sort_by(|(a, ta), (b, tb)| b.cmp(a).then_with(|| ta.name.cmp(&tb.name)));
    let left_out = ranked.len().saturating_sub(max);
    Offer { tools: ranked.into_iter().take(max).map(|(_, t)| t).collect(), left_out }
}

/// The schema as the prompt shows it: whole when short, else property names and types.
fn schema_text(schema: &Value) -> String {
    let whole = schema.to_string();
    if whole.len() <= SCHEMA_CHARS {
        return whole;
    }
    let required: Vec<&str> = schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let properties = schema["properties"].as_object().into_iter().flatten().map(|(name, p)| {
        let kind = p["type"].as_str().unwrap_or("any");
        let mark = if required.contains(&name.as_str()) { "" } else { "?" };
        format!("{name}{mark}: {kind}")
    });
    format!("{{{}}} (abridged)", properties.collect::<Vec<_>>().join(", "))
}

const FORMAT: &str = r#"Answer with one JSON object and nothing else:
{"nodes": [...], "output": <template of the result>, "max_parallel": <optional number>}

Each node has a unique "id" (letters, digits, "_" or "-") and exactly one step:
- "tool": "<server.tool>" and "args": {...} matching that tool's argument schema;
- "llm": {"prompt": "...", "system": "..." (optional), "schema": {JSON Schema} (optional, the answer is then JSON)}
  to read, reason about or write from other nodes' outputs;
- "map": {"over": <a list or a reference to one>, "concurrency": <n>, "node": {<one step, without id>}}
  to run a step once per item; "${item}" is the item;
- "value": <any JSON> to combine outputs.
References: "${nodes.<id>.output}", with paths such as "${nodes.<id>.output.items[0].title}", inside
strings or as a whole value. A reference makes the node wait for <id>; "depends_on": ["<id>"] orders
without passing data. Optional per node: "timeout" (seconds), "retries" (0-10),
"on_error": "fail" | "continue" | {"fallback": <value>}.
"output" is the job's result, e.g. {"report": "${nodes.write.output}"}."#;

const PARALLEL: &str = "Maximise parallelism, as LLMCompiler does: a node depends only on the nodes whose \
outputs it uses, so every step that does not need another step's result starts at once. Never chain \
independent steps; fan out over lists with a map. Use only the tools listed, with exactly their names; \
when no tool fits part of the request, use an llm step. The graph must have no cycles.";

/// The prompt asking for a plan for `request` using `offer`'s tools.
pub fn prompt(request: &str, offer: &Offer<'_>) -> String {
    let mut out = String::from(
        "You are the planner of Orch, a job service. Turn the request into a plan: a graph of steps \
         (MCP tool calls, LLM calls, fan-outs) whose edges are data dependencies.\n\n",
    );
    let _ = writeln!(out, "Request:\n{}\n", request.trim());
    if offer.tools.is_empty() {
        out.push_str("Tools: none are allowed; use llm and value steps only.\n");
    } else {
        out.push_str("Tools you may call (name: what it does; argument schema):\n");
        for tool in &offer.tools {
            let description = tool.description.split_whitespace().collect::<Vec<_>>().join(" ");
            let _ = writeln!(out, "- {}: {}; args {}", tool.name, description, schema_text(&tool.input_schema));
        }
        if offer.left_out > 0 {
            let _ = writeln!(out, "({} less relevant tools are not shown and may not be used.)", offer.left_out);
        }
    }
    let _ = write!(out, "\n{PARALLEL}\n\n{FORMAT}\n");
    out
}

/// The prompt after a rejected answer: the first prompt, the answer, and what was wrong with it.
pub fn repair_prompt(request: &str, offer: &Offer<'_>, answer: &str, issues: &[PlanIssue]) -> String {
    let mut out = prompt(request, offer);
    let quoted: String = answer.chars().take(QUOTED_ANSWER_CHARS).collect();
    let _ = write!(out, "\nYour previous answer was:\n{quoted}\n\nIt was rejected for these problems:\n");
    for i in issues {
        let _ = writeln!(out, "- {}: {}", i.field, i.message);
    }
    out.push_str("\nAnswer again with the whole corrected plan, as one JSON object only.\n");
    out
}

/// Reads the plan in a model's answer: the whole answer, a ``` fenced block,
/// or the first JSON object in prose; `{"plan": {...}}` is unwrapped. Errors
/// say why nothing usable was found (field `answer`).
pub fn read_answer(text: &str) -> Result<Plan, Vec<PlanIssue>> {
    let mut not_a_plan: Option<String> = None;
    let mut not_json: Option<String> = None;
    for candidate in candidates(text) {
        let value: Value = match serde_json::from_str(candidate) {
            Ok(value) => value,
            Err(err) => {
                not_json.get_or_insert_with(|| err.to_string());
                continue;
            }
        };
        let value = match value {
            Value::Object(mut map) if !map.contains_key("nodes") && map.get("plan").is_some_and(Value::is_object) => {
                map.remove("plan").unwrap_or_default()
            }
            Value::Object(map) => Value::Object(map),
            _ => continue,
        };
        match serde_json::from_value::<Plan>(value) {
            Ok(plan) => return Ok(plan),
            Err(err) => {
                not_a_plan.get_or_insert_with(|| err.to_string());
            }
        }
    }
    let message = match (not_a_plan, not_json) {
        (Some(err), _) => format!("the JSON is not a plan: {err}"),
        (None, Some(err)) => format!("no JSON object found in the answer (the JSON parser said: {err})"),
        (None, None) => "no JSON object found in the answer".to_owned(),
    };
    Err(vec![issue("answer", message)])
}

/// Where a JSON object might be in a model's answer, most likely first: ```
/// fenced blocks, the whole answer, then the first balanced `{...}` objects of
/// the prose. Shared with the API's tool-call answers.
pub fn candidates(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let Some(end) = after.find("```") else { break };
        let block = &after[..end];
        // Skip a language tag (```json).
        let body = block.split_once('\n').map_or(block, |(tag, body)| if tag.contains('{') { block } else { body });
        out.push(body.trim());
        rest = &after[end + 3..];
    }
    out.push(text.trim());
    let mut from = 0;
    // The first few balanced {...} objects of the prose.
    while out.len() < 24 {
        let Some(open) = text[from..].find('{').map(|i| i + from) else { break };
        match balanced_end(&text[open..]) {
            Some(len) => {
                out.push(&text[open..open + len]);
                from = open + len;
            }
            // Unbalanced: the answer was cut off; what is inside is no plan.
            None => break,
        }
    }
    out
}

/// Length of the JSON object `text` starts with, braces counted outside strings.
fn balanced_end(text: &str) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in text.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => depth += 1,
            '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tool(name: &str, description: &str) -> ToolInfo {
        ToolInfo {
            name: name.into(),
            description: description.into(),
            input_schema: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
        }
    }

    /// The answer read as a plan's node ids, or the first problem's message.
    fn check(answer: &str, expected: Result<&[&str], &str>) {
        let got = read_answer(answer)
            .map(|plan| plan.nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>())
            .map_err(|issues| format!("{}: {}", issues[0].field, issues[0].message));
        match (got, expected) {
            (Ok(ids), Ok(want)) => assert_eq!(ids, want, "{answer}"),
            (Err(msg), Err(want)) => assert!(msg.contains(want), "{msg:?} does not contain {want:?}"),
            (got, want) => panic!("{answer}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn reading_answers() {
        let plan = r#"{"nodes": [{"id": "a", "value": 1}, {"id": "b", "value": "{{nodes.a.output}}"}]}"#;
        check(plan, Ok(&["a", "b"]));
        check(&format!("```json\n{plan}\n```"), Ok(&["a", "b"]));
        check(&format!("Here is the plan:\n```\n{plan}\n```\nIt runs a first."), Ok(&["a", "b"]));
        check(&format!("Sure! {plan} This plan runs a, then b."), Ok(&["a", "b"]));
        check(&format!("{{\"plan\": {plan}}}"), Ok(&["a", "b"]));
        // Braces in prose before the plan do not hide it.
        check(&format!("Use {{braces}} wisely. {plan}"), Ok(&["a", "b"]));
        check(r#"{"nodes": [{"id": "a", "value": 1}"#, Err("answer: no JSON object found"));
        check("I cannot do that.", Err("answer: no JSON object found in the answer"));
        check(
            r#"{"nodes": [{"id": "a", "tool": "x.y", "argz": {}}]}"#,
            Err("answer: the JSON is not a plan: unknown field `argz`"),
        );
        check(r#"{"steps": []}"#, Err("the JSON is not a plan"));
    }

    #[test]
    fn ranking_and_trimming() {
        let tools = vec![
            tool("notion.create_page", "Creates a Notion page"),
            tool("github.list_issues", "Lists the issues of a repository"),
            tool("fs.read_file", "Reads a file"),
            tool("github.get_issue", "One issue with comments"),
        ];
        let offer = offer("Analyse the GitHub issues and write a weekly report to Notion", &tools, 3);
        let names: Vec<&str> = offer.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["github.get_issue", "github.list_issues", "notion.create_page"]);
        assert_eq!(offer.left_out, 1);
        let text = prompt("Analyse the GitHub issues", &offer);
        assert!(text.contains("- github.list_issues: Lists the issues of a repository; args {"), "{text}");
        assert!(text.contains("(1 less relevant tools are not shown"), "{text}");
        assert!(text.contains("LLMCompiler"), "{text}");
        assert!(!text.contains("fs.read_file"), "{text}");
    }

    #[test]
    fn repair_prompt_lists_the_problems() {
        let tools = [tool("t.echo", "Echoes")];
        let offer = offer("echo hi", &tools, 10);
        let text = repair_prompt("echo hi", &offer, "{oops", &[issue("nodes[0].tool", "unknown tool \"t.nope\"")]);
        assert!(text.starts_with(&prompt("echo hi", &offer)));
        assert!(text.contains("Your previous answer was:\n{oops\n"), "{text}");
        assert!(text.contains("- nodes[0].tool: unknown tool \"t.nope\"\n"), "{text}");
    }

    #[test]
    fn cache_keys() {
        let tools = vec![tool("a.x", "X"), tool("a.y", "Y")];
        let reversed: Vec<ToolInfo> = tools.iter().rev().cloned().collect();
        assert_eq!(cache_key("  Echo   HI ", &tools, None), cache_key("echo hi", &reversed, None));
        assert_ne!(cache_key("echo hi", &tools, None), cache_key("echo hi", &tools, Some("claude")));
        assert_ne!(cache_key("echo hi", &tools, None), cache_key("echo hi", &tools[..1], None));
        let mut changed = tools.clone();
        changed[0].description = "X, changed".into();
        assert_ne!(fingerprint(&tools), fingerprint(&changed));
    }

    #[test]
    fn long_schemas_are_abridged() {
        let mut properties = serde_json::Map::new();
        for i in 0..60 {
            properties.insert(format!("field_{i}"), json!({"type": "string", "description": "x".repeat(20)}));
        }
        let schema = json!({"type": "object", "properties": properties, "required": ["field_0"]});
        let text = schema_text(&schema);
        assert!(text.starts_with("{field_0: string, field_1?: string"), "{text}");
        assert!(text.ends_with("(abridged)"));
    }
}
