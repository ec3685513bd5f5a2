//! The send queue: messages the app sent that are waiting to go out, sent oldest first,
//! in order within each room.

use std::collections::HashSet;

use ruma::OwnedRoomId;
use tracing::warn;

use super::{Client, ClientError};
use crate::store::{Changes, ClientChanges};

impl Client {
    /// Send the queued messages, oldest first. A message that fails for a reason that may go
    /// away stays queued, and the later messages of its room wait behind it (order is kept);
    /// other rooms go on. One that fails for good (e.g. we were removed from the room) is
    /// dropped. Returns `(sent, still queued, the first error worth a retry)`.
    pub(crate) async fn send_queued(&self) -> Result<(u32, u32, Option<ClientError>), ClientError> {
        let queued = self.blocking(|c| Ok(c.store()?.queued_sends()?)).await?;
        let mut sent = 0;
        let mut blocked: HashSet<OwnedRoomId> = HashSet::new();
        let mut retry_error = None;
        for q in &queued {
            if blocked.contains(&q.room_id) {
                continue;
            }
            let finished = match serde_json::from_slice::<serde_json::Value>(q.content.as_bytes()) {
                Err(e) => {
                    warn!(error = %e, "a queued message is unreadable; dropped");
                    true
                }
                Ok(content) => match self
                    .send_message_once(&q.room_id, &content, &q.txn_id)
                    .await
                {
                    Ok(_) => {
                        sent += 1;
                        true
                    }
                    Err(e) if e.is_permanent() => {
                        warn!(error = %e, "a queued message failed for good; dropped");
                        true
                    }
                    Err(e) => {
                        warn!(error = %e, "a queued message stays queued");
                        blocked.insert(q.room_id.clone());
                        retry_error.get_or_insert(e);
                        false
                    }
                },
            };
            if finished {
                let txn_id = q.txn_id.clone();
                self.blocking(move |c| {
                    c.store()?.save_changes(Changes::from(ClientChanges {
                        finished_sends: vec![txn_id],
                        ..Default::default()
                    }))?;
                    Ok(())
                })
                .await?;
            }
        }
        let left = self.blocking(|c| Ok(c.store()?.queued_sends()?.len() as u32));
        let left = left.await?;
        Ok((sent, left, retry_error))
    }
}
