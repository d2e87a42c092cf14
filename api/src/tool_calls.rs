//! OpenAI function calling on CLI providers that do not speak it.
//!
//! The functions go into the system prompt with a strict answer format: one
//! JSON object, `{"tool_calls": [{"name", "arguments"}]}` to call functions or
//! `{"content": "..."}` to answer. The answer is read the way the planner
//! reads plans (the whole answer, a ``` fenced block, or the first JSON
//! objects in prose) and checked: known function, arguments valid for its
//! schema, `tool_choice` and `parallel_tool_calls` obeyed. A bad answer is
//! asked again once with the problems listed ([`repair_message`]). Prior calls
//! and their results are rendered into the conversation as text
//! ([`render_call`], [`render_result`]).
//!
//! Plain functions, no HTTP: `/v1/chat/completions` and `/v1/responses` share them.

use std::fmt::Write;

use serde_json::{Value, json};

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments (an object schema).
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    Auto,
    None,
    Required,
    Named(String),
}

/// What the model may do this turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub functions: Vec<Function>,
    pub choice: Choice,
    /// `parallel_tool_calls` (default true): more than one call per answer.
    pub parallel: bool,
}

/// One function call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `call_…`, unique.
    pub id: String,
    pub name: String,
    /// The arguments as JSON text (an object).
    pub arguments: String,
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Text(String),
    Calls(Vec<Call>),
}

/// A problem with a request field: (field, what is wrong and what is allowed).
pub type FieldError = (String, String);

/// OpenAI's (and Anthropic's) rule for function names.
pub fn valid_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn function(
    name: Option<&Value>,
    description: Option<&Value>,
    parameters: Option<&Value>,
    field: &str,
) -> Result<Function, FieldError> {
    let name = name
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty() && n.len() <= 128)
        .ok_or_else(|| (format!("{field}.name"), "must be a function name of 1 to 128 characters".to_owned()))?;
    let description = match description {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(d)) => d.clone(),
        Some(_) => return Err((format!("{field}.description"), "must be a string".to_owned())),
    };
    let parameters = match parameters {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err((format!("{field}.parameters"), "must be a JSON Schema object".to_owned())),
    };
    Ok(Function { name: name.to_owned(), description, parameters })
}

fn check_unique(functions: &[Function], field: &str) -> Result<(), FieldError> {
    for (i, f) in functions.iter().enumerate() {
        if functions[..i].iter().any(|g| g.name == f.name) {
            return Err((format!("{field}[{i}]"), format!("the function name {:?} is used twice", f.name)));
        }
    }
    Ok(())
}

/// The functions of a chat completion's `tools`: `{"type": "function", "function": {name, description, parameters}}`.
pub fn chat_functions(tools: &[Value]) -> Result<Vec<Function>, FieldError> {
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let field = format!("tools[{i}]");
        if tool["type"] != "function" {
            return Err((format!("{field}.type"), "only \"function\" tools are supported".to_owned()));
        }
        let f = &tool["function"];
        if !f.is_object() {
            return Err((
                format!("{field}.function"),
                "must be an object with name, description, parameters".to_owned(),
            ));
        }
        out.push(function(f.get("name"), f.get("description"), f.get("parameters"), &format!("{field}.function"))?);
    }
    check_unique(&out, "tools")?;
    Ok(out)
}

/// The functions of a Responses request's `tools`: `{"type": "function", name, description, parameters, strict}`.
pub fn responses_functions(tools: &[Value]) -> Result<Vec<Function>, FieldError> {
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let field = format!("tools[{i}]");
        match tool["type"].as_str() {
            Some("function") => {}
            Some(other) => {
                return Err((
                    format!("{field}.type"),
                    format!("tool type {other:?} is not supported; only \"function\" tools are"),
                ));
            }
            None => return Err((format!("{field}.type"), "must be \"function\"".to_owned())),
        }
        out.push(function(tool.get("name"), tool.get("description"), tool.get("parameters"), &field)?);
    }
    check_unique(&out, "tools")?;
    Ok(out)
}

/// `tool_choice`: `auto`, `none`, `required`, or a named function
/// (`{"type": "function", "function": {"name"}}` or, in the Responses API,
/// `{"type": "function", "name"}`).
pub fn choice(value: Option<&Value>, functions: &[Function]) -> Result<Choice, FieldError> {
    let field = || "tool_choice".to_owned();
    let choice = match value {
        None | Some(Value::Null) => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Choice::Auto,
            "none" => Choice::None,
            "required" => Choice::Required,
            other => {
                return Err((field(), format!("{other:?} is not one of auto, none, required, or a named function")));
            }
        },
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| o.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| (field(), "a named choice needs the function's name".to_owned()))?;
            Choice::Named(name.to_owned())
        }
        Some(_) => {
            return Err((
                field(),
                "must be auto, none, required, or {\"type\": \"function\", \"function\": {\"name\"}}".to_owned(),
            ));
        }
    };
    if choice != Choice::None && choice != Choice::Auto && functions.is_empty() {
        return Err((field(), "requires tools".to_owned()));
    }
    if let Choice::Named(name) = &choice
        && !functions.iter().any(|f| &f.name == name)
    {
        return Err((field(), format!("names {name:?}, which is not among the tools")));
    }
    Ok(choice)
}

impl ToolSpec {
    /// Whether the model is offered functions at all.
    pub fn active(&self) -> bool {
        !self.functions.is_empty() && self.choice != Choice::None
    }
}

/// The system prompt part that offers the functions and fixes the answer format.
pub fn instructions(spec: &ToolSpec) -> String {
    let mut out = String::from(
        "You are connected to an application that runs functions for you. You cannot run them yourself \
         and must not use any tools of your own environment for this conversation.\n\n\
         Answer with exactly one JSON object and nothing else (no prose, no code fence):\n\
         - to call functions: {\"tool_calls\": [{\"name\": \"<function name>\", \"arguments\": {<arguments>}}]}\n\
         - to answer the user: {\"content\": \"<your answer>\"}\n\n\
         The arguments must be valid for the function's parameters schema. After a call, the application \
         sends the results as \"Tool result\" messages; then answer or call again.\n",
    );
    match &spec.choice {
        Choice::Required => out.push_str("You must call at least one function now.\n"),
        Choice::Named(name) => {
            let _ = writeln!(out, "You must call the function `{name}` now.");
        }
        _ => {}
    }
    if !spec.parallel {
        out.push_str("Call at most one function per answer.\n");
    }
    out.push_str("\nFunctions:\n");
    for f in &spec.functions {
        let _ = writeln!(out, "- name: {}", f.name);
        if !f.description.is_empty() {
            let _ = writeln!(out, "  description: {}", f.description.replace('\n', " "));
        }
        let _ = writeln!(out, "  parameters: {}", f.parameters);
    }
    out
}

/// The request to answer again, after `problems` with the last answer.
pub fn repair_message(problems: &[String]) -> String {
    let mut out = String::from("Your last answer could not be used:\n");
    for p in problems {
        let _ = writeln!(out, "- {p}");
    }
    out.push_str(
        "Answer again with exactly one JSON object: {\"tool_calls\": [{\"name\", \"arguments\"}]} or {\"content\": \"...\"}.",
    );
    out
}

/// A new unique tool-call id.
pub fn new_call_id() -> String {
    format!("call_{}", uuid::Uuid::new_v4().simple())
}

/// How a prior call reads in the conversation the provider sees.
pub fn render_call(name: &str, arguments: &str, id: &str) -> String {
    format!("[Called function `{name}` (call id {id}) with arguments: {arguments}]")
}

/// How a function's result reads in the conversation the provider sees.
pub fn render_result(id: &str, name: Option<&str>, content: &str) -> String {
    match name {
        Some(name) => format!("[Result of function `{name}` (call id {id})]\n{content}"),
        None => format!("[Result of call id {id}]\n{content}"),
    }
}

/// The conversation a provider sees, built from chat completion messages or
/// Responses input items: `{"role", "content"}` messages, with earlier function
/// calls and their results rendered as text.
#[derive(Debug, Default)]
pub struct Transcript {
    pub messages: Vec<Value>,
    /// Function names by call id, for naming results.
    called: Vec<(String, String)>,
}

impl Transcript {
    /// A message of `role` (`system`, `user`, `assistant`).
    pub fn say(&mut self, role: &str, content: String) {
        self.messages.push(json!({"role": role, "content": content}));
    }

    /// An earlier call by the assistant, added to its last message (or a new
    /// one). `arguments` is JSON text (as OpenAI sends it) or a JSON value.
    pub fn call(&mut self, name: &str, arguments: &Value, id: &str) {
        let arguments = match arguments {
            Value::String(a) => a.clone(),
            Value::Null => "{}".to_owned(),
            other => other.to_string(),
        };
        self.called.push((id.to_owned(), name.to_owned()));
        let line = render_call(name, &arguments, id);
        match self.messages.last_mut() {
            Some(last) if last["role"] == "assistant" => {
                let mut text = last["content"].as_str().unwrap_or_default().to_owned();
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&line);
                last["content"] = json!(text);
            }
            _ => self.say("assistant", line),
        }
    }

    /// The result of call `id`, named by the call it answers (else by `name`).
    pub fn result(&mut self, id: &str, name: Option<&str>, content: &str) {
        let called = self.called.iter().rev().find(|(c, _)| c == id).map(|(_, n)| n.as_str());
        let text = render_result(id, called.or(name), content);
        self.messages.push(json!({"role": "tool", "content": text}));
    }
}

/// Reads the model's answer under `spec`: text or valid calls, else the problems.
pub fn read_answer(text: &str, spec: &ToolSpec) -> Result<Answer, Vec<String>> {
    let mut problems = Vec::new();
    for candidate in orch_planner::prompt::candidates(text) {
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(candidate) else { continue };
        if let Some(calls) = map.get("tool_calls") {
            let Some(calls) = calls.as_array() else {
                problems.push("`tool_calls` must be a list".to_owned());
                break;
            };
            return check_calls(calls, spec).map(Answer::Calls);
        }
        if map.contains_key("name") && map.contains_key("arguments") {
            return check_calls(&[Value::Object(map)], spec).map(Answer::Calls);
        }
        if let Some(content) = map.get("content") {
            let text = match content {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            return text_allowed(text, spec);
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Prose: a plain answer.
    text_allowed(text.trim().to_owned(), spec)
}

fn text_allowed(text: String, spec: &ToolSpec) -> Result<Answer, Vec<String>> {
    match &spec.choice {
        Choice::Required => Err(vec!["a function call is required, but the answer calls none".to_owned()]),
        Choice::Named(name) => Err(vec![format!("a call of `{name}` is required, but the answer calls none")]),
        _ => Ok(Answer::Text(text)),
    }
}

fn check_calls(calls: &[Value], spec: &ToolSpec) -> Result<Vec<Call>, Vec<String>> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    if calls.is_empty() {
        return Err(vec!["`tool_calls` is empty".to_owned()]);
    }
    if spec.choice == Choice::None {
        return Err(vec!["functions may not be called now; answer with {\"content\": ...}".to_owned()]);
    }
    if !spec.parallel && calls.len() > 1 {
        problems.push(format!("{} calls in one answer; call at most one function", calls.len()));
    }
    for (i, call) in calls.iter().enumerate() {
        let name = call["name"].as_str().or_else(|| call["function"]["name"].as_str()).unwrap_or_default();
        let Some(function) = spec.functions.iter().find(|f| f.name == name) else {
            let known: Vec<&str> = spec.functions.iter().map(|f| f.name.as_str()).collect();
            problems.push(format!("call {i}: there is no function {name:?}; the functions are {}", known.join(", ")));
            continue;
        };
        if let Choice::Named(wanted) = &spec.choice
            && wanted != name
        {
            problems.push(format!("call {i}: only `{wanted}` may be called now, not `{name}`"));
            continue;
        }
        let raw = if call.get("arguments").is_some() { &call["arguments"] } else { &call["function"]["arguments"] };
        let arguments = match raw {
            Value::Null => json!({}),
            // Some models send the arguments as JSON text, as the OpenAI API does.
            Value::String(s) => match serde_json::from_str::<Value>(s) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("call {i} ({name}): the arguments are not JSON: {e}"));
                    continue;
                }
            },
            other => other.clone(),
        };
        if !arguments.is_object() {
            problems.push(format!("call {i} ({name}): the arguments must be a JSON object"));
            continue;
        }
        if let Some(violations) = crate::tools::violations(&function.parameters, &arguments)
            && !violations.is_empty()
        {
            for v in violations {
                problems.push(format!("call {i} ({name}): {}: {}", v.path, v.message));
            }
            continue;
        }
        out.push(Call { id: new_call_id(), name: name.to_owned(), arguments: arguments.to_string() });
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(choice: Choice, parallel: bool) -> ToolSpec {
        let tools = vec![json!({"type": "function", "function": {"name": "everything.echo", "description": "Echo",
            "parameters": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"],
                           "additionalProperties": false, "$schema": "http://json-schema.org/draft-07/schema#"}}})];
        ToolSpec { functions: chat_functions(&tools).unwrap(), choice, parallel }
    }

    #[test]
    fn answers_are_read_bare_fenced_or_in_prose() {
        let s = spec(Choice::Auto, true);
        for text in [
            r#"{"tool_calls": [{"name": "everything.echo", "arguments": {"message": "hi"}}]}"#,
            "Sure.\n```json\n{\"tool_calls\": [{\"name\": \"everything.echo\", \"arguments\": {\"message\": \"hi\"}}]}\n```",
            r#"I will call it: {"name": "everything.echo", "arguments": "{\"message\": \"hi\"}"} now"#,
        ] {
            let Ok(Answer::Calls(calls)) = read_answer(text, &s) else { panic!("{text}") };
            assert_eq!(
                (calls[0].name.as_str(), calls[0].arguments.as_str()),
                ("everything.echo", r#"{"message":"hi"}"#)
            );
            assert!(calls[0].id.starts_with("call_"));
        }
        assert_eq!(read_answer(r#"{"content": "done"}"#, &s), Ok(Answer::Text("done".into())));
        assert_eq!(read_answer("Plain prose.", &s), Ok(Answer::Text("Plain prose.".into())));
    }

    #[test]
    fn bad_calls_are_named() {
        let s = spec(Choice::Auto, false);
        let e =
            read_answer(r#"{"tool_calls": [{"name": "everything.echo", "arguments": {"msg": 1}}]}"#, &s).unwrap_err();
        assert!(e.iter().any(|p| p.contains("message")), "{e:?}");
        let e = read_answer(r#"{"tool_calls": [{"name": "nope", "arguments": {}}]}"#, &s).unwrap_err();
        assert!(e[0].contains("no function \"nope\""), "{e:?}");
        let two = r#"{"tool_calls": [{"name": "everything.echo", "arguments": {"message": "a"}}, {"name": "everything.echo", "arguments": {"message": "b"}}]}"#;
        assert!(read_answer(two, &s).is_err());
        assert!(
            matches!(read_answer(two, &spec(Choice::Auto, true)), Ok(Answer::Calls(c)) if c.len() == 2 && c[0].id != c[1].id)
        );
        assert!(read_answer("prose", &spec(Choice::Required, true)).is_err());
        assert!(read_answer("prose", &spec(Choice::Named("everything.echo".into()), true)).is_err());
    }

    #[test]
    fn choices_are_checked() {
        let f = spec(Choice::Auto, true).functions;
        assert_eq!(choice(Some(&json!("required")), &f), Ok(Choice::Required));
        assert_eq!(
            choice(Some(&json!({"type": "function", "function": {"name": "everything.echo"}})), &f),
            Ok(Choice::Named("everything.echo".into()))
        );
        assert_eq!(
            choice(Some(&json!({"type": "function", "name": "everything.echo"})), &f),
            Ok(Choice::Named("everything.echo".into()))
        );
        assert_eq!(choice(Some(&json!("sometimes")), &f).unwrap_err().0, "tool_choice");
        assert!(choice(Some(&json!({"type": "function", "function": {"name": "x"}})), &f).is_err());
    }
}
