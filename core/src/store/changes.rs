//! [`Changes`]: everything one step changed, applied atomically by
//! [`Store::save_changes`](super::Store::save_changes), and the checks both stores apply
//! to it. It has two halves: what the crypto machine writes ([`CryptoChanges`]) and what
//! the client writes ([`ClientChanges`]); a sync commits both with its token in one
//! transaction.

use std::collections::BTreeMap;

use ruma::{OwnedEventId, OwnedRoomId};

use super::{
    AccountRecord, DeviceRecord, InboundGroupSessionRecord, KeyRequestRecord, MegolmIndexRecord,
    MemberRecord, NoOlmRoomKey, OlmSessionRecord, OutboundGroupSessionRecord, PendingToDevice,
    QueuedSend, RoomRecord, SecretBlob, SenderDataUpdate, SharingPolicy, StoreError, TrackedUser,
    UndecryptableEvent, UnwedgeRecord, UserIdentityRecord, WithheldNotice,
};

/// Everything one step changed, applied atomically by [`Store::save_changes`].
///
/// [`Store::save_changes`]: super::Store::save_changes
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// What the crypto machine wrote.
    pub crypto: CryptoChanges,
    /// What the client wrote.
    pub client: ClientChanges,
    /// The sync token; written last, only together with everything the sync carried.
    pub sync_token: Option<String>,
    /// The lease these changes were made under: the write is refused if it passed to
    /// another holder, and renews it otherwise (see [`super::LeaseFence`]).
    pub lease: Option<super::LeaseFence>,
}

/// What only the crypto machine writes: its account, Olm and Megolm sessions, devices and
/// their tracking, replay records, the to-device messages it sends and what it keeps about
/// keys it does not have.
#[derive(Clone, Debug, Default)]
pub struct CryptoChanges {
    /// New state of the own account.
    pub account: Option<AccountRecord>,
    /// Olm sessions to insert or replace (key: sender key + session id).
    pub olm_sessions: Vec<OlmSessionRecord>,
    /// Inbound Megolm sessions to insert or replace.
    pub inbound_group_sessions: Vec<InboundGroupSessionRecord>,
    /// Outbound Megolm sessions to insert or replace (one per room).
    pub outbound_group_sessions: Vec<OutboundGroupSessionRecord>,
    /// Rooms whose outbound session must be discarded.
    pub discarded_outbound_sessions: Vec<OwnedRoomId>,
    /// Room keys to keep for devices sent `m.no_olm` (insert or replace by room, session and
    /// index). A room whose outbound session this batch writes or discards keeps only the
    /// keys of the session it has afterwards (those of this batch included).
    pub no_olm_room_keys: Vec<NoOlmRoomKey>,
    /// Unwedge times to record (insert or replace by device key).
    pub unwedge_records: Vec<UnwedgeRecord>,
    /// Devices to insert or replace.
    pub devices: Vec<DeviceRecord>,
    /// Tracked users to insert or replace.
    pub tracked_users: Vec<TrackedUser>,
    /// Megolm indices seen.
    pub megolm_indices: Vec<MegolmIndexRecord>,
    /// To-device requests to remember until sent.
    pub pending_to_device: Vec<PendingToDevice>,
    /// To-device requests that were sent (by transaction id).
    pub sent_to_device: Vec<String>,
    /// Withheld notices to keep (insert or replace by room, session and sender).
    pub withheld_notices: Vec<WithheldNotice>,
    /// Key requests sent (insert, or keep the existing one of the session).
    pub key_requests: Vec<KeyRequestRecord>,
    /// The global sharing policy (a secret value, so that it cannot be edited in the
    /// file).
    pub sharing_policy: Option<SharingPolicy>,
    /// Rooms' own sharing policies: set, or removed (`None`: the room follows the global
    /// one).
    pub room_sharing_policies: Vec<(OwnedRoomId, Option<SharingPolicy>)>,
    /// Users' cross-signing identities to insert or replace.
    pub user_identities: Vec<UserIdentityRecord>,
    /// New sender data of stored inbound sessions (applied after the session inserts; an
    /// update for a session that is not stored is ignored).
    pub sender_data: Vec<SenderDataUpdate>,
    /// The own cross-signing private keys (a secret value).
    pub cross_signing_keys: Option<SecretBlob>,
    /// Digests of Olm-encrypted to-device events a notification extension decrypted: the
    /// app skips them when its own sync brings them again (their Olm step is used up).
    pub consumed_to_device: Vec<String>,
    /// Digests the app met again and skipped: forgotten.
    pub forgotten_to_device: Vec<String>,
    /// To-device events a notification extension received and left for the app (JSON, in
    /// order): it asked the server past them, so the app's sync will not bring them.
    pub deferred_to_device: Vec<String>,
    /// The app took the deferred events (they are removed).
    pub take_deferred_to_device: bool,
    /// A new backup version: every inbound session is to be backed up again (applied
    /// before the sessions and marks of the same batch).
    pub backup_reset: bool,
    /// Sessions now in the server-side backup, by (room id, session id).
    /// Each with the first index of the copy that was uploaded: a better copy stored since
    /// is not marked (it is still to upload).
    pub backed_up_sessions: Vec<(OwnedRoomId, String, u32)>,
}

/// What the client writes: rooms and members, the send queue, events kept for late keys,
/// and small values (the session, the access token).
#[derive(Clone, Debug, Default)]
pub struct ClientChanges {
    /// Rooms to insert or replace.
    pub rooms: Vec<RoomRecord>,
    /// Members to insert or replace.
    pub members: Vec<MemberRecord>,
    /// Rooms whose member list is replaced by the `members` of this batch: their other
    /// member records are deleted first (a full `/members` answer).
    pub replaced_member_lists: Vec<OwnedRoomId>,
    /// Messages to queue for sending (insert or replace by transaction id; a replaced one keeps
    /// its place in the queue).
    pub queued_sends: Vec<QueuedSend>,
    /// Queued messages moved on to a later stage: replaced, only if still queued (else the
    /// whole batch fails with [`StoreError::NotQueued`] and nothing is written: a message
    /// cancelled or finished meanwhile is not brought back).
    pub advanced_sends: Vec<QueuedSend>,
    /// Queued messages done with (sent or given up), by transaction id; applied after the
    /// inserts.
    pub finished_sends: Vec<String>,
    /// Event ids of sent messages by transaction id, for the queued edits, reactions and
    /// redactions that refer to them (the newest [`super::quota::MAX_SENT_EVENTS`] are kept).
    pub sent_events: Vec<(String, OwnedEventId)>,
    /// Undecryptable events to keep (insert or replace by room and event id).
    pub undecryptable_events: Vec<UndecryptableEvent>,
    /// Undecryptable events to forget: `(room id, event id)`; applied after the inserts.
    pub resolved_events: Vec<(OwnedRoomId, OwnedEventId)>,
    /// Small values (not secret) by key; the access token is NOT allowed here.
    pub values: BTreeMap<String, String>,
    /// Secret values by key (encrypted at rest), e.g. the access token.
    pub secret_values: BTreeMap<String, SecretBlob>,
}

impl From<CryptoChanges> for Changes {
    fn from(crypto: CryptoChanges) -> Self {
        Self {
            crypto,
            ..Default::default()
        }
    }
}

impl From<ClientChanges> for Changes {
    fn from(client: ClientChanges) -> Self {
        Self {
            client,
            ..Default::default()
        }
    }
}

impl Changes {
    /// Whether nothing would be written.
    pub fn is_empty(&self) -> bool {
        self.crypto.len() == 0 && self.client.len() == 0 && self.sync_token.is_none()
    }

    /// Check every record for what both store implementations refuse: an empty
    /// identifier (device, session id, sender key, transaction id, value key; typed user,
    /// room and event ids cannot be empty). [`Store::save_changes`] runs this first and
    /// saves nothing if it fails.
    ///
    /// [`Store::save_changes`]: super::Store::save_changes
    pub fn validate(&self) -> Result<(), StoreError> {
        self.crypto.validate()?;
        self.client.validate()
    }

    /// Leave out every record [`Changes::validate`] would refuse (logged), so that the
    /// rest can be saved. For batches built from the network: one invalid record there is
    /// a bug of ours, and must not stop the sync. Returns how many were left out.
    pub fn drop_invalid(&mut self) -> usize {
        let dropped = self.crypto.drop_invalid() + self.client.drop_invalid();
        if dropped > 0 {
            tracing::warn!(dropped, "left out invalid records of a batch");
        }
        dropped
    }

    /// Fold `other` into `self` (later values win).
    pub fn extend(&mut self, other: Changes) {
        self.crypto.extend(other.crypto);
        self.client.extend(other.client);
        if other.sync_token.is_some() {
            self.sync_token = other.sync_token;
        }
        if other.lease.is_some() {
            self.lease = other.lease;
        }
    }
}

impl CryptoChanges {
    fn validate(&self) -> Result<(), StoreError> {
        if let Some(a) = &self.account {
            a.check()?;
        }
        all(&self.olm_sessions)?;
        all(&self.inbound_group_sessions)?;
        all(&self.outbound_group_sessions)?;
        all(&self.no_olm_room_keys)?;
        all(&self.unwedge_records)?;
        all(&self.devices)?;
        all(&self.tracked_users)?;
        all(&self.megolm_indices)?;
        all(&self.withheld_notices)?;
        all(&self.key_requests)?;
        all(&self.pending_to_device)?;
        all(&self.user_identities)?;
        all(&self.sender_data)?;
        for txn_id in &self.sent_to_device {
            non_empty("sent to-device txn_id", txn_id)?;
        }
        Ok(())
    }

    fn drop_invalid(&mut self) -> usize {
        let before = self.len();
        if self.account.as_ref().is_some_and(|a| a.check().is_err()) {
            self.account = None;
        }
        keep_valid(&mut self.olm_sessions);
        keep_valid(&mut self.inbound_group_sessions);
        keep_valid(&mut self.outbound_group_sessions);
        keep_valid(&mut self.no_olm_room_keys);
        keep_valid(&mut self.unwedge_records);
        keep_valid(&mut self.devices);
        keep_valid(&mut self.tracked_users);
        keep_valid(&mut self.megolm_indices);
        keep_valid(&mut self.withheld_notices);
        keep_valid(&mut self.key_requests);
        keep_valid(&mut self.pending_to_device);
        keep_valid(&mut self.user_identities);
        keep_valid(&mut self.sender_data);
        self.sent_to_device.retain(|t| !t.is_empty());
        self.consumed_to_device.retain(|d| !d.is_empty());
        before - self.len()
    }

    /// Number of records (the global sharing policy counts as one).
    fn len(&self) -> usize {
        usize::from(self.account.is_some())
            + self.olm_sessions.len()
            + self.inbound_group_sessions.len()
            + self.outbound_group_sessions.len()
            + self.discarded_outbound_sessions.len()
            + self.no_olm_room_keys.len()
            + self.unwedge_records.len()
            + self.devices.len()
            + self.tracked_users.len()
            + self.megolm_indices.len()
            + self.pending_to_device.len()
            + self.sent_to_device.len()
            + self.withheld_notices.len()
            + self.key_requests.len()
            + usize::from(self.sharing_policy.is_some())
            + self.room_sharing_policies.len()
            + self.user_identities.len()
            + self.sender_data.len()
            + usize::from(self.cross_signing_keys.is_some())
            + self.consumed_to_device.len()
            + self.forgotten_to_device.len()
            + self.deferred_to_device.len()
            + usize::from(self.take_deferred_to_device)
            + usize::from(self.backup_reset)
            + self.backed_up_sessions.len()
    }

    fn extend(&mut self, other: CryptoChanges) {
        if other.account.is_some() {
            self.account = other.account;
        }
        self.olm_sessions.extend(other.olm_sessions);
        self.inbound_group_sessions
            .extend(other.inbound_group_sessions);
        self.outbound_group_sessions
            .extend(other.outbound_group_sessions);
        self.discarded_outbound_sessions
            .extend(other.discarded_outbound_sessions);
        self.no_olm_room_keys.extend(other.no_olm_room_keys);
        self.unwedge_records.extend(other.unwedge_records);
        self.devices.extend(other.devices);
        self.tracked_users.extend(other.tracked_users);
        self.megolm_indices.extend(other.megolm_indices);
        self.pending_to_device.extend(other.pending_to_device);
        self.sent_to_device.extend(other.sent_to_device);
        self.withheld_notices.extend(other.withheld_notices);
        self.key_requests.extend(other.key_requests);
        if other.sharing_policy.is_some() {
            self.sharing_policy = other.sharing_policy;
        }
        self.room_sharing_policies
            .extend(other.room_sharing_policies);
        self.user_identities.extend(other.user_identities);
        self.sender_data.extend(other.sender_data);
        if other.cross_signing_keys.is_some() {
            self.cross_signing_keys = other.cross_signing_keys;
        }
        self.consumed_to_device.extend(other.consumed_to_device);
        self.forgotten_to_device.extend(other.forgotten_to_device);
        self.deferred_to_device.extend(other.deferred_to_device);
        self.take_deferred_to_device |= other.take_deferred_to_device;
        self.backup_reset |= other.backup_reset;
        self.backed_up_sessions.extend(other.backed_up_sessions);
    }
}

impl ClientChanges {
    fn validate(&self) -> Result<(), StoreError> {
        all(&self.rooms)?;
        all(&self.members)?;
        all(&self.queued_sends)?;
        all(&self.advanced_sends)?;
        all(&self.undecryptable_events)?;
        for txn_id in &self.finished_sends {
            non_empty("finished send txn_id", txn_id)?;
        }
        for (txn_id, _) in &self.sent_events {
            non_empty("sent event txn_id", txn_id)?;
        }
        for key in self.values.keys().chain(self.secret_values.keys()) {
            non_empty("value key", key)?;
            if super::is_reserved_key(key) {
                // The machine's setting, written through `CryptoChanges` only.
                return Err(StoreError::InvalidRecord(format!(
                    "value key {key} is reserved"
                )));
            }
        }
        Ok(())
    }

    fn drop_invalid(&mut self) -> usize {
        let before = self.len();
        keep_valid(&mut self.rooms);
        keep_valid(&mut self.members);
        keep_valid(&mut self.queued_sends);
        keep_valid(&mut self.advanced_sends);
        self.finished_sends.retain(|t| !t.is_empty());
        self.sent_events.retain(|(t, _)| !t.is_empty());
        keep_valid(&mut self.undecryptable_events);
        let allowed = |k: &String| !k.is_empty() && !super::is_reserved_key(k);
        self.values.retain(|k, _| allowed(k));
        self.secret_values.retain(|k, _| allowed(k));
        before - self.len()
    }

    fn len(&self) -> usize {
        self.rooms.len()
            + self.members.len()
            + self.replaced_member_lists.len()
            + self.queued_sends.len()
            + self.advanced_sends.len()
            + self.finished_sends.len()
            + self.sent_events.len()
            + self.undecryptable_events.len()
            + self.resolved_events.len()
            + self.values.len()
            + self.secret_values.len()
    }

    fn extend(&mut self, other: ClientChanges) {
        self.rooms.extend(other.rooms);
        self.members.extend(other.members);
        self.replaced_member_lists
            .extend(other.replaced_member_lists);
        self.queued_sends.extend(other.queued_sends);
        self.advanced_sends.extend(other.advanced_sends);
        self.finished_sends.extend(other.finished_sends);
        self.sent_events.extend(other.sent_events);
        self.undecryptable_events.extend(other.undecryptable_events);
        self.resolved_events.extend(other.resolved_events);
        self.values.extend(other.values);
        self.secret_values.extend(other.secret_values);
    }
}

/// Typed ids (user, room, event) are never empty; device ids, session ids, keys and
/// transaction ids can be.
fn non_empty(what: &str, value: &(impl AsRef<str> + ?Sized)) -> Result<(), StoreError> {
    if value.as_ref().is_empty() {
        Err(StoreError::InvalidRecord(format!("{what} is empty")))
    } else {
        Ok(())
    }
}

/// What both stores refuse in a record (an empty identifier).
trait Check {
    fn check(&self) -> Result<(), StoreError>;
}

fn all<T: Check>(records: &[T]) -> Result<(), StoreError> {
    records.iter().try_for_each(Check::check)
}

fn keep_valid<T: Check>(records: &mut Vec<T>) {
    records.retain(|r| r.check().is_ok());
}

/// `Check` for a record: every named field must be non-empty.
macro_rules! non_empty_fields {
    ($type:ty, $what:literal: $($field:ident),*) => {
        impl Check for $type {
            fn check(&self) -> Result<(), StoreError> {
                $(non_empty(concat!($what, " ", stringify!($field)), &self.$field)?;)*
                Ok(())
            }
        }
    };
}

non_empty_fields!(AccountRecord, "account": device_id);
non_empty_fields!(OlmSessionRecord, "olm session": sender_key, session_id);
impl Check for InboundGroupSessionRecord {
    fn check(&self) -> Result<(), StoreError> {
        non_empty("inbound group session session_id", &self.session_id)?;
        non_empty("inbound group session sender_key", &self.sender_key)?;
        match &self.sender_device {
            Some(device) => non_empty("inbound group session sender_device", device),
            None => Ok(()),
        }
    }
}
non_empty_fields!(OutboundGroupSessionRecord, "outbound group session": session_id);
non_empty_fields!(NoOlmRoomKey, "no_olm room key": session_id);
non_empty_fields!(UnwedgeRecord, "unwedge record": curve25519);
non_empty_fields!(DeviceRecord, "device": device_id);
non_empty_fields!(TrackedUser, "tracked user":);
non_empty_fields!(MegolmIndexRecord, "megolm index": session_id, sender_key);
non_empty_fields!(RoomRecord, "room":);
non_empty_fields!(MemberRecord, "member":);
non_empty_fields!(WithheldNotice, "withheld notice": session_id);
non_empty_fields!(KeyRequestRecord, "key request": session_id);
non_empty_fields!(PendingToDevice, "pending to-device": txn_id);
non_empty_fields!(QueuedSend, "queued send": txn_id, event_type);
non_empty_fields!(UndecryptableEvent, "undecryptable event": session_id);
non_empty_fields!(UserIdentityRecord, "user identity": master_key, self_signing_key);
non_empty_fields!(SenderDataUpdate, "sender data": session_id);
