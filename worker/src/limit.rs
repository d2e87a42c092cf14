//! A provider's concurrency limit across every worker: slots in the store
//! (a Redis sorted set, or a SQLite table), on top of each worker's own limit.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orch_providers::{ErrorKind, SharedLimit, SharedPermit, TurnError};
use orch_store::Store;
use rand::Rng;

/// How often a waiting turn asks again for a slot (with jitter).
const RETRY: Duration = Duration::from_millis(100);

/// Slots named `provider:<name>` in `store`, held as `<worker>:<n>`.
pub struct StoreLimit {
    store: Arc<dyn Store>,
    worker: String,
}

impl StoreLimit {
    pub fn new(store: Arc<dyn Store>, worker: String) -> StoreLimit {
        StoreLimit { store, worker }
    }
}

#[async_trait]
impl SharedLimit for StoreLimit {
    async fn acquire(&self, provider: &str, limit: u32, max_hold: Duration) -> Result<SharedPermit, TurnError> {
        let name = format!("provider:{provider}");
        let holder = format!("{}:{}", self.worker, uuid::Uuid::now_v7());
        loop {
            match self.store.try_acquire_slot(&name, &holder, limit, max_hold).await {
                Ok(true) => break,
                Ok(false) => {}
                // The store being down is not the provider's fault: fail this turn, retryably.
                Err(err) => {
                    return Err(TurnError::new(
                        ErrorKind::Upstream { status: None },
                        format!("{provider}: the shared concurrency limit is unavailable: {err}"),
                    ));
                }
            }
            let jitter = rand::rng().random_range(0..RETRY.as_millis() as u64);
            tokio::time::sleep(RETRY + Duration::from_millis(jitter)).await;
        }
        Ok(SharedPermit(Box::new(Slot { store: self.store.clone(), name, holder })))
    }
}

/// Gives the slot back when the turn ends (or its future is dropped).
struct Slot {
    store: Arc<dyn Store>,
    name: String,
    holder: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (store, name, holder) =
            (self.store.clone(), std::mem::take(&mut self.name), std::mem::take(&mut self.holder));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = store.release_slot(&name, &holder).await {
                    tracing::warn!(slot = %name, error = %err, "releasing a provider slot failed; it frees itself at its expiry");
                }
            });
        }
    }
}
