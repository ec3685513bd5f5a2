//! The send queue: messages the app sent that are waiting to go out, sent oldest first,
//! in order within each room, one task at a time (`Inner::sending`), each moved on from the
//! stage it got to (`send.rs`). A message that failed for a reason that may go away waits
//! (with backoff, `send_state.rs`) and the room's later messages wait behind it; one that
//! retrying cannot fix is stuck with a reason until the app retries or cancels it, and the
//! room's later messages go on.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ruma::{OwnedEventId, OwnedRoomId, RoomId};
use serde_json::Value;
use tracing::warn;

use super::send_kinds::{queued_target, resolve_target};
use super::send_state::{SendState, stuck_reason};
use super::{Client, ClientError};
use crate::http::HttpError;
use crate::store::{Changes, ClientChanges, QueuedSend, SecretBlob, StoreError, StuckReason};

/// What became of one queued message.
enum Outcome {
    /// The server has it.
    Sent(OwnedEventId),
    /// Stuck until the app retries it, or gone (the server has it but did not say its id).
    Stopped(ClientError),
    /// Stays queued; the room's later messages wait behind it.
    Waits(ClientError),
    /// Waits for the message it relates to; the room's later messages go on.
    Skipped,
}

impl Client {
    /// Send the queued messages that are due (`all_due`: every one that is not stuck, e.g.
    /// when the app's scheduler woke us for them), oldest first (see the module
    /// documentation). Returns `(sent, still queued, the first error worth a retry)`.
    pub(crate) async fn send_queued(
        &self,
        all_due: bool,
    ) -> Result<(u32, u32, Option<ClientError>), ClientError> {
        let sending = self.inner.sending.lock().await;
        let queued = self.queue().await?;
        let mut sent = 0;
        let mut blocked: HashSet<OwnedRoomId> = HashSet::new();
        let mut retry_error = None;
        for q in queued {
            if self.inner.control_waiting.load(Ordering::SeqCst) > 0 {
                // The app cancels, edits or retries: it goes first, then the rest is sent.
                drop(sending);
                self.spawn_drain();
                let left = self.queue().await?.len() as u32;
                return Ok((sent, left, retry_error));
            }
            if q.stuck.is_some() || blocked.contains(&q.room_id) {
                continue;
            }
            let room_id = q.room_id.clone();
            if !all_due && !self.retries().is_due(&q.txn_id) {
                blocked.insert(room_id);
                continue;
            }
            match self.send_one(q).await? {
                Outcome::Sent(_) => sent += 1,
                Outcome::Stopped(_) | Outcome::Skipped => {}
                Outcome::Waits(e) => {
                    blocked.insert(room_id);
                    retry_error.get_or_insert(e);
                }
            }
        }
        let left = self.queue().await?.len() as u32;
        drop(sending);
        // What still waits (in any room) is tried when its time comes.
        self.arm_retry_timer(None);
        Ok((sent, left, retry_error))
    }

    /// Send `room_id`'s queued messages in order up to `txn_id`; returns its event id, or the
    /// error that stopped it (its own, or that of an earlier message it waits behind). The
    /// caller holds `Inner::sending` since before it queued the message.
    pub(crate) async fn send_room_queue(
        &self,
        room_id: &RoomId,
        txn_id: &str,
    ) -> Result<OwnedEventId, ClientError> {
        let queued = self.queue().await?;
        let room = queued.into_iter().filter(|q| q.room_id == room_id);
        for q in room.filter(|q| q.stuck.is_none()) {
            let ours = q.txn_id == txn_id;
            match self.send_one(q).await? {
                Outcome::Sent(event_id) if ours => return Ok(event_id),
                Outcome::Stopped(e) | Outcome::Waits(e) if ours => return Err(e),
                Outcome::Waits(e) => return Err(e),
                Outcome::Skipped if ours => {
                    return Err(ClientError::InvalidInput(format!(
                        "message {txn_id} waits for the message it relates to"
                    )));
                }
                Outcome::Sent(_) | Outcome::Stopped(_) | Outcome::Skipped => {}
            }
        }
        Err(ClientError::NotQueued(txn_id.to_owned()))
    }

    pub(crate) async fn queue(&self) -> Result<Vec<QueuedSend>, ClientError> {
        self.blocking(|c| Ok(c.store()?.queued_sends()?)).await
    }

    async fn is_queued(&self, txn_id: &str) -> Result<bool, ClientError> {
        Ok(self.queue().await?.iter().any(|q| q.txn_id == txn_id))
    }

    /// Move one message on; a message sent leaves the queue, one that failed waits or is
    /// stuck.
    async fn send_one(&self, q: QueuedSend) -> Result<Outcome, ClientError> {
        let txn_id = q.txn_id.clone();
        let q = match self.with_target_resolved(q).await? {
            Ok(Some(q)) => q,
            Ok(None) => return Ok(Outcome::Skipped),
            Err(stuck) => return self.stop(&txn_id, stuck).await,
        };
        let room_id = q.room_id.clone();
        self.publish_send(&room_id, &txn_id, SendState::Sending, None);
        match self.send_item(q).await {
            Ok(event_id) => {
                self.finish(&room_id, &txn_id, Some(event_id.clone()))
                    .await?;
                Ok(Outcome::Sent(event_id))
            }
            // The server has it, but did not say its id: the remote echo will.
            Err(e @ ClientError::Http(HttpError::Response(_))) => {
                self.finish(&room_id, &txn_id, None).await?;
                Ok(Outcome::Stopped(e))
            }
            Err(e) if stuck_reason(&e).is_some() => self.stop(&txn_id, e).await,
            // Its echo came back in a sync meanwhile (its answers were lost): it is sent.
            Err(_) if !self.is_queued(&txn_id).await? => Ok(Outcome::Skipped),
            Err(e) => {
                warn!(error = %e, "a queued message stays queued");
                let next_attempt_ms = self.retries().failed(&txn_id, &e);
                let error = e.to_string();
                let state = SendState::WaitingToRetry {
                    next_attempt_ms,
                    error,
                };
                self.publish_send(&room_id, &txn_id, state, None);
                self.arm_retry_timer(Some(&e));
                Ok(Outcome::Waits(e))
            }
        }
    }

    /// The message with the event id of the message it relates to in place of its
    /// transaction id: `Ok(None)` while that one is still queued, `Err` if it is neither
    /// queued nor known as sent (it was cancelled).
    async fn with_target_resolved(
        &self,
        mut q: QueuedSend,
    ) -> Result<Result<Option<QueuedSend>, ClientError>, ClientError> {
        let Ok(mut content) = serde_json::from_slice::<Value>(q.content.as_bytes()) else {
            return Ok(Ok(Some(q)));
        };
        let Some(target) = queued_target(&q.event_type, &content) else {
            return Ok(Ok(Some(q)));
        };
        if self
            .queue()
            .await?
            .iter()
            .any(|other| other.txn_id == target)
        {
            return Ok(Ok(None));
        }
        let t = target.clone();
        let sent = self
            .blocking(move |c| Ok(c.store()?.sent_event(&t)?))
            .await?;
        let Some(event_id) = sent else {
            return Ok(Err(ClientError::NotQueued(target)));
        };
        resolve_target(&q.event_type, &mut content, &event_id);
        q.content = SecretBlob::new(content.to_string().into_bytes());
        Ok(Ok(Some(q)))
    }

    /// The message left the queue: the server has it.
    async fn finish(
        &self,
        room_id: &RoomId,
        txn_id: &str,
        event_id: Option<OwnedEventId>,
    ) -> Result<(), ClientError> {
        let sent_events = event_id
            .iter()
            .map(|e| (txn_id.to_owned(), e.clone()))
            .collect();
        // The queued messages relating to it name its event id from now on (however many
        // messages are sent before their turn).
        let resolved = match &event_id {
            Some(e) => self.dependents_resolved(txn_id, e).await?,
            None => Vec::new(),
        };
        self.save_changes(Changes::from(ClientChanges {
            finished_sends: vec![txn_id.to_owned()],
            sent_events,
            advanced_sends: resolved,
            ..Default::default()
        }))
        .await?;
        self.retries().forget(txn_id);
        self.publish_send(room_id, txn_id, SendState::Sent { event_id }, None);
        Ok(())
    }

    /// The queued messages that name `txn_id` as their target, naming `event_id` instead.
    async fn dependents_resolved(
        &self,
        txn_id: &str,
        event_id: &OwnedEventId,
    ) -> Result<Vec<QueuedSend>, ClientError> {
        let mut resolved = Vec::new();
        for mut q in self.queue().await? {
            let Ok(mut content) = serde_json::from_slice::<Value>(q.content.as_bytes()) else {
                continue;
            };
            if queued_target(&q.event_type, &content).as_deref() == Some(txn_id) {
                resolve_target(&q.event_type, &mut content, event_id);
                q.content = SecretBlob::new(content.to_string().into_bytes());
                resolved.push(q);
            }
        }
        Ok(resolved)
    }

    /// Mark a message stuck with the reason of `error` (kept where it got to).
    async fn stop(&self, txn_id: &str, error: ClientError) -> Result<Outcome, ClientError> {
        let reason = match &error {
            // Its target was cancelled, or is too old to be known.
            ClientError::NotQueued(_) => StuckReason::InvalidContent,
            e => stuck_reason(e).unwrap_or(StuckReason::Refused),
        };
        warn!(error = %error, ?reason, "a queued message is stuck until the app retries it");
        let current = self.queue().await?.into_iter().find(|q| q.txn_id == txn_id);
        if let Some(current) = current {
            let stuck = QueuedSend {
                stuck: Some(reason),
                ..current
            };
            let saved = self
                .save_changes(Changes::from(ClientChanges {
                    advanced_sends: vec![stuck.clone()],
                    ..Default::default()
                }))
                .await;
            self.retries().forget(txn_id);
            match saved {
                // Its echo came back meanwhile: it is sent.
                Err(ClientError::Store(StoreError::NotQueued(_))) => {}
                Err(e) => return Err(e),
                Ok(()) => {
                    let state = SendState::Stuck { reason };
                    self.publish_send(&stuck.room_id, txn_id, state, None);
                }
            }
        }
        Ok(Outcome::Stopped(error))
    }

    /// Set the retry timer for the earliest waiting message, unless one as early is set (a
    /// timer while the process runs; the app's background scheduler, asked for the same
    /// time, when it is suspended). Each drain sets it again for what is still waiting.
    fn arm_retry_timer(&self, error: Option<&ClientError>) {
        let Some(due) = self.retries().earliest_due_ms() else {
            return;
        };
        let timer = &self.inner.send_timer_due_ms;
        if timer.fetch_min(due, Ordering::SeqCst) <= due {
            return; // an earlier timer is set, and sends what is due then
        }
        let now = super::send_state::now_ms();
        let delay = Duration::from_millis(due.saturating_sub(now));
        // Weak: a client the app dropped is not kept alive by its timer.
        let inner = std::sync::Arc::downgrade(&self.inner);
        self.spawn_abortable(async move {
            tokio::time::sleep(delay).await;
            if let Some(inner) = inner.upgrade() {
                inner.send_timer_due_ms.store(u64::MAX, Ordering::SeqCst);
                Client { inner }.spawn_drain();
            }
        });
        match error {
            Some(e) if !super::is_transient(e) => self.schedule_retry(e, "message send failed"),
            _ => self.schedule_wakeup(delay.max(Duration::from_secs(1)), "message send failed"),
        }
    }

    /// Send what is due in the background (once: a drain asked for while one waits is
    /// the same drain).
    pub(crate) fn spawn_drain(&self) {
        if self.inner.drain_requested.swap(true, Ordering::SeqCst) {
            return;
        }
        let client = self.handle();
        self.spawn_abortable(async move {
            let _sending = client.inner.sending.lock().await;
            client.inner.drain_requested.store(false, Ordering::SeqCst);
            drop(_sending);
            if let Err(e) = client.send_queued(false).await {
                warn!(error = %e, "sending the queue failed");
            }
        });
    }
}
