//! Chat sessions over HTTP on both backends: continuation with `X-Session-ID`
//! (the provider is /bin/echo, so its answer shows the history it was given),
//! ownership, listing, deletion, expiry, and the markdown memory export.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Backend, Options, make_key, spawn_app_with};

const WAIT: Duration = Duration::from_secs(20);

/// Runs one chat turn in `session` as `key`; returns the answer.
async fn turn(app: &support::TestApp, key: &str, session: &str, prompt: &str) -> Value {
    let response = app
        .client
        .post(format!("{}/v1/jobs/chat", app.base))
        .bearer_auth(key)
        .header("X-Session-ID", session)
        .json(&json!({"prompt": prompt}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let job = app.wait_finished(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    app.get(&format!("/v1/jobs/{id}/result")).await.body["result"].clone()
}

async fn a_session_carries_the_conversation(backend: Backend) {
    let app = spawn_app_with(backend, Options::default()).await;
    let writer = make_key(app.store.as_ref(), &["jobs:read", "jobs:write"]).await;
    let first = turn(&app, &writer, "weekly-42", "my name is Ada").await;
    assert_eq!(first["text"], "my name is Ada");
    assert_eq!(first["session_id"], "weekly-42");
    let second = turn(&app, &writer, "weekly-42", "what is my name?").await;
    let text = second["text"].as_str().unwrap();
    assert!(
        text.contains("User: my name is Ada\n\nAssistant: my name is Ada\n\nUser: what is my name?"),
        "the provider did not get the history: {text}"
    );

    let session = app.call(Method::GET, "/v1/sessions/weekly-42", Some(&writer), None).await;
    assert_eq!(session.status, StatusCode::OK, "{:?}", session.body);
    let messages = session.body["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(messages[1]["routed_to"], "echo");
    assert_eq!(session.body["message_count"], 4);
    assert_eq!(session.body["last_routed_to"], "echo");

    // Another key neither reads (it is not found, as an unknown one) nor continues it; an admin reads it.
    let other = make_key(app.store.as_ref(), &["jobs:read", "jobs:write"]).await;
    let denied = app.call(Method::GET, "/v1/sessions/weekly-42", Some(&other), None).await;
    assert_eq!((denied.status, denied.body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let hijack = app
        .call(Method::POST, "/v1/jobs/chat", Some(&other), Some(json!({"prompt": "x", "session_id": "weekly-42"})))
        .await;
    assert_eq!(hijack.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get("/v1/sessions/weekly-42").await.status, StatusCode::OK);

    // Listed for its key only.
    turn(&app, &other, "other-1", "hello").await;
    let mine = app.call(Method::GET, "/v1/sessions", Some(&writer), None).await.body;
    let ids: Vec<&str> = mine["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["weekly-42"]);
    assert!(mine["sessions"][0].get("messages").is_none(), "{mine}");
    let all = app.get("/v1/sessions?limit=1").await.body;
    assert_eq!(all["sessions"][0]["id"], "other-1");
    let rest = app.get(&format!("/v1/sessions?limit=1&cursor={}", all["next_cursor"].as_str().unwrap())).await.body;
    assert_eq!(rest["sessions"][0]["id"], "weekly-42");

    // Deleted, it is gone and the id starts afresh.
    let deleted = app.call(Method::DELETE, "/v1/sessions/weekly-42", Some(&writer), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/v1/sessions/weekly-42").await.status, StatusCode::NOT_FOUND);
    assert_eq!(turn(&app, &writer, "weekly-42", "fresh start").await["text"], "fresh start");
    app.stop().await;
}

async fn an_unused_session_expires(backend: Backend) {
    let options = Options { session_ttl: Some(Duration::from_secs(1)), ..Default::default() };
    let app = spawn_app_with(backend, options).await;
    turn(&app, &app.admin, "brief", "remember 7").await;
    assert_eq!(app.get("/v1/sessions/brief").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(app.get("/v1/sessions/brief").await.status, StatusCode::NOT_FOUND);
    assert_eq!(turn(&app, &app.admin, "brief", "what number?").await["text"], "what number?");
    app.stop().await;
}

async fn bad_session_ids_are_refused(backend: Backend) {
    let app = spawn_app_with(backend, Options { worker: false, ..Default::default() }).await;
    let r = app.post("/v1/jobs/chat", json!({"prompt": "x", "session_id": "has space"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["details"]["field"], "session_id");
    let r = app
        .client
        .post(format!("{}/v1/jobs/chat", app.base))
        .bearer_auth(&app.admin)
        .header("X-Session-ID", "a")
        .json(&json!({"prompt": "x", "session_id": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    app.stop().await;
}

on_both_backends!(a_session_carries_the_conversation, an_unused_session_expires, bad_session_ids_are_refused);

#[tokio::test]
async fn memory_export_is_an_obsidian_note_with_an_optional_summary() {
    let fake = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("providers/tests/fake-cli/fake");
    let captures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("providers/tests/fixtures/cli-captures");
    let providers = format!(
        "[echo]\nkind = 'cli'\ncommand = '/bin/echo'\nargs = ['{{prompt}}']\noutput = {{ format = 'text' }}\n\
         [claude]\ncommand = '{}'\nenv = {{ FAKE_MODE = 'replay', FAKE_CAPTURE = 'claude-code-2.1.197/ok.stream.jsonl', FAKE_CAPTURES = '{}' }}\n",
        fake.display(),
        captures.display()
    );
    let router = support::router(&providers, "default_model = 'echo'\n");
    let app = spawn_app_with(Backend::Sqlite, Options { router: Some(router), ..Default::default() }).await;
    turn(&app, &app.admin, "notes:1", "plan the launch").await;
    turn(&app, &app.admin, "notes:1", "and the budget").await;

    let response = app
        .client
        .get(format!("{}/v1/sessions/notes:1/memory", app.base))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/markdown"));
    let disposition = response.headers()["content-disposition"].to_str().unwrap().to_owned();
    assert!(
        disposition.starts_with("attachment; filename=\"session_notes-1_") && disposition.ends_with(".md\""),
        "{disposition}"
    );
    let note = response.text().await.unwrap();
    assert!(note.starts_with("---\ntitle: \"Session notes:1\"\nsession_id: \"notes:1\"\ncreated: "), "{note}");
    assert!(note.contains("\nprovider: \"echo\"\nmessage_count: 4\nsummarized: false\nsource: orch\ntags:\n  - orch\n  - chat-session\n---\n"), "{note}");
    assert!(note.contains("## Transcript\n\n**User** · "), "{note}");
    assert!(note.contains("**Assistant** · echo · "), "{note}");
    assert!(!note.contains("## Summary"), "{note}");

    let summarized = app.get("/v1/sessions/notes:1/memory?summarize=true&provider=claude&format=json").await;
    assert_eq!(summarized.status, StatusCode::OK, "{:?}", summarized.body);
    assert_eq!(summarized.body["summary"], "FAKE-REPLY: hello from loopback");
    let markdown = summarized.body["markdown"].as_str().unwrap();
    assert!(
        markdown.contains("summarized: true")
            && markdown.contains("## Summary\n\nFAKE-REPLY: hello from loopback\n\n## Transcript"),
        "{markdown}"
    );
    assert_eq!(summarized.body["session"]["message_count"], 4);

    let bad = app.get("/v1/sessions/notes:1/memory?summarize=true&provider=gpt").await;
    assert_eq!(
        (bad.status, bad.body["error"]["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("provider"))
    );
    let bad = app.get("/v1/sessions/notes:1/memory?format=pdf").await;
    assert_eq!(bad.body["error"]["details"]["field"], "format");
    app.stop().await;
}

/// Issue 16, defect 9: a memory note stamps the user's message with when it
/// was sent, not with the time of the answer that came after the turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_note_stamps_user_messages_with_their_own_time() {
    let router = support::router(
        "[slow]\nkind = 'cli'\ncommand = '/bin/sh'\nargs = ['-c', 'sleep 2.2; echo answered']\noutput = { format = 'text' }\n",
        "default_model = 'slow'\n",
    );
    let app = spawn_app_with(Backend::Sqlite, Options { router: Some(router), ..Default::default() }).await;
    let admin = app.admin.clone();
    assert_eq!(turn(&app, &admin, "stamps-1", "when did I ask?").await["text"], "answered");
    let session = app.get("/v1/sessions/stamps-1").await.body;
    let at = |i: usize| chrono::DateTime::parse_from_rfc3339(session["messages"][i]["at"].as_str().unwrap()).unwrap();
    assert!(at(1) - at(0) >= chrono::TimeDelta::seconds(2), "user at {}, answer at {}", at(0), at(1));
    let note = app.get("/v1/sessions/stamps-1/memory?format=json").await.body;
    let markdown = note["markdown"].as_str().unwrap();
    let stamp = |prefix: &str| {
        let line = markdown.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{markdown}"));
        chrono::DateTime::parse_from_rfc3339(line.rsplit(" · ").next().unwrap()).unwrap()
    };
    let (user, answer) = (stamp("**User** · "), stamp("**Assistant** · "));
    assert!(
        answer - user >= chrono::TimeDelta::seconds(2),
        "the note stamps the user at {user}, the answer at {answer}"
    );
    app.stop().await;
}
