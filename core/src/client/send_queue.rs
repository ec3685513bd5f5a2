//! The send queue: messages the app sent that are waiting to go out, sent oldest first,
//! in order within each room, one task at a time (`Inner::sending`), each moved on from the
//! stage it got to (`send.rs`).

use std::collections::HashSet;

use ruma::{OwnedEventId, OwnedRoomId, RoomId};
use tracing::warn;

use super::{Client, ClientError};
use crate::store::{Changes, ClientChanges, QueuedSend};

/// What became of one queued message.
enum Outcome {
    Sent(OwnedEventId),
    /// Failed for good: dropped.
    Dropped(ClientError),
    /// Stays queued; the room's later messages wait behind it.
    Waits(ClientError),
}

impl Client {
    /// Send the queued messages, oldest first. A message that fails for a reason that may go
    /// away stays queued, and the later messages of its room wait behind it (order is kept);
    /// other rooms go on. One that fails for good (e.g. we were removed from the room) is
    /// dropped. Returns `(sent, still queued, the first error worth a retry)`.
    pub(crate) async fn send_queued(&self) -> Result<(u32, u32, Option<ClientError>), ClientError> {
        let _sending = self.inner.sending.lock().await;
        let queued = self.queue().await?;
        let mut sent = 0;
        let mut blocked: HashSet<OwnedRoomId> = HashSet::new();
        let mut retry_error = None;
        for q in queued {
            if blocked.contains(&q.room_id) {
                continue;
            }
            let room_id = q.room_id.clone();
            match self.send_one(q).await? {
                Outcome::Sent(_) => sent += 1,
                Outcome::Dropped(_) => {}
                Outcome::Waits(e) => {
                    blocked.insert(room_id);
                    retry_error.get_or_insert(e);
                }
            }
        }
        let left = self.queue().await?.len() as u32;
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
        for q in room {
            let ours = q.txn_id == txn_id;
            match self.send_one(q).await? {
                Outcome::Sent(event_id) if ours => return Ok(event_id),
                Outcome::Dropped(e) | Outcome::Waits(e) if ours => return Err(e),
                Outcome::Waits(e) => return Err(e),
                Outcome::Sent(_) | Outcome::Dropped(_) => {}
            }
        }
        Err(ClientError::InvalidInput(format!(
            "message {txn_id} is not queued"
        )))
    }

    async fn queue(&self) -> Result<Vec<QueuedSend>, ClientError> {
        self.blocking(|c| Ok(c.store()?.queued_sends()?)).await
    }

    /// Move one message on; a message sent or dropped leaves the queue.
    async fn send_one(&self, q: QueuedSend) -> Result<Outcome, ClientError> {
        let txn_id = q.txn_id.clone();
        let outcome = match self.send_item(q).await {
            Ok(event_id) => Outcome::Sent(event_id),
            Err(e) if e.is_permanent() => {
                warn!(error = %e, "a queued message failed for good; dropped");
                Outcome::Dropped(e)
            }
            Err(e) => {
                warn!(error = %e, "a queued message stays queued");
                return Ok(Outcome::Waits(e));
            }
        };
        self.save_changes(Changes::from(ClientChanges {
            finished_sends: vec![txn_id],
            ..Default::default()
        }))
        .await?;
        Ok(outcome)
    }
}
