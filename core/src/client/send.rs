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
use ruma::api::client::redact::redact_event;
use ruma::events::MessageLikeEventType;
use ruma::{OwnedEventId, RoomId, TransactionId};
use serde_json::{Value, json};
use tracing::debug;

use super::room_keys::transient_or_logged;
use super::send_kinds::{MESSAGE, OutgoingMessage, REDACTION, clear_relation};
use super::send_state::{LocalEcho, SendState, kept_echo};
use super::{Client, ClientError};
use crate::http::{HttpError, MAX_BODY_BYTES, with_retry};
use crate::store::{Changes, ClientChanges, QueuedSend, SecretBlob, SendStage};

/// The type of a ready message in an encrypted room.
const ENCRYPTED: &str = "m.room.encrypted";

impl Client {
    /// Send an `m.text` message and wait until the server has it; returns the event id.
    pub async fn send_text(
        &self,
        room_id: &RoomId,
        body: &str,
    ) -> Result<OwnedEventId, ClientError> {
        self.send_message(room_id, &json!({"msgtype": "m.text", "body": body}))
            .await
    }

    /// Send an `m.room.message` with the given content (encrypted in an encrypted room) and
    /// wait until the server has it; returns the event id.
    ///
    /// The message goes into the store's send queue (content encrypted at rest) before
    /// anything is sent, after the room's earlier queued messages. A transient failure (or
    /// the process dying) leaves it queued where it got to: it is retried with backoff
    /// (see [`Client::queue_message`]). One that retrying cannot fix is left stuck with a
    /// reason ([`Client::retry_send`], [`Client::cancel_send`]); either way this returns the
    /// error. Every attempt sends the same body with the same transaction id, so the server
    /// stores the message once and the room key ratchets once for it.
    pub async fn send_message(
        &self,
        room_id: &RoomId,
        content: &Value,
    ) -> Result<OwnedEventId, ClientError> {
        self.machine()?;
        if content.get(super::media::LOCAL_FILE).is_some() {
            // Only `queue_attachment` names a local file: content from elsewhere (an event
            // the app forwards, say) must not make us upload one.
            return Err(ClientError::InvalidInput(format!(
                "{} is reserved",
                super::media::LOCAL_FILE
            )));
        }
        // Held from before the message is queued: no other task sends it meanwhile.
        let sending = self.inner.sending.lock().await;
        let txn_id = self.enqueue(room_id, MESSAGE, content).await?;
        let result = self.send_room_queue(room_id, &txn_id).await;
        drop(sending);
        result
    }

    /// Queue a message and return its transaction id at once (the id of its local echo);
    /// it is sent in the background, in order after the room's earlier messages. Its
    /// states are published ([`Client::subscribe_sends`]): queued, sending, sent, waiting
    /// to retry (network, 5xx, 429: exponential backoff with jitter, the server's
    /// `retry_after_ms` honoured, at once when the network is back, and through the app's
    /// background scheduler) or stuck with a reason. Offline, messages wait in the queue and
    /// go out in order when the network returns.
    ///
    /// An edit, reply, reaction or redaction may name a message still queued by its
    /// transaction id: it waits until that one is sent and then names its event id (it is
    /// cancelled with it).
    pub async fn queue_message(
        &self,
        room_id: &RoomId,
        message: OutgoingMessage,
    ) -> Result<String, ClientError> {
        let (event_type, content) = message.into_event()?;
        self.queue_content(room_id, event_type, content).await
    }

    /// [`Client::queue_message`] of an event type and content.
    pub(crate) async fn queue_content(
        &self,
        room_id: &RoomId,
        event_type: &str,
        content: Value,
    ) -> Result<String, ClientError> {
        self.machine()?;
        // No lock: storing it is one transaction, and the queue is read at each drain's
        // start (a drain that is sending others is not waited for).
        self.check_target(event_type, &content).await?;
        let txn_id = self.enqueue(room_id, event_type, &content).await?;
        self.spawn_drain();
        Ok(txn_id)
    }

    /// Store a new message at the end of the queue and publish its echo.
    async fn enqueue(
        &self,
        room_id: &RoomId,
        event_type: &str,
        content: &Value,
    ) -> Result<String, ClientError> {
        let bytes = serde_json::to_vec(content)
            .map_err(|e| ClientError::InvalidInput(format!("message content: {e}")))?;
        let queued = QueuedSend {
            txn_id: TransactionId::new().to_string(),
            room_id: room_id.to_owned(),
            stage: SendStage::Queued,
            event_type: event_type.to_owned(),
            content: SecretBlob::new(bytes),
            echo: None,
            stuck: None,
        };
        self.save_changes(Changes::from(ClientChanges {
            queued_sends: vec![queued.clone()],
            ..Default::default()
        }))
        .await?;
        self.publish_echo(&queued, SendState::Queued);
        Ok(queued.txn_id)
    }

    /// A relation must name an event id, or a message still queued.
    pub(crate) async fn check_target(
        &self,
        event_type: &str,
        content: &Value,
    ) -> Result<(), ClientError> {
        let Some(target) = super::send_kinds::target(event_type, content) else {
            return Ok(());
        };
        if target.starts_with('$') {
            return OwnedEventId::try_from(target.as_str())
                .map(drop)
                .map_err(|e| ClientError::InvalidInput(format!("target event id: {e}")));
        }
        let queued = self.queue().await?;
        if queued.iter().any(|q| q.txn_id == target) {
            return Ok(());
        }
        let t = target.clone();
        match self
            .blocking(move |c| Ok(c.store()?.sent_event(&t)?))
            .await?
        {
            Some(_) => Ok(()),
            None => Err(ClientError::NotQueued(target)),
        }
    }

    /// Publish a message's echo (new, or its content changed) with its state.
    pub(crate) fn publish_echo(&self, q: &QueuedSend, state: SendState) {
        if let Some(echo) = LocalEcho::of(q, state.clone()) {
            self.publish_send(&q.room_id, &q.txn_id, state, Some(echo));
        }
    }

    /// Move one queued message on to the end: prepared if still queued, then sent.
    pub(crate) async fn send_item(&self, q: QueuedSend) -> Result<OwnedEventId, ClientError> {
        let ready = match q.stage {
            // Only the send itself can have delivered the message.
            SendStage::Queued => self
                .prepare_item(q)
                .await
                .map_err(unusable_answer_is_not_delivery)?,
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
        let (q, content) = self
            .upload_if_local(q, content, room.encryption.is_some())
            .await?;
        // A room known to be unencrypted (encryption, once on, is never turned off), and
        // redactions, which are never encrypted: ready as they are.
        if room.encryption.is_none() || q.event_type == REDACTION {
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
        self.prepare_room_key(&q.room_id).await?;
        self.encrypt_item(q, content).await
    }

    /// Encrypt a queued message; the ciphertext (with the relation in clear) replaces it in
    /// the queue in the transaction that advances the session. The app's content is kept
    /// for the echo.
    async fn encrypt_item(&self, q: QueuedSend, content: Value) -> Result<QueuedSend, ClientError> {
        let machine = self.machine()?;
        // The echo kept at upload (naming the local file), or the content as it is.
        let echo = q.echo.clone().unwrap_or_else(|| {
            SecretBlob::new(kept_echo(&q.event_type, &content).to_string().into_bytes())
        });
        self.blocking(move |_| {
            let mut ready = None;
            machine.encrypt_room_event_with(&q.room_id, &q.event_type, &content, |ct| {
                let mut ct = ct.clone();
                if let (Some(relation), Some(outer)) =
                    (clear_relation(&content), ct.as_object_mut())
                {
                    outer.insert("m.relates_to".to_owned(), relation);
                }
                let next = QueuedSend {
                    stage: SendStage::Ready,
                    event_type: ENCRYPTED.to_owned(),
                    content: SecretBlob::new(ct.to_string().into_bytes()),
                    echo: Some(echo.clone()),
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
        let answer = if ready.event_type == REDACTION {
            let request = redaction_request(ready, &body)?;
            with_retry(|| self.inner.http.send_raw(request.clone(), MAX_BODY_BYTES)).await?
        } else {
            let request = send_message_event::v3::Request::new_raw(
                ready.room_id.clone(),
                ready.txn_id.as_str().into(),
                MessageLikeEventType::from(ready.event_type.as_str()),
                crate::crypto::raw_json(&body)?,
            );
            with_retry(|| self.inner.http.send_raw(request.clone(), MAX_BODY_BYTES)).await?
        };
        debug!(room_id = %ready.room_id, "sent a queued message");
        // The server has the event now; an answer without a valid event id is its problem.
        serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| OwnedEventId::try_from(v.get("event_id")?.as_str()?).ok())
            .ok_or_else(|| HttpError::Response("no valid event_id in the answer".into()).into())
    }
}

/// The redaction endpoint's request for a queued `{"redacts", "reason"}`.
fn redaction_request(
    ready: &QueuedSend,
    body: &Value,
) -> Result<redact_event::v3::Request, ClientError> {
    let target = body
        .get("redacts")
        .and_then(Value::as_str)
        .and_then(|t| OwnedEventId::try_from(t).ok())
        .ok_or_else(|| ClientError::InvalidInput("redaction without a target event".into()))?;
    let mut request =
        redact_event::v3::Request::new(ready.room_id.clone(), target, ready.txn_id.as_str().into());
    request.reason = body
        .get("reason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(request)
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
