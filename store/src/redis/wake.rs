//! Wake-ups across processes over Redis pub/sub (ARCHITECTURE.md, "Wake-ups").
//!
//! The scripts publish on three kinds of channel: `{prefix}:wake:ready` when jobs
//! are queued (the message is the earliest `run_at`, in ms), `{prefix}:job:{id}`
//! (named like the job's key) with the new event's seq whenever a job's event log
//! grows, and `{prefix}:wake:cancel` with `{id} {worker}` when a running job's
//! cancellation is requested (rare: every process hears every one, and only the
//! named worker acts). One task per store holds a dedicated pub/sub connection: it subscribes
//! to the ready channel and to the channel of every job this process watches
//! (per job, so a process hears only of the jobs it follows), turns messages
//! into [`Notifier`] wake-ups, and reconnects by itself. After every (re)connect
//! it wakes every waiter once, since messages sent while it was away are lost.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use super::now_millis;
use super::primary::Primary;
use crate::notify::WatchChange;
use crate::{JobId, Notifier};

/// Channels per SUBSCRIBE / UNSUBSCRIBE command.
const BATCH: usize = 1000;
/// Known future `run_at`s kept to wake workers when they come (beyond this, the
/// worker's poll finds them).
const MAX_DUE: usize = 10_000;
/// A connection that answers no PING within this is given up and reopened.
const PING_EVERY: Duration = Duration::from_secs(15);
const TIMEOUT: Duration = Duration::from_secs(5);

/// The subscriber task; stops when dropped (with its store).
pub(super) struct WakeTask(tokio::task::JoinHandle<()>);

impl Drop for WakeTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) fn start(primary: Arc<Primary>, prefix: &str, notifier: Notifier) -> WakeTask {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    notifier.on_watch_changes(tx);
    notifier.set_cross_process(true);
    WakeTask(tokio::spawn(run(primary, prefix.to_owned(), notifier, rx)))
}

/// Subscribes on the primary; when it moves (a failover), on the new one.
async fn run(primary: Arc<Primary>, prefix: String, notifier: Notifier, mut changes: UnboundedReceiver<WatchChange>) {
    let mut moved = primary.moved();
    let ready = format!("{prefix}:wake:ready");
    let cancel = format!("{prefix}:wake:cancel");
    let job_prefix = format!("{prefix}:job:");
    let channel = |id: &JobId| format!("{job_prefix}{id}");
    let mut due: BinaryHeap<Reverse<i64>> = BinaryHeap::new();
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        moved.mark_unchanged();
        let client = primary.client();
        let pubsub = match tokio::time::timeout(TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "wake-up connection failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        // Changes queued so far are in `watched()` already.
        while changes.try_recv().is_ok() {}
        let mut channels = vec![ready.clone(), cancel.clone()];
        channels.extend(notifier.watched().iter().map(channel));
        if !subscribe(&mut sink, &channels, true).await {
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        if connected_before {
            tracing::info!("wake-ups resumed after the Redis connection was lost");
        }
        connected_before = true;
        // What happened while nobody listened: everyone looks once.
        notifier.jobs_ready();
        notifier.all_changed();
        notifier.cancels_missed();
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            let next_due = due.peek().map(|Reverse(at)| *at);
            let wait = next_due.map(|at| Duration::from_millis(u64::try_from(at - now_millis()).unwrap_or(0)));
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let name = msg.get_channel_name();
                    if name == ready {
                        let at: i64 = msg.get_payload().unwrap_or(0);
                        if at <= now_millis() {
                            notifier.jobs_ready();
                        } else if due.len() < MAX_DUE {
                            due.push(Reverse(at));
                        }
                    } else if name == cancel {
                        let text: String = msg.get_payload().unwrap_or_default();
                        if let Some((id, worker)) = text.split_once(' ')
                            && let Ok(id) = id.parse()
                        {
                            notifier.cancel_requested(worker, id);
                        }
                    } else if let Some(id) = name.strip_prefix(&job_prefix).and_then(|id| id.parse().ok()) {
                        notifier.job_changed(id);
                    }
                }
                Some(first) = changes.recv() => {
                    // Coalesce what is queued: the last change of a job wins.
                    let mut latest = HashMap::from([change_entry(first)]);
                    while latest.len() < BATCH * 10 {
                        match changes.try_recv() {
                            Ok(change) => {
                                let (id, watch) = change_entry(change);
                                latest.insert(id, watch);
                            }
                            Err(_) => break,
                        }
                    }
                    let (mut on, mut off) = (Vec::new(), Vec::new());
                    for (id, watch) in latest {
                        if watch { on.push(id) } else { off.push(id) }
                    }
                    let on_channels: Vec<String> = on.iter().map(channel).collect();
                    let off_channels: Vec<String> = off.iter().map(channel).collect();
                    if !subscribe(&mut sink, &on_channels, true).await || !subscribe(&mut sink, &off_channels, false).await {
                        break;
                    }
                    // A change between a follower's first read and this
                    // subscription went unheard: let it look again.
                    for id in on {
                        notifier.job_changed(id);
                    }
                }
                () = tokio::time::sleep(wait.unwrap_or(Duration::ZERO)), if wait.is_some() => {
                    let now = now_millis();
                    while due.peek().is_some_and(|Reverse(at)| *at <= now) {
                        due.pop();
                    }
                    notifier.jobs_ready();
                }
                Ok(()) = moved.changed() => break,
                _ = ping.tick() => {
                    let pong: Result<Result<String, _>, _> = tokio::time::timeout(TIMEOUT, sink.ping()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::warn!("lost the Redis pub/sub connection for wake-ups; reconnecting (waiters poll meanwhile)");
    }
}

fn change_entry(change: WatchChange) -> (JobId, bool) {
    match change {
        WatchChange::Watch(id) => (id, true),
        WatchChange::Unwatch(id) => (id, false),
    }
}

/// (Un)subscribes `channels` in batches; false when the connection failed.
async fn subscribe(sink: &mut ::redis::aio::PubSubSink, channels: &[String], on: bool) -> bool {
    for batch in channels.chunks(BATCH) {
        let done = if on {
            tokio::time::timeout(TIMEOUT, sink.subscribe(batch)).await
        } else {
            tokio::time::timeout(TIMEOUT, sink.unsubscribe(batch)).await
        };
        if !matches!(done, Ok(Ok(()))) {
            return false;
        }
    }
    true
}
