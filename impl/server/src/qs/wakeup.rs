//! Waking the live streams of a client's queue (`qs/listen`) when something was enqueued
//! for it: after the enqueue's transaction committed, never before.
//!
//! Behind a small trait, [`QueueWakeup`], so that several server processes sharing one
//! database can carry the wake-up between them (Postgres `LISTEN/NOTIFY`, a broker); only
//! the in-process kind, [`InProcess`], exists yet: with several processes a stream learns
//! of a message enqueued by another process only at its next periodic check (every
//! [`crate::qs::listen::RECHECK`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use phoenix_types::ids::QsId;

/// Wake-ups per client record.
pub trait QueueWakeup: Send + Sync + std::fmt::Debug {
    /// A handle woken (a stored permit, so a wake-up between a check and the wait is not
    /// lost) whenever [`QueueWakeup::wake`] is called for `client`, for as long as the
    /// handle is alive.
    fn subscribe(&self, client: QsId) -> Arc<Notify>;
    /// Something was committed to `client`'s queue.
    fn wake(&self, client: &QsId);
    /// Whether a live stream of `client`'s queue is subscribed (here: in this process),
    /// so that it needs no push notification.
    fn is_listening(&self, client: &QsId) -> bool;
}

/// Wake-ups within this process.
#[derive(Debug, Default)]
pub struct InProcess {
    waiting: Mutex<HashMap<QsId, Vec<Weak<Notify>>>>,
}

impl QueueWakeup for InProcess {
    fn subscribe(&self, client: QsId) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        if let Ok(mut waiting) = self.waiting.lock() {
            let handles = waiting.entry(client).or_default();
            handles.retain(|w| w.strong_count() > 0);
            handles.push(Arc::downgrade(&notify));
        }
        notify
    }

    fn wake(&self, client: &QsId) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        let Some(handles) = waiting.get_mut(client) else {
            return;
        };
        handles.retain(|w| match w.upgrade() {
            Some(notify) => {
                notify.notify_one();
                true
            }
            None => false,
        });
        if handles.is_empty() {
            waiting.remove(client);
        }
    }

    fn is_listening(&self, client: &QsId) -> bool {
        self.waiting.lock().is_ok_and(|waiting| {
            waiting
                .get(client)
                .is_some_and(|handles| handles.iter().any(|w| w.strong_count() > 0))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_wake_up_before_the_wait_is_kept_and_dropped_handles_are_forgotten() {
        let wakeup = InProcess::default();
        let first = wakeup.subscribe([1; 16]);
        let second = wakeup.subscribe([1; 16]);
        wakeup.wake(&[1; 16]);
        // Both were woken, though neither was waiting yet.
        tokio::time::timeout(std::time::Duration::from_secs(1), first.notified())
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), second.notified())
            .await
            .unwrap();
        drop((first, second));
        wakeup.wake(&[1; 16]);
        assert!(wakeup.waiting.lock().unwrap().is_empty());
        wakeup.wake(&[2; 16]);
    }
}
