//! The body of a delivery: one JSON object per job event, shaped so that one
//! n8n node can write it to Obsidian (`obsidian.path` + `obsidian.content`) or
//! Notion (`notion.markdown`) as it is.

use chrono::{DateTime, SecondsFormat, Utc};
use orch_store::{Job, JobKind, JobStatus};
use serde_json::{Map, Value, json};

/// What the payload needs besides the job.
#[derive(Debug, Clone)]
pub struct PayloadOptions {
    /// Template of `obsidian.path`: `{date}`, `{slug}`, `{id}`, `{kind}`.
    pub obsidian_path: String,
    /// Prefix of `links` (empty for paths).
    pub public_url: String,
    /// Largest body in bytes; a larger result is linked, not inlined.
    pub max_bytes: usize,
}

/// Most of the human result kept when the whole does not fit.
const EXCERPT: usize = 64 * 1024;

/// The payload of `event` (`job.succeeded`, …, `job.progress`) for `job`,
/// with its `result` when it succeeded. `job.progress` adds the job's
/// `progress` (its latest progress event as stored).
pub fn build(job: &Job, event: &str, result: Option<&Value>, options: &PayloadOptions) -> Value {
    let full = render(job, event, result, options, None);
    if serde_json::to_vec(&full).map(|b| b.len()).unwrap_or(usize::MAX) <= options.max_bytes {
        return full;
    }
    render(job, event, None, options, Some(EXCERPT))
}

fn render(job: &Job, event: &str, result: Option<&Value>, options: &PayloadOptions, cut: Option<usize>) -> Value {
    let input = &job.input;
    let title = title_of(job);
    let tags: Vec<String> =
        input["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect();
    let finished = job.finished_at.unwrap_or(job.updated_at);
    let mut markdown = markdown_of(job, result);
    if let Some(cut) = cut
        && event != crate::PROGRESS_EVENT
    {
        markdown = excerpt(&markdown, cut);
        markdown.push_str("\n\n*(The result is too large for a webhook; read it in full at `links.result`.)*");
    }
    let model = result.and_then(|r| r["model"].as_str()).or_else(|| input["model"].as_str());
    // In this order in the note; `frontmatter` has the same fields.
    let mut fields: Vec<(&str, Value)> =
        vec![("title", json!(title)), ("tags", json!(tags)), ("source", json!("orch"))];
    if let Some(model) = model {
        fields.push(("model", json!(model)));
    }
    fields.extend([
        ("job_id", json!(job.id)),
        ("kind", json!(job.kind)),
        ("status", json!(job.status)),
        ("created", json!(time(job.created_at))),
        ("finished", json!(time(finished))),
    ]);
    let frontmatter: Map<String, Value> = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let note = format!("{}\n# {title}\n\n{markdown}\n", yaml(&fields));
    // Checked at submission; a job stored before that check got the default.
    let path_template =
        input["obsidian_path"].as_str().filter(|p| check_obsidian_path(p).is_ok()).unwrap_or(&options.obsidian_path);
    let prefix = match input[crate::LINKS_BASE].as_str() {
        Some(stored) if options.public_url.is_empty() => stored,
        _ => options.public_url.as_str(),
    };
    let base = format!("{}/v1/jobs/{}", prefix.trim_end_matches('/'), job.id);
    let mut payload = json!({
        "type": event,
        "job_id": job.id,
        "kind": job.kind,
        "status": job.status,
        "created_at": time(job.created_at),
        "finished_at": job.finished_at.map(time),
        "title": title,
        "markdown": markdown,
        "frontmatter": frontmatter,
        "obsidian": {"path": obsidian_path(path_template, job, &title, finished), "content": note},
        "notion": {"markdown": markdown},
        "result": result,
        "result_truncated": cut.is_some(),
        "usage": result.map(|r| r["usage"].clone()).filter(|u| !u.is_null()),
        "error": job.error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
        "metadata": job.metadata,
        "links": {"status": base, "result": format!("{base}/result"), "events": format!("{base}/events")},
    });
    if event == crate::PROGRESS_EVENT {
        let mut progress = job.progress.clone().unwrap_or(Value::Null);
        // A node's output can be large; the job's events have it.
        if cut.is_some()
            && let Some(map) = progress.as_object_mut()
            && map.remove("output").is_some()
        {
            map.insert("output_truncated".into(), json!(true));
        }
        payload["progress"] = progress;
    }
    payload
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The job's `title`, or the first line of its prompt, or its kind and id.
pub fn title_of(job: &Job) -> String {
    if let Some(title) = job.input["title"].as_str().filter(|t| !t.trim().is_empty()) {
        return title.trim().to_owned();
    }
    let prompt = job.input["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str());
    match prompt.and_then(|p| p.lines().map(str::trim).find(|l| !l.is_empty())) {
        Some(line) => excerpt(line, 80),
        None => format!("{} job {}", if job.kind == JobKind::Chat { "Chat" } else { "Batch" }, job.id),
    }
}

/// The human result: the chat answer, the plan's output, or what went wrong.
fn markdown_of(job: &Job, result: Option<&Value>) -> String {
    match job.status {
        JobStatus::Succeeded => {
            let Some(result) = result else { return String::new() };
            if let Some(text) = result["text"].as_str() {
                return text.to_owned();
            }
            match &result["output"] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => format!(
                    "```json\n{}\n```",
                    serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string())
                ),
            }
        }
        JobStatus::Failed => {
            let e = job.error.as_ref();
            format!(
                "**Failed** ({}): {}",
                e.map_or("unknown", |e| e.code.as_str()),
                e.map_or("no error recorded", |e| e.message.as_str())
            )
        }
        JobStatus::Cancelled => "**Cancelled.**".to_owned(),
        JobStatus::Queued | JobStatus::Running => progress_line(job.progress.as_ref().unwrap_or(&Value::Null)),
    }
}

/// One line saying where a running job is, from its latest progress event.
fn progress_line(progress: &Value) -> String {
    let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    if let (Some(node), Some(status)) =
        (progress["node"].as_str().filter(|n| !n.is_empty()), progress["status"].as_str())
    {
        let mut line = format!("Node `{node}` {status}");
        if progress["completed"].is_number() && progress["total"].is_number() {
            line.push_str(&format!(" ({} of {} nodes done)", progress["completed"], progress["total"]));
        }
        return line + ".";
    }
    match progress["type"].as_str() {
        Some("planned") => {
            format!("Planned {} nodes.", progress["plan"]["nodes"].as_array().map_or(0, Vec::len))
        }
        Some("routing") => match progress["chain"].as_array().and_then(|c| c.first()) {
            Some(first) => format!("Routed to {}.", text(first)),
            None => "Routing.".to_owned(),
        },
        Some("api_retry") => format!("The provider is retrying its model API (attempt {}).", progress["attempt"]),
        _ => "Running.".to_owned(),
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// YAML front matter. Strings are written as JSON strings, which are valid
/// YAML double-quoted scalars, so no value can break out of its line.
fn yaml(fields: &[(&str, Value)]) -> String {
    let mut out = String::from("---\n");
    for (key, value) in fields {
        match value {
            Value::Array(items) => {
                out.push_str(&format!("{key}:"));
                if items.is_empty() {
                    out.push_str(" []");
                }
                out.push('\n');
                for item in items {
                    out.push_str(&format!("  - {item}\n"));
                }
            }
            other => out.push_str(&format!("{key}: {other}\n")),
        }
    }
    out.push_str("---\n");
    out
}

/// A file-name-safe form of a title: lowercase letters, digits and dashes.
pub fn slug(title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.chars().count() >= 60 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() { "note".to_owned() } else { slug.to_owned() }
}

fn obsidian_path(template: &str, job: &Job, title: &str, finished: DateTime<Utc>) -> String {
    let mut path = template
        .replace("{date}", &finished.format("%Y-%m-%d").to_string())
        .replace("{slug}", &slug(title))
        .replace("{id}", &job.id.to_string())
        .replace("{kind}", job.kind.as_str());
    if !path.to_ascii_lowercase().ends_with(".md") {
        path.push_str(".md");
    }
    path
}

/// Longest `obsidian_path` template, in bytes.
pub const OBSIDIAN_PATH_MAX: usize = 300;

/// Why `template` cannot be an `obsidian.path` template, or `Ok`. A vault
/// path is relative and stays inside the vault however the receiving flow
/// reads it: no `..` segment (also percent-decoded and with `\` as a
/// separator), no leading `/` or `\`, no drive letter or other `:`, no
/// control characters. A path not ending in `.md` gets it.
pub fn check_obsidian_path(template: &str) -> Result<(), String> {
    let example = "use a relative path like Inbox/{date}-{slug}.md (placeholders: {date}, {slug}, {id}, {kind})";
    let problem = if template.trim().is_empty() {
        Some("is empty".to_owned())
    } else if template.len() > OBSIDIAN_PATH_MAX {
        Some(format!("is longer than {OBSIDIAN_PATH_MAX} bytes"))
    } else {
        // Every layer of percent-encoding a reader might undo, up to a few.
        let mut forms = vec![template.to_owned()];
        while forms.len() < 4 {
            let last = &forms[forms.len() - 1];
            let decoded = percent_encoding::percent_decode_str(last).decode_utf8_lossy().into_owned();
            if &decoded == last {
                break;
            }
            forms.push(decoded);
        }
        forms.iter().find_map(|form| path_problem(form))
    };
    match problem {
        Some(problem) => Err(format!("{template:?} {problem}; {example}")),
        None => Ok(()),
    }
}

fn path_problem(path: &str) -> Option<String> {
    if path.chars().any(char::is_control) {
        return Some("contains a control character".to_owned());
    }
    if path.starts_with(['/', '\\']) {
        return Some("is absolute (starts with / or \\)".to_owned());
    }
    if path.contains(':') {
        return Some("contains ':' (a drive letter or stream name)".to_owned());
    }
    // Windows drops trailing dots and spaces, so `.. ` and `...` climb too.
    if path
        .split(['/', '\\'])
        .any(|segment| segment.starts_with("..") && segment.trim_end_matches(['.', ' ']).is_empty())
    {
        return Some("has a .. segment (perhaps percent-encoded), which leaves the vault".to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(result_text: &str) -> (Job, Value) {
        let now = Utc::now();
        let job = Job {
            id: orch_store::new_job_id(),
            kind: JobKind::Chat,
            status: JobStatus::Succeeded,
            input: json!({"messages": [{"role": "user", "content": "Write it all"}], "obsidian_path": "Notes/{kind}/{slug}.md"}),
            metadata: json!({}),
            attempts: 1,
            max_attempts: 3,
            progress: None,
            error: None,
            created_at: now,
            updated_at: now,
            run_at: now,
            started_at: Some(now),
            finished_at: Some(now),
            cancel_requested: false,
            worker: None,
            lease_expires_at: None,
            owner: None,
        };
        (job, json!({"text": result_text, "model": "echo"}))
    }

    fn options(max_bytes: usize) -> PayloadOptions {
        PayloadOptions {
            obsidian_path: "Inbox/{date}-{slug}.md".into(),
            public_url: "https://orch.example".into(),
            max_bytes,
        }
    }

    #[test]
    fn a_result_that_does_not_fit_is_linked_not_inlined() {
        let (job, result) = job(&"word ".repeat(100_000));
        let small = build(&job, "job.succeeded", Some(&result), &options(16 << 20));
        assert_eq!(
            (small["result_truncated"].as_bool(), small["result"]["text"].as_str().map(str::len)),
            (Some(false), Some(500_000))
        );
        let cut = build(&job, "job.succeeded", Some(&result), &options(200_000));
        assert!(serde_json::to_vec(&cut).unwrap().len() <= 200_000);
        assert_eq!((cut["result_truncated"].as_bool(), cut["result"].is_null()), (Some(true), true));
        assert!(cut["markdown"].as_str().unwrap().ends_with("read it in full at `links.result`.)*"));
        assert_eq!(cut["links"]["result"], format!("https://orch.example/v1/jobs/{}/result", job.id));
        assert_eq!(cut["obsidian"]["path"], "Notes/chat/write-it-all.md");
    }

    #[test]
    fn notes_overwrite_each_other() {
        // Four runs of one flow on one day: the default path must tell them apart.
        let options =
            PayloadOptions { obsidian_path: crate::WebhookConfig::default().obsidian_path, ..options(16 << 20) };
        let paths: std::collections::HashSet<String> = (0..4)
            .map(|_| {
                let (mut job, result) = job("done");
                job.input = json!({"messages": [{"role": "user", "content": "n8n acceptance a"}]});
                let p = build(&job, "job.succeeded", Some(&result), &options);
                let path = p["obsidian"]["path"].as_str().unwrap().to_owned();
                assert!(path.contains(&job.id.to_string()) && path.ends_with(".md"), "{path}");
                path
            })
            .collect();
        assert_eq!(paths.len(), 4, "{paths:?}");
    }

    #[test]
    fn progress_payloads_carry_the_latest_progress() {
        let (mut job, _) = job("");
        job.status = JobStatus::Running;
        job.finished_at = None;
        job.kind = JobKind::Batch;
        job.progress = Some(json!({"node": "fetch", "status": "succeeded", "completed": 2, "total": 5,
                                   "output": "x".repeat(300_000)}));
        let p = build(&job, "job.progress", None, &options(16 << 20));
        assert_eq!((p["type"].as_str(), p["status"].as_str()), (Some("job.progress"), Some("running")));
        assert_eq!(p["progress"]["completed"], 2);
        assert_eq!(p["markdown"], "Node `fetch` succeeded (2 of 5 nodes done).");
        assert!(p["finished_at"].is_null());
        let cut = build(&job, "job.progress", None, &options(200_000));
        assert!(serde_json::to_vec(&cut).unwrap().len() <= 200_000);
        assert_eq!(
            (cut["progress"]["node"].as_str(), cut["progress"]["output_truncated"].as_bool()),
            (Some("fetch"), Some(true))
        );
        let terminal = build(&job, "job.succeeded", None, &options(16 << 20));
        assert!(terminal.get("progress").is_none());
    }

    #[test]
    fn progress_lines() {
        for (progress, line) in [
            (
                json!({"type": "routing", "chain": ["claude/sonnet", "gemini"], "reason": "auto"}),
                "Routed to claude/sonnet.",
            ),
            (
                json!({"type": "api_retry", "attempt": 2, "delay_ms": 500}),
                "The provider is retrying its model API (attempt 2).",
            ),
            (json!({"type": "planned", "plan": {"nodes": [{}, {}, {}]}}), "Planned 3 nodes."),
            (json!({"node": "b", "status": "skipped", "total": 4}), "Node `b` skipped."),
            (json!({"type": "text", "text": "Hel"}), "Running."),
        ] {
            assert_eq!(progress_line(&progress), line, "{progress}");
        }
    }

    #[test]
    fn slugs() {
        for (title, expected) in [
            ("Weekly report: issues & PRs", "weekly-report-issues-prs"),
            ("  ", "note"),
            ("Ünïcode title", "ünïcode-title"),
            ("a/../../etc", "a-etc"),
        ] {
            assert_eq!(slug(title), expected, "{title}");
        }
    }

    #[test]
    fn vault_paths_stay_inside_the_vault() {
        for (path, ok) in [
            ("Inbox/{date}-{slug}.md", true),
            ("Notes/{kind}/{id}", true),
            ("100% done.md", true),
            ("a..b/c.md", true),
            ("", false),
            ("Inbox/a\0.md", false),
            ("Inbox/a\r\nb.md", false),
            ("../x.md", false),
            ("a/../../x.md", false),
            ("..\\..\\win.ini", false),
            ("%2e%2e/%2e%2e/x.md", false),
            ("%252e%252e/x.md", false),
            ("a%2f..%2fb.md", false),
            ("C:/Windows/x.md", false),
            ("c:x.md", false),
            ("/etc/x.md", false),
            ("\\x.md", false),
            ("%2fetc/x.md", false),
            ("a/.. /x.md", false),
            ("a/.../x.md", false),
        ] {
            assert_eq!(check_obsidian_path(path).is_ok(), ok, "{path:?}: {:?}", check_obsidian_path(path));
        }
        assert!(check_obsidian_path(&"a".repeat(OBSIDIAN_PATH_MAX + 1)).is_err());
    }

    #[test]
    fn front_matter_values_cannot_break_lines() {
        let fields = [("title", json!("a\n---\nevil: true")), ("tags", json!(["x", "y z"]))];
        assert_eq!(yaml(&fields), "---\ntitle: \"a\\n---\\nevil: true\"\ntags:\n  - \"x\"\n  - \"y z\"\n---\n");
    }
}
