//! `NotificationDecryptor` for Kotlin and Swift: decrypt the event a push is about, in an
//! iOS notification service extension or an Android push handler, beside the app.

use std::sync::Arc;
use std::time::Duration;

use newt_core::notification as core;

use crate::client::{core_store_key, run};
use crate::error::{DecryptionFailure, NewtError};
use crate::ids;
use crate::types::{ClientConfig, SenderTrust};

/// What a notification shows.
#[derive(uniffi::Record, Clone, Debug, PartialEq)]
pub struct NotificationInfo {
    /// The room.
    pub room_id: String,
    /// The event.
    pub event_id: String,
    /// Who sent it.
    pub sender: String,
    /// The sending device (encrypted events).
    pub sender_device: Option<String>,
    /// How far the sender is trusted (encrypted events): apply your trust policy.
    pub sender_trust: Option<SenderTrust>,
    /// The (decrypted) event type, e.g. `m.room.message`.
    pub event_type: String,
    /// The (decrypted) content as JSON.
    pub content_json: String,
    /// `content.body` when it is a string.
    pub body: Option<String>,
    /// It was encrypted.
    pub encrypted: bool,
}

impl From<core::Notification> for NotificationInfo {
    fn from(n: core::Notification) -> Self {
        Self {
            room_id: n.room_id.to_string(),
            event_id: n.event_id.to_string(),
            sender: n.sender.to_string(),
            sender_device: n.sender_device.map(|d| d.to_string()),
            sender_trust: n.sender_trust.map(Into::into),
            event_type: n.event_type,
            body: n
                .content
                .get("body")
                .and_then(|b| b.as_str())
                .map(str::to_owned),
            content_json: n.content.to_string(),
            encrypted: n.encrypted,
        }
    }
}

impl From<core::NotificationError> for NewtError {
    fn from(e: core::NotificationError) -> Self {
        match e {
            core::NotificationError::NotLoggedIn => NewtError::NotLoggedIn,
            core::NotificationError::KeyMissing(waited) => NewtError::Undecryptable {
                failure: DecryptionFailure::MissingRoomKey,
                message: format!(
                    "the room key did not arrive within {} ms",
                    waited.as_millis()
                ),
            },
            core::NotificationError::Undecryptable(e) => {
                NewtError::from(newt_core::crypto::CryptoError::Megolm(e))
            }
            core::NotificationError::InvalidEvent(message) => NewtError::InvalidInput { message },
            core::NotificationError::Http(e) => e.into(),
            core::NotificationError::Crypto(e) => e.into(),
            core::NotificationError::Store(e) => e.into(),
            other => NewtError::Internal {
                message: other.to_string(),
            },
        }
    }
}

/// Decrypts push notifications beside the app, on its store (see `API.md`).
#[derive(uniffi::Object)]
pub struct NotificationDecryptor {
    inner: Arc<core::NotificationDecryptor>,
}

#[uniffi::export]
impl NotificationDecryptor {
    /// Open on the app's store (same directory and key as its `NewtClient`). No network.
    #[uniffi::constructor]
    pub async fn open(config: ClientConfig) -> Result<Arc<Self>, NewtError> {
        run(async move {
            let key = core_store_key(config.store_key)?;
            let inner = tokio::task::spawn_blocking(move || {
                core::NotificationDecryptor::open(
                    &config.homeserver,
                    std::path::Path::new(&config.store_dir),
                    &key,
                )
            })
            .await
            .map_err(|_| NewtError::Internal {
                message: "store open panicked".into(),
            })??;
            Ok(Arc::new(Self {
                inner: Arc::new(inner),
            }))
        })
        .await
    }

    /// The notification about `event_id` in `room_id`: `event_json` if the push carried the
    /// event, else it is fetched. A missing room key is waited for (to-device catch-up) for
    /// at most `budget_ms`; then `Undecryptable(MissingRoomKey)`.
    pub async fn decrypt(
        &self,
        room_id: String,
        event_id: String,
        event_json: Option<String>,
        budget_ms: u64,
    ) -> Result<NotificationInfo, NewtError> {
        let room_id = ids::room_id(&room_id)?;
        let event_id = ids::event_id(&event_id)?;
        let event = event_json
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(|e| NewtError::InvalidInput {
                message: format!("event JSON: {e}"),
            })?;
        let inner = Arc::clone(&self.inner);
        run(async move {
            let budget = Duration::from_millis(budget_ms);
            Ok(inner
                .decrypt(&room_id, &event_id, event, budget)
                .await?
                .into())
        })
        .await
    }
}
