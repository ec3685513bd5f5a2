//! Sending a message: queued first (encrypted at rest), then the room key is prepared,
//! the content encrypted and sent with the queued transaction id.

use ruma::api::client::message::send_message_event;
use ruma::events::MessageLikeEventType;
use ruma::{OwnedEventId, RoomId, TransactionId};
use serde_json::{Value, json};
use tracing::debug;

use super::{Client, ClientError};
use crate::http::{HttpError, MAX_BODY_BYTES, with_retry};
use crate::store::{Changes, ClientChanges, QueuedSend, SecretBlob};

impl Client {
    /// Send an encrypted `m.text` message; returns the event id.
    pub async fn send_text(
        &self,
        room_id: &RoomId,
        body: &str,
    ) -> Result<OwnedEventId, ClientError> {
        self.send_message(room_id, &json!({"msgtype": "m.text", "body": body}))
            .await
    }

    /// Send an encrypted `m.room.message` with the given content; returns the event id.
    ///
    /// The message goes into the store's send queue (content encrypted at rest) before
    /// anything is sent, and leaves it once the server has it or it failed for good. A
    /// transient failure (or the process dying) leaves it queued: [`Client::run_due_work`]
    /// sends it (the app's background scheduler is asked for a wake-up), as does the first
    /// sync of the next process. Every attempt reuses the transaction id, so the server
    /// stores the message once.
    pub async fn send_message(
        &self,
        room_id: &RoomId,
        content: &Value,
    ) -> Result<OwnedEventId, ClientError> {
        self.machine()?;
        let queued = QueuedSend {
            txn_id: TransactionId::new().to_string(),
            room_id: room_id.to_owned(),
            content: SecretBlob::new(
                serde_json::to_vec(content)
                    .map_err(|e| ClientError::InvalidInput(format!("message content: {e}")))?,
            ),
        };
        let txn_id = queued.txn_id.clone();
        self.save_changes(Changes::from(ClientChanges {
            queued_sends: vec![queued],
            ..Default::default()
        }))
        .await?;
        let result = self.send_message_once(room_id, content, &txn_id).await;
        match &result {
            // Not over: the message stays queued and is sent later (same transaction id).
            Err(e) if !e.is_permanent() => self.schedule_retry(e, "message send failed"),
            _ => {
                self.save_changes(Changes::from(ClientChanges {
                    finished_sends: vec![txn_id],
                    ..Default::default()
                }))
                .await?;
            }
        }
        result
    }

    pub(crate) async fn send_message_once(
        &self,
        room_id: &RoomId,
        content: &Value,
        txn_id: &str,
    ) -> Result<OwnedEventId, ClientError> {
        let machine = self.machine()?;
        self.prepare_room_key(room_id)
            .await
            .map_err(unusable_answer_is_not_delivery)?;
        let (id, content) = (room_id.to_owned(), content.clone());
        let encrypted = self
            .blocking(move |_| Ok(machine.encrypt_room_event(&id, "m.room.message", &content)?))
            .await?;
        let body = crate::crypto::raw_json(&encrypted)?;
        let request = send_message_event::v3::Request::new_raw(
            room_id.to_owned(),
            txn_id.into(),
            MessageLikeEventType::RoomEncrypted,
            body,
        );
        let body = with_retry(|| self.inner.http.send_raw(request.clone(), MAX_BODY_BYTES)).await?;
        debug!(%room_id, "sent encrypted message");
        // The server has the event now; an answer without a valid event id is its problem.
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| OwnedEventId::try_from(v.get("event_id")?.as_str()?).ok())
            .ok_or_else(|| HttpError::Response("no valid event_id in the answer".into()).into())
    }
}

/// An unreadable answer before the message itself was sent (e.g. to `/members`) does not
/// mean the message was delivered, as it does for the send itself: it stays queued.
fn unusable_answer_is_not_delivery(e: ClientError) -> ClientError {
    match e {
        ClientError::Http(HttpError::Response(m)) => ClientError::InvalidResponse(m),
        ClientError::Http(e @ HttpError::TooLarge { .. }) => {
            ClientError::InvalidResponse(e.to_string())
        }
        other => other,
    }
}
