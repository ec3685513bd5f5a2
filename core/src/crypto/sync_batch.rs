//! One `/sync` response, committed as one transaction: its to-device events, device-list
//! changes and key counts, the room state the client adds, what decrypting its timeline
//! produced (replay records, key requests, events kept for late keys) and the sync token.
//! A crash before the commit replays the whole response; after it, nothing is lost.

use ruma::{DeviceId, RoomId, UserId};
use serde_json::Value;
use tracing::{debug, warn};

use super::account::{OwnAccount, SIGNED_CURVE25519};
use super::error::CryptoError;
use super::lease::StateGuard;
use super::machine::OlmMachine;
use super::outcomes::{DecryptedRoomEvent, SyncChanges, SyncOutcome};
use super::state::State;
use crate::store::{AccountRecord, Changes, TrackedUser, TrackingState};

/// Room-key requests one sync response may cause.
const MAX_KEY_REQUESTS_PER_SYNC: usize = 50;

/// A sync response being processed. Holds the machine's state until [`SyncBatch::commit`]
/// (or drop, which stores nothing and forgets what the batch did in memory). Do not hold it
/// across an `.await`.
pub struct SyncBatch<'m> {
    machine: &'m OlmMachine,
    state: Option<StateGuard<'m>>,
    /// The account as it was when the batch began: what an uncommitted batch goes back to.
    snapshot: AccountRecord,
    changes: Changes,
    outcome: SyncOutcome,
    /// The batch's verification messages, handled once the rest is committed.
    verification_events: Vec<Value>,
}

impl std::fmt::Debug for SyncBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncBatch").finish_non_exhaustive()
    }
}

impl<'m> SyncBatch<'m> {
    /// Begin a sync response's batch: the state is locked until it commits or is dropped.
    pub(crate) fn begin(machine: &'m OlmMachine, sync: SyncChanges) -> Result<Self, CryptoError> {
        let state = machine.lock()?;
        let snapshot = state.account.to_record()?;
        let mut batch = SyncBatch {
            machine,
            state: Some(state),
            snapshot,
            changes: sync.extra,
            outcome: SyncOutcome::default(),
            verification_events: Vec::new(),
        };
        batch.apply_device_lists(&sync.changed_users, &sync.left_users)?;
        let mut changes = std::mem::take(&mut batch.changes);
        // What a notification extension left or consumed (under the lease, as it wrote it).
        let events = super::notification::take_handoff(
            &*machine.store,
            sync.to_device_events,
            &mut changes,
        )?;
        let state = batch.state_mut()?;
        let handled = machine
            .to_device()
            .handle_to_device_batch(state, &events, &mut changes);
        batch.changes = changes;
        let handled = handled?;
        let mut account_changed = handled.account_changed;
        batch.verification_events = handled.verification;
        batch.outcome = SyncOutcome {
            to_device: handled.outcomes,
            room_keys: handled.room_keys,
            verifications: Vec::new(),
        };
        let state = batch.state_mut()?;
        // Keys generated while an upload is in flight would be marked published by its
        // answer without having been uploaded: wait for the answer.
        if !state.upload_in_flight && state.account.device_keys_uploaded {
            if let Some(counts) = &sync.one_time_key_counts {
                let count = counts.get(SIGNED_CURVE25519).copied().unwrap_or(0);
                account_changed |= state.account.update_one_time_key_count(count);
            }
            if let Some(unused) = &sync.unused_fallback_key_types {
                let now = state.now_ms();
                account_changed |= state.account.update_unused_fallback_keys(unused, now);
            }
        }
        if account_changed {
            batch.changes.crypto.account = Some(state.account.to_record()?);
        }
        batch.changes.sync_token = sync.next_batch;
        Ok(batch)
    }
}

impl SyncBatch<'_> {
    fn state_mut(&mut self) -> Result<&mut State, CryptoError> {
        self.state
            .as_deref_mut()
            .ok_or_else(|| CryptoError::CorruptState("sync batch already committed".into()))
    }

    /// `device_lists.changed` makes tracked users pending (the sequence bump makes an answer
    /// already in flight stale); `left` stops tracking (devices and decisions are kept).
    fn apply_device_lists(
        &mut self,
        changed: &[ruma::OwnedUserId],
        left: &[ruma::OwnedUserId],
    ) -> Result<(), CryptoError> {
        if changed.is_empty() && left.is_empty() {
            return Ok(());
        }
        let tracked = self.machine.tracker().tracked_by_user()?;
        let updates = [
            (changed, TrackingState::PendingDownload),
            (left, TrackingState::NotTracked),
        ];
        for (users, new_state) in updates {
            for user in users {
                if let Some(t) = tracked.get(user).filter(|t| t.is_tracked()) {
                    self.changes.crypto.tracked_users.push(TrackedUser {
                        user_id: user.clone(),
                        state: new_state,
                        sequence: t.sequence + 1,
                    });
                }
            }
        }
        Ok(())
    }

    /// What the to-device part of the response did.
    pub fn outcome(&self) -> &SyncOutcome {
        &self.outcome
    }

    /// Decrypt a room event of this response with the keys stored and those of this batch;
    /// its replay record is committed with the batch.
    pub fn decrypt_room_event(
        &mut self,
        room_id: &RoomId,
        event: &Value,
    ) -> Result<DecryptedRoomEvent, CryptoError> {
        self.machine
            .decryptor()
            .decrypt_recording(room_id, event, &mut self.changes)
    }

    /// [`OlmMachine::request_room_key`], committed with the batch.
    pub fn request_room_key(
        &mut self,
        room_id: &RoomId,
        session_id: &str,
        sender_key: &str,
        sender: Option<(&UserId, &DeviceId)>,
    ) -> Result<bool, CryptoError> {
        // Members choose the session ids their events name: one sync asks for at most so
        // many keys (the events are kept anyway and decrypt if a key comes).
        if self.changes.crypto.key_requests.len() >= MAX_KEY_REQUESTS_PER_SYNC {
            debug!("not asking for more keys in this sync");
            return Ok(false);
        }
        let request = self.machine.key_requests().key_request_changes(
            room_id,
            session_id,
            sender_key,
            sender,
            &self.changes,
        )?;
        let asked = request.is_some();
        self.changes.extend(request.unwrap_or_default());
        Ok(asked)
    }

    /// [`OlmMachine::update_tracked_users`], committed with the batch.
    pub fn track_users(&mut self, users: &[ruma::OwnedUserId]) -> Result<(), CryptoError> {
        let new = self
            .machine
            .tracker()
            .newly_tracked(users, &self.changes.crypto.tracked_users)?;
        self.changes.crypto.tracked_users.extend(new);
        Ok(())
    }

    /// Records of the caller's to commit with the batch (e.g. events kept for late keys).
    pub fn keep(&mut self, changes: Changes) {
        self.changes.extend(changes);
    }

    /// The records of this batch not committed yet.
    pub fn pending(&self) -> &Changes {
        &self.changes
    }

    /// Store everything in one transaction.
    pub fn commit(mut self) -> Result<SyncOutcome, CryptoError> {
        let mut changes = std::mem::take(&mut self.changes);
        // Whatever the answer carried, an invalid record (a bug of ours) must not stop the
        // sync: it is left out, the rest is stored.
        changes.drop_invalid();
        let mut state = self
            .state
            .take()
            .ok_or_else(|| CryptoError::CorruptState("sync batch already committed".into()))?;
        if let Err(e) = self.machine.save(&mut state, changes) {
            // Nothing was stored: what the batch did to the account in memory is forgotten.
            if let Ok(account) = OwnAccount::from_record(&self.snapshot) {
                state.account = account;
            }
            return Err(e);
        }
        debug!(
            to_device = self.outcome.to_device.len(),
            room_keys = self.outcome.room_keys.len(),
            "sync committed"
        );
        self.outcome.verifications = self.handle_verification_events(&mut state);
        Ok(std::mem::take(&mut self.outcome))
    }
}

impl SyncBatch<'_> {
    /// Verification messages, once the sync is committed: a verification is interactive
    /// and lives in memory, so one whose messages a crash loses times out and is started
    /// again; what it sends is stored in a transaction of its own. A failure here is
    /// logged and does not undo the committed sync.
    fn handle_verification_events(&mut self, state: &mut State) -> Vec<super::Verification> {
        let events = std::mem::take(&mut self.verification_events);
        if events.is_empty() && !state.verifications.any_unfinished() {
            return Vec::new();
        }
        let mut changes = Changes::default();
        let handled = self
            .machine
            .verifier()
            .handle_events(state, &events, &mut changes)
            .and_then(|updates| {
                self.machine.save(state, changes)?;
                Ok(updates)
            });
        handled.unwrap_or_else(|e| {
            warn!(error = %e, "verification messages could not be handled");
            state.verifications.abandon_unfinished()
        })
    }
}

impl Drop for SyncBatch<'_> {
    fn drop(&mut self) {
        // Not committed: nothing was stored, so what the batch did to the account in memory
        // (one-time keys consumed, keys generated) must be forgotten too.
        if let Some(state) = self.state.as_deref_mut()
            && let Ok(account) = OwnAccount::from_record(&self.snapshot)
        {
            state.account = account;
        }
    }
}
