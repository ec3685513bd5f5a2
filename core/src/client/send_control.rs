//! What the app does with its queued messages: see them (local echoes and their states),
//! cancel one, edit one not yet encrypted, retry a stuck one.

use std::collections::HashSet;
use std::sync::MutexGuard;
use std::sync::atomic::{AtomicUsize, Ordering};

use ruma::RoomId;
use tokio::sync::broadcast;

use serde_json::Value;

use super::media::LOCAL_FILE;
use super::send_kinds::{OutgoingMessage, queued_target};
use super::send_state::{LocalEcho, Retries, SendState, SendUpdate};
use super::{Client, ClientError};
use crate::store::{Changes, ClientChanges, QueuedSend, SecretBlob, SendStage};

impl Client {
    /// Subscribe to the state changes of queued messages (all rooms).
    pub fn subscribe_sends(&self) -> broadcast::Receiver<SendUpdate> {
        self.inner.send_updates.subscribe()
    }

    /// The local echoes of a room's queued messages, oldest first, with their states.
    pub async fn local_echoes(&self, room_id: &RoomId) -> Result<Vec<LocalEcho>, ClientError> {
        let queued = self.queue().await?;
        let retries = self.retries();
        Ok(queued
            .iter()
            .filter(|q| q.room_id == room_id)
            .filter_map(|q| LocalEcho::of(q, retries.state_of(q)))
            .collect())
    }

    /// Cancel a queued message: it is not sent, and neither are the queued messages that
    /// relate to it (a reaction to it, say). A message whose sending had started may still
    /// reach the room (its remote echo would then come back).
    pub async fn cancel_send(&self, txn_id: &str) -> Result<(), ClientError> {
        let _sending = self.lock_for_control().await;
        let queued = self.queue().await?;
        let cancelled = with_dependents(&queued, txn_id)?;
        self.save_changes(Changes::from(ClientChanges {
            finished_sends: cancelled.iter().map(|q| q.txn_id.clone()).collect(),
            ..Default::default()
        }))
        .await?;
        for q in cancelled {
            self.retries().forget(&q.txn_id);
            self.publish_send(&q.room_id, &q.txn_id, SendState::Cancelled, None);
        }
        Ok(())
    }

    /// Replace the content of a queued message that is not encrypted yet (its place, id
    /// and state are kept); [`ClientError::AlreadyPrepared`] once it is. The new message
    /// must be of the same kind (a text for a text, a reaction for a reaction).
    pub async fn edit_queued(
        &self,
        txn_id: &str,
        message: OutgoingMessage,
    ) -> Result<(), ClientError> {
        let (event_type, content) = message.into_event()?;
        if queued_target(event_type, &content).as_deref() == Some(txn_id) {
            return Err(ClientError::InvalidInput(
                "a message cannot relate to itself".into(),
            ));
        }
        self.check_target(event_type, &content).await?;
        let _sending = self.lock_for_control().await;
        let q = self.queued_one(txn_id).await?;
        if q.stage != SendStage::Queued {
            return Err(ClientError::AlreadyPrepared(txn_id.to_owned()));
        }
        let queued: Value = serde_json::from_slice(q.content.as_bytes()).unwrap_or_default();
        let is_file = ["file", "url", LOCAL_FILE]
            .iter()
            .any(|k| queued.get(k).is_some());
        if q.event_type != event_type || is_file {
            return Err(ClientError::InvalidInput(format!(
                "a queued {} cannot become a {event_type}",
                q.event_type
            )));
        }
        let edited = QueuedSend {
            content: SecretBlob::new(content.to_string().into_bytes()),
            ..q
        };
        self.save_changes(Changes::from(ClientChanges {
            advanced_sends: vec![edited.clone()],
            ..Default::default()
        }))
        .await?;
        let state = self.retries().state_of(&edited);
        self.publish_echo(&edited, state);
        Ok(())
    }

    /// Send a stuck message again (after the cause was fixed: devices decided about, the
    /// room joined), or a waiting one now. It keeps its place and transaction id.
    pub async fn retry_send(&self, txn_id: &str) -> Result<(), ClientError> {
        {
            let _sending = self.lock_for_control().await;
            let q = self.queued_one(txn_id).await?;
            if q.stuck.is_some() {
                let retried = QueuedSend {
                    stuck: None,
                    ..q.clone()
                };
                self.save_changes(Changes::from(ClientChanges {
                    advanced_sends: vec![retried.clone()],
                    ..Default::default()
                }))
                .await?;
            }
            self.retries().forget(txn_id);
            self.publish_send(&q.room_id, txn_id, SendState::Queued, None);
        }
        self.spawn_drain();
        Ok(())
    }

    /// `Inner::sending` for a call of the app: a drain in progress stops after its current
    /// message (and goes on once the call is done).
    async fn lock_for_control(&self) -> tokio::sync::MutexGuard<'_, ()> {
        let _waiting = Waiting::new(&self.inner.control_waiting);
        // (`_waiting` counts down when dropped: also if this call is cancelled meanwhile.)
        self.inner.sending.lock().await
    }

    async fn queued_one(&self, txn_id: &str) -> Result<QueuedSend, ClientError> {
        self.queue()
            .await?
            .into_iter()
            .find(|q| q.txn_id == txn_id)
            .ok_or_else(|| ClientError::NotQueued(txn_id.to_owned()))
    }

    /// Publish a state change (and the echo, when new or changed).
    pub(crate) fn publish_send(
        &self,
        room_id: &RoomId,
        txn_id: &str,
        state: SendState,
        echo: Option<LocalEcho>,
    ) {
        // No receiver is fine: nobody is listening.
        let _ = self.inner.send_updates.send(SendUpdate {
            room_id: room_id.to_owned(),
            txn_id: txn_id.to_owned(),
            state,
            echo,
        });
    }

    pub(crate) fn retries(&self) -> MutexGuard<'_, Retries> {
        self.inner
            .send_retries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// One call of the app waiting for `Inner::sending`, counted while it exists.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The message `txn_id` and the queued messages that relate to it, directly or through
/// another (a reaction to a reply to it).
fn with_dependents(queued: &[QueuedSend], txn_id: &str) -> Result<Vec<QueuedSend>, ClientError> {
    let first = queued
        .iter()
        .find(|q| q.txn_id == txn_id)
        .ok_or_else(|| ClientError::NotQueued(txn_id.to_owned()))?;
    let mut out = vec![first.clone()];
    let mut seen: HashSet<&str> = HashSet::from([first.txn_id.as_str()]);
    let mut i = 0;
    while let Some(parent) = out.get(i).map(|q| q.txn_id.clone()) {
        for q in queued {
            let content = serde_json::from_slice(q.content.as_bytes()).ok();
            let target = content.and_then(|c| queued_target(&q.event_type, &c));
            // (`seen`: a cycle of relations ends here.)
            if target.as_deref() == Some(&parent) && seen.insert(&q.txn_id) {
                out.push(q.clone());
            }
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::client::tests::offline_client;
    use crate::store::{MemoryStore, conformance::queued};

    /// A cancel that the app gives up on while it waits for a drain does not leave the
    /// drains stopping before their first message forever.
    #[tokio::test]
    async fn a_call_given_up_while_waiting_does_not_stop_the_queue() {
        let store = Arc::new(MemoryStore::new());
        let client = offline_client(store, "@alice:localhost", "ALICE");
        let drain = client.inner.sending.lock().await;
        let waiting = client.handle();
        let call = tokio::spawn(async move { waiting.cancel_send("t1").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(client.inner.control_waiting.load(Ordering::SeqCst), 1);
        call.abort();
        assert!(call.await.is_err(), "cancelled");
        drop(drain);
        assert_eq!(client.inner.control_waiting.load(Ordering::SeqCst), 0);
    }

    /// Relations forming a cycle (edited by hand into the store) are cancelled together,
    /// and the walk ends.
    #[test]
    fn a_cycle_of_relations_ends() {
        let relating = |txn: &str, target: &str| {
            let content = format!(
                r#"{{"m.relates_to":{{"rel_type":"m.annotation","event_id":"{target}","key":"x"}}}}"#
            );
            QueuedSend {
                event_type: "m.reaction".into(),
                ..queued(txn, "!r:x", content.as_bytes())
            }
        };
        let queue = [relating("a", "b"), relating("b", "a"), relating("c", "z")];
        let out = with_dependents(&queue, "a").unwrap();
        let txns: Vec<_> = out.iter().map(|q| q.txn_id.as_str()).collect();
        assert_eq!(txns, ["a", "b"]);
    }
}
