//! The client: login, session restore, the sync loop, rooms and the timeline.
//!
//! It owns the [`HttpClient`], the [`Store`] and, once logged in, the [`OlmMachine`], and is
//! the only part of Newt that does network I/O.

mod background;
mod backup;
mod backup_restore;
mod backup_work;
mod hooks;
mod key_files;
mod late_keys;
mod lifecycle;
mod media;
mod outgoing;
mod prompts;
#[cfg(test)]
mod proptests;
mod recovery;
mod recovery_setup;
mod room_keys;
mod room_state;
mod rooms;
mod send;
mod send_control;
mod send_kinds;
mod send_queue;
mod send_state;
mod sync;
mod sync_response;
mod sync_stream;
#[cfg(test)]
mod tests;
mod timeline;
mod trust;
mod verification;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use ruma::api::client::session::login;
use ruma::api::client::uiaa::{MatrixUserIdentifier, UserIdentifier};
use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::sync::{Mutex as AsyncMutex, broadcast};
use tracing::info;
use zeroize::Zeroizing;

use crate::crypto::{CryptoError, Device, OlmMachine};
use crate::http::{HttpClient, HttpError};
use crate::store::{Changes, SecretBlob, SqliteStore, Store, StoreError, StoreKey};

use background::NoOlmRetry;
pub use backup::{BackupInfo, BackupState};
use hooks::Hooks;
pub use hooks::{
    BackgroundScheduler, DueWorkReport, Prompt, PromptAnswer, PromptHandler, SecretText,
    TrustPolicy, TrustPolicyProvider, WakeupRequest,
};
pub use key_files::{KeyImportSummary, KeyTransferProgress};
use lifecycle::Lifecycle;
pub use media::{Attachment, MAX_ATTACHMENT_BYTES};
pub use send_kinds::OutgoingMessage;
pub use send_state::{LocalEcho, SendState, SendUpdate};
pub use sync::SyncHandle;
pub use sync_response::MAX_EVENT_BYTES;
pub use timeline::TimelineEvent;

/// The store value holding the logged-in user id. With [`KEY_DEVICE_ID`] and the secret
/// value [`KEY_ACCESS_TOKEN`], it is what [`Client::restore_session`] and the notification
/// decryptor read (tools that prepare a store outside the client write these).
pub const KEY_USER_ID: &str = "session.user_id";
/// The store value holding the logged-in device id.
pub const KEY_DEVICE_ID: &str = "session.device_id";
/// The secret store value holding the access token.
pub const KEY_ACCESS_TOKEN: &str = "session.access_token";

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Talking to the homeserver failed.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The crypto machine refused.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The operation needs a logged-in session.
    #[error("not logged in")]
    NotLoggedIn,
    /// An argument from the app is invalid.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The room is not encrypted (Newt only sends encrypted messages).
    #[error("room {0} is not known as encrypted")]
    RoomNotEncrypted(OwnedRoomId),
    /// The app asked to decide about new devices and some are still undecided.
    #[error("{} device(s) need a decision before keys are shared", .0.len())]
    UnknownDevices(Vec<String>),
    /// A prompt the operation needs was dismissed or no prompt handler is set.
    #[error("the operation needs an answer from the user, which was not given")]
    PromptDismissed,
    /// A server answer could not be used at all (e.g. a `/sync` answer without a token).
    #[error("invalid server answer: {0}")]
    InvalidResponse(String),
    /// [`Client::close`] was called: the client released its store and does nothing more.
    #[error("the client is closed")]
    Closed,
    /// The message is not in the send queue (any more): it was sent or cancelled.
    #[error("message {0} is not queued (sent or cancelled)")]
    NotQueued(String),
    /// The message is already encrypted for sending: it can no longer be edited (send an
    /// edit once it is sent, or cancel it).
    #[error("message {0} is already encrypted for sending")]
    AlreadyPrepared(String),
    /// A file to send could not be read (or a downloaded one written).
    #[error("file: {0}")]
    FileUnreadable(String),
    /// A file is larger than Newt uploads or downloads.
    #[error("the file has {size} bytes, more than the {limit} allowed")]
    FileTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A downloaded attachment was refused (its hash does not match, say).
    #[error(transparent)]
    Attachment(#[from] crate::attachment::AttachmentError),
    /// A key export file was refused (wrong passphrase, cut short, changed, not an export)
    /// or could not be written.
    #[error(transparent)]
    KeyExport(#[from] crate::key_export::KeyExportError),
    /// A key backup operation was refused (a mistyped recovery key, another backup's key,
    /// no backup on the server...).
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
}

impl ClientError {
    /// Whether retrying the same operation later cannot help: the server refused it for good
    /// (4xx other than 429), it was accepted but its answer is unreadable, or the app must
    /// decide something first. Network and server failures, and our own store or crypto
    /// failures, may go away: a queued message stays queued for them.
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Http(e) => e.is_permanent(),
            ClientError::RoomNotEncrypted(_)
            | ClientError::InvalidInput(_)
            | ClientError::UnknownDevices(_)
            | ClientError::PromptDismissed
            | ClientError::NotQueued(_)
            | ClientError::AlreadyPrepared(_)
            | ClientError::FileUnreadable(_)
            | ClientError::FileTooLarge { .. }
            | ClientError::Attachment(_)
            | ClientError::KeyExport(_)
            | ClientError::Backup(_)
            | ClientError::Closed => true,
            ClientError::Store(_)
            | ClientError::Crypto(_)
            | ClientError::NotLoggedIn
            | ClientError::InvalidResponse(_) => false,
        }
    }
}

/// Recent timeline items kept per room for new subscribers.
const RECENT_PER_ROOM: usize = 50;

/// Whether `error` may go away by itself (network, 429, 5xx).
pub(crate) fn is_transient(error: &ClientError) -> bool {
    matches!(error, ClientError::Http(e) if e.is_transient())
}

/// How to build a [`Client`].
pub struct ClientConfig {
    /// Homeserver base URL, e.g. `https://matrix.example.org`.
    pub homeserver: String,
    /// Directory of the store (created if missing).
    pub store_dir: PathBuf,
    /// Key that encrypts secrets at rest.
    pub store_key: StoreKey,
}

/// The logged-in identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Own user id.
    pub user_id: OwnedUserId,
    /// Own device id.
    pub device_id: OwnedDeviceId,
}

/// A Matrix client with end-to-end encryption.
///
/// Store and crypto work runs on tokio's blocking threads, never on the async workers.
/// [`Client::close`] stops what the client runs in the background and releases the store.
pub struct Client {
    /// Shared with the client's background tasks and blocking work.
    inner: Arc<Inner>,
}

/// The client's state; [`Client::handle`] shares it with work that runs elsewhere.
struct Inner {
    http: HttpClient,
    /// `None` once closed.
    store: RwLock<Option<Arc<dyn Store>>>,
    machine: RwLock<Option<Arc<OlmMachine>>>,
    timeline: broadcast::Sender<TimelineEvent>,
    /// Serialises sending of the machine's outgoing requests.
    outgoing: AsyncMutex<()>,
    /// Serialises the send queue's work: one message is moved on by one task at a time.
    sending: AsyncMutex<()>,
    /// State changes of queued messages.
    send_updates: broadcast::Sender<send_state::SendUpdate>,
    /// Retry timing of queued messages that failed for a reason that may go away.
    send_retries: Mutex<send_state::Retries>,
    /// A background drain of the send queue was asked for and has not started.
    drain_requested: std::sync::atomic::AtomicBool,
    /// Calls of the app (cancel, edit, retry) waiting for `sending`: a drain stops after
    /// the message it is on, so that they wait for one message, not the whole queue.
    control_waiting: std::sync::atomic::AtomicUsize,
    /// When the retry timer that is set fires (Unix ms; `u64::MAX`: none is set).
    send_timer_due_ms: std::sync::atomic::AtomicU64,
    /// Serialises `/sync` processing (owned guards: a blocking job may hold it).
    sync_lock: Arc<AsyncMutex<()>>,
    hooks: RwLock<Hooks>,
    /// Recent items per room; published and read under this lock so that a subscriber gets
    /// every item exactly once (the snapshot, then the live ones).
    recent: Mutex<HashMap<OwnedRoomId, VecDeque<TimelineEvent>>>,
    /// Encrypted rooms in which a member got a new device since the last sync; their
    /// current room key is shared with it before the next message, so that it can read it.
    rooms_with_new_devices: Mutex<std::collections::BTreeSet<OwnedRoomId>>,
    /// Wake-ups for devices without one-time keys (`m.no_olm`).
    no_olm_retry: Mutex<NoOlmRetry>,
    /// The stored undecryptable events were checked against the stored keys (once per
    /// process, at the first sync).
    stored_events_checked: std::sync::atomic::AtomicBool,
    /// Messages a previous process left in the send queue were resumed (first sync).
    send_queue_resumed: std::sync::atomic::AtomicBool,
    /// The last `/sync` answer was too large to read: ask for a smaller one.
    sync_answer_too_large: std::sync::atomic::AtomicBool,
    /// A key query found new devices since the last sync (kept events of sessions whose
    /// sender was unknown are retried).
    new_devices_learned: std::sync::atomic::AtomicBool,
    /// The server-side key backup's state and work.
    backup: backup::BackupRuntime,
    /// Background tasks and blocking work, which closing waits for.
    lifecycle: Lifecycle,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("homeserver", &self.inner.http.homeserver())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Open the store and prepare a client. Does no network I/O.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let store = SqliteStore::open(&config.store_dir, &config.store_key)?;
        Self::with_store(&config.homeserver, Arc::new(store))
    }

    /// A client on any [`Store`] implementation.
    pub fn with_store(homeserver: &str, store: Arc<dyn Store>) -> Result<Self, ClientError> {
        let (timeline, _) = broadcast::channel(4096);
        let (send_updates, _) = broadcast::channel(4096);
        let inner = Inner {
            http: HttpClient::new(homeserver)?,
            store: RwLock::new(Some(store)),
            machine: RwLock::new(None),
            timeline,
            outgoing: AsyncMutex::new(()),
            sending: AsyncMutex::new(()),
            send_updates,
            send_retries: Mutex::new(Default::default()),
            drain_requested: std::sync::atomic::AtomicBool::new(false),
            control_waiting: std::sync::atomic::AtomicUsize::new(0),
            send_timer_due_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            sync_lock: Arc::new(AsyncMutex::new(())),
            hooks: RwLock::new(Hooks::default()),
            recent: Mutex::new(HashMap::new()),
            rooms_with_new_devices: Mutex::new(Default::default()),
            no_olm_retry: Mutex::new(NoOlmRetry::default()),
            stored_events_checked: std::sync::atomic::AtomicBool::new(false),
            send_queue_resumed: std::sync::atomic::AtomicBool::new(false),
            sync_answer_too_large: std::sync::atomic::AtomicBool::new(false),
            new_devices_learned: std::sync::atomic::AtomicBool::new(false),
            backup: backup::BackupRuntime::new(),
            lifecycle: Lifecycle::new(),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Another handle on this client (same state), for work that runs elsewhere.
    pub(crate) fn handle(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }

    /// The store; [`ClientError::Closed`] once the client is closed.
    pub fn store(&self) -> Result<Arc<dyn Store>, ClientError> {
        self.inner
            .store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(ClientError::Closed)
    }

    pub(crate) fn machine(&self) -> Result<Arc<OlmMachine>, ClientError> {
        if self.inner.lifecycle.is_closed() {
            return Err(ClientError::Closed);
        }
        self.inner
            .machine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(ClientError::NotLoggedIn)
    }

    /// The logged-in session, if any.
    pub fn session(&self) -> Option<Session> {
        let machine = self
            .inner
            .machine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        Some(Session {
            user_id: machine.user_id().to_owned(),
            device_id: machine.device_id().to_owned(),
        })
    }

    /// Session stored by an earlier login, if any.
    pub fn stored_session(&self) -> Result<Option<Session>, ClientError> {
        let store = self.store()?;
        match (store.value(KEY_USER_ID)?, store.value(KEY_DEVICE_ID)?) {
            (Some(user_id), Some(device_id)) => {
                let user_id = OwnedUserId::try_from(user_id)
                    .map_err(|e| StoreError::Decode(format!("stored user id: {e}")))?;
                let device_id = OwnedDeviceId::from(device_id);
                Ok(Some(Session { user_id, device_id }))
            }
            _ => Ok(None),
        }
    }

    /// Restore the session saved by an earlier login: same device, same keys, no new device
    /// on the server. Returns `false` if the store holds no session.
    pub fn restore_session(&self) -> Result<bool, ClientError> {
        let Some(session) = self.stored_session()? else {
            return Ok(false);
        };
        let Some(token) = self.store()?.secret_value(KEY_ACCESS_TOKEN)? else {
            return Ok(false);
        };
        let token = String::from_utf8(token.as_bytes().to_vec())
            .map_err(|_| StoreError::Decode("access token is not UTF-8".into()))?;
        self.inner
            .http
            .set_access_token(Some(Zeroizing::new(token)));
        self.open_machine(&session)?;
        info!(user_id = %session.user_id, device_id = %session.device_id, "session restored");
        Ok(true)
    }

    /// Log in with a password. Without `device_id`, the device stored by an earlier login is
    /// reused, so its keys stay valid; with none stored, the server picks one.
    pub async fn login_password(
        &self,
        user: &str,
        password: &str,
        device_id: Option<&str>,
    ) -> Result<Session, ClientError> {
        let stored = self.blocking(|c| c.stored_session()).await?;
        let device_id = device_id
            .map(OwnedDeviceId::from)
            .or_else(|| stored.as_ref().map(|s| s.device_id.clone()));
        let identifier = UserIdentifier::Matrix(MatrixUserIdentifier::new(user.to_owned()));
        let mut request = login::v3::Request::new(login::v3::LoginInfo::Password(
            login::v3::Password::new(identifier, password.to_owned()),
        ));
        request.device_id = device_id;
        request.initial_device_display_name = Some("Newt".to_owned());
        let response = self.inner.http.send(request).await?;
        let session = Session {
            user_id: response.user_id,
            device_id: response.device_id,
        };
        let token = Zeroizing::new(response.access_token);
        let logged_in = session.clone();
        self.blocking(move |c| c.start_session(stored, &logged_in, token))
            .await?;
        info!(user_id = %session.user_id, device_id = %session.device_id, "logged in");
        self.send_outgoing().await?;
        Ok(session)
    }

    /// Store a new login's session and open its machine (store I/O: a blocking thread).
    fn start_session(
        &self,
        stored: Option<Session>,
        session: &Session,
        token: Zeroizing<String>,
    ) -> Result<(), ClientError> {
        let store = self.store()?;
        // Refuse to mix two accounts in one store before anything is written.
        if let Some(stored) = &stored
            && (stored.user_id != session.user_id || stored.device_id != session.device_id)
            && store.account()?.is_some()
        {
            return Err(CryptoError::AccountMismatch {
                user: session.user_id.clone(),
                device: session.device_id.clone(),
                stored_user: stored.user_id.clone(),
                stored_device: stored.device_id.clone(),
            }
            .into());
        }
        let mut changes = Changes::default();
        changes
            .client
            .values
            .insert(KEY_USER_ID.into(), session.user_id.to_string());
        changes
            .client
            .values
            .insert(KEY_DEVICE_ID.into(), session.device_id.to_string());
        changes.client.secret_values.insert(
            KEY_ACCESS_TOKEN.into(),
            SecretBlob::new(token.as_bytes().to_vec()),
        );
        store.save_changes(changes)?;
        self.inner.http.set_access_token(Some(token));
        self.open_machine(session)
    }

    fn open_machine(&self, session: &Session) -> Result<(), ClientError> {
        let machine = OlmMachine::open(&session.user_id, &session.device_id, self.store()?)?;
        // Same lock order as `close` (machine, then store): a machine opened while the
        // client closes is not kept, so it cannot hold the store open.
        let mut slot = self
            .inner
            .machine
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if self
            .inner
            .store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Err(ClientError::Closed);
        }
        *slot = Some(Arc::new(machine));
        Ok(())
    }

    /// Record the user's decision about a device (verify, blacklist, ignore). Blacklisting
    /// takes effect for the next room key shared.
    pub fn set_device_trust(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        trust: crate::store::LocalTrust,
    ) -> Result<bool, ClientError> {
        let machine = self.machine()?;
        let known = machine.set_local_trust(user_id, device_id, trust)?;
        if known && trust == crate::store::LocalTrust::Verified {
            // Messages a policy hid because the device was not verified may show now.
            self.recheck_kept_events(&machine, None)?;
        }
        Ok(known)
    }

    /// Own device's Ed25519 fingerprint, for display.
    pub fn fingerprint(&self) -> Result<String, ClientError> {
        Ok(self.machine()?.ed25519_key())
    }

    /// A user's devices, downloaded from the server if our copy is missing or stale.
    pub async fn devices(&self, user_id: &UserId) -> Result<Vec<Device>, ClientError> {
        let machine = self.machine()?;
        let tracked = vec![user_id.to_owned()];
        let m = Arc::clone(&machine);
        self.blocking(move |_| Ok(m.update_tracked_users(&tracked)?))
            .await?;
        self.send_outgoing().await?;
        let user_id = user_id.to_owned();
        self.blocking(move |_| Ok(machine.devices(&user_id)?)).await
    }

    /// Subscribe to received timeline events of all rooms (new ones only).
    pub fn subscribe_timeline(&self) -> broadcast::Receiver<TimelineEvent> {
        self.inner.timeline.subscribe()
    }

    /// Subscribe to one room: the items received recently (current state) and a receiver of
    /// everything after them, with nothing lost or repeated in between.
    pub fn subscribe_room(
        &self,
        room_id: &RoomId,
    ) -> (Vec<TimelineEvent>, broadcast::Receiver<TimelineEvent>) {
        let recent = self.inner.recent.lock().unwrap_or_else(|e| e.into_inner());
        let snapshot = recent
            .get(room_id)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default();
        (snapshot, self.inner.timeline.subscribe())
    }

    pub(crate) fn publish(&self, item: TimelineEvent) {
        if let Some(txn_id) = &item.transaction_id {
            // Its echo came back: the send queue is done with it.
            self.retries().forget(txn_id);
        }
        let mut recent = self.inner.recent.lock().unwrap_or_else(|e| e.into_inner());
        let queue = recent.entry(item.room_id.clone()).or_default();
        match queue
            .iter_mut()
            .find(|e| item.is_update && e.event_id == item.event_id)
        {
            Some(old) => *old = item.clone(),
            None => {
                if queue.len() == RECENT_PER_ROOM {
                    queue.pop_front();
                }
                queue.push_back(item.clone());
            }
        }
        // No receiver is fine: nobody is listening.
        let _ = self.inner.timeline.send(item);
    }

    /// Share room keys only with devices the user verified (remembered in the store). The
    /// others get an `m.room_key.withheld` (`m.unverified`) and the key once verified.
    pub fn set_share_with_verified_only(&self, on: bool) -> Result<(), ClientError> {
        Ok(self.machine()?.set_share_with_verified_only(on)?)
    }
}
