//! Waking the live streams of a client's queue (`qs/listen`) when something was enqueued
//! for it: after the enqueue's transaction committed, never before.
//!
//! Behind a small trait, [`QueueWakeup`], with two kinds:
//! - [`InProcess`]: the streams of this process (SQLite, one process);
//! - [`PgNotify`]: on Postgres, the wake-ups also go to every other process sharing the
//!   database, by `NOTIFY` after the commit (coalesced: one `pg_notify` per batch of up to
//!   [`NOTIFY_BATCH`] clients) and `LISTEN` (Postgres's own engine, no broker). A wake-up
//!   that cannot be sent (the outgoing buffer is full, the database is away) is dropped:
//!   a stream still checks its queue every [`crate::qs::listen::RECHECK`].

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, mpsc};

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

/// Most client ids one `pg_notify` carries (33 bytes each: a payload stays under
/// Postgres's 8,000-byte limit).
pub const NOTIFY_BATCH: usize = 200;

/// Wake-ups waiting to be sent to the other processes; beyond, they are dropped.
const OUTGOING: usize = 16 * 1024;

/// Wake-ups shared through Postgres `LISTEN/NOTIFY` between the processes of one database
/// (one schema: the channel is `phoenix_queue_<schema>`), on top of this process's own.
#[derive(Debug)]
pub struct PgNotify {
    local: Arc<InProcess>,
    outgoing: mpsc::Sender<QsId>,
    /// Dropped with this value: the listening task then ends and closes its connection
    /// (the sending task ends when `outgoing` is dropped).
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl PgNotify {
    // Requirement: QS-LISTEN-4
    /// Listen on the database's channel, and start the task that sends this process's
    /// wake-ups. Both run as long as the runtime does.
    pub async fn start(pool: sqlx::PgPool) -> Result<Self, sqlx::Error> {
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await?;
        let channel = format!("phoenix_queue_{schema}");
        let mut instance = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut instance);
        let instance = hex::encode(instance);
        let local = Arc::new(InProcess::default());
        let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
        listener.listen(&channel).await?;
        let woken = local.clone();
        let me = instance.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    _ = &mut stopped => break,
                    received = listener.recv() => received,
                };
                match received {
                    Ok(notification) => {
                        let Some((from, ids)) = notification.payload().split_once(':') else {
                            continue;
                        };
                        if from == me {
                            continue;
                        }
                        for id in ids.split(',') {
                            if let Some(id) =
                                hex::decode(id).ok().and_then(|b| <QsId>::try_from(b).ok())
                            {
                                woken.wake(&id);
                            }
                        }
                    }
                    Err(e) => {
                        // PgListener reconnects on the next recv; what was sent meanwhile
                        // is lost (the streams' periodic check picks it up).
                        tracing::warn!(error = %e, "queue wake-up listener: connection lost");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        let (outgoing, mut pending) = mpsc::channel::<QsId>(OUTGOING);
        tokio::spawn(async move {
            while let Some(first) = pending.recv().await {
                let mut batch = BTreeSet::from([first]);
                while batch.len() < NOTIFY_BATCH {
                    match pending.try_recv() {
                        Ok(id) => {
                            batch.insert(id);
                        }
                        Err(_) => break,
                    }
                }
                let ids: Vec<String> = batch.iter().map(hex::encode).collect();
                let payload = format!("{instance}:{}", ids.join(","));
                if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(&channel)
                    .bind(payload)
                    .execute(&pool)
                    .await
                {
                    tracing::warn!(error = %e, "queue wake-up not sent to the other processes");
                }
            }
        });
        Ok(Self {
            local,
            outgoing,
            _stop: stop,
        })
    }
}

impl QueueWakeup for PgNotify {
    fn subscribe(&self, client: QsId) -> Arc<Notify> {
        self.local.subscribe(client)
    }

    fn wake(&self, client: &QsId) {
        self.local.wake(client);
        // Called after the commit; sent by the task (never inside a transaction).
        let _ = self.outgoing.try_send(*client);
    }

    fn is_listening(&self, client: &QsId) -> bool {
        self.local.is_listening(client)
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
