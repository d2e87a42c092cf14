//! A stdio server's child gets none of Orch's own `ORCH_*` settings (the
//! store URL with its password, ...) unless its config's `env` names one.
//! (Alone in its binary: it changes the process environment.)

mod support;

use orch_mcp::{CallOptions, Registry};
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn orch_settings_stay_out_of_a_stdio_servers_environment() {
    // SAFETY: the only test in this binary; set before any thread reads the environment.
    unsafe {
        std::env::set_var("ORCH_STORE", "redis://:hunter2@db:6379/0");
        std::env::set_var("UNRELATED_SETTING", "kept");
    }
    let mut everything = everything_stdio();
    everything["env"] = json!({"ORCH_GIVEN": "on purpose"});
    let config = config(json!({"mcpServers": {"everything": everything}}));
    let (registry, _) = Registry::start(config, fast_options()).await.unwrap();
    let result = registry.call("everything.get-env", None, CallOptions::default()).await.unwrap();
    let env: Value = serde_json::from_str(&text(&result)).expect("get-env answers the environment as JSON");
    assert_eq!(env.get("ORCH_STORE"), None, "the store password reached the child");
    assert_eq!(env["ORCH_GIVEN"], "on purpose");
    assert_eq!(env["UNRELATED_SETTING"], "kept");
    registry.shutdown(std::time::Duration::from_secs(5)).await;
}
