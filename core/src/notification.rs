//! [`NotificationDecryptor`]: decrypt the event a push notification is about, in a second
//! process (an iOS notification service extension) or in the app's push handler, beside
//! the app on the same store.
//!
//! It opens the store in its low-memory mode and the machine in notification mode
//! (`crypto/notification.rs`): the room key is looked up in the store; if it is not there
//! yet, it catches up on to-device messages only (a `/sync` whose filter leaves out rooms,
//! presence and account data), within the time the caller gives, and hands over to the app
//! what it consumed. It never moves the app's sync token, never uploads keys and never
//! sends anything.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ruma::api::client::filter::{FilterDefinition, RoomFilter};
use ruma::api::client::room::get_room_event;
use ruma::api::client::sync::sync_events;
use ruma::{EventId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId};
use serde_json::Value;
use tracing::debug;
use zeroize::Zeroizing;

use crate::client::{KEY_ACCESS_TOKEN, KEY_DEVICE_ID, KEY_USER_ID};
use crate::crypto::{CryptoError, DecryptedRoomEvent, MegolmError, OlmMachine};
use crate::http::{HttpClient, HttpError};
use crate::store::{
    ClientStore, CryptoStore, SenderTrust, SqliteStore, Store, StoreError, StoreKey,
};

/// The longest long-poll of one catch-up request.
const MAX_POLL: Duration = Duration::from_secs(10);

/// What a notification shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The event.
    pub event_id: OwnedEventId,
    /// Who sent it.
    pub sender: OwnedUserId,
    /// The sending device, if known (encrypted events).
    pub sender_device: Option<OwnedDeviceId>,
    /// How far the sender is trusted (encrypted events); apps apply their trust policy.
    pub sender_trust: Option<SenderTrust>,
    /// The event type (decrypted), e.g. `m.room.message`.
    pub event_type: String,
    /// The content (decrypted).
    pub content: Value,
    /// It was encrypted.
    pub encrypted: bool,
}

/// Why a notification could not be shown decrypted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotificationError {
    /// The store holds no logged-in session with its account (the app must log in first).
    #[error("no session in this store")]
    NotLoggedIn,
    /// The room key did not arrive within the time given.
    #[error("the room key did not arrive within {0:?}")]
    KeyMissing(Duration),
    /// The event cannot be decrypted here (withheld, forged, replayed, from a device not
    /// downloaded yet: the app's sync will try again).
    #[error("cannot decrypt: {0}")]
    Undecryptable(MegolmError),
    /// The event is not a valid room event.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The homeserver could not be reached or refused.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The crypto state failed.
    #[error(transparent)]
    Crypto(CryptoError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CryptoError> for NotificationError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::Megolm(e) => NotificationError::Undecryptable(e),
            other => NotificationError::Crypto(other),
        }
    }
}

/// Decrypts push notifications beside the app (see the module documentation).
pub struct NotificationDecryptor {
    homeserver: String,
    access_token: Zeroizing<String>,
    /// Built on first use: a notification whose event came with the push and whose key is
    /// in the store needs no network (building a client costs several milliseconds).
    http: OnceLock<HttpClient>,
    store: Arc<SqliteStore>,
    machine: Arc<OlmMachine>,
}

impl std::fmt::Debug for NotificationDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationDecryptor")
            .finish_non_exhaustive()
    }
}

impl NotificationDecryptor {
    /// Open on the app's store directory with its store key. Does no network I/O.
    pub fn open(
        homeserver: &str,
        store_dir: &Path,
        key: &StoreKey,
    ) -> Result<Self, NotificationError> {
        let store = Arc::new(SqliteStore::open_for_notifications(store_dir, key)?);
        let (Some(user), Some(device), Some(token)) = (
            store.value(KEY_USER_ID)?,
            store.value(KEY_DEVICE_ID)?,
            store.secret_value(KEY_ACCESS_TOKEN)?,
        ) else {
            return Err(NotificationError::NotLoggedIn);
        };
        let user = OwnedUserId::try_from(user)
            .map_err(|e| StoreError::Decode(format!("stored user id: {e}")))?;
        let token = String::from_utf8(token.as_bytes().to_vec())
            .map_err(|_| StoreError::Decode("access token is not UTF-8".into()))?;
        HttpClient::check_homeserver(homeserver)?;
        if store.account()?.is_none() {
            // The login was stored but the app never opened its machine.
            return Err(NotificationError::NotLoggedIn);
        }
        let dyn_store: Arc<dyn Store> = store.clone();
        let machine =
            OlmMachine::open_for_notifications(&user, &OwnedDeviceId::from(device), dyn_store)?;
        Ok(Self {
            homeserver: homeserver.to_owned(),
            access_token: Zeroizing::new(token),
            http: OnceLock::new(),
            store,
            machine: Arc::new(machine),
        })
    }

    /// The notification about `event_id` in `room_id`: `event` if the push carried it, else
    /// fetched. If its room key is not in the store yet, to-device messages are caught up
    /// on until it comes or `budget` has passed ([`NotificationError::KeyMissing`]).
    pub async fn decrypt(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        event: Option<Value>,
        budget: Duration,
    ) -> Result<Notification, NotificationError> {
        let deadline = Instant::now() + budget;
        let event = match event {
            Some(event) => event,
            None => self.fetch(room_id, event_id).await?,
        };
        if event.get("type").and_then(Value::as_str) != Some("m.room.encrypted") {
            return plain(room_id, event_id, event);
        }
        let mut since = None;
        loop {
            match self.try_decrypt(room_id, &event).await {
                Ok(d) => return Ok(decrypted(room_id, event_id, d)),
                Err(NotificationError::Undecryptable(e)) if waits_for_key(&e) => {
                    if Instant::now() >= deadline {
                        return Err(NotificationError::KeyMissing(budget));
                    }
                    self.catch_up(&mut since, deadline).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_decrypt(
        &self,
        room_id: &RoomId,
        event: &Value,
    ) -> Result<DecryptedRoomEvent, NotificationError> {
        let (machine, room, event) = (Arc::clone(&self.machine), room_id.to_owned(), event.clone());
        let decrypted =
            tokio::task::spawn_blocking(move || machine.decrypt_for_notification(&room, &event))
                .await
                .map_err(|e| NotificationError::InvalidEvent(format!("decryption task: {e}")))??;
        Ok(decrypted)
    }

    fn http(&self) -> Result<&HttpClient, NotificationError> {
        if let Some(http) = self.http.get() {
            return Ok(http);
        }
        let http = HttpClient::new(&self.homeserver)?;
        http.set_access_token(Some(self.access_token.clone()));
        Ok(self.http.get_or_init(|| http))
    }

    async fn fetch(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Value, NotificationError> {
        let request = get_room_event::v3::Request::new(room_id.to_owned(), event_id.to_owned());
        let response = self.http()?.send(request).await?;
        serde_json::from_str(response.event.json().get())
            .map_err(|e| NotificationError::InvalidEvent(e.to_string()))
    }

    /// One `/sync` for to-device messages only, from `since` (first, `None`: the app's
    /// position, answered at once), long-polling until `deadline`; `since` becomes where
    /// the next one starts.
    async fn catch_up(
        &self,
        since: &mut Option<String>,
        deadline: Instant,
    ) -> Result<(), NotificationError> {
        let first = since.is_none();
        let from = match since {
            Some(since) => Some(since.clone()),
            None => self.store.sync_token()?,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut request = sync_events::v3::Request::new();
        request.since = from;
        request.timeout = Some(if first {
            Duration::ZERO
        } else {
            remaining.min(MAX_POLL)
        });
        request.filter = Some(sync_events::v3::Filter::FilterDefinition(to_device_only()));
        let answer = tokio::time::timeout(
            remaining + Duration::from_secs(1),
            self.http()?.send(request),
        );
        let Ok(response) = answer.await else {
            // The time is up: the caller reports the key missing.
            return Ok(());
        };
        let response = response?;
        let events: Vec<Value> = response
            .to_device
            .events
            .iter()
            .filter_map(|raw| serde_json::from_str(raw.json().get()).ok())
            .collect();
        debug!(
            events = events.len(),
            "to-device catch-up for a notification"
        );
        let machine = Arc::clone(&self.machine);
        tokio::task::spawn_blocking(move || machine.receive_notification_to_device(&events))
            .await
            .map_err(|e| NotificationError::InvalidEvent(format!("catch-up task: {e}")))??;
        *since = Some(response.next_batch);
        Ok(())
    }
}

/// Only a missing key or a later index may come with a catch-up.
fn waits_for_key(e: &MegolmError) -> bool {
    matches!(
        e,
        MegolmError::MissingSession { .. } | MegolmError::UnknownIndex { .. }
    )
}

/// A filter for to-device messages only.
fn to_device_only() -> FilterDefinition {
    let mut filter = FilterDefinition::empty();
    let mut room = RoomFilter::empty();
    room.rooms = Some(Vec::new());
    filter.room = room;
    filter
}

fn decrypted(room_id: &RoomId, event_id: &EventId, d: DecryptedRoomEvent) -> Notification {
    Notification {
        room_id: room_id.to_owned(),
        event_id: event_id.to_owned(),
        sender: d.sender,
        sender_device: d.sender_device,
        sender_trust: Some(d.sender_trust),
        event_type: d.event_type,
        content: d.content,
        encrypted: true,
    }
}

fn plain(
    room_id: &RoomId,
    event_id: &EventId,
    event: Value,
) -> Result<Notification, NotificationError> {
    let sender = event
        .get("sender")
        .and_then(Value::as_str)
        .and_then(|s| OwnedUserId::try_from(s).ok())
        .ok_or_else(|| NotificationError::InvalidEvent("no valid sender".into()))?;
    let event_type = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok(Notification {
        room_id: room_id.to_owned(),
        event_id: event_id.to_owned(),
        sender,
        sender_device: None,
        sender_trust: None,
        event_type,
        content: event.get("content").cloned().unwrap_or(Value::Null),
        encrypted: false,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::crypto::RotationSettings;
    use crate::store::{ClientChanges, SecretBlob};
    use crate::test_ids::{did, rid, uid};

    /// Nothing listens there: a test that reaches the network fails.
    const NOWHERE: &str = "http://127.0.0.1:9";

    fn key() -> StoreKey {
        StoreKey::from_bytes([3; 32])
    }

    /// The store in `dir` after alice's app logged in and created its account.
    fn with_account(dir: &Path) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = logged_in(dir);
        drop(OlmMachine::open(
            &uid("@alice:localhost"),
            &did("ALICE"),
            Arc::clone(&store),
        ));
        store
    }

    /// A store in `dir` with a logged-in session of `@alice:localhost` / `ALICE`.
    fn logged_in(dir: &Path) -> Arc<SqliteStore> {
        let store = Arc::new(SqliteStore::open(dir, &key()).unwrap());
        let mut changes = ClientChanges::default();
        changes
            .values
            .insert(KEY_USER_ID.into(), "@alice:localhost".into());
        changes.values.insert(KEY_DEVICE_ID.into(), "ALICE".into());
        changes
            .secret_values
            .insert(KEY_ACCESS_TOKEN.into(), SecretBlob::new(b"token".to_vec()));
        store.save_changes(changes.into()).unwrap();
        store
    }

    #[test]
    fn a_store_without_a_session_is_not_logged_in() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = NotificationDecryptor::open(NOWHERE, dir.path(), &key());
        assert!(
            matches!(outcome, Err(NotificationError::NotLoggedIn)),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_bad_homeserver_address_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(logged_in(dir.path()));
        for address in ["not a url", "ftp://example.org"] {
            let outcome = NotificationDecryptor::open(address, dir.path(), &key());
            assert!(
                matches!(outcome, Err(NotificationError::Http(_))),
                "{outcome:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_event_in_the_push_with_its_key_in_the_store_needs_no_network() {
        let dir = tempfile::tempdir().unwrap();
        let store = with_account(dir.path());
        let (room, alice) = (rid("!room:localhost"), uid("@alice:localhost"));
        // alice's app sent a message: its own inbound copy of the key is in the store.
        let app = OlmMachine::open(&alice, &did("ALICE"), store).unwrap();
        let never = RotationSettings {
            period_ms: u64::MAX,
            messages: u64::MAX,
        };
        app.share_room_key(&room, std::slice::from_ref(&alice), never)
            .unwrap();
        let content = json!({"msgtype": "m.text", "body": "hello"});
        let encrypted = app
            .encrypt_room_event(&room, "m.room.message", &content)
            .unwrap();
        drop(app);
        let push = NotificationDecryptor::open(NOWHERE, dir.path(), &key()).unwrap();
        let event_id = OwnedEventId::try_from("$one").unwrap();
        let event = json!({"type": "m.room.encrypted", "sender": alice, "event_id": event_id,
            "origin_server_ts": 1, "content": encrypted});
        let shown = push
            .decrypt(&room, &event_id, Some(event), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            (shown.encrypted, &shown.content["body"]),
            (true, &json!("hello"))
        );
        assert_eq!(shown.sender_device, Some(did("ALICE")));
        // A plain event is shown as it is; no HTTP client was even built.
        let plain = json!({"type": "m.room.message", "sender": alice, "event_id": "$two",
            "origin_server_ts": 2, "content": {"body": "in clear"}});
        let event_id = OwnedEventId::try_from("$two").unwrap();
        let shown = push
            .decrypt(&room, &event_id, Some(plain), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            (shown.encrypted, &shown.content["body"]),
            (false, &json!("in clear"))
        );
        assert!(push.http.get().is_none());
    }

    #[tokio::test]
    async fn a_plain_event_without_a_valid_sender_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(with_account(dir.path()));
        let push = NotificationDecryptor::open(NOWHERE, dir.path(), &key()).unwrap();
        let event_id = OwnedEventId::try_from("$bad").unwrap();
        let event = json!({"type": "m.room.message", "sender": "not a user id",
            "content": {"body": "x"}});
        let room = rid("!room:localhost");
        let outcome = push
            .decrypt(&room, &event_id, Some(event), Duration::from_secs(1))
            .await;
        assert!(
            matches!(outcome, Err(NotificationError::InvalidEvent(_))),
            "{outcome:?}"
        );
    }
}
