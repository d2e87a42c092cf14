//! Fixtures shared by the store tests: one fresh store per test on each backend,
//! and a macro that runs a test function on both.
#![allow(dead_code)]

use std::any::Any;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use orch_store::{Store, from_millis, to_millis};

/// A store and whatever must outlive it (its temporary directory or redis-server).
pub struct Backend {
    pub store: Arc<dyn Store>,
    _keep: Box<dyn Any + Send>,
}

pub async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store =
        orch_store::sqlite::SqliteStore::open(&dir.path().join("data/orch.db")).await.expect("sqlite store opens");
    Backend { store: Arc::new(store), _keep: Box::new(dir) }
}

pub async fn redis() -> Backend {
    let server = orch_testkit::RedisServer::start();
    let store = orch_store::redis::RedisStore::open(&server.url(), "orch").await.expect("redis store opens");
    Backend { store: Arc::new(store), _keep: Box::new(server) }
}

/// Now, at the millisecond precision both backends store.
pub fn now_ms() -> DateTime<Utc> {
    from_millis(to_millis(Utc::now()))
}

/// Runs each named `async fn(Arc<dyn Store>)` of the calling module on both
/// backends, as `sqlite::<name>` and `redis::<name>`.
macro_rules! on_each_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = crate::support::sqlite().await;
                    super::$test(backend.store.clone()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = crate::support::redis().await;
                    super::$test(backend.store.clone()).await;
                }
            )*
        }
    };
}
pub(crate) use on_each_backend;
