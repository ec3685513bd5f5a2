//! [`OlmMachine`]: state, sync input, key upload and device-list queries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use ruma::OwnedUserId;
use ruma::api::client::keys::{get_keys, upload_keys};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::account::{OwnAccount, SIGNED_CURVE25519};
use super::devices::{Device, verify_device_keys};
use super::error::{CryptoError, DeviceKeyError, MegolmError, OlmError};
use super::megolm::InboundGroup;
use super::requests::{OutgoingKind, OutgoingRequest, json_of, raw, raw_map};
use crate::store::{
    Changes, DeviceRecord, LocalTrust, MegolmIndexRecord, Store, TrackedUser, TrackingState,
};

/// First back-off of a server whose key queries fail.
const BACKOFF_BASE_MS: u64 = 15_000;
/// Longest back-off.
const BACKOFF_MAX_MS: u64 = 15 * 60_000;

/// The server name of a user id.
fn server_of(user_id: &str) -> Option<&str> {
    user_id.split_once(':').map(|(_, server)| server)
}

/// Users per `/keys/query` request.
const QUERY_BATCH: usize = 250;

/// What one `/sync` response carries for the crypto machine.
#[derive(Debug, Default)]
pub struct SyncChanges {
    /// `to_device.events`, as received, in order.
    pub to_device_events: Vec<Value>,
    /// `device_lists.changed`.
    pub changed_users: Vec<String>,
    /// `device_lists.left`.
    pub left_users: Vec<String>,
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
    /// Device that created the session.
    pub sender_device: String,
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
    /// pending download; the others keep their state.
    pub fn update_tracked_users(&self, users: &[String]) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        let tracked = self.tracked_by_user()?;
        let new: Vec<TrackedUser> = users
            .iter()
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
            .collect();
        self.save(
            &mut state,
            Changes {
                tracked_users: new,
                ..Default::default()
            },
        )
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

    /// Feed one sync response. Everything it carried is stored in one transaction together
    /// with `next_batch`, so a crash never skips a to-device event or room key.
    pub fn receive_sync_changes(&self, sync: SyncChanges) -> Result<SyncOutcome, CryptoError> {
        let mut state = self.lock()?;
        let mut changes = Changes::default();
        let mut account_changed = false;

        if !sync.changed_users.is_empty() || !sync.left_users.is_empty() {
            let tracked = self.tracked_by_user()?;
            // The sequence bump makes an answer to a query already in flight stale.
            for user in &sync.changed_users {
                if let Some(t) = tracked.get(user).filter(|t| t.is_tracked()) {
                    changes.tracked_users.push(TrackedUser {
                        user_id: user.clone(),
                        state: TrackingState::PendingDownload,
                        sequence: t.sequence + 1,
                    });
                }
            }
            for user in &sync.left_users {
                if let Some(t) = tracked.get(user).filter(|t| t.is_tracked()) {
                    // Keep the devices (and the user's decisions about them), stop updating.
                    changes.tracked_users.push(TrackedUser {
                        user_id: user.clone(),
                        state: TrackingState::NotTracked,
                        sequence: t.sequence + 1,
                    });
                }
            }
        }

        let (outcomes, room_keys) =
            self.handle_to_device_batch(&mut state, &sync.to_device_events, &mut changes)?;
        if outcomes
            .iter()
            .any(|o| o.result.is_ok() && o.event_type == "m.room.encrypted")
        {
            account_changed = true;
        }

        if let Some(counts) = &sync.one_time_key_counts {
            let count = counts.get(SIGNED_CURVE25519).copied().unwrap_or(0);
            if state.account.device_keys_uploaded && !state.upload_in_flight {
                account_changed |= state.account.update_one_time_key_count(count);
            }
        }
        if let Some(unused) = &sync.unused_fallback_key_types
            && state.account.device_keys_uploaded
        {
            account_changed |= state.account.update_unused_fallback_keys(unused);
        }
        if account_changed {
            changes.account = Some(state.account.to_record()?);
        }
        changes.extend(sync.extra);
        changes.sync_token = sync.next_batch;
        self.save(&mut state, changes)?;
        Ok(SyncOutcome {
            to_device: outcomes,
            room_keys,
        })
    }

    /// Requests to send now: key uploads, device-list queries and pending to-device messages.
    pub fn outgoing_requests(&self) -> Result<Vec<OutgoingRequest>, CryptoError> {
        let mut state = self.lock()?;
        let mut requests = Vec::new();
        if state.account.needs_upload() && !state.upload_in_flight {
            let mut request = upload_keys::v3::Request::new();
            if !state.account.device_keys_uploaded {
                request.device_keys = Some(raw(&state.account.device_keys()?)?);
            }
            request.one_time_keys = raw_map(state.account.unpublished_one_time_keys()?)?;
            request.fallback_keys = raw_map(state.account.unpublished_fallback_keys()?)?;
            state.upload_in_flight = true;
            let id = state.next_id("upload");
            requests.push(OutgoingRequest {
                id,
                kind: OutgoingKind::KeysUpload(request),
            });
        }

        let in_flight: HashSet<String> = state
            .queries_in_flight
            .values()
            .flatten()
            .map(|(u, _)| u.clone())
            .collect();
        let now = crate::time::now_ms();
        let backed_off = |user: &str| {
            server_of(user)
                .and_then(|s| state.server_backoff.get(s))
                .is_some_and(|(_, until)| *until > now)
        };
        // `Downloading` without a query in flight: the answer was lost with a restart.
        let outdated: Vec<TrackedUser> = self
            .store
            .tracked_users()?
            .into_iter()
            .filter(|u| {
                u.needs_download() && !in_flight.contains(&u.user_id) && !backed_off(&u.user_id)
            })
            .map(|u| TrackedUser {
                state: TrackingState::Downloading,
                ..u
            })
            .collect();
        if !outdated.is_empty() {
            self.save(
                &mut state,
                Changes {
                    tracked_users: outdated.clone(),
                    ..Default::default()
                },
            )?;
        }
        for chunk in outdated.chunks(QUERY_BATCH) {
            let mut request = get_keys::v3::Request::new();
            for user in chunk {
                match OwnedUserId::try_from(user.user_id.as_str()) {
                    Ok(id) => {
                        request.device_keys.insert(id, Vec::new());
                    }
                    Err(_) => warn!(user = %user.user_id, "not querying an invalid user id"),
                }
            }
            let id = state.next_id("query");
            state.queries_in_flight.insert(
                id.clone(),
                chunk
                    .iter()
                    .map(|u| (u.user_id.clone(), u.sequence))
                    .collect(),
            );
            requests.push(OutgoingRequest {
                id,
                kind: OutgoingKind::KeysQuery(request),
            });
        }

        for pending in self.store.pending_to_device()? {
            requests.push(super::sharing::to_device_request(&pending)?);
        }
        Ok(requests)
    }

    /// A key upload failed; it will be offered again by [`Self::outgoing_requests`].
    pub fn mark_upload_failed(&self) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upload_in_flight = false;
    }

    /// A query failed; its users go back to pending download and are offered again.
    pub fn mark_query_failed(&self, request_id: &str) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        let Some(requested) = state.queries_in_flight.remove(request_id) else {
            return Ok(());
        };
        let changes = Changes {
            tracked_users: self.settle_tracking(&requested, |_| false)?,
            ..Default::default()
        };
        self.save(&mut state, changes)
    }

    /// New states of the users of a query that ended: up to date if `answered` and nothing
    /// invalidated the user since the query left, pending again if not answered. Users
    /// invalidated or dropped meanwhile keep the state that says so.
    fn settle_tracking(
        &self,
        requested: &[(String, u64)],
        answered: impl Fn(&str) -> bool,
    ) -> Result<Vec<TrackedUser>, CryptoError> {
        let current = self.tracked_by_user()?;
        Ok(requested
            .iter()
            .filter_map(|(user, sequence)| {
                let t = current.get(user)?;
                if t.sequence != *sequence || t.state != TrackingState::Downloading {
                    return None;
                }
                let state = if answered(user) {
                    TrackingState::UpToDate
                } else {
                    TrackingState::PendingDownload
                };
                Some(TrackedUser { state, ..t.clone() })
            })
            .collect())
    }

    /// The server answered a key upload.
    pub fn mark_keys_upload_sent(
        &self,
        response: &upload_keys::v3::Response,
    ) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        state.upload_in_flight = false;
        let count = response
            .one_time_key_counts
            .iter()
            .find(|(alg, _)| alg.as_str() == SIGNED_CURVE25519)
            .map(|(_, c)| u64::from(*c))
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

    /// The server answered a `/keys/query`.
    pub fn mark_keys_query_sent(
        &self,
        request_id: &str,
        response: &get_keys::v3::Response,
    ) -> Result<QueryOutcome, CryptoError> {
        let mut state = self.lock()?;
        let requested = state
            .queries_in_flight
            .remove(request_id)
            .ok_or_else(|| CryptoError::UnknownRequest(request_id.to_owned()))?;
        let mut outcome = QueryOutcome::default();
        let mut changes = Changes::default();
        // A server that failed is backed off (15 s doubling to 15 min) without holding up
        // the users of other servers; one that answered is forgiven.
        let now = crate::time::now_ms();
        for (user, _) in &requested {
            let Some(server) = server_of(user) else {
                continue;
            };
            if response.failures.contains_key(server) {
                let (failures, _) = state.server_backoff.get(server).copied().unwrap_or((0, 0));
                let delay = (BACKOFF_BASE_MS << failures.min(6)).min(BACKOFF_MAX_MS);
                state
                    .server_backoff
                    .insert(server.to_owned(), (failures + 1, now + delay));
            } else {
                state.server_backoff.remove(server);
            }
        }

        let users: Vec<&str> = response.device_keys.keys().map(|u| u.as_str()).collect();
        let mut stored: HashMap<(String, String), DeviceRecord> = self
            .store
            .devices(&users)?
            .into_iter()
            .map(|d| ((d.user_id.clone(), d.device_id.clone()), d))
            .collect();

        for (user_id, devices) in &response.device_keys {
            let user_id = user_id.as_str();
            let mut seen = HashSet::new();
            for (device_id, keys) in devices {
                let device_id = device_id.as_str();
                seen.insert(device_id.to_owned());
                if user_id == self.user_id && device_id == self.device_id {
                    continue;
                }
                let verified = json_of(keys)
                    .ok_or_else(|| DeviceKeyError::Malformed("not JSON".into()))
                    .and_then(|keys| verify_device_keys(user_id, device_id, &keys));
                let mut record = match verified {
                    Ok(record) => record,
                    Err(e) => {
                        warn!(user_id, device_id, error = %e, "rejected device keys");
                        outcome
                            .rejected
                            .push((user_id.to_owned(), device_id.to_owned(), e));
                        continue;
                    }
                };
                if let Some(old) = stored.get(&(user_id.to_owned(), device_id.to_owned())) {
                    if old.ed25519 != record.ed25519 || old.curve25519 != record.curve25519 {
                        let e = DeviceKeyError::Ed25519Changed {
                            user_id: user_id.to_owned(),
                            device_id: device_id.to_owned(),
                        };
                        warn!(
                            user_id,
                            device_id, "device changed its keys; keeping the old ones"
                        );
                        outcome
                            .rejected
                            .push((user_id.to_owned(), device_id.to_owned(), e));
                        continue;
                    }
                    record.local_trust = old.local_trust;
                    if old == &record {
                        continue;
                    }
                    if old.deleted {
                        // Back in the list (e.g. a restored device id): new to us again.
                        outcome
                            .new_devices
                            .push((user_id.to_owned(), device_id.to_owned()));
                    }
                } else {
                    outcome
                        .new_devices
                        .push((user_id.to_owned(), device_id.to_owned()));
                }
                outcome.updated_devices += 1;
                changes.devices.push(record);
            }
            for ((owner, device_id), old) in stored.iter_mut() {
                if owner == user_id && !seen.contains(device_id) && !old.deleted {
                    old.deleted = true;
                    changes.devices.push(old.clone());
                    outcome
                        .removed_devices
                        .push((owner.clone(), device_id.clone()));
                }
            }
        }

        let churned: HashSet<&str> = outcome
            .new_devices
            .iter()
            .chain(&outcome.removed_devices)
            .map(|(u, _)| u.as_str())
            .collect();
        if !churned.is_empty() {
            let churned: Vec<&str> = churned.into_iter().collect();
            outcome.affected_rooms = self.store.encrypted_rooms_with(&churned)?;
        }
        changes.tracked_users = self.settle_tracking(&requested, |user| {
            response.device_keys.keys().any(|u| u.as_str() == user)
        })?;
        self.save(&mut state, changes)?;
        Ok(outcome)
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
                state
                    .deferred_key_requests
                    .extend(held.into_iter().map(|(_, e)| e));
                self.handle_to_device_batch(&mut state, &[], &mut changes)?;
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

    /// Decrypt an `m.room.encrypted` room event received in `room_id`.
    pub fn decrypt_room_event(
        &self,
        room_id: &str,
        event: &Value,
    ) -> Result<DecryptedRoomEvent, CryptoError> {
        let malformed = |what: &str| MegolmError::Malformed(format!("missing {what}"));
        let content = event.get("content").ok_or_else(|| malformed("content"))?;
        let algorithm = content
            .get("algorithm")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if algorithm != super::account::MEGOLM_ALGORITHM {
            return Err(MegolmError::UnsupportedAlgorithm(algorithm.to_owned()).into());
        }
        let session_id = content
            .get("session_id")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("session_id"))?;
        let ciphertext = content
            .get("ciphertext")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("ciphertext"))?;
        let sender = event
            .get("sender")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("sender"))?;
        let event_id = event
            .get("event_id")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("event_id"))?;
        let origin_ts = event
            .get("origin_server_ts")
            .and_then(Value::as_u64)
            .unwrap_or(0);

        let Some(record) = self.store.inbound_group_session(room_id, session_id)? else {
            let withheld = self
                .store
                .value(&super::to_device::withheld_key(room_id, session_id))?;
            if let Some(notice) = withheld.and_then(|w| serde_json::from_str::<Value>(&w).ok()) {
                return Err(MegolmError::Withheld {
                    code: notice["code"].as_str().unwrap_or_default().to_owned(),
                    reason: notice["reason"].as_str().map(str::to_owned),
                }
                .into());
            }
            return Err(MegolmError::MissingSession {
                session_id: session_id.to_owned(),
            }
            .into());
        };
        let mut group = InboundGroup::from_record(record)?;
        let (payload, index) = group.decrypt(ciphertext)?;
        let payload_room = payload
            .get("room_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if payload_room != room_id {
            return Err(MegolmError::RoomMismatch {
                expected: room_id.to_owned(),
                got: payload_room.to_owned(),
            }
            .into());
        }
        if !group.record.sender_user.is_empty() && sender != group.record.sender_user {
            return Err(MegolmError::SenderMismatch {
                expected: group.record.sender_user.clone(),
                got: sender.to_owned(),
            }
            .into());
        }
        let sender_key = group.record.sender_key.clone();
        // `sender_key` in the content is deprecated and optional; when present it must agree.
        if let Some(claimed) = content.get("sender_key").and_then(Value::as_str)
            && claimed != sender_key
        {
            return Err(MegolmError::SenderKeyMismatch {
                expected: sender_key,
                got: claimed.to_owned(),
            }
            .into());
        }
        match self.store.megolm_index(&sender_key, session_id, index)? {
            Some(seen) if seen.event_id != event_id || seen.origin_ts != origin_ts => {
                return Err(MegolmError::Replay {
                    index,
                    first_event_id: seen.event_id,
                }
                .into());
            }
            Some(_) => {}
            None => {
                let mut state = self.lock()?;
                self.save(
                    &mut state,
                    Changes {
                        megolm_indices: vec![MegolmIndexRecord {
                            session_id: session_id.to_owned(),
                            sender_key: sender_key.clone(),
                            index,
                            event_id: event_id.to_owned(),
                            origin_ts,
                        }],
                        ..Default::default()
                    },
                )?;
            }
        }
        let event_type = payload
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("decrypted type"))?
            .to_owned();
        let content = payload
            .get("content")
            .cloned()
            .ok_or_else(|| malformed("decrypted content"))?;
        Ok(DecryptedRoomEvent {
            event_type,
            content,
            sender: sender.to_owned(),
            sender_device: group.record.sender_device.clone(),
            sender_curve25519: sender_key,
            session_id: session_id.to_owned(),
            message_index: index,
        })
    }
}
