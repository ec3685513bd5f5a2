//! [`OlmMachine`]: the facade. Opens the account, locks the state, persists changes, and
//! holds the calls that belong to no sub-machine (key upload, device trust).

use std::sync::{Arc, Mutex};

use ruma::api::client::keys::upload_keys;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::Value;
use tracing::{info, warn};

use super::account::{OwnAccount, SIGNED_CURVE25519};
use super::context::Ctx;
use super::error::CryptoError;
use super::identity::SignatureCache;
use super::key_requests::KeyRequests;
use super::keys_query::DeviceTracker;
use super::olm_sessions::OlmSessions;
use super::outbox::to_device_request;
use super::requests::{OutgoingKind, OutgoingRequest, raw, raw_map};
use super::responses::KeysUploadResponse;
use super::room_events::RoomDecryptor;
use super::sharing::GroupSessions;
use super::state::State;
use super::to_device::ToDeviceHandler;
use super::verification::Verifier;
use crate::store::{Changes, CryptoChanges, Store};
use crate::time::{Clock, SystemClock};

/// The end-to-end encryption state machine of one device. Does no network I/O.
pub struct OlmMachine {
    pub(crate) user_id: OwnedUserId,
    pub(crate) device_id: OwnedDeviceId,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) state: Mutex<State>,
    /// Cross-signing signature checks already made (see [`SignatureCache`]).
    pub(crate) signatures: SignatureCache,
    /// This instance's name as holder of the cross-process lease (`lease.rs`).
    pub(crate) holder: String,
    /// Opened by a notification extension: it uploads no keys and encrypts nothing
    /// (`notification.rs`).
    pub(crate) notification: bool,
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
        user_id: &UserId,
        device_id: &DeviceId,
        store: Arc<dyn Store>,
    ) -> Result<Self, CryptoError> {
        Self::open_with_clock(user_id, device_id, store, Arc::new(SystemClock))
    }

    /// [`OlmMachine::open`] with the time taken from `clock` (backoff, rotation periods,
    /// retry intervals, session ages).
    pub fn open_with_clock(
        user_id: &UserId,
        device_id: &DeviceId,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CryptoError> {
        // Read before the account: a write in between makes the first `lock` reload it.
        let read_at = store.generation()?;
        let (account, generation) = match store.account()? {
            Some(record) => {
                if record.user_id != user_id || record.device_id != device_id {
                    return Err(CryptoError::AccountMismatch {
                        user: user_id.to_owned(),
                        device: device_id.to_owned(),
                        stored_user: record.user_id,
                        stored_device: record.device_id,
                    });
                }
                (OwnAccount::from_record(&record)?, read_at)
            }
            None => {
                let mut account = OwnAccount::new(user_id, device_id, clock.now_ms());
                let max = account.inner.max_number_of_one_time_keys();
                account.inner.generate_one_time_keys(max);
                // Persist before anything is published, so the keys survive a crash.
                let written = store.save_changes(Changes::from(CryptoChanges {
                    account: Some(account.to_record()?),
                    ..Default::default()
                }))?;
                info!(%user_id, %device_id, "created a new Olm account");
                (account, written)
            }
        };
        Ok(Self {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            store,
            state: Mutex::new(State::new(account, generation, clock)),
            signatures: SignatureCache::default(),
            holder: format!("{}-{}", std::process::id(), ruma::TransactionId::new()),
            notification: false,
        })
    }

    /// Open the machine in a notification extension, beside the app on the same store: it
    /// decrypts, takes room keys from to-device events and hands the rest over to the app,
    /// but never uploads keys, creates outbound sessions or encrypts. The account must
    /// exist (the app created it).
    pub fn open_for_notifications(
        user_id: &UserId,
        device_id: &DeviceId,
        store: Arc<dyn Store>,
    ) -> Result<Self, CryptoError> {
        if store.account()?.is_none() {
            return Err(CryptoError::InvalidInput(
                "no account in this store: the app must log in first".into(),
            ));
        }
        let mut machine = Self::open(user_id, device_id, store)?;
        machine.notification = true;
        Ok(machine)
    }

    /// Refuse what only the app may do.
    pub(crate) fn refuse_in_notifications(&self) -> Result<(), CryptoError> {
        if self.notification {
            return Err(CryptoError::InvalidInput(
                "not in a notification extension: the app does this".into(),
            ));
        }
        Ok(())
    }

    /// Own user id.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// Own device id.
    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    /// The store the machine persists to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The identity and the store, for the sub-machines.
    pub(crate) fn ctx(&self) -> Ctx<'_> {
        Ctx {
            user_id: &self.user_id,
            device_id: &self.device_id,
            store: &*self.store,
            signatures: &self.signatures,
        }
    }

    /// Device tracking and local trust.
    pub(crate) fn tracker(&self) -> DeviceTracker<'_> {
        DeviceTracker::new(self.ctx())
    }

    /// Olm session establishment and repair.
    pub(crate) fn olm_sessions(&self) -> OlmSessions<'_> {
        OlmSessions::new(self.ctx())
    }

    /// Room-key sharing and room-event encryption.
    pub(crate) fn group_sessions(&self) -> GroupSessions<'_> {
        GroupSessions::new(self.ctx())
    }

    /// Room-key requests between own devices.
    pub(crate) fn key_requests(&self) -> KeyRequests<'_> {
        KeyRequests::new(self.ctx())
    }

    /// Room-event decryption.
    pub(crate) fn decryptor(&self) -> RoomDecryptor<'_> {
        RoomDecryptor::new(self.ctx())
    }

    /// To-device events.
    pub(crate) fn to_device(&self) -> ToDeviceHandler<'_> {
        ToDeviceHandler::new(self.ctx())
    }

    /// Interactive verification.
    pub(crate) fn verifier(&self) -> Verifier<'_> {
        Verifier::new(self.ctx())
    }

    /// Persist `changes` and remember the resulting generation as our own.
    pub(crate) fn save(&self, state: &mut State, changes: Changes) -> Result<(), CryptoError> {
        self.ctx().save(state, changes)
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

    /// Requests to send now: key uploads, device-list queries and pending to-device messages.
    pub fn outgoing_requests(&self) -> Result<Vec<OutgoingRequest>, CryptoError> {
        let mut state = self.lock()?;
        let mut requests = Vec::new();
        if !self.notification {
            requests.extend(self.key_upload(&mut state)?);
        }
        requests.extend(self.tracker().key_queries(&mut state)?);
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
            id: state.ids.next("upload"),
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
            match to_device_request(&pending) {
                Ok(request) => requests.push(request),
                Err(e) => {
                    warn!(error = %e, "dropping a stored to-device message that cannot be sent");
                    dropped.push(pending.txn_id);
                }
            }
        }
        let changes = Changes::from(CryptoChanges {
            sent_to_device: dropped,
            ..Default::default()
        });
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
            Changes::from(CryptoChanges {
                account: Some(record),
                ..Default::default()
            }),
        )?;
        info!(one_time_keys = count, "keys uploaded");
        Ok(())
    }
}
