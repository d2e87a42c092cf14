//! References inside plan values: `${nodes.fetch.output.items[0].title}`,
//! `${input.repo}`, `${item}`; the older form `{{nodes.fetch.output}}` works
//! the same (n8n evaluates `{{...}}` itself, so plans sent from n8n need
//! `${...}`). A `${...}` that names no plan value (`${HOME}`) is text. A
//! string that is exactly one reference
//! becomes the referenced JSON value; references inside longer strings are
//! interpolated (strings as they are, other values as JSON).

use std::fmt;

use serde_json::Value;

/// What a reference starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// `nodes.<id>.output`
    Node(String),
    /// `input`: the plan's `input` values.
    Input,
    /// `item`: the current item inside a `map` template.
    Item,
}

/// One step into a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A parsed `{{...}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub root: Root,
    pub path: Vec<Segment>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.root {
            Root::Node(id) => write!(f, "nodes.{id}.output")?,
            Root::Input => f.write_str("input")?,
            Root::Item => f.write_str("item")?,
        }
        for segment in &self.path {
            match segment {
                Segment::Key(k) if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => {
                    write!(f, ".{k}")?
                }
                Segment::Key(k) => write!(f, "[{k:?}]")?,
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

const HINT: &str = "use nodes.<id>.output, input.<name> or item, followed by .field or [index]";

/// Parses the inside of `{{ ... }}`.
pub fn parse(text: &str) -> Result<Reference, String> {
    let text = text.trim();
    let mut segments = split_path(text).map_err(|e| format!("{{{{{text}}}}}: {e}"))?.into_iter();
    let root = match segments.next() {
        Some(Segment::Key(k)) if k == "input" => Root::Input,
        Some(Segment::Key(k)) if k == "item" => Root::Item,
        Some(Segment::Key(k)) if k == "nodes" => {
            let id = match segments.next() {
                Some(Segment::Key(id)) => id,
                _ => return Err(format!("{{{{{text}}}}}: name a node after `nodes.`; {HINT}")),
            };
            match segments.next() {
                Some(Segment::Key(k)) if k == "output" => Root::Node(id),
                _ => {
                    return Err(format!("{{{{{text}}}}}: only a node's `output` can be referenced: nodes.{id}.output"));
                }
            }
        }
        _ => return Err(format!("{{{{{text}}}}}: unknown reference; {HINT}")),
    };
    Ok(Reference { root, path: segments.collect() })
}

/// `a.b[0]["c d"]` → keys and indexes.
fn split_path(text: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut first = true;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']').ok_or("unclosed `[`")?;
            let inner = after[..end].trim();
            if let Ok(i) = inner.parse::<usize>() {
                out.push(Segment::Index(i));
            } else if let Ok(Value::String(key)) = serde_json::from_str::<Value>(inner) {
                out.push(Segment::Key(key));
            } else {
                return Err(format!("`[{inner}]` is neither an index nor a quoted key"));
            }
            rest = &after[end + 1..];
        } else {
            let body = if first { rest } else { rest.strip_prefix('.').ok_or("expected `.` or `[`")? };
            let end = body.find(['.', '[']).unwrap_or(body.len());
            let key = &body[..end];
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(format!("`{key}` is not a field name (letters, digits, '_', '-')"));
            }
            out.push(Segment::Key(key.to_owned()));
            rest = &body[end..];
        }
        first = false;
    }
    if out.is_empty() {
        return Err("empty reference".into());
    }
    Ok(out)
}

/// A piece of a string: literal text or a reference.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece<'a> {
    Text(&'a str),
    Ref(Result<Reference, String>),
}

/// Splits a string into text and references; `None` when it has none.
///
/// Two forms: `{{...}}`, and `${...}`, which n8n's expression engine leaves
/// alone (a plan typed into an n8n expression loses every `{{...}}`). A
/// `${...}` is a reference only when it starts with `nodes`, `input` or
/// `item`; any other (`${HOME}`) is text.
pub fn pieces(s: &str) -> Option<Vec<Piece<'_>>> {
    if !s.contains("{{") && !s.contains("${") {
        return None;
    }
    let mut out = Vec::new();
    let mut text_from = 0;
    let mut at = 0;
    while let Some(found) = s[at..].find(['{', '$']) {
        let start = at + found;
        let rest = &s[start..];
        if let Some(after) = rest.strip_prefix("{{") {
            if start > text_from {
                out.push(Piece::Text(&s[text_from..start]));
            }
            match after.find("}}") {
                Some(end) => {
                    out.push(Piece::Ref(parse(&after[..end])));
                    at = start + 2 + end + 2;
                }
                None => {
                    out.push(Piece::Ref(Err(format!("unclosed `{{{{` in {s:?}"))));
                    at = s.len();
                }
            }
            text_from = at;
        } else if let Some(after) = rest.strip_prefix("${") {
            match after.find('}').map(|end| &after[..end]) {
                Some(inner) if names_plan_value(inner) => {
                    if start > text_from {
                        out.push(Piece::Text(&s[text_from..start]));
                    }
                    out.push(Piece::Ref(parse(inner)));
                    at = start + 2 + inner.len() + 1;
                    text_from = at;
                }
                _ => at = start + 1,
            }
        } else {
            at = start + 1;
        }
    }
    if !out.iter().any(|p| matches!(p, Piece::Ref(_))) {
        return None;
    }
    if text_from < s.len() {
        out.push(Piece::Text(&s[text_from..]));
    }
    Some(out)
}

/// Whether the inside of a `${...}` starts with a plan root (`nodes`,
/// `input`, `item`), so that it is a reference and not text such as `${HOME}`.
fn names_plan_value(inner: &str) -> bool {
    let inner = inner.trim();
    let end = inner.find(['.', '[']).unwrap_or(inner.len());
    matches!(inner[..end].trim_end(), "nodes" | "input" | "item")
}

/// Every reference in a value, with the JSON path (below `at`) of the string
/// holding it and whether that string is exactly the reference.
pub fn collect(value: &Value, at: &str, out: &mut Vec<Found>) {
    match value {
        Value::String(s) => {
            if let Some(pieces) = pieces(s) {
                let whole = pieces.len() == 1;
                for piece in pieces {
                    if let Piece::Ref(reference) = piece {
                        out.push(Found { field: at.to_owned(), reference, whole });
                    }
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect(item, &format!("{at}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                collect(v, &format!("{at}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// A reference found by [`collect`].
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub field: String,
    pub reference: Result<Reference, String>,
    /// The string is this reference alone (its value replaces the string).
    pub whole: bool,
}

/// What references resolve against while a plan runs.
pub trait Scope {
    /// The root's value; `None` when it does not exist (yet).
    fn root(&self, root: &Root) -> Option<&Value>;
}

/// Follows the reference's path from its root.
pub fn lookup<'v>(scope: &'v dyn Scope, reference: &Reference) -> Result<&'v Value, String> {
    let mut value = scope
        .root(&reference.root)
        .ok_or_else(|| format!("{{{{{reference}}}}}: {} has no value", root_name(reference)))?;
    let mut walked = Reference { root: reference.root.clone(), path: Vec::new() };
    for segment in &reference.path {
        let next = match (segment, value) {
            (Segment::Key(k), Value::Object(map)) => map.get(k),
            (Segment::Index(i), Value::Array(items)) => items.get(*i),
            _ => None,
        };
        value = next.ok_or_else(|| {
            let shape = match value {
                Value::Object(map) => {
                    let keys: Vec<&str> = map.keys().map(String::as_str).take(10).collect();
                    format!("an object with keys {keys:?}")
                }
                Value::Array(items) => format!("a list of {} items", items.len()),
                other => format!("{} {other}", kind(other)),
            };
            format!("{{{{{reference}}}}}: {walked} is {shape}")
        })?;
        walked.path.push(segment.clone());
    }
    Ok(value)
}

fn root_name(reference: &Reference) -> String {
    Reference { root: reference.root.clone(), path: Vec::new() }.to_string()
}

/// The JSON type name of a value, as JSON Schema names it.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Replaces every reference in `value`; the first that cannot be resolved is the error.
pub fn render(value: &Value, scope: &dyn Scope) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => match pieces(s) {
            None => value.clone(),
            Some(pieces) => render_string(&pieces, scope)?,
        },
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, scope)).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), render(v, scope)?))).collect::<Result<_, String>>()?)
        }
        other => other.clone(),
    })
}

fn render_string(pieces: &[Piece<'_>], scope: &dyn Scope) -> Result<Value, String> {
    if let [Piece::Ref(reference)] = pieces {
        return Ok(lookup(scope, reference.as_ref().map_err(Clone::clone)?)?.clone());
    }
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(reference) => match lookup(scope, reference.as_ref().map_err(Clone::clone)?)? {
                Value::String(s) => out.push_str(s),
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

/// Renders a string template to text (an LLM prompt).
pub fn render_text(text: &str, scope: &dyn Scope) -> Result<String, String> {
    match render(&Value::String(text.to_owned()), scope)? {
        Value::String(s) => Ok(s),
        other => Ok(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    struct Values {
        nodes: HashMap<String, Value>,
        input: Value,
        item: Option<Value>,
    }

    impl Scope for Values {
        fn root(&self, root: &Root) -> Option<&Value> {
            match root {
                Root::Node(id) => self.nodes.get(id),
                Root::Input => Some(&self.input),
                Root::Item => self.item.as_ref(),
            }
        }
    }

    fn scope() -> Values {
        Values {
            nodes: HashMap::from([(
                "fetch".to_owned(),
                json!({"items": [{"title": "first", "n": 1}, {"title": "second", "n": 2}], "odd key": true}),
            )]),
            input: json!({"repo": "orch/orch", "limit": 5}),
            item: Some(json!({"name": "x"})),
        }
    }

    fn check(template: Value, expected: Result<Value, &str>) {
        let got = render(&template, &scope());
        assert_eq!(got, expected.map_err(str::to_owned), "{template}");
    }

    #[test]
    fn whole_references_keep_their_json_type() {
        check(json!("{{nodes.fetch.output.items[1].n}}"), Ok(json!(2)));
        check(json!("{{ nodes.fetch.output.items[0] }}"), Ok(json!({"title": "first", "n": 1})));
        check(json!("{{input.limit}}"), Ok(json!(5)));
        check(json!("{{item.name}}"), Ok(json!("x")));
        check(json!("{{nodes.fetch.output[\"odd key\"]}}"), Ok(json!(true)));
        check(json!({"a": ["{{input.repo}}", 3]}), Ok(json!({"a": ["orch/orch", 3]})));
    }

    #[test]
    fn references_inside_text_are_interpolated() {
        check(json!("repo {{input.repo}}, top {{input.limit}}"), Ok(json!("repo orch/orch, top 5")));
        check(json!("{{nodes.fetch.output.items[0]}}!"), Ok(json!("{\"n\":1,\"title\":\"first\"}!")));
        check(json!("no references"), Ok(json!("no references")));
    }

    #[test]
    fn missing_values_say_what_is_there() {
        check(
            json!("{{nodes.fetch.output.items[5].title}}"),
            Err("{{nodes.fetch.output.items[5].title}}: nodes.fetch.output.items is a list of 2 items"),
        );
        check(
            json!("{{nodes.fetch.output.nope}}"),
            Err("{{nodes.fetch.output.nope}}: nodes.fetch.output is an object with keys [\"items\", \"odd key\"]"),
        );
        check(json!("{{input.limit.x}}"), Err("{{input.limit.x}}: input.limit is number 5"));
        check(json!("{{nodes.other.output}}"), Err("{{nodes.other.output}}: nodes.other.output has no value"));
    }

    #[test]
    fn bad_references_are_named() {
        let bad = |text: &str| parse(text).unwrap_err();
        assert_eq!(bad("nodes.a"), "{{nodes.a}}: only a node's `output` can be referenced: nodes.a.output");
        assert!(bad("env.HOME").starts_with("{{env.HOME}}: unknown reference"));
        assert!(bad("input.a[x]").contains("neither an index nor a quoted key"));
        assert!(bad("input..a").contains("is not a field name"));
        let mut found = Vec::new();
        collect(&json!({"m": "{{input.a"}), "args", &mut found);
        assert_eq!(found[0].field, "args.m");
        assert!(found[0].reference.as_ref().unwrap_err().starts_with("unclosed"));
    }

    #[test]
    fn n8n_eats_plan_references() {
        // `${...}` resolves exactly like `{{...}}`, whitespace inside allowed.
        check(json!("${nodes.fetch.output.items[1].n}"), Ok(json!(2)));
        check(json!("${ nodes.fetch.output.items[0] }"), Ok(json!({"title": "first", "n": 1})));
        check(json!("${input.limit}"), Ok(json!(5)));
        check(json!("${item.name}"), Ok(json!("x")));
        check(json!("repo ${input.repo}, top {{input.limit}}"), Ok(json!("repo orch/orch, top 5")));
        // A `${...}` naming no plan value stays text, alone or next to references.
        check(json!("${HOME}"), Ok(json!("${HOME}")));
        check(json!("cost: $5 {x} ${HOME} ${input.repo} ${"), Ok(json!("cost: $5 {x} ${HOME} orch/orch ${")));
        check(json!("${{input.repo}}"), Ok(json!("$orch/orch")));
        check(json!("${items.x} ${nodesx}"), Ok(json!("${items.x} ${nodesx}")));
        // A `${...}` that does start with a root but is malformed is reported, as `{{...}}` is.
        check(json!("${nodes.a}"), Err("{{nodes.a}}: only a node's `output` can be referenced: nodes.a.output"));
        let mut found = Vec::new();
        collect(&json!({"q": "${input.repo}", "list": ["a ${ nodes.x.output.y } b", "${PATH}"]}), "args", &mut found);
        let got: Vec<(String, String, bool)> =
            found.iter().map(|f| (f.field.clone(), f.reference.as_ref().unwrap().to_string(), f.whole)).collect();
        assert_eq!(
            got,
            vec![
                ("args.list[0]".to_owned(), "nodes.x.output.y".to_owned(), false),
                ("args.q".to_owned(), "input.repo".to_owned(), true),
            ]
        );
    }

    #[test]
    fn references_are_collected_with_their_fields() {
        let mut found = Vec::new();
        collect(&json!({"q": "{{input.repo}}", "list": ["a {{nodes.x.output.y}} b"]}), "args", &mut found);
        let got: Vec<(String, String, bool)> =
            found.iter().map(|f| (f.field.clone(), f.reference.as_ref().unwrap().to_string(), f.whole)).collect();
        assert_eq!(
            got,
            vec![
                ("args.list[0]".to_owned(), "nodes.x.output.y".to_owned(), false),
                ("args.q".to_owned(), "input.repo".to_owned(), true),
            ]
        );
    }
}
