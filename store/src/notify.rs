//! Wake-ups: who is told when a job is ready or a job's events change.
//!
//! One [`Notifier`] per store, shared by the API, worker and webhook sender of a
//! process. Writers of this process call it directly; the Redis backend also
//! feeds it from Redis pub/sub, so writes made by other processes wake the
//! same waiters (see ARCHITECTURE.md, "Wake-ups").
//!
//! Followers wait on one job ([`Notifier::watch`]): an event of another job
//! wakes nobody else. A waiter always re-reads the store after a wake-up, so a
//! spurious one costs a read and a missed one costs at most [`Notifier::poll`].
//!
//! Workers hear of cancelled running jobs here too ([`Notifier::cancels`]): the
//! signal names the job and the worker holding it, so the worker stops it at
//! once without reading the store; its heartbeat remains the safety net.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::JobId;

/// How often a waiter re-reads the store on its own when wake-ups cross
/// processes (Redis): only a safety net, as every reconnect wakes all waiters.
pub const SAFETY_POLL: Duration = Duration::from_secs(30);
/// The same without cross-process wake-ups (SQLite shared by several processes).
pub const LOCAL_POLL: Duration = Duration::from_millis(250);

/// A running job's cancellation, as a worker hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelSignal {
    /// Job `job`, run by worker `worker`, is to stop.
    Job { worker: String, job: JobId },
    /// Signals may have been lost (the wake-up connection was down): look in
    /// the store now.
    Missed,
}

/// A change of the set of watched jobs, for a backend that subscribes per job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchChange {
    Watch(JobId),
    Unwatch(JobId),
}

#[derive(Debug, Default)]
struct Inner {
    jobs: Notify,
    watched: Mutex<HashMap<JobId, Watched>>,
    /// Told when a job gains its first watcher or loses its last.
    changes: Mutex<Option<mpsc::UnboundedSender<WatchChange>>>,
    cross_process: AtomicBool,
    /// The workers of this process listening for cancellations.
    cancels: Mutex<Vec<mpsc::UnboundedSender<CancelSignal>>>,
}

#[derive(Debug)]
struct Watched {
    notify: Arc<Notify>,
    count: usize,
}

/// In-process wake-ups, fed by this process's writes and (Redis) by other
/// processes' writes. Cheap to clone: clones share their waiters.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl Notifier {
    /// Fires when jobs may have become ready to claim.
    pub fn jobs(&self) -> &Notify {
        &self.inner.jobs
    }

    /// Wakes idle workers: jobs may be ready.
    pub fn jobs_ready(&self) {
        self.inner.jobs.notify_waiters();
    }

    /// Starts watching job `id`: [`Watch::changed`] completes after the job's
    /// events (or state) change. Ends when the handle is dropped.
    pub fn watch(&self, id: JobId) -> Watch {
        let mut watched = self.inner.watched.lock().expect("notifier lock");
        let entry = watched.entry(id).or_insert_with(|| Watched { notify: Arc::new(Notify::new()), count: 0 });
        entry.count += 1;
        let notify = entry.notify.clone();
        if entry.count == 1 {
            self.tell(WatchChange::Watch(id));
        }
        Watch { id, notify, inner: self.inner.clone() }
    }

    /// Wakes the watchers of job `id` (none: nothing happens).
    pub fn job_changed(&self, id: JobId) {
        let notify = self.inner.watched.lock().expect("notifier lock").get(&id).map(|w| w.notify.clone());
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// Wakes the watchers of every job: after wake-ups may have been lost
    /// (a reconnect) or when the changed jobs are not known.
    pub fn all_changed(&self) {
        let all: Vec<Arc<Notify>> =
            self.inner.watched.lock().expect("notifier lock").values().map(|w| w.notify.clone()).collect();
        for notify in all {
            notify.notify_waiters();
        }
    }

    /// Cancellations of running jobs from now on, for a worker of this
    /// process. Ends when the receiver is dropped.
    pub fn cancels(&self) -> mpsc::UnboundedReceiver<CancelSignal> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.cancels.lock().expect("notifier lock").push(tx);
        rx
    }

    /// Tells this process's workers that `worker` is to stop running job `job`.
    pub fn cancel_requested(&self, worker: &str, job: JobId) {
        self.send_cancel(CancelSignal::Job { worker: worker.to_owned(), job });
    }

    /// Tells this process's workers that cancellations may have been lost.
    pub fn cancels_missed(&self) {
        self.send_cancel(CancelSignal::Missed);
    }

    fn send_cancel(&self, signal: CancelSignal) {
        self.inner.cancels.lock().expect("notifier lock").retain(|tx| tx.send(signal.clone()).is_ok());
    }

    /// The jobs watched now.
    pub fn watched(&self) -> Vec<JobId> {
        self.inner.watched.lock().expect("notifier lock").keys().copied().collect()
    }

    /// How many jobs are watched now.
    pub fn watched_count(&self) -> usize {
        self.inner.watched.lock().expect("notifier lock").len()
    }

    /// Sends watch changes to `tx` from now on (a backend subscribing per job).
    pub fn on_watch_changes(&self, tx: mpsc::UnboundedSender<WatchChange>) {
        *self.inner.changes.lock().expect("notifier lock") = Some(tx);
    }

    /// Marks wake-ups as crossing processes (or not): waiters then poll only
    /// as a safety net.
    pub fn set_cross_process(&self, on: bool) {
        self.inner.cross_process.store(on, Ordering::Relaxed);
    }

    /// How long a waiter may wait before re-reading the store on its own.
    pub fn poll(&self) -> Duration {
        if self.inner.cross_process.load(Ordering::Relaxed) { SAFETY_POLL } else { LOCAL_POLL }
    }

    fn tell(&self, change: WatchChange) {
        if let Some(tx) = self.inner.changes.lock().expect("notifier lock").as_ref() {
            let _ = tx.send(change);
        }
    }
}

/// Interest in one job's changes; see [`Notifier::watch`].
#[derive(Debug)]
pub struct Watch {
    id: JobId,
    notify: Arc<Notify>,
    inner: Arc<Inner>,
}

impl Watch {
    /// Completes at the job's next change. Create it before reading the store:
    /// a change between the two still completes it.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    pub fn id(&self) -> JobId {
        self.id
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self.inner.watched.lock().expect("notifier lock");
        let last = match watched.get_mut(&self.id) {
            Some(entry) => {
                entry.count -= 1;
                entry.count == 0
            }
            None => false,
        };
        if last {
            watched.remove(&self.id);
            drop(watched);
            Notifier { inner: self.inner.clone() }.tell(WatchChange::Unwatch(self.id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_wake_per_job() {
        let notifier = Notifier::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        notifier.on_watch_changes(tx);
        let (a, b) = (crate::new_job_id(), crate::new_job_id());
        let wa = notifier.watch(a);
        let wa2 = notifier.watch(a);
        let wb = notifier.watch(b);
        assert_eq!(rx.try_recv().unwrap(), WatchChange::Watch(a));
        assert_eq!(rx.try_recv().unwrap(), WatchChange::Watch(b));
        assert!(rx.try_recv().is_err(), "a second watcher of a subscribes nothing");
        let (ca, ca2, cb) = (wa.changed(), wa2.changed(), wb.changed());
        notifier.job_changed(a);
        tokio::time::timeout(Duration::from_secs(1), async { tokio::join!(ca, ca2) }).await.unwrap();
        tokio::pin!(cb);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut cb).await.is_err(), "b not woken by a");
        drop(wa);
        assert!(rx.try_recv().is_err());
        drop(wa2);
        assert_eq!(rx.try_recv().unwrap(), WatchChange::Unwatch(a));
        assert_eq!(notifier.watched(), vec![b]);
        notifier.all_changed();
        tokio::time::timeout(Duration::from_secs(1), cb).await.unwrap();
    }

    #[test]
    fn cancels_reach_every_listener_until_it_is_dropped() {
        let notifier = Notifier::default();
        let (mut one, two) = (notifier.cancels(), notifier.cancels());
        let job = crate::new_job_id();
        notifier.cancel_requested("w1", job);
        drop(two);
        notifier.cancels_missed();
        assert_eq!(one.try_recv().unwrap(), CancelSignal::Job { worker: "w1".into(), job });
        assert_eq!(one.try_recv().unwrap(), CancelSignal::Missed);
        assert_eq!(notifier.inner.cancels.lock().unwrap().len(), 1, "the dropped listener is forgotten");
    }
}
