//! [`MemoryStore`]: the in-memory [`Store`], for tests and benchmarks.
//!
//! It has exactly the semantics of [`SqliteStore`](super::SqliteStore) (both pass the same
//! conformance suite), including the generation counter, the ordering of results and the
//! atomicity of [`Store::save_changes`]: the changes are validated before the state is
//! touched, and nothing after validation can fail.

mod ordered;
mod state;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use ruma::events::room::member::MembershipState;
use ruma::{OwnedEventId, OwnedRoomId, RoomId, UserId};
use state::{State, is_invite, vouched};

use super::{
    AccountRecord, Changes, ClientStore, CryptoStore, DeviceRecord, InboundGroupSessionRecord,
    KeyRequestRecord, LeaseAttempt, MegolmIndexRecord, MemberRecord, NoOlmRoomKey,
    OlmSessionRecord, OutboundGroupSessionRecord, PendingToDevice, QueuedSend, RoomRecord,
    SecretBlob, SessionSender, SharingPolicy, Store, StoreCounts, StoreError, TrackedUser,
    UndecryptableEvent, UnwedgeRecord, UserIdentityRecord, WithheldNotice, quota,
};

/// A [`Store`] that keeps everything in memory (lost on drop). Thread-safe.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("generation", &self.lock().generation)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state. A panic while the lock was held cannot have left a half-applied change
    /// (see [`State::apply`]), so a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn save_changes(&self, changes: Changes) -> Result<u64, StoreError> {
        changes.validate()?;
        let mut inner = self.lock();
        if let Some(fence) = &changes.lease {
            inner.lease = inner.lease.fenced(fence).ok_or(StoreError::LeaseLost)?;
        }
        let advanced = changes.client.advanced_sends.iter();
        if let Some(gone) = advanced
            .map(|q| &q.txn_id)
            .find(|t| inner.send_queue.get(t).is_none())
        {
            return Err(StoreError::NotQueued(gone.clone()));
        }
        if !changes.is_empty() {
            inner.apply(changes);
        }
        Ok(inner.generation)
    }

    fn acquire_lease(
        &self,
        holder: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<LeaseAttempt, StoreError> {
        let mut inner = self.lock();
        Ok(match inner.lease.acquire(holder, now_ms, until_ms) {
            Ok(row) => {
                let token = row.token;
                inner.lease = row;
                LeaseAttempt::Acquired { token }
            }
            Err(held) => held,
        })
    }

    fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.lease = inner.lease.released(holder);
        Ok(())
    }

    fn generation(&self) -> Result<u64, StoreError> {
        Ok(self.lock().generation)
    }

    fn counts(&self) -> Result<StoreCounts, StoreError> {
        let state = self.lock();
        let unknown = state
            .inbound
            .values()
            .filter(|s| !vouched(&state.members, &state.key_requests, s))
            .count();
        let invites = state.rooms.values().filter(|r| is_invite(r)).count();
        let known = |key: &str| {
            state.devices_by_curve.get(key).is_some_and(|ids| {
                ids.iter()
                    .any(|(u, d)| state.device(u, d).is_some_and(|d| !d.deleted))
            })
        };
        let olm = |filter: &dyn Fn(&str) -> bool| -> u64 {
            let n: usize = state
                .olm_sessions
                .iter()
                .filter(|(key, _)| filter(key))
                .map(|(_, s)| s.len())
                .sum();
            n as u64
        };
        Ok(StoreCounts {
            olm_sessions: olm(&|_| true),
            olm_sessions_of_unknown_devices: olm(&|key| !known(key)),
            inbound_group_sessions: state.inbound.len() as u64,
            inbound_sessions_from_non_members: unknown as u64,
            invites: invites as u64,
            withheld_notices: state.withheld.len() as u64,
            key_requests: state.key_requests.len() as u64,
            undecryptable_events: state.undecryptable.len() as u64,
            unwedge_records: state.unwedged.len() as u64,
            no_olm_room_keys: state.no_olm_keys.len() as u64,
        })
    }
}

impl CryptoStore for MemoryStore {
    fn account(&self) -> Result<Option<AccountRecord>, StoreError> {
        Ok(self.lock().account.clone())
    }

    fn olm_sessions(
        &self,
        sender_keys: &[&str],
    ) -> Result<HashMap<String, Vec<OlmSessionRecord>>, StoreError> {
        let state = self.lock();
        let mut out = HashMap::new();
        for key in sender_keys {
            if let Some(sessions) = state.olm_sessions.get(*key)
                && !sessions.is_empty()
            {
                out.insert((*key).to_owned(), sessions.values().cloned().collect());
            }
        }
        Ok(out)
    }

    fn inbound_group_session(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Option<InboundGroupSessionRecord>, StoreError> {
        Ok(self
            .lock()
            .inbound
            .get(&(room_id.to_owned(), session_id.to_owned()))
            .cloned())
    }

    fn inbound_group_session_count(&self) -> Result<u64, StoreError> {
        Ok(self.lock().inbound.len() as u64)
    }

    fn room_inbound_group_session_count(&self, room_id: &RoomId) -> Result<u64, StoreError> {
        let state = self.lock();
        Ok(state
            .inbound
            .values()
            .filter(|s| s.room_id == room_id)
            .count() as u64)
    }

    fn inbound_group_sessions_to_back_up(
        &self,
        limit: u32,
    ) -> Result<Vec<InboundGroupSessionRecord>, StoreError> {
        let state = self.lock();
        let mut pending: Vec<_> = state.inbound.values().filter(|s| !s.backed_up).collect();
        pending
            .sort_unstable_by(|a, b| (&a.room_id, &a.session_id).cmp(&(&b.room_id, &b.session_id)));
        Ok(pending.into_iter().take(limit as usize).cloned().collect())
    }

    fn inbound_group_sessions_to_back_up_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .inbound
            .values()
            .filter(|s| !s.backed_up)
            .count() as u64)
    }

    fn inbound_group_sessions_page(
        &self,
        room: Option<&RoomId>,
        after: Option<(&RoomId, &str)>,
        limit: u32,
    ) -> Result<Vec<InboundGroupSessionRecord>, StoreError> {
        let state = self.lock();
        let mut keys: Vec<_> = state
            .inbound
            .iter()
            .map(|(k, _)| k)
            .filter(|(r, s)| {
                room.is_none_or(|room| r == room)
                    && after.is_none_or(|(ar, as_)| (r.as_str(), s.as_str()) > (ar.as_str(), as_))
            })
            .collect();
        keys.sort_unstable();
        Ok(keys
            .into_iter()
            .take(limit as usize)
            .filter_map(|k| state.inbound.get(k).cloned())
            .collect())
    }

    fn outbound_group_session(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<OutboundGroupSessionRecord>, StoreError> {
        Ok(self.lock().outbound.get(room_id).cloned())
    }

    fn devices(&self, user_ids: &[&UserId]) -> Result<Vec<DeviceRecord>, StoreError> {
        let state = self.lock();
        let users: BTreeSet<&UserId> = user_ids.iter().copied().collect();
        let mut out = Vec::new();
        for user in users {
            if let Some(devices) = state.devices.get(user) {
                out.extend(devices.values().cloned());
            }
        }
        Ok(out)
    }

    fn device_by_curve25519(
        &self,
        user_id: &UserId,
        curve25519: &str,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let state = self.lock();
        // Same choice as SQLite: a live device before a deleted one, then by device id.
        let best = state
            .devices_with_key(curve25519)
            .into_iter()
            .filter(|d| d.user_id == user_id)
            .min_by(|a, b| (a.deleted, &a.device_id).cmp(&(b.deleted, &b.device_id)));
        Ok(best.cloned())
    }

    fn devices_with_curve25519(&self, keys: &[&str]) -> Result<Vec<DeviceRecord>, StoreError> {
        let state = self.lock();
        let keys: BTreeSet<&str> = keys.iter().copied().collect();
        let mut out: Vec<DeviceRecord> = keys
            .into_iter()
            .flat_map(|k| state.devices_with_key(k))
            .cloned()
            .collect();
        out.sort_by(|a, b| (&a.user_id, &a.device_id).cmp(&(&b.user_id, &b.device_id)));
        Ok(out)
    }

    fn tracked_users(&self) -> Result<Vec<TrackedUser>, StoreError> {
        Ok(self.lock().tracked_users.values().cloned().collect())
    }

    fn megolm_index(
        &self,
        sender_key: &str,
        session_id: &str,
        index: u32,
    ) -> Result<Option<MegolmIndexRecord>, StoreError> {
        Ok(self
            .lock()
            .megolm_indices
            .get(&(sender_key.to_owned(), session_id.to_owned(), index))
            .cloned())
    }

    fn encrypted_rooms_with(&self, user_ids: &[&UserId]) -> Result<Vec<OwnedRoomId>, StoreError> {
        let state = self.lock();
        // Scans the encrypted rooms; fine for the sizes tests and benchmarks use.
        let mut rooms: Vec<OwnedRoomId> = state
            .rooms
            .values()
            .filter(|r| r.encryption.is_some())
            .filter(|r| {
                state.members.get(&r.room_id).is_some_and(|members| {
                    user_ids.iter().any(|u| {
                        members.get(*u).is_some_and(|m| {
                            matches!(
                                m.membership,
                                MembershipState::Join | MembershipState::Invite
                            )
                        })
                    })
                })
            })
            .map(|r| r.room_id.clone())
            .collect();
        rooms.sort();
        Ok(rooms)
    }

    fn member(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<MemberRecord>, StoreError> {
        Ok(self
            .lock()
            .members
            .get(room_id)
            .and_then(|m| m.get(user_id))
            .cloned())
    }

    fn consumed_to_device(&self, digests: &[&str]) -> Result<Vec<String>, StoreError> {
        let state = self.lock();
        Ok(digests
            .iter()
            .filter(|d| state.consumed_to_device.get(&(**d).to_owned()).is_some())
            .map(|d| (*d).to_owned())
            .collect())
    }

    fn deferred_to_device(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().deferred_to_device.clone())
    }

    fn pending_to_device(&self) -> Result<Vec<PendingToDevice>, StoreError> {
        Ok(self.lock().pending.values().cloned().collect())
    }

    fn withheld_notice(
        &self,
        room_id: &RoomId,
        session_id: &str,
        sender: &UserId,
    ) -> Result<Option<WithheldNotice>, StoreError> {
        let key = (room_id.to_owned(), session_id.to_owned(), sender.to_owned());
        Ok(self.lock().withheld.get(&key).cloned())
    }

    fn key_request(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Option<KeyRequestRecord>, StoreError> {
        let key = (room_id.to_owned(), session_id.to_owned());
        Ok(self.lock().key_requests.get(&key).cloned())
    }

    fn no_olm_room_key(
        &self,
        room_id: &RoomId,
        session_id: &str,
        index: u32,
    ) -> Result<Option<NoOlmRoomKey>, StoreError> {
        let key = (room_id.to_owned(), session_id.to_owned(), index);
        Ok(self.lock().no_olm_keys.get(&key).cloned())
    }

    fn unwedge_record(&self, curve25519: &str) -> Result<Option<UnwedgeRecord>, StoreError> {
        Ok(self.lock().unwedged.get(curve25519).cloned())
    }

    fn sharing_policy(&self) -> Result<SharingPolicy, StoreError> {
        let state = self.lock();
        let value = state.secret_values.get(super::VERIFIED_ONLY_KEY);
        Ok(super::sharing_policy_of(value).unwrap_or_default())
    }

    fn room_sharing_policy(&self, room_id: &RoomId) -> Result<Option<SharingPolicy>, StoreError> {
        let state = self.lock();
        let value = state.secret_values.get(&super::room_sharing_key(room_id));
        Ok(super::sharing_policy_of(value))
    }

    fn user_identities(&self, user_ids: &[&UserId]) -> Result<Vec<UserIdentityRecord>, StoreError> {
        let state = self.lock();
        let wanted: BTreeSet<&UserId> = user_ids.iter().copied().collect();
        Ok(wanted
            .into_iter()
            .filter_map(|u| state.identities.get(u).cloned())
            .collect())
    }

    fn cross_signing_keys(&self) -> Result<Option<SecretBlob>, StoreError> {
        Ok(self
            .lock()
            .secret_values
            .get(super::CROSS_SIGNING_KEY)
            .cloned())
    }

    fn sessions_to_reevaluate(
        &self,
        senders: &[&UserId],
    ) -> Result<Vec<SessionSender>, StoreError> {
        let wanted: BTreeSet<&UserId> = senders.iter().copied().collect();
        let state = self.lock();
        let mut out: Vec<SessionSender> = state
            .inbound
            .values()
            .filter(|s| s.sender_data.trust.may_improve())
            .filter(|s| s.sender_user.as_deref().is_some_and(|u| wanted.contains(u)))
            .filter_map(session_sender)
            .collect();
        out.sort_by(|a, b| (&a.room_id, &a.session_id).cmp(&(&b.room_id, &b.session_id)));
        Ok(out)
    }

    fn sender_data_retries_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<SessionSender>, StoreError> {
        let state = self.lock();
        let mut due: Vec<(u64, SessionSender)> = state
            .inbound
            .values()
            .filter_map(|s| {
                let at = s.sender_data.retry?.next_ms;
                (at <= now_ms).then_some(at).zip(session_sender(s))
            })
            .collect();
        // Stable: equal times stay in write order (SQLite's rowid).
        due.sort_by_key(|(at, _)| *at);
        Ok(due.into_iter().take(limit).map(|(_, s)| s).collect())
    }

    fn next_sender_data_retry(&self) -> Result<Option<u64>, StoreError> {
        let state = self.lock();
        Ok(state
            .inbound
            .values()
            .filter(|s| s.sender_user.is_some())
            .filter_map(|s| s.sender_data.retry.map(|r| r.next_ms))
            .min())
    }
}

/// The re-evaluation view of a session whose sender is known.
fn session_sender(s: &InboundGroupSessionRecord) -> Option<SessionSender> {
    Some(SessionSender {
        room_id: s.room_id.clone(),
        session_id: s.session_id.clone(),
        sender_key: s.sender_key.clone(),
        signing_key: s.signing_key.clone(),
        sender_user: s.sender_user.clone()?,
        sender_data: s.sender_data.clone(),
    })
}

impl ClientStore for MemoryStore {
    fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>, StoreError> {
        Ok(self.lock().rooms.get(&room_id.to_owned()).cloned())
    }

    fn rooms(&self) -> Result<Vec<RoomRecord>, StoreError> {
        let mut rooms: Vec<RoomRecord> = self.lock().rooms.values().cloned().collect();
        rooms.sort_by(|a, b| a.room_id.cmp(&b.room_id));
        Ok(rooms)
    }

    fn undecryptable_events(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Vec<UndecryptableEvent>, StoreError> {
        Ok(self
            .lock()
            .undecryptable
            .values()
            .filter(|e| e.room_id == room_id && e.session_id == session_id)
            .cloned()
            .collect())
    }

    fn queued_sends(&self) -> Result<Vec<QueuedSend>, StoreError> {
        Ok(self.lock().send_queue.values().cloned().collect())
    }

    fn sent_event(&self, txn_id: &str) -> Result<Option<OwnedEventId>, StoreError> {
        Ok(self.lock().sent_events.get(&txn_id.to_owned()).cloned())
    }

    fn undecryptable_sessions(&self) -> Result<Vec<(OwnedRoomId, String)>, StoreError> {
        let sessions: BTreeSet<(OwnedRoomId, String)> = self
            .lock()
            .undecryptable
            .values()
            .map(|e| (e.room_id.clone(), e.session_id.clone()))
            .collect();
        Ok(sessions.into_iter().collect())
    }

    fn undecryptable_sessions_without_key(&self) -> Result<Vec<(OwnedRoomId, String)>, StoreError> {
        let state = self.lock();
        let sessions: BTreeSet<(OwnedRoomId, String)> = state
            .undecryptable
            .values()
            .map(|e| (e.room_id.clone(), e.session_id.clone()))
            .filter(|id| state.inbound.get(id).is_none())
            .collect();
        Ok(sessions.into_iter().collect())
    }

    fn undecryptable_event_count(&self) -> Result<u64, StoreError> {
        Ok(self.lock().undecryptable.len() as u64)
    }

    fn members(&self, room_id: &RoomId) -> Result<Vec<MemberRecord>, StoreError> {
        Ok(self
            .lock()
            .members
            .get(room_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    fn value(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().values.get(key).cloned())
    }

    fn secret_value(&self, key: &str) -> Result<Option<SecretBlob>, StoreError> {
        Ok(self.lock().secret_values.get(key).cloned())
    }

    fn sync_token(&self) -> Result<Option<String>, StoreError> {
        Ok(self.lock().sync_token.clone())
    }
}
