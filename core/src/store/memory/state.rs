//! The in-memory store's state and how validated changes are applied to it (with the same
//! quotas and ordering as SQLite).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ruma::events::room::member::MembershipState;
use ruma::{DeviceId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, UserId};

use super::super::{
    AccountRecord, Changes, DeviceRecord, InboundGroupSessionRecord, KeyRequestRecord, LeaseRow,
    MegolmIndexRecord, MemberRecord, NoOlmRoomKey, OlmSessionRecord, OutboundGroupSessionRecord,
    PendingToDevice, QueuedSend, RoomRecord, SecretBlob, TrackedUser, UndecryptableEvent,
    UnwedgeRecord, UserIdentityRecord, WithheldNotice, quota,
};
use super::ordered::Ordered;

pub(super) type RoomSession = (OwnedRoomId, String);

/// Everything the store holds.
#[derive(Default)]
pub(super) struct State {
    pub(super) generation: u64,
    /// The lease on the crypto state (threads of one process may share a `MemoryStore`).
    pub(super) lease: LeaseRow,
    /// Digests of to-device events a notification extension consumed, oldest first.
    pub(super) consumed_to_device: Ordered<String, ()>,
    /// Events it left for the app, oldest first.
    pub(super) deferred_to_device: Vec<String>,
    pub(super) account: Option<AccountRecord>,
    /// sender key -> session id -> session.
    pub(super) olm_sessions: HashMap<String, BTreeMap<String, OlmSessionRecord>>,
    /// (room id, session id) -> session, in write order.
    pub(super) inbound: Ordered<RoomSession, InboundGroupSessionRecord>,
    /// room id -> session.
    pub(super) outbound: HashMap<OwnedRoomId, OutboundGroupSessionRecord>,
    /// (room id, session id, index) -> key kept for devices sent `m.no_olm`.
    pub(super) no_olm_keys: BTreeMap<(OwnedRoomId, String, u32), NoOlmRoomKey>,
    /// curve25519 key -> when the device was last unwedged.
    pub(super) unwedged: HashMap<String, UnwedgeRecord>,
    /// user id -> device id -> device.
    pub(super) devices: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, DeviceRecord>>,
    /// curve25519 key -> (user id, device id) of the devices claiming it.
    pub(super) devices_by_curve: HashMap<String, BTreeSet<(OwnedUserId, OwnedDeviceId)>>,
    pub(super) tracked_users: BTreeMap<OwnedUserId, TrackedUser>,
    pub(super) identities: BTreeMap<OwnedUserId, UserIdentityRecord>,
    /// (sender key, session id, index) -> record.
    pub(super) megolm_indices: HashMap<(String, String, u32), MegolmIndexRecord>,
    /// room id -> room, in write order.
    pub(super) rooms: Ordered<OwnedRoomId, RoomRecord>,
    /// room id -> user id -> member.
    pub(super) members: HashMap<OwnedRoomId, BTreeMap<OwnedUserId, MemberRecord>>,
    /// txn id -> request, in queue order.
    pub(super) pending: Ordered<String, PendingToDevice>,
    /// txn id -> queued message, in queue order.
    pub(super) send_queue: Ordered<String, QueuedSend>,
    pub(super) sent_events: Ordered<String, OwnedEventId>,
    /// (room id, event id) -> event, in the order first stored.
    pub(super) undecryptable: Ordered<(OwnedRoomId, OwnedEventId), UndecryptableEvent>,
    /// (room id, session id, sender) -> notice, newest last.
    pub(super) withheld: Ordered<(OwnedRoomId, String, OwnedUserId), WithheldNotice>,
    /// (room id, session id) -> request, in the order sent.
    pub(super) key_requests: Ordered<RoomSession, KeyRequestRecord>,
    pub(super) values: HashMap<String, String>,
    pub(super) secret_values: HashMap<String, SecretBlob>,
    pub(super) sync_token: Option<String>,
}

impl State {
    /// Apply validated changes. Must not fail (atomicity relies on it).
    pub(super) fn apply(&mut self, changes: Changes) {
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
            let value = super::super::sharing_policy_value(policy);
            self.secret_values
                .insert(super::super::VERIFIED_ONLY_KEY.to_owned(), value);
        }
        for (room_id, policy) in &changes.crypto.room_sharing_policies {
            let key = super::super::room_sharing_key(room_id);
            match policy {
                Some(p) => {
                    self.secret_values
                        .insert(key, super::super::sharing_policy_value(*p));
                }
                None => {
                    self.secret_values.remove(&key);
                }
            }
        }
        if let Some(keys) = changes.crypto.cross_signing_keys {
            self.secret_values
                .insert(super::super::CROSS_SIGNING_KEY.to_owned(), keys);
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
        if changes.crypto.backup_reset {
            let all: Vec<_> = self.inbound.iter().map(|(k, _)| k.clone()).collect();
            for key in all {
                self.mark_backed_up(key, None, false);
            }
        }
        for s in &changes.crypto.inbound_group_sessions {
            let key = (s.room_id.clone(), s.session_id.clone());
            self.inbound.replace(key, s.clone());
        }
        for (room_id, session_id, index) in &changes.crypto.backed_up_sessions {
            let key = (room_id.clone(), session_id.clone());
            self.mark_backed_up(key, Some(*index), true);
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

    /// Set `backed_up` of one session (if its first index is `index`, when given), keeping
    /// its place.
    fn mark_backed_up(&mut self, key: (OwnedRoomId, String), index: Option<u32>, backed_up: bool) {
        if let Some(session) = self.inbound.get(&key)
            && session.backed_up != backed_up
            && index.is_none_or(|i| i == session.first_known_index)
        {
            let mut session = session.clone();
            session.backed_up = backed_up;
            self.inbound.upsert(key, session);
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

    fn apply_handoff(&mut self, changes: &super::super::CryptoChanges) {
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
        for s in changes.crypto.inbound_group_sessions.iter() {
            let (room, sender) = (&s.room_id, &s.sender_user);
            self.inbound
                .keep_newest(quota::MAX_SESSIONS_PER_SENDER_PER_ROOM, |_, other| {
                    !other.imported && &other.room_id == room && &other.sender_user == sender
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

    pub(super) fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Option<&DeviceRecord> {
        self.devices.get(user_id)?.get(device_id)
    }

    /// Devices with this Curve25519 key, sorted by user and device id.
    pub(super) fn devices_with_key(&self, curve25519: &str) -> Vec<&DeviceRecord> {
        self.devices_by_curve
            .get(curve25519)
            .into_iter()
            .flatten()
            .filter_map(|(u, d)| self.device(u, d))
            .collect()
    }
}

/// Whether `session` is vouched for: the user imported it, its sender is known as a member
/// of its room, or we asked for it (same rule as SQLite's `FROM_NON_MEMBER`).
pub(super) fn vouched(
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
    session.imported || member || asked
}

/// A room we are invited to and were never in (what [`quota::MAX_INVITES`] bounds).
pub(super) fn is_invite(r: &RoomRecord) -> bool {
    r.own_membership == Some(MembershipState::Invite) && r.encryption.is_none()
}
