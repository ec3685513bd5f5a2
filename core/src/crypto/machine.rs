//! [`OlmMachine`]: state, sync input, key upload and device-list queries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use ruma::OwnedUserId;
use ruma::api::client::keys::upload_keys;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::account::{OwnAccount, SIGNED_CURVE25519};
use super::devices::Device;
use super::error::{CryptoError, DeviceKeyError, OlmError};
use super::requests::{OutgoingKind, OutgoingRequest, raw, raw_map};
use super::responses::KeysUploadResponse;
use crate::store::{Changes, DeviceRecord, LocalTrust, Store, TrackedUser, TrackingState};

/// What one `/sync` response carries for the crypto machine.
#[derive(Debug, Default)]
pub struct SyncChanges {
    /// `to_device.events`, as received, in order.
    pub to_device_events: Vec<Value>,
    /// `device_lists.changed`.
    pub changed_users: Vec<OwnedUserId>,
    /// `device_lists.left`.
    pub left_users: Vec<OwnedUserId>,
    /// `device_one_time_keys_count`; `None` if the response had none.
    pub one_time_key_counts: Option<BTreeMap<String, u64>>,
    /// `device_unused_fallback_key_types`; `None` if the response had none.
    pub unused_fallback_key_types: Option<Vec<String>>,
    /// `next_batch`, stored in the same transaction as everything else.
    pub next_batch: Option<String>,
    /// Other state from the same sync (rooms, members) to commit atomically with it.
    pub extra: Changes,
}

/// Result of handling one to-device event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToDeviceOutcome {
    /// Event type as received (`m.room.encrypted` for Olm).
    pub event_type: String,
    /// Sender as given by the server.
    pub sender: String,
    /// The decrypted event type, or why the event was rejected.
    pub result: Result<String, OlmError>,
}

/// A room key that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomKeyInfo {
    /// Room.
    pub room_id: String,
    /// Megolm session id.
    pub session_id: String,
    /// Sender user.
    pub sender: String,
}

/// What [`OlmMachine::receive_sync_changes`] did.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    /// One entry per to-device event, in order.
    pub to_device: Vec<ToDeviceOutcome>,
    /// Room keys accepted in this batch.
    pub room_keys: Vec<RoomKeyInfo>,
}

/// What a `/keys/query` answer changed.
#[derive(Debug, Default)]
pub struct QueryOutcome {
    /// Devices stored (new or updated).
    pub updated_devices: usize,
    /// Devices whose keys were rejected, with the reason.
    pub rejected: Vec<(String, String, DeviceKeyError)>,
    /// Devices seen for the first time: `(user id, device id)`.
    pub new_devices: Vec<(String, String)>,
    /// Devices that disappeared from their owner's list: `(user id, device id)`.
    pub removed_devices: Vec<(String, String)>,
    /// Encrypted rooms shared with the users whose devices were added or removed, found
    /// through the store's index (no member list is loaded).
    pub affected_rooms: Vec<String>,
}

/// What a `/keys/claim` answer changed.
#[derive(Debug, Default)]
pub struct ClaimOutcome {
    /// Sessions created.
    pub sessions_created: usize,
    /// Devices for which no session could be created, with the reason.
    pub failed: Vec<(String, String, super::error::OneTimeKeyError)>,
}

/// A decrypted room event.
#[derive(Debug, Clone, PartialEq)]
pub struct DecryptedRoomEvent {
    /// Decrypted event type, e.g. `m.room.message`.
    pub event_type: String,
    /// Decrypted content.
    pub content: Value,
    /// Sender user (checked against the session owner).
    pub sender: String,
    /// Device that created the session, when known.
    pub sender_device: Option<String>,
    /// Curve25519 key of that device.
    pub sender_curve25519: String,
    /// Megolm session id.
    pub session_id: String,
    /// Message index.
    pub message_index: u32,
}

pub(crate) struct State {
    pub account: OwnAccount,
    pub generation: u64,
    pub queries_in_flight: HashMap<String, Vec<(String, u64)>>,
    pub upload_in_flight: bool,
    pub next_request: u64,
    /// Devices whose Olm messages we could not decrypt, waiting for a new session + `m.dummy`.
    pub wedged: HashMap<String, DeviceRecord>,
    /// Key requests from own devices we did not know yet, retried with the next sync.
    pub deferred_key_requests: Vec<Value>,
    /// Key requests from own devices nobody decided about yet: (device id, event). Answered
    /// if the user verifies the device, dropped if it is blacklisted or ignored.
    pub untrusted_key_requests: Vec<(String, Value)>,
    /// Own devices whose held key requests the app was not asked about yet.
    pub key_share_prompts: std::collections::BTreeSet<String>,
    /// Key requests we may answer but have no Olm session for, by the device's Curve25519
    /// key: the device, the requests and the claims made so far. A session is claimed with
    /// the next repair claims, at most [`MAX_ANSWER_CLAIMS`] times.
    pub awaiting_session: HashMap<String, (DeviceRecord, Vec<Value>, u32)>,
    /// Own devices the app was already asked about (key-share prompt), until decided.
    pub prompted: HashSet<String>,
    /// Servers whose `/keys/query` failed: (consecutive failures, retry not before, ms).
    pub server_backoff: HashMap<String, (u32, u64)>,
    /// Users queried alone: they were in a query the server refused for good (one of them
    /// may be why), so each is asked about on its own until answered.
    pub solo_users: HashSet<String>,
    /// Users whose query alone was refused for good: (failures, retry not before, ms).
    pub user_backoff: HashMap<String, (u32, u64)>,
}

/// Claims for a session to answer an own device's key requests before giving up on them.
pub(crate) const MAX_ANSWER_CLAIMS: u32 = 3;

/// At most one unwedging per device per this many milliseconds.
pub(crate) const UNWEDGE_INTERVAL_MS: u64 = 3600 * 1000;

impl State {
    /// Queue a device for unwedging (deduplicated by identity key).
    pub fn note_wedged(&mut self, device: DeviceRecord) {
        self.wedged
            .entry(device.curve25519.clone())
            .or_insert(device);
    }

    pub fn next_id(&mut self, prefix: &str) -> String {
        self.next_request += 1;
        format!("{prefix}-{}", self.next_request)
    }
}

/// The end-to-end encryption state machine of one device. Does no network I/O.
pub struct OlmMachine {
    pub(crate) user_id: String,
    pub(crate) device_id: String,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) state: Mutex<State>,
}

impl std::fmt::Debug for OlmMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OlmMachine")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl OlmMachine {
    /// Open the machine of `user_id`/`device_id`: restore the account from `store`, or create
    /// and persist a new one. A store holding another account is an error.
    pub fn open(
        user_id: &str,
        device_id: &str,
        store: Arc<dyn Store>,
    ) -> Result<Self, CryptoError> {
        let account = match store.account()? {
            Some(record) => {
                if record.user_id != user_id || record.device_id != device_id {
                    return Err(CryptoError::AccountMismatch {
                        user: user_id.to_owned(),
                        device: device_id.to_owned(),
                        stored_user: record.user_id,
                        stored_device: record.device_id,
                    });
                }
                OwnAccount::from_record(&record)?
            }
            None => {
                let mut account = OwnAccount::new(user_id, device_id);
                let max = account.inner.max_number_of_one_time_keys();
                account.inner.generate_one_time_keys(max);
                // Persist before anything is published, so the keys survive a crash.
                store.save_changes(Changes {
                    account: Some(account.to_record()?),
                    ..Default::default()
                })?;
                info!(user_id, device_id, "created a new Olm account");
                account
            }
        };
        let generation = store.generation()?;
        Ok(Self {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            store,
            state: Mutex::new(State {
                account,
                generation,
                queries_in_flight: HashMap::new(),
                upload_in_flight: false,
                next_request: 0,
                wedged: HashMap::new(),
                deferred_key_requests: Vec::new(),
                untrusted_key_requests: Vec::new(),
                key_share_prompts: Default::default(),
                awaiting_session: HashMap::new(),
                prompted: HashSet::new(),
                server_backoff: HashMap::new(),
                solo_users: HashSet::new(),
                user_backoff: HashMap::new(),
            }),
        })
    }

    /// Own user id.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// Own device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The store the machine persists to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Lock the state, reloading the account if another process wrote to the store.
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, State>, CryptoError> {
        // A poisoned lock means a panic elsewhere; the state itself is still consistent with
        // the store because every change is persisted before it is used.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.store.generation()?;
        if generation != state.generation {
            if let Some(record) = self.store.account()? {
                debug!("store changed by another writer; reloading the account");
                state.account = OwnAccount::from_record(&record)?;
            }
            state.generation = generation;
        }
        Ok(state)
    }

    /// Persist `changes` and remember the resulting generation as our own.
    pub(crate) fn save(&self, state: &mut State, changes: Changes) -> Result<(), CryptoError> {
        if changes.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.save_changes(changes) {
            // Nothing was stored: drop in-memory changes too (e.g. a one-time key consumed
            // by a message whose batch failed), so a retry sees exactly the stored state.
            if let Ok(Some(record)) = self.store.account()
                && let Ok(account) = OwnAccount::from_record(&record)
            {
                state.account = account;
            }
            return Err(e.into());
        }
        state.generation = self.store.generation()?;
        Ok(())
    }

    /// Own Curve25519 identity key (base64).
    pub fn curve25519_key(&self) -> String {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .account
            .curve25519()
    }

    /// Own Ed25519 fingerprint key (base64), for display and verification.
    pub fn ed25519_key(&self) -> String {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .account
            .ed25519()
    }

    /// Own signed device keys.
    pub fn device_keys(&self) -> Result<Value, CryptoError> {
        self.lock()?.account.device_keys()
    }

    /// Start tracking these users' devices: users not tracked yet (or no longer) become
    /// pending download; the others keep their state. Invalid user ids are ignored.
    pub fn update_tracked_users(&self, users: &[String]) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        let changes = Changes {
            tracked_users: self.newly_tracked(users, &[])?,
            ..Default::default()
        };
        self.save(&mut state, changes)
    }

    /// Records for the `users` that are not tracked yet, given the store and `pending`
    /// (not yet committed) tracking records.
    pub(crate) fn newly_tracked(
        &self,
        users: &[String],
        pending: &[TrackedUser],
    ) -> Result<Vec<TrackedUser>, CryptoError> {
        let mut tracked = self.tracked_by_user()?;
        for t in pending {
            tracked.insert(t.user_id.clone(), t.clone());
        }
        Ok(users
            .iter()
            .filter(|u| {
                let valid = ruma::UserId::parse(u.as_str()).is_ok();
                if !valid {
                    warn!("not tracking an invalid user id");
                }
                valid
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .filter_map(|u| match tracked.get(u) {
                Some(t) if t.is_tracked() => None,
                other => Some(TrackedUser {
                    user_id: u.clone(),
                    state: TrackingState::PendingDownload,
                    sequence: other.map_or(1, |t| t.sequence + 1),
                }),
            })
            .collect())
    }

    /// Users whose device lists must be downloaded before encrypting for them.
    pub fn outdated_users(&self, users: &[String]) -> Result<Vec<String>, CryptoError> {
        let wanted: HashSet<&String> = users.iter().collect();
        Ok(self
            .store
            .tracked_users()?
            .into_iter()
            .filter(|u| u.needs_download() && wanted.contains(&u.user_id))
            .map(|u| u.user_id)
            .collect())
    }

    /// Every tracked user's record, by user id.
    pub(crate) fn tracked_by_user(&self) -> Result<HashMap<String, TrackedUser>, CryptoError> {
        Ok(self
            .store
            .tracked_users()?
            .into_iter()
            .map(|u| (u.user_id.clone(), u))
            .collect())
    }

    /// The tracking state of a user's device list.
    pub fn tracking_state(&self, user_id: &str) -> Result<TrackingState, CryptoError> {
        Ok(self
            .store
            .tracked_users()?
            .into_iter()
            .find(|u| u.user_id == user_id)
            .map_or(TrackingState::NotTracked, |u| u.state))
    }

    /// Requests to send now: key uploads, device-list queries and pending to-device messages.
    pub fn outgoing_requests(&self) -> Result<Vec<OutgoingRequest>, CryptoError> {
        let mut state = self.lock()?;
        let mut requests = Vec::new();
        requests.extend(self.key_upload(&mut state)?);
        requests.extend(self.key_queries(&mut state)?);
        requests.extend(self.pending_to_device_requests(&mut state)?);
        Ok(requests)
    }

    /// The `/keys/upload` of what is not published yet, unless one is in flight.
    fn key_upload(&self, state: &mut State) -> Result<Option<OutgoingRequest>, CryptoError> {
        if !state.account.needs_upload() || state.upload_in_flight {
            return Ok(None);
        }
        let mut request = upload_keys::v3::Request::new();
        if !state.account.device_keys_uploaded {
            request.device_keys = Some(raw(&state.account.device_keys()?)?);
        }
        request.one_time_keys = raw_map(state.account.unpublished_one_time_keys()?)?;
        request.fallback_keys = raw_map(state.account.unpublished_fallback_keys()?)?;
        state.upload_in_flight = true;
        Ok(Some(OutgoingRequest {
            id: state.next_id("upload"),
            kind: OutgoingKind::KeysUpload(request),
        }))
    }

    /// The stored to-device messages, as requests. One that cannot be built (a record an
    /// earlier version stored, naming an invalid user) is dropped for good, alone.
    fn pending_to_device_requests(
        &self,
        state: &mut State,
    ) -> Result<Vec<OutgoingRequest>, CryptoError> {
        let mut requests = Vec::new();
        let mut dropped = Vec::new();
        let mut pending = self.store.pending_to_device()?;
        // Room keys first (others may wait behind a slow or rate-limited server).
        pending.sort_by_key(|p| p.room_key.is_none());
        for pending in pending {
            match super::sharing::to_device_request(&pending) {
                Ok(request) => requests.push(request),
                Err(e) => {
                    warn!(error = %e, "dropping a stored to-device message that cannot be sent");
                    dropped.push(pending.txn_id);
                }
            }
        }
        let changes = Changes {
            sent_to_device: dropped,
            ..Default::default()
        };
        self.save(state, changes)?;
        Ok(requests)
    }

    /// A key upload failed; it will be offered again by [`Self::outgoing_requests`].
    pub fn mark_upload_failed(&self) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upload_in_flight = false;
    }

    /// The server answered a key upload.
    pub fn mark_keys_upload_sent(&self, response: &KeysUploadResponse) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        state.upload_in_flight = false;
        let count = response
            .one_time_key_counts
            .get(SIGNED_CURVE25519)
            .copied()
            .unwrap_or(0);
        state.account.mark_keys_as_published(count);
        state.account.update_one_time_key_count(count);
        let record = state.account.to_record()?;
        self.save(
            &mut state,
            Changes {
                account: Some(record),
                ..Default::default()
            },
        )?;
        info!(one_time_keys = count, "keys uploaded");
        Ok(())
    }

    /// Known devices of a user (including our own other devices).
    pub fn devices(&self, user_id: &str) -> Result<Vec<Device>, CryptoError> {
        Ok(self
            .store
            .devices(&[user_id])?
            .iter()
            .map(Device::from)
            .collect())
    }

    /// Record the user's decision about a device (verify, blacklist, ignore).
    pub fn set_local_trust(
        &self,
        user_id: &str,
        device_id: &str,
        trust: LocalTrust,
    ) -> Result<bool, CryptoError> {
        let mut state = self.lock()?;
        let Some(mut device) = self
            .store
            .devices(&[user_id])?
            .into_iter()
            .find(|d| d.device_id == device_id)
        else {
            return Ok(false);
        };
        device.local_trust = trust;
        let curve = device.curve25519.clone();
        let mut changes = Changes {
            devices: vec![device],
            ..Default::default()
        };
        if user_id == self.user_id {
            // Key requests this own device made while undecided: answer or drop them now.
            let (held, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut state.untrusted_key_requests)
                .into_iter()
                .partition(|(d, _)| d == device_id);
            state.untrusted_key_requests = rest;
            state.key_share_prompts.remove(device_id);
            state.prompted.remove(device_id);
            if trust != LocalTrust::Verified {
                // No answers for it any more, so no session to claim for them either.
                state.awaiting_session.remove(&curve);
            }
            if trust == LocalTrust::Verified && !held.is_empty() {
                // Save the decision first: answering reads the device's trust from the store.
                self.save(&mut state, std::mem::take(&mut changes))?;
                let held = held.into_iter().map(|(_, e)| e).collect();
                self.answer_key_requests(&mut state, held, &mut changes)?;
            }
        }
        self.save(&mut state, changes)?;
        Ok(true)
    }

    /// Own devices that asked for room keys while nobody had decided whether to trust them,
    /// not reported before. The app may ask the user ([`LocalTrust::Verified`] answers the
    /// held requests through [`Self::set_local_trust`]).
    pub fn take_key_share_prompts(&self) -> Result<Vec<Device>, CryptoError> {
        let mut state = self.lock()?;
        let ids = std::mem::take(&mut state.key_share_prompts);
        Ok(self
            .store
            .devices(&[&self.user_id])?
            .iter()
            .filter(|d| ids.contains(&d.device_id) && d.local_trust == LocalTrust::Unset)
            .map(Device::from)
            .collect())
    }
}
