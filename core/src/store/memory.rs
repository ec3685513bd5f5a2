//! [`MemoryStore`]: the in-memory [`Store`], for tests and benchmarks.
//!
//! It has exactly the semantics of [`SqliteStore`](super::SqliteStore) (both pass the same
//! conformance suite), including the generation counter, the ordering of results and the
//! atomicity of [`Store::save_changes`]: the changes are validated before the state is
//! touched, and nothing after validation can fail.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use super::{
    AccountRecord, Changes, DeviceRecord, InboundGroupSessionRecord, MegolmIndexRecord,
    MemberRecord, OlmSessionRecord, OutboundGroupSessionRecord, PendingToDevice, QueuedSend,
    RoomRecord, SecretBlob, Store, StoreError, TrackedUser, UndecryptableEvent,
};

/// Everything the store holds.
#[derive(Default)]
struct State {
    generation: u64,
    account: Option<AccountRecord>,
    /// sender key -> session id -> session.
    olm_sessions: HashMap<String, BTreeMap<String, OlmSessionRecord>>,
    /// (room id, session id) -> session.
    inbound: HashMap<(String, String), InboundGroupSessionRecord>,
    /// room id -> session.
    outbound: HashMap<String, OutboundGroupSessionRecord>,
    /// user id -> device id -> device.
    devices: BTreeMap<String, BTreeMap<String, DeviceRecord>>,
    /// curve25519 key -> (user id, device id) of the devices claiming it.
    devices_by_curve: HashMap<String, BTreeSet<(String, String)>>,
    tracked_users: BTreeMap<String, TrackedUser>,
    /// (sender key, session id, index) -> record.
    megolm_indices: HashMap<(String, String, u32), MegolmIndexRecord>,
    rooms: BTreeMap<String, RoomRecord>,
    /// room id -> user id -> member.
    members: HashMap<String, BTreeMap<String, MemberRecord>>,
    /// insertion sequence -> request.
    pending: BTreeMap<u64, PendingToDevice>,
    /// insertion sequence -> queued message, and transaction id -> its sequence.
    send_queue: BTreeMap<u64, QueuedSend>,
    send_queue_by_txn: HashMap<String, u64>,
    next_send_seq: u64,
    /// insertion sequence -> event, and (room id, event id) -> its sequence.
    undecryptable: BTreeMap<u64, UndecryptableEvent>,
    undecryptable_by_event: HashMap<(String, String), u64>,
    next_undecryptable_seq: u64,
    /// txn id -> insertion sequence.
    pending_by_txn: HashMap<String, u64>,
    next_pending_seq: u64,
    values: HashMap<String, String>,
    secret_values: HashMap<String, SecretBlob>,
    sync_token: Option<String>,
}

impl State {
    /// Apply validated changes. Must not fail (atomicity relies on it).
    fn apply(&mut self, changes: Changes) {
        if let Some(account) = changes.account {
            self.account = Some(account);
        }
        for s in changes.olm_sessions {
            self.olm_sessions
                .entry(s.sender_key.clone())
                .or_default()
                .insert(s.session_id.clone(), s);
        }
        for s in changes.inbound_group_sessions {
            self.inbound
                .insert((s.room_id.clone(), s.session_id.clone()), s);
        }
        for s in changes.outbound_group_sessions {
            self.outbound.insert(s.room_id.clone(), s);
        }
        // Discards come after the upserts of the same batch: when in doubt, a session is
        // thrown away rather than kept (fail closed).
        for room_id in &changes.discarded_outbound_sessions {
            self.outbound.remove(room_id);
        }
        for d in changes.devices {
            self.upsert_device(d);
        }
        for u in changes.tracked_users {
            self.tracked_users.insert(u.user_id.clone(), u);
        }
        // The first event seen at an index is kept (replay detection).
        for i in changes.megolm_indices {
            self.megolm_indices
                .entry((i.sender_key.clone(), i.session_id.clone(), i.index))
                .or_insert(i);
        }
        for r in changes.rooms {
            self.rooms.insert(r.room_id.clone(), r);
        }
        for m in changes.members {
            self.members
                .entry(m.room_id.clone())
                .or_default()
                .insert(m.user_id.clone(), m);
        }
        for p in changes.pending_to_device {
            // A re-queued transaction keeps its place in the queue.
            let seq = match self.pending_by_txn.get(&p.txn_id) {
                Some(seq) => *seq,
                None => {
                    self.next_pending_seq += 1;
                    self.pending_by_txn
                        .insert(p.txn_id.clone(), self.next_pending_seq);
                    self.next_pending_seq
                }
            };
            self.pending.insert(seq, p);
        }
        for txn_id in &changes.sent_to_device {
            if let Some(seq) = self.pending_by_txn.remove(txn_id) {
                self.pending.remove(&seq);
            }
        }
        for q in changes.queued_sends {
            let seq = match self.send_queue_by_txn.get(&q.txn_id) {
                Some(seq) => *seq,
                None => {
                    self.next_send_seq += 1;
                    self.send_queue_by_txn
                        .insert(q.txn_id.clone(), self.next_send_seq);
                    self.next_send_seq
                }
            };
            self.send_queue.insert(seq, q);
        }
        for txn_id in &changes.finished_sends {
            if let Some(seq) = self.send_queue_by_txn.remove(txn_id) {
                self.send_queue.remove(&seq);
            }
        }
        for e in changes.undecryptable_events {
            let key = (e.room_id.clone(), e.event_id.clone());
            let seq = match self.undecryptable_by_event.get(&key) {
                Some(seq) => *seq,
                None => {
                    self.next_undecryptable_seq += 1;
                    self.undecryptable_by_event
                        .insert(key, self.next_undecryptable_seq);
                    self.next_undecryptable_seq
                }
            };
            self.undecryptable.insert(seq, e);
        }
        for key in changes.resolved_events {
            if let Some(seq) = self.undecryptable_by_event.remove(&key) {
                self.undecryptable.remove(&seq);
            }
        }
        self.values.extend(changes.values);
        self.secret_values.extend(changes.secret_values);
        if let Some(token) = changes.sync_token {
            self.sync_token = Some(token);
        }
        self.generation += 1;
    }

    fn upsert_device(&mut self, d: DeviceRecord) {
        let ids = (d.user_id.clone(), d.device_id.clone());
        let old = self
            .devices
            .entry(d.user_id.clone())
            .or_default()
            .insert(d.device_id.clone(), d.clone());
        if let Some(old) = old
            && let Some(set) = self.devices_by_curve.get_mut(&old.curve25519)
        {
            set.remove(&ids);
            if set.is_empty() {
                self.devices_by_curve.remove(&old.curve25519);
            }
        }
        self.devices_by_curve
            .entry(d.curve25519)
            .or_default()
            .insert(ids);
    }

    fn device(&self, user_id: &str, device_id: &str) -> Option<&DeviceRecord> {
        self.devices.get(user_id)?.get(device_id)
    }
}

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
    fn save_changes(&self, changes: Changes) -> Result<(), StoreError> {
        changes.validate()?;
        if changes.is_empty() {
            return Ok(());
        }
        self.lock().apply(changes);
        Ok(())
    }

    fn generation(&self) -> Result<u64, StoreError> {
        Ok(self.lock().generation)
    }

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
        room_id: &str,
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

    fn outbound_group_session(
        &self,
        room_id: &str,
    ) -> Result<Option<OutboundGroupSessionRecord>, StoreError> {
        Ok(self.lock().outbound.get(room_id).cloned())
    }

    fn devices(&self, user_ids: &[&str]) -> Result<Vec<DeviceRecord>, StoreError> {
        let state = self.lock();
        let users: BTreeSet<&str> = user_ids.iter().copied().collect();
        let mut out = Vec::new();
        for user in users {
            if let Some(devices) = state.devices.get(user) {
                out.extend(devices.values().cloned());
            }
        }
        Ok(out)
    }

    fn device_by_curve25519(&self, curve25519: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let state = self.lock();
        let Some(ids) = state.devices_by_curve.get(curve25519) else {
            return Ok(None);
        };
        // Same choice as SQLite: a live device before a deleted one, then by ids.
        let best = ids
            .iter()
            .filter_map(|(u, d)| state.device(u, d))
            .min_by(|a, b| {
                (a.deleted, &a.user_id, &a.device_id).cmp(&(b.deleted, &b.user_id, &b.device_id))
            });
        Ok(best.cloned())
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

    fn room(&self, room_id: &str) -> Result<Option<RoomRecord>, StoreError> {
        Ok(self.lock().rooms.get(room_id).cloned())
    }

    fn rooms(&self) -> Result<Vec<RoomRecord>, StoreError> {
        Ok(self.lock().rooms.values().cloned().collect())
    }

    fn undecryptable_events(
        &self,
        room_id: &str,
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

    fn undecryptable_sessions(&self) -> Result<Vec<(String, String)>, StoreError> {
        let sessions: BTreeSet<(String, String)> = self
            .lock()
            .undecryptable
            .values()
            .map(|e| (e.room_id.clone(), e.session_id.clone()))
            .collect();
        Ok(sessions.into_iter().collect())
    }

    fn undecryptable_event_count(&self) -> Result<u64, StoreError> {
        Ok(self.lock().undecryptable.len() as u64)
    }

    fn oldest_undecryptable_events(&self, limit: u64) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .lock()
            .undecryptable
            .values()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|e| (e.room_id.clone(), e.event_id.clone()))
            .collect())
    }

    fn encrypted_rooms_with(&self, user_ids: &[&str]) -> Result<Vec<String>, StoreError> {
        let state = self.lock();
        // Scans the encrypted rooms; fine for the sizes tests and benchmarks use.
        Ok(state
            .rooms
            .values()
            .filter(|r| r.encryption.is_some())
            .filter(|r| {
                state.members.get(&r.room_id).is_some_and(|members| {
                    user_ids.iter().any(|u| {
                        members
                            .get(*u)
                            .is_some_and(|m| m.membership == "join" || m.membership == "invite")
                    })
                })
            })
            .map(|r| r.room_id.clone())
            .collect())
    }

    fn members(&self, room_id: &str) -> Result<Vec<MemberRecord>, StoreError> {
        Ok(self
            .lock()
            .members
            .get(room_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    fn pending_to_device(&self) -> Result<Vec<PendingToDevice>, StoreError> {
        Ok(self.lock().pending.values().cloned().collect())
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
