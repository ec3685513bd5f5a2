//! The client: login, session restore, the sync loop, rooms and the timeline.
//!
//! It owns the [`HttpClient`], the [`Store`] and, once logged in, the [`OlmMachine`], and is
//! the only part of Newt that does network I/O.

mod hooks;
mod late_keys;
#[cfg(test)]
mod proptests;
mod room_state;
mod rooms;
mod sync;
mod sync_response;
mod sync_stream;
#[cfg(test)]
mod tests;
mod timeline;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ruma::api::client::session::login;
use ruma::api::client::uiaa::{MatrixUserIdentifier, UserIdentifier};
use tokio::sync::{Mutex as AsyncMutex, broadcast};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::crypto::{CryptoError, Device, OlmMachine};
use crate::http::{HttpClient, HttpError};
use crate::store::{Changes, LocalTrust, SecretBlob, SqliteStore, Store, StoreError, StoreKey};

use hooks::Hooks;
pub use hooks::{
    BackgroundScheduler, DueWorkReport, Prompt, PromptAnswer, PromptHandler, TrustPolicy,
    TrustPolicyProvider, WakeupRequest,
};
pub use sync::SyncHandle;
pub use sync_response::MAX_EVENT_BYTES;
pub use timeline::TimelineEvent;

const KEY_USER_ID: &str = "session.user_id";
const KEY_DEVICE_ID: &str = "session.device_id";
const KEY_ACCESS_TOKEN: &str = "session.access_token";

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
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
    RoomNotEncrypted(String),
    /// The app asked to decide about new devices and some are still undecided.
    #[error("{} device(s) need a decision before keys are shared", .0.len())]
    UnknownDevices(Vec<String>),
    /// A prompt the operation needs was dismissed or no prompt handler is set.
    #[error("the operation needs an answer from the user, which was not given")]
    PromptDismissed,
    /// A server answer could not be used at all (e.g. a `/sync` answer without a token).
    #[error("invalid server answer: {0}")]
    InvalidResponse(String),
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
            | ClientError::PromptDismissed => true,
            ClientError::Store(_)
            | ClientError::Crypto(_)
            | ClientError::NotLoggedIn
            | ClientError::InvalidResponse(_) => false,
        }
    }
}

/// First wake-up delay for devices that got `m.no_olm`.
const NO_OLM_FIRST_DELAY: Duration = Duration::from_secs(300);
/// Wake-ups in a row for devices that got `m.no_olm`.
const NO_OLM_MAX_RETRIES: u32 = 4;

/// Recent timeline items kept per room for new subscribers.
const RECENT_PER_ROOM: usize = 50;

/// Whether `error` may go away by itself (network, 429, 5xx).
pub(crate) fn is_transient(error: &ClientError) -> bool {
    matches!(error, ClientError::Http(e) if e.is_transient())
}

/// Wake-ups asked for devices that got `m.no_olm`.
#[derive(Default)]
struct NoOlmRetry {
    /// One was asked for and has not run yet.
    wakeup_pending: bool,
    /// Retries in a row that left devices without a key.
    attempts: u32,
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
    pub user_id: String,
    /// Own device id.
    pub device_id: String,
}

/// A Matrix client with end-to-end encryption.
pub struct Client {
    pub(crate) http: HttpClient,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) machine: RwLock<Option<Arc<OlmMachine>>>,
    pub(crate) timeline: broadcast::Sender<TimelineEvent>,
    /// Serialises sending of the machine's outgoing requests.
    pub(crate) outgoing: AsyncMutex<()>,
    /// Serialises `/sync` processing.
    pub(crate) sync_lock: AsyncMutex<()>,
    hooks: RwLock<Hooks>,
    /// Recent items per room; published and read under this lock so that a subscriber gets
    /// every item exactly once (the snapshot, then the live ones).
    recent: Mutex<HashMap<String, VecDeque<TimelineEvent>>>,
    /// Encrypted rooms in which a member got a new device since the last sync; their
    /// current room key is shared with it before the next message (seed 002).
    pub(crate) rooms_with_new_devices: Mutex<std::collections::BTreeSet<String>>,
    /// Wake-ups for devices without one-time keys (`m.no_olm`).
    no_olm_retry: Mutex<NoOlmRetry>,
    /// The stored undecryptable events were checked against the stored keys (once per
    /// process, at the first sync).
    pub(crate) stored_events_checked: std::sync::atomic::AtomicBool,
    /// Messages a previous process left in the send queue were resumed (first sync).
    pub(crate) send_queue_resumed: std::sync::atomic::AtomicBool,
    /// The last `/sync` answer was too large to read: ask for a smaller one.
    pub(crate) sync_answer_too_large: std::sync::atomic::AtomicBool,
    /// A key query found new devices since the last sync (kept events of sessions whose
    /// sender was unknown are retried).
    pub(crate) new_devices_learned: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("homeserver", &self.http.homeserver())
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
        Ok(Self {
            http: HttpClient::new(homeserver)?,
            store,
            machine: RwLock::new(None),
            timeline,
            outgoing: AsyncMutex::new(()),
            sync_lock: AsyncMutex::new(()),
            hooks: RwLock::new(Hooks::default()),
            recent: Mutex::new(HashMap::new()),
            rooms_with_new_devices: Mutex::new(Default::default()),
            no_olm_retry: Mutex::new(NoOlmRetry::default()),
            stored_events_checked: std::sync::atomic::AtomicBool::new(false),
            send_queue_resumed: std::sync::atomic::AtomicBool::new(false),
            sync_answer_too_large: std::sync::atomic::AtomicBool::new(false),
            new_devices_learned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn machine(&self) -> Result<Arc<OlmMachine>, ClientError> {
        self.machine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(ClientError::NotLoggedIn)
    }

    /// The logged-in session, if any.
    pub fn session(&self) -> Option<Session> {
        let machine = self
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
        match (
            self.store.value(KEY_USER_ID)?,
            self.store.value(KEY_DEVICE_ID)?,
        ) {
            (Some(user_id), Some(device_id)) => Ok(Some(Session { user_id, device_id })),
            _ => Ok(None),
        }
    }

    /// Restore the session saved by an earlier login: same device, same keys, no new device
    /// on the server. Returns `false` if the store holds no session.
    pub fn restore_session(&self) -> Result<bool, ClientError> {
        let Some(session) = self.stored_session()? else {
            return Ok(false);
        };
        let Some(token) = self.store.secret_value(KEY_ACCESS_TOKEN)? else {
            return Ok(false);
        };
        let token = String::from_utf8(token.as_bytes().to_vec())
            .map_err(|_| StoreError::Decode("access token is not UTF-8".into()))?;
        self.http.set_access_token(Some(Zeroizing::new(token)));
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
        let stored = self.stored_session()?;
        let device_id = device_id
            .map(str::to_owned)
            .or_else(|| stored.as_ref().map(|s| s.device_id.clone()));
        let identifier = UserIdentifier::Matrix(MatrixUserIdentifier::new(user.to_owned()));
        let mut request = login::v3::Request::new(login::v3::LoginInfo::Password(
            login::v3::Password::new(identifier, password.to_owned()),
        ));
        request.device_id = device_id.map(Into::into);
        request.initial_device_display_name = Some("Newt".to_owned());
        let response = self.http.send(request).await?;
        let session = Session {
            user_id: response.user_id.to_string(),
            device_id: response.device_id.to_string(),
        };
        let token = Zeroizing::new(response.access_token);
        // Refuse to mix two accounts in one store before anything is written.
        if let Some(stored) = &stored
            && (stored.user_id != session.user_id || stored.device_id != session.device_id)
            && self.store.account()?.is_some()
        {
            return Err(CryptoError::AccountMismatch {
                user: session.user_id,
                device: session.device_id,
                stored_user: stored.user_id.clone(),
                stored_device: stored.device_id.clone(),
            }
            .into());
        }
        let mut changes = Changes::default();
        changes
            .values
            .insert(KEY_USER_ID.into(), session.user_id.clone());
        changes
            .values
            .insert(KEY_DEVICE_ID.into(), session.device_id.clone());
        changes.secret_values.insert(
            KEY_ACCESS_TOKEN.into(),
            SecretBlob::new(token.as_bytes().to_vec()),
        );
        self.store.save_changes(changes)?;
        self.http.set_access_token(Some(token));
        self.open_machine(&session)?;
        info!(user_id = %session.user_id, device_id = %session.device_id, "logged in");
        self.send_outgoing().await?;
        Ok(session)
    }

    fn open_machine(&self, session: &Session) -> Result<(), ClientError> {
        let machine = OlmMachine::open(&session.user_id, &session.device_id, self.store.clone())?;
        *self.machine.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(machine));
        Ok(())
    }

    /// Record the user's decision about a device (verify, blacklist, ignore). Blacklisting
    /// takes effect for the next room key shared.
    pub fn set_device_trust(
        &self,
        user_id: &str,
        device_id: &str,
        trust: crate::store::LocalTrust,
    ) -> Result<bool, ClientError> {
        Ok(self.machine()?.set_local_trust(user_id, device_id, trust)?)
    }

    /// Own device's Ed25519 fingerprint, for display.
    pub fn fingerprint(&self) -> Result<String, ClientError> {
        Ok(self.machine()?.ed25519_key())
    }

    /// A user's devices, downloaded from the server if our copy is missing or stale.
    pub async fn devices(&self, user_id: &str) -> Result<Vec<Device>, ClientError> {
        ruma::UserId::parse(user_id)
            .map_err(|e| ClientError::InvalidInput(format!("user id: {e}")))?;
        let machine = self.machine()?;
        machine.update_tracked_users(&[user_id.to_owned()])?;
        self.send_outgoing().await?;
        Ok(machine.devices(user_id)?)
    }

    /// Subscribe to received timeline events of all rooms (new ones only).
    pub fn subscribe_timeline(&self) -> broadcast::Receiver<TimelineEvent> {
        self.timeline.subscribe()
    }

    /// Subscribe to one room: the items received recently (current state) and a receiver of
    /// everything after them, with nothing lost or repeated in between.
    pub fn subscribe_room(
        &self,
        room_id: &str,
    ) -> (Vec<TimelineEvent>, broadcast::Receiver<TimelineEvent>) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let snapshot = recent
            .get(room_id)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default();
        (snapshot, self.timeline.subscribe())
    }

    pub(crate) fn publish(&self, item: TimelineEvent) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
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
        let _ = self.timeline.send(item);
    }

    pub(crate) fn hooks(&self) -> Hooks {
        self.hooks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The app's trust policy for a room (the default without a provider).
    pub(crate) fn policy_of(&self, room_id: &str) -> TrustPolicy {
        self.hooks()
            .trust_policy
            .map(|p| p.policy_for_room(room_id))
            .unwrap_or_default()
    }

    /// Share room keys only with devices the user verified (remembered in the store). The
    /// others get an `m.room_key.withheld` (`m.unverified`) and the key once verified.
    pub fn set_share_with_verified_only(&self, on: bool) -> Result<(), ClientError> {
        Ok(self.machine()?.set_share_with_verified_only(on)?)
    }

    /// Set or remove the handler of user prompts.
    pub fn set_prompt_handler(&self, handler: Option<Arc<dyn PromptHandler>>) {
        self.hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .prompts = handler;
    }

    /// Ask the prompt handler about devices seen for the first time before sharing room keys
    /// with them (verify, blacklist or ignore, per device).
    pub fn set_ask_about_new_devices(&self, ask: bool) {
        self.hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .ask_about_new_devices = ask;
    }

    /// Set or remove the provider of per-room trust policies.
    pub fn set_trust_policy_provider(&self, provider: Option<Arc<dyn TrustPolicyProvider>>) {
        self.hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .trust_policy = provider;
    }

    /// Set or remove the scheduler of background wake-ups.
    pub fn set_background_scheduler(&self, scheduler: Option<Arc<dyn BackgroundScheduler>>) {
        self.hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .scheduler = scheduler;
    }

    /// Ask the prompt handler, on a blocking worker thread (it may wait for the user).
    pub(crate) async fn prompt(&self, prompt: Prompt) -> PromptAnswer {
        let Some(handler) = self.hooks().prompts else {
            return PromptAnswer::Dismissed;
        };
        tokio::task::spawn_blocking(move || handler.on_prompt(prompt))
            .await
            .unwrap_or(PromptAnswer::Dismissed)
    }

    /// Ask the app, in the background, about own undecided devices that requested room keys
    /// (one prompt per device). A device the user verifies gets the held requests answered;
    /// the answers go out with the next sync. Without a prompt handler nothing is asked and
    /// the requests wait until the device is verified some other way.
    pub(crate) fn ask_about_key_share_requests(
        &self,
        machine: &Arc<OlmMachine>,
    ) -> Result<(), ClientError> {
        let Some(handler) = self.hooks().prompts else {
            return Ok(());
        };
        for device in machine.take_key_share_prompts()? {
            let (machine, handler) = (Arc::clone(machine), Arc::clone(&handler));
            tokio::spawn(async move {
                let prompt = Prompt::KeyShareRequest {
                    device: device.clone(),
                };
                let answer = tokio::task::spawn_blocking(move || handler.on_prompt(prompt)).await;
                let Ok(PromptAnswer::DeviceDecisions(decisions)) = answer else {
                    return;
                };
                for (user, id, trust) in decisions {
                    let about_this = user == device.user_id && id == device.device_id;
                    if about_this
                        && trust != LocalTrust::Unset
                        && let Err(e) = machine.set_local_trust(&user, &id, trust)
                    {
                        warn!(error = %e, "recording the decision about a key request failed");
                    }
                }
            });
        }
        Ok(())
    }

    /// Ask the app for a wake-up if `error` is worth retrying later.
    pub(crate) fn schedule_retry(&self, error: &ClientError, reason: &str) {
        if is_transient(error) {
            self.schedule_wakeup(Duration::from_secs(30), reason);
        } else if !error.is_permanent() {
            // Our own store or crypto failing, or an answer we could not use: later.
            self.schedule_wakeup(Duration::from_secs(300), reason);
        }
    }

    fn schedule_wakeup(&self, delay: Duration, reason: &str) {
        if let Some(scheduler) = self.hooks().scheduler {
            scheduler.schedule_wakeup(WakeupRequest {
                delay,
                reason: reason.to_owned(),
                requires_network: true,
            });
        }
    }

    /// Some devices got `m.no_olm` instead of a room key: ask for a wake-up (unless one is
    /// pending) to retry them once they may have uploaded new one-time keys. The delay
    /// grows with each retry that left devices without a key (5 min, 20 min, 80 min,
    /// 5 h 20 min); after [`NO_OLM_MAX_RETRIES`] none is asked for, so that an abandoned
    /// device does not wake the app forever. The next send retries such devices anyway.
    ///
    /// `after_send`: a message was just withheld from such devices, which starts the delays
    /// over (the app is in use; the devices may be new).
    pub(crate) fn schedule_no_olm_retry(&self, after_send: bool) {
        if self.hooks().scheduler.is_none() {
            return;
        }
        let mut retry = self.no_olm_retry.lock().unwrap_or_else(|e| e.into_inner());
        // (A retry in progress also counts as pending: its own sends do not start over.)
        if after_send && !retry.wakeup_pending {
            retry.attempts = 0;
        }
        if retry.wakeup_pending || retry.attempts >= NO_OLM_MAX_RETRIES {
            return;
        }
        let delay = NO_OLM_FIRST_DELAY * 4u32.pow(retry.attempts);
        retry.wakeup_pending = true;
        drop(retry);
        self.schedule_wakeup(delay, "devices without one-time keys");
    }

    /// Share again the room keys withheld with `m.no_olm`, in every encrypted room we are
    /// in. Returns `(devices that got their key, devices still without)`.
    async fn retry_devices_without_olm(&self) -> Result<(u32, u32), ClientError> {
        // No wake-up from inside the retry; the caller asks for one with the new delay.
        self.no_olm_retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wakeup_pending = true;
        let result = self.share_with_devices_without_olm().await;
        let mut retry = self.no_olm_retry.lock().unwrap_or_else(|e| e.into_inner());
        retry.wakeup_pending = false;
        if let Ok((_, left)) = result {
            retry.attempts = if left == 0 { 0 } else { retry.attempts + 1 };
        }
        result
    }

    async fn share_with_devices_without_olm(&self) -> Result<(u32, u32), ClientError> {
        let machine = self.machine()?;
        let (mut done, mut left) = (0, 0);
        for room in self.store.rooms()? {
            if room.encryption.is_none() || room.own_membership.as_deref() != Some("join") {
                continue;
            }
            let before = machine.devices_without_olm(&room.room_id)?.len() as u32;
            if before == 0 {
                continue;
            }
            self.prepare_room_key(&room.room_id).await?;
            let after = machine.devices_without_olm(&room.room_id)?.len() as u32;
            done += before.saturating_sub(after);
            left += after;
        }
        Ok((done, left))
    }

    /// Send the queued messages, oldest first. A message that fails for a reason that may go
    /// away stays queued, and the later messages of its room wait behind it (order is kept);
    /// other rooms go on. One that fails for good (e.g. we were removed from the room) is
    /// dropped. Returns `(sent, still queued, the first error worth a retry)`.
    pub(crate) async fn send_queued(&self) -> Result<(u32, u32, Option<ClientError>), ClientError> {
        let queued = self.store.queued_sends()?;
        let mut sent = 0;
        let mut blocked: std::collections::HashSet<String> = Default::default();
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
                self.store.save_changes(Changes {
                    finished_sends: vec![q.txn_id.clone()],
                    ..Default::default()
                })?;
            }
        }
        let left = self.store.queued_sends()?.len() as u32;
        Ok((sent, left, retry_error))
    }

    /// Run the work that was waiting for a wake-up: crypto requests that failed to go out and
    /// messages whose send failed. Asks for another wake-up if something is still left.
    pub async fn run_due_work(&self) -> Result<DueWorkReport, ClientError> {
        self.machine()?;
        let mut report = DueWorkReport::default();
        let before = self.store.pending_to_device()?.len();
        let mut last_error = None;
        if let Err(e) = self.send_outgoing().await {
            last_error = Some(e);
        }
        let after = self.store.pending_to_device()?.len();
        report.completed += before.saturating_sub(after) as u32;
        let (sent, queued_left, error) = self.send_queued().await?;
        report.completed += sent;
        last_error = last_error.or(error);
        let mut without_olm = 0;
        if !last_error.as_ref().is_some_and(is_transient) {
            match self.retry_devices_without_olm().await {
                Ok((done, left)) => {
                    report.completed += done;
                    without_olm = left;
                }
                Err(e) => last_error = Some(e),
            }
        }
        report.remaining = queued_left + self.store.pending_to_device()?.len() as u32 + without_olm;
        if report.remaining > 0
            && let Some(e) = &last_error
        {
            self.schedule_retry(e, "retry of pending work");
        } else if without_olm > 0 {
            self.schedule_no_olm_retry(false);
        }
        Ok(report)
    }

    /// Delete one of the own devices. The server asks for the password, which comes from the
    /// prompt handler ([`Prompt::Password`]).
    pub async fn delete_device(&self, device_id: &str) -> Result<(), ClientError> {
        use ruma::api::client::device::delete_device;
        use ruma::api::client::uiaa::{AuthData, Password};
        let machine = self.machine()?;
        let device = ruma::OwnedDeviceId::from(device_id);
        let first = self
            .http
            .send(delete_device::v3::Request::new(device.clone()))
            .await;
        let session = match first {
            Ok(_) => return Ok(()),
            Err(HttpError::AuthRequired { session, flows })
                if flows.iter().any(|f| f == "m.login.password") =>
            {
                session
            }
            Err(e) => return Err(e.into()),
        };
        let answer = self
            .prompt(Prompt::Password {
                user_id: machine.user_id().to_owned(),
                reason: format!("delete device {device_id}"),
            })
            .await;
        let PromptAnswer::Password(password) = answer else {
            return Err(ClientError::PromptDismissed);
        };
        let identifier =
            UserIdentifier::Matrix(MatrixUserIdentifier::new(machine.user_id().to_owned()));
        let mut auth = Password::new(identifier, password.to_string());
        auth.session = session;
        let mut request = delete_device::v3::Request::new(device);
        request.auth = Some(AuthData::Password(auth));
        self.http.send(request).await?;
        Ok(())
    }

    /// Send everything the crypto machine is waiting to send. Each request succeeds or fails
    /// alone: one that fails does not keep the others from going out (a to-device message
    /// the server refuses for good is dropped). Returns the first failure, after trying all.
    pub async fn send_outgoing(&self) -> Result<(), ClientError> {
        let _guard = self.outgoing.lock().await;
        let machine = self.machine()?;
        let mut first_error = None;
        // Answers may produce more requests (e.g. more one-time keys): a few rounds.
        for _ in 0..4 {
            let requests = machine.outgoing_requests()?;
            if requests.is_empty() {
                break;
            }
            let mut unreported = Unreported::new(&machine, &requests);
            let mut failed = false;
            for request in requests {
                let id = request.id.clone();
                if let Err(e) = self.send_request(&machine, request).await {
                    warn!(error = %e, "a crypto request failed");
                    failed = true;
                    first_error.get_or_insert(e);
                }
                unreported.done(&id);
            }
            if failed {
                break;
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Key uploads and queries the machine handed out and that were not reported back yet. If
/// sending stops early (an error, or the future is dropped, e.g. the sync loop stopped),
/// they are reported as failed on drop, so the machine offers them again instead of
/// treating them as in flight forever.
struct Unreported<'a> {
    machine: &'a OlmMachine,
    /// Request id and whether it is the key upload.
    ids: Vec<(String, bool)>,
}

impl<'a> Unreported<'a> {
    fn new(machine: &'a OlmMachine, requests: &[crate::crypto::OutgoingRequest]) -> Self {
        use crate::crypto::OutgoingKind;
        let ids = requests
            .iter()
            .filter_map(|r| match r.kind {
                OutgoingKind::KeysUpload(_) => Some((r.id.clone(), true)),
                OutgoingKind::KeysQuery(_) => Some((r.id.clone(), false)),
                _ => None,
            })
            .collect();
        Self { machine, ids }
    }

    fn done(&mut self, id: &str) {
        self.ids.retain(|(i, _)| i != id);
    }
}

impl Drop for Unreported<'_> {
    fn drop(&mut self) {
        for (id, upload) in self.ids.drain(..) {
            if upload {
                self.machine.mark_upload_failed();
            } else if let Err(e) = self.machine.mark_query_failed(&id, false) {
                warn!(error = %e, "could not return an unsent key query");
            }
        }
    }
}
