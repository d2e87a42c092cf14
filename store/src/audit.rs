//! The audit log's writer: records are queued in memory and appended in
//! batches by one background task, so a request pays a channel send, not a
//! store write. [`AuditLog::flush`] waits until everything queued so far is
//! stored (`GET /v1/audit` calls it, so a process reads its own records).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::{AuditEntry, Store};

/// Most records appended in one store write.
const BATCH: usize = 1000;

enum Msg {
    Entry(Box<AuditEntry>),
    Flush(oneshot::Sender<()>),
}

/// The writer's input and store, until the writer starts.
type Pending = Arc<Mutex<Option<(mpsc::UnboundedReceiver<Msg>, Arc<dyn Store>)>>>;

/// Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::UnboundedSender<Msg>,
    /// Taken by the first use inside a Tokio runtime, which starts the writer.
    pending: Pending,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    pub fn new(store: Arc<dyn Store>) -> AuditLog {
        let (tx, rx) = mpsc::unbounded_channel();
        AuditLog { tx, pending: Arc::new(Mutex::new(Some((rx, store)))) }
    }

    fn start(&self) {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((rx, store)) = pending {
            tokio::spawn(write(rx, store));
        }
    }

    /// Queues a record (its `id` is assigned when stored).
    pub fn record(&self, entry: AuditEntry) {
        self.start();
        let _ = self.tx.send(Msg::Entry(Box::new(entry)));
    }

    /// Waits until every record queued before this call is stored (or its
    /// write failed and was logged).
    pub async fn flush(&self) {
        self.start();
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn write(mut rx: mpsc::UnboundedReceiver<Msg>, store: Arc<dyn Store>) {
    let mut entries = Vec::new();
    let mut waiters = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Entry(entry) => entries.push(*entry),
                Msg::Flush(waiter) => waiters.push(waiter),
            }
            if entries.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        for attempt in 1..=3u32 {
            match store.append_audit(&entries).await {
                Ok(()) => break,
                Err(err) if attempt < 3 => {
                    tracing::warn!(error = %err, records = entries.len(), "writing audit records failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(err) => tracing::error!(error = %err, records = entries.len(), "audit records lost"),
            }
        }
        entries.clear();
        for waiter in waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}
