//! [`MemoryStore`]: the in-memory [`Store`], for tests and benchmarks.
//!
//! It has exactly the semantics of [`SqliteStore`](super::SqliteStore) (both pass the same
//! conformance suite), including the generation counter, the ordering of results and the
//! atomicity of [`Store::save_changes`]: the changes are validated before the state is
//! touched, and nothing after validation can fail.

mod ordered;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use ordered::Ordered;
use ruma::events::room::member::MembershipState;
use ruma::{DeviceId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::{
    AccountRecord, Changes, ClientStore, CryptoStore, DeviceRecord, InboundGroupSessionRecord,
    KeyRequestRecord, LeaseAttempt, LeaseRow, MegolmIndexRecord, MemberRecord, NoOlmRoomKey,
    OlmSessionRecord, OutboundGroupSessionRecord, PendingToDevice, QueuedSend, RoomRecord,
    SecretBlob, SessionSender, SharingPolicy, Store, StoreCounts, StoreError, TrackedUser,
    UndecryptableEvent, UnwedgeRecord, UserIdentityRecord, WithheldNotice, quota,
};

type RoomSession = (OwnedRoomId, String);

/// Everything the store holds.
#[derive(Default)]
struct State {
    generation: u64,
    /// The lease on the crypto state (threads of one process may share a `MemoryStore`).
    lease: LeaseRow,
    /// Digests of to-device events a notification extension consumed, oldest first.
    consumed_to_device: Ordered<String, ()>,
    /// Events it left for the app, oldest first.
    deferred_to_device: Vec<String>,
    account: Option<AccountRecord>,
    /// sender key -> session id -> session.
    olm_sessions: HashMap<String, BTreeMap<String, OlmSessionRecord>>,
    /// (room id, session id) -> session, in write order.
    inbound: Ordered<RoomSession, InboundGroupSessionRecord>,
    /// room id -> session.
    outbound: HashMap<OwnedRoomId, OutboundGroupSessionRecord>,
    /// (room id, session id, index) -> key kept for devices sent `m.no_olm`.
    no_olm_keys: BTreeMap<(OwnedRoomId, String, u32), NoOlmRoomKey>,
    /// curve25519 key -> when the device was last unwedged.
    unwedged: HashMap<String, UnwedgeRecord>,
    /// user id -> device id -> device.
    devices: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, DeviceRecord>>,
    /// curve25519 key -> (user id, device id) of the devices claiming it.
    devices_by_curve: HashMap<String, BTreeSet<(OwnedUserId, OwnedDeviceId)>>,
    tracked_users: BTreeMap<OwnedUserId, TrackedUser>,
    identities: BTreeMap<OwnedUserId, UserIdentityRecord>,
    /// (sender key, session id, index) -> record.
    megolm_indices: HashMap<(String, String, u32), MegolmIndexRecord>,
    /// room id -> room, in write order.
    rooms: Ordered<OwnedRoomId, RoomRecord>,
    /// room id -> user id -> member.
    members: HashMap<OwnedRoomId, BTreeMap<OwnedUserId, MemberRecord>>,
    /// txn id -> request, in queue order.
    pending: Ordered<String, PendingToDevice>,
    /// txn id -> queued message, in queue order.
    send_queue: Ordered<String, QueuedSend>,
    sent_events: Ordered<String, OwnedEventId>,
    /// (room id, event id) -> event, in the order first stored.
    undecryptable: Ordered<(OwnedRoomId, OwnedEventId), UndecryptableEvent>,
    /// (room id, session id, sender) -> notice, newest last.
    withheld: Ordered<(OwnedRoomId, String, OwnedUserId), WithheldNotice>,
    /// (room id, session id) -> request, in the order sent.
    key_requests: Ordered<RoomSession, KeyRequestRecord>,
    values: HashMap<String, String>,
    secret_values: HashMap<String, SecretBlob>,
    sync_token: Option<String>,
}

impl State {
    /// Apply validated changes. Must not fail (atomicity relies on it).
    fn apply(&mut self, changes: Changes) {
        if let Some(account) = &changes.crypto.account {
            self.account = Some(account.clone());
        }
        self.apply_sessions(&changes);
        self.apply_no_olm_keys(&changes);
        for u in &changes.crypto.unwedge_records {
            self.unwedged.insert(u.curve25519.clone(), u.clone());
        }
        for d in &changes.crypto.devices {
            self.upsert_device(d.clone());
        }
        for u in &changes.crypto.tracked_users {
            self.tracked_users.insert(u.user_id.clone(), u.clone());
        }
        for i in &changes.crypto.user_identities {
            self.identities.insert(i.user_id.clone(), i.clone());
        }
        self.apply_rooms(&changes);
        self.apply_queues(&changes);
        self.apply_handoff(&changes.crypto);
        for w in &changes.crypto.withheld_notices {
            let key = (w.room_id.clone(), w.session_id.clone(), w.sender.clone());
            self.withheld.replace(key, w.clone());
        }
        for r in &changes.crypto.key_requests {
            let key = (r.room_id.clone(), r.session_id.clone());
            self.key_requests.insert_new(key, r.clone());
        }
        self.enforce_quotas(&changes);
        self.values.extend(changes.client.values);
        self.secret_values.extend(changes.client.secret_values);
        // Where SQLite keeps them too.
        if let Some(policy) = changes.crypto.sharing_policy {
            let value = super::sharing_policy_value(policy);
            self.secret_values
                .insert(super::VERIFIED_ONLY_KEY.to_owned(), value);
        }
        for (room_id, policy) in &changes.crypto.room_sharing_policies {
            let key = super::room_sharing_key(room_id);
            match policy {
                Some(p) => {
                    self.secret_values
                        .insert(key, super::sharing_policy_value(*p));
                }
                None => {
                    self.secret_values.remove(&key);
                }
            }
        }
        if let Some(keys) = changes.crypto.cross_signing_keys {
            self.secret_values
                .insert(super::CROSS_SIGNING_KEY.to_owned(), keys);
        }
        if let Some(token) = changes.sync_token {
            self.sync_token = Some(token);
        }
        self.generation += 1;
    }

    fn apply_sessions(&mut self, changes: &Changes) {
        for s in &changes.crypto.olm_sessions {
            self.olm_sessions
                .entry(s.sender_key.clone())
                .or_default()
                .insert(s.session_id.clone(), s.clone());
        }
        for s in &changes.crypto.inbound_group_sessions {
            let key = (s.room_id.clone(), s.session_id.clone());
            self.inbound.replace(key, s.clone());
        }
        for u in &changes.crypto.sender_data {
            let key = (u.room_id.clone(), u.session_id.clone());
            if let Some(session) = self.inbound.get(&key) {
                let mut session = session.clone();
                session.sender_data = u.sender_data.clone();
                self.inbound.upsert(key, session);
            }
        }
        for s in &changes.crypto.outbound_group_sessions {
            self.outbound.insert(s.room_id.clone(), s.clone());
        }
        // Discards come after the upserts of the same batch: when in doubt, a session is
        // thrown away rather than kept (fail closed).
        for room_id in &changes.crypto.discarded_outbound_sessions {
            self.outbound.remove(room_id);
        }
        // The first event seen at an index is kept (replay detection).
        for i in &changes.crypto.megolm_indices {
            self.megolm_indices
                .entry((i.sender_key.clone(), i.session_id.clone(), i.index))
                .or_insert_with(|| i.clone());
        }
    }

    /// The kept keys; then a room whose outbound session the batch wrote or discarded keeps
    /// only the keys of the session it has now (same as SQLite).
    fn apply_no_olm_keys(&mut self, changes: &Changes) {
        for k in &changes.crypto.no_olm_room_keys {
            let key = (k.room_id.clone(), k.session_id.clone(), k.index);
            self.no_olm_keys.insert(key, k.clone());
        }
        let touched: BTreeSet<&OwnedRoomId> = changes
            .crypto
            .outbound_group_sessions
            .iter()
            .map(|s| &s.room_id)
            .chain(&changes.crypto.discarded_outbound_sessions)
            .collect();
        if touched.is_empty() {
            return;
        }
        let outbound = &self.outbound;
        self.no_olm_keys.retain(|(room, session, _), _| {
            !touched.contains(room) || outbound.get(room).is_some_and(|s| &s.session_id == session)
        });
    }

    /// The unwedge record limits for a batch that wrote some (same as SQLite): records too
    /// old to matter, then the oldest (ties by key) beyond the maximum.
    fn bound_unwedge_records(&mut self, written: &[UnwedgeRecord]) {
        let Some(newest) = written.iter().map(|u| u.unwedged_ms).max() else {
            return;
        };
        if let Some(cutoff) = newest.checked_sub(quota::UNWEDGE_RECORD_LIFETIME_MS) {
            self.unwedged.retain(|_, u| u.unwedged_ms >= cutoff);
        }
        let max = usize::try_from(quota::MAX_UNWEDGE_RECORDS).unwrap_or(usize::MAX);
        if self.unwedged.len() <= max {
            return;
        }
        let mut by_age: Vec<(u64, String)> = self
            .unwedged
            .values()
            .map(|u| (u.unwedged_ms, u.curve25519.clone()))
            .collect();
        by_age.sort();
        let excess = by_age.len() - max;
        for (_, key) in by_age.into_iter().take(excess) {
            self.unwedged.remove(&key);
        }
    }

    fn apply_rooms(&mut self, changes: &Changes) {
        for r in &changes.client.rooms {
            self.rooms.replace(r.room_id.clone(), r.clone());
        }
        for room_id in &changes.client.replaced_member_lists {
            self.members.remove(room_id);
        }
        for m in &changes.client.members {
            self.members
                .entry(m.room_id.clone())
                .or_default()
                .insert(m.user_id.clone(), m.clone());
        }
    }

    fn apply_handoff(&mut self, changes: &super::CryptoChanges) {
        if changes.take_deferred_to_device {
            self.deferred_to_device.clear();
        }
        for digest in &changes.consumed_to_device {
            self.consumed_to_device.insert_new(digest.clone(), ());
        }
        for digest in &changes.forgotten_to_device {
            self.consumed_to_device.remove(digest);
        }
        self.deferred_to_device
            .extend(changes.deferred_to_device.iter().cloned());
        self.consumed_to_device
            .keep_newest(quota::MAX_CONSUMED_TO_DEVICE, |_, _| true);
        let max = usize::try_from(quota::MAX_DEFERRED_TO_DEVICE).unwrap_or(usize::MAX);
        let excess = self.deferred_to_device.len().saturating_sub(max);
        self.deferred_to_device.drain(..excess);
    }

    fn apply_queues(&mut self, changes: &Changes) {
        for p in &changes.crypto.pending_to_device {
            self.pending.upsert(p.txn_id.clone(), p.clone());
        }
        for txn_id in &changes.crypto.sent_to_device {
            self.pending.remove(txn_id);
        }
        for q in changes
            .client
            .queued_sends
            .iter()
            .chain(&changes.client.advanced_sends)
        {
            self.send_queue.upsert(q.txn_id.clone(), q.clone());
        }
        for txn_id in &changes.client.finished_sends {
            self.send_queue.remove(txn_id);
        }
        for (txn_id, event_id) in &changes.client.sent_events {
            self.sent_events.replace(txn_id.clone(), event_id.clone());
        }
        while self.sent_events.len() as u64 > super::quota::MAX_SENT_EVENTS {
            self.sent_events.pop_oldest();
        }
        for e in &changes.client.undecryptable_events {
            let key = (e.room_id.clone(), e.event_id.clone());
            self.undecryptable.upsert(key, e.clone());
        }
        for key in &changes.client.resolved_events {
            self.undecryptable.remove(key);
        }
    }

    /// The Olm session limits for the keys of `written` (least recently used first, same as
    /// SQLite).
    fn bound_olm_sessions(&mut self, written: &[OlmSessionRecord]) {
        let by_use = |a: &OlmSessionRecord, b: &OlmSessionRecord| {
            (b.last_used_ms, &a.sender_key, &a.session_id).cmp(&(
                a.last_used_ms,
                &b.sender_key,
                &b.session_id,
            ))
        };
        let keep = usize::try_from(quota::MAX_OLM_SESSIONS_PER_KEY).unwrap_or(usize::MAX);
        for key in written.iter().map(|s| &s.sender_key) {
            let Some(sessions) = self.olm_sessions.get_mut(key) else {
                continue;
            };
            let mut all: Vec<OlmSessionRecord> = sessions.values().cloned().collect();
            all.sort_by(by_use);
            for old in all.into_iter().skip(keep) {
                sessions.remove(&old.session_id);
            }
        }
        let known = |key: &str| {
            self.devices_by_curve.get(key).is_some_and(|ids| {
                ids.iter()
                    .any(|(u, d)| self.device(u, d).is_some_and(|d| !d.deleted))
            })
        };
        if written.iter().all(|s| known(&s.sender_key)) {
            return;
        }
        let mut unknown: Vec<OlmSessionRecord> = self
            .olm_sessions
            .iter()
            .filter(|(key, _)| !known(key))
            .flat_map(|(_, sessions)| sessions.values().cloned())
            .collect();
        unknown.sort_by(by_use);
        let keep =
            usize::try_from(quota::MAX_OLM_SESSIONS_OF_UNKNOWN_DEVICES).unwrap_or(usize::MAX);
        for old in unknown.into_iter().skip(keep) {
            if let Some(sessions) = self.olm_sessions.get_mut(&old.sender_key) {
                sessions.remove(&old.session_id);
            }
        }
        self.olm_sessions.retain(|_, sessions| !sessions.is_empty());
    }

    /// The [`quota`] limits, oldest first (same as SQLite).
    fn enforce_quotas(&mut self, changes: &Changes) {
        self.bound_olm_sessions(&changes.crypto.olm_sessions);
        self.rooms
            .keep_newest(quota::MAX_INVITES, |_, r| is_invite(r));
        let (members, requests) = (&self.members, &self.key_requests);
        self.inbound
            .keep_newest(quota::MAX_SESSIONS_FROM_NON_MEMBERS, |_, s| {
                !vouched(members, requests, s)
            });
        for s in &changes.crypto.inbound_group_sessions {
            let (room, sender) = (&s.room_id, &s.sender_user);
            self.inbound
                .keep_newest(quota::MAX_SESSIONS_PER_SENDER_PER_ROOM, |_, other| {
                    &other.room_id == room && &other.sender_user == sender
                });
        }
        self.undecryptable
            .keep_fair(quota::MAX_UNDECRYPTABLE_EVENTS, |e| e.room_id.clone());
        self.withheld
            .keep_fair(quota::MAX_WITHHELD_NOTICES, |w| w.sender.clone());
        self.key_requests
            .keep_fair(quota::MAX_KEY_REQUESTS, |r| r.room_id.clone());
        self.bound_unwedge_records(&changes.crypto.unwedge_records);
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

    fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Option<&DeviceRecord> {
        self.devices.get(user_id)?.get(device_id)
    }

    /// Devices with this Curve25519 key, sorted by user and device id.
    fn devices_with_key(&self, curve25519: &str) -> Vec<&DeviceRecord> {
        self.devices_by_curve
            .get(curve25519)
            .into_iter()
            .flatten()
            .filter_map(|(u, d)| self.device(u, d))
            .collect()
    }
}

/// Whether `session` is vouched for: its sender is known as a member of its room, or we
/// asked for it (same rule as SQLite's `FROM_NON_MEMBER`).
fn vouched(
    members: &HashMap<OwnedRoomId, BTreeMap<OwnedUserId, MemberRecord>>,
    requests: &Ordered<RoomSession, KeyRequestRecord>,
    session: &InboundGroupSessionRecord,
) -> bool {
    let member = session.sender_user.as_ref().is_some_and(|sender| {
        members
            .get(&session.room_id)
            .is_some_and(|m| m.contains_key(sender))
    });
    let asked = requests
        .get(&(session.room_id.clone(), session.session_id.clone()))
        .is_some();
    member || asked
}

/// A room we are invited to and were never in (what [`quota::MAX_INVITES`] bounds).
fn is_invite(r: &RoomRecord) -> bool {
    r.own_membership == Some(MembershipState::Invite) && r.encryption.is_none()
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
