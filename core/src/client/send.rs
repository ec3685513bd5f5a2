//! Sending a message: queued first (encrypted at rest), then moved on stage by stage, each
//! stage's result stored when reached (`send_queue.rs` drives the queue):
//! - `Queued` → `Ready`: in an encrypted room, the members and their devices are brought up
//!   to date, missing Olm sessions claimed and the room key shared (each of those stores
//!   its own result), then the content is encrypted and the ciphertext replaces it in the
//!   queue in the transaction that advanced the Megolm session. In a room known to be
//!   unencrypted, the content is ready as it is.
//! - `Ready` → sent: the room key messages still waiting go out first, then the stored body
//!   is sent with the queued transaction id. A resend sends the same bytes: the session is
//!   never ratcheted twice for one message and the server stores the event once.

use ruma::api::client::message::send_message_event;
use ruma::events::MessageLikeEventType;
use ruma::{OwnedEventId, RoomId, TransactionId};
use serde_json::{Value, json};
use tracing::debug;

use super::room_keys::transient_or_logged;
use super::{Client, ClientError};
use crate::http::{HttpError, MAX_BODY_BYTES, with_retry};
use crate::store::{Changes, ClientChanges, QueuedSend, SecretBlob, SendStage};

/// The type of what the app queues.
const MESSAGE: &str = "m.room.message";
/// The type of a ready message in an encrypted room.
const ENCRYPTED: &str = "m.room.encrypted";

impl Client {
    /// Send an `m.text` message; returns the event id.
    pub async fn send_text(
        &self,
        room_id: &RoomId,
        body: &str,
    ) -> Result<OwnedEventId, ClientError> {
        self.send_message(room_id, &json!({"msgtype": "m.text", "body": body}))
            .await
    }

    /// Send an `m.room.message` with the given content (encrypted in an encrypted room);
    /// returns the event id.
    ///
    /// The message goes into the store's send queue (content encrypted at rest) before
    /// anything is sent, after the room's earlier queued messages, and leaves it once the
    /// server has it or it failed for good. A transient failure (or the process dying)
    /// leaves it queued where it got to: [`Client::run_due_work`] sends it (the app's
    /// background scheduler is asked for a wake-up), as does the first sync of the next
    /// process. Every attempt sends the same body with the same transaction id, so the
    /// server stores the message once and the room key ratchets once for it.
    pub async fn send_message(
        &self,
        room_id: &RoomId,
        content: &Value,
    ) -> Result<OwnedEventId, ClientError> {
        self.machine()?;
        let content = serde_json::to_vec(content)
            .map_err(|e| ClientError::InvalidInput(format!("message content: {e}")))?;
        let queued = QueuedSend {
            txn_id: TransactionId::new().to_string(),
            room_id: room_id.to_owned(),
            stage: SendStage::Queued,
            event_type: MESSAGE.to_owned(),
            content: SecretBlob::new(content),
        };
        let txn_id = queued.txn_id.clone();
        // Held from before the message is queued: no other task sends it meanwhile.
        let sending = self.inner.sending.lock().await;
        self.save_changes(Changes::from(ClientChanges {
            queued_sends: vec![queued],
            ..Default::default()
        }))
        .await?;
        let result = self.send_room_queue(room_id, &txn_id).await;
        drop(sending);
        if let Err(e) = &result
            && !e.is_permanent()
        {
            // Not over: the message stays queued and is sent later (same body and id).
            self.schedule_retry(e, "message send failed");
        }
        result
    }

    /// Move one queued message on to the end: prepared if still queued, then sent.
    pub(crate) async fn send_item(&self, q: QueuedSend) -> Result<OwnedEventId, ClientError> {
        let ready = match q.stage {
            SendStage::Queued => self.prepare_item(q).await?,
            SendStage::Ready => {
                // The room key messages for this ciphertext may still be waiting.
                if let Err(e) = self.send_outgoing().await {
                    transient_or_logged(e)?;
                }
                q
            }
        };
        self.put_event(&ready).await
    }

    /// `Queued` → `Ready` (see the module documentation); returns the ready message.
    async fn prepare_item(&self, q: QueuedSend) -> Result<QueuedSend, ClientError> {
        let content: Value = serde_json::from_slice(q.content.as_bytes())
            .map_err(|e| ClientError::InvalidInput(format!("queued content: {e}")))?;
        let id = q.room_id.clone();
        let room = self.blocking(move |c| Ok(c.store()?.room(&id)?)).await?;
        let room = room.ok_or_else(|| ClientError::RoomNotEncrypted(q.room_id.clone()))?;
        if room.encryption.is_none() {
            // A room known to be unencrypted (encryption, once on, is never turned off).
            let ready = QueuedSend {
                stage: SendStage::Ready,
                ..q
            };
            let advanced = ClientChanges {
                advanced_sends: vec![ready.clone()],
                ..Default::default()
            };
            self.save_changes(Changes::from(advanced)).await?;
            return Ok(ready);
        }
        self.prepare_room_key(&q.room_id)
            .await
            .map_err(unusable_answer_is_not_delivery)?;
        let machine = self.machine()?;
        self.blocking(move |_| {
            let mut ready = None;
            machine.encrypt_room_event_with(&q.room_id, &q.event_type, &content, |ct| {
                let next = QueuedSend {
                    stage: SendStage::Ready,
                    event_type: ENCRYPTED.to_owned(),
                    content: SecretBlob::new(ct.to_string().into_bytes()),
                    ..q.clone()
                };
                ready = Some(next.clone());
                Ok(ClientChanges {
                    advanced_sends: vec![next],
                    ..Default::default()
                })
            })?;
            ready.ok_or_else(|| ClientError::InvalidInput("nothing encrypted".into()))
        })
        .await
    }

    /// Send a ready message; returns its event id.
    async fn put_event(&self, ready: &QueuedSend) -> Result<OwnedEventId, ClientError> {
        let body: Value = serde_json::from_slice(ready.content.as_bytes())
            .map_err(|e| ClientError::InvalidInput(format!("queued body: {e}")))?;
        let request = send_message_event::v3::Request::new_raw(
            ready.room_id.clone(),
            ready.txn_id.as_str().into(),
            MessageLikeEventType::from(ready.event_type.as_str()),
            crate::crypto::raw_json(&body)?,
        );
        let body = with_retry(|| self.inner.http.send_raw(request.clone(), MAX_BODY_BYTES)).await?;
        debug!(room_id = %ready.room_id, "sent a queued message");
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
