//! Persistence for everything the crypto machine and the client must not lose.
//!
//! One trait, [`Store`], with two implementations: [`SqliteStore`] (the real one, WAL mode,
//! secrets encrypted at rest with a key the app provides) and [`MemoryStore`] (tests and
//! benchmarks). Both pass the same conformance suite (`store::conformance`).
//!
//! Writes are batched: callers collect everything one step produced (a sync response, a
//! `/keys/query` answer, a room-key share) into a [`Changes`] value and hand it to
//! [`Store::save_changes`], which applies it atomically (one SQLite transaction).
//!
//! Several processes may open the same store (the app and a push-notification extension).
//! Every committed [`Changes`] bumps a generation counter kept in the store itself;
//! [`Store::generation`] lets a process notice that somebody else wrote and reload what it
//! caches in memory.

mod changes;
mod cipher;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod conformance;
mod lease;
mod memory;
pub mod quota;
mod records;
mod sqlite;
mod trust_records;

use std::collections::HashMap;

use ruma::{OwnedEventId, OwnedRoomId, RoomId, UserId};

pub use changes::{Changes, ClientChanges, CryptoChanges};
pub use cipher::StoreKey;
pub(crate) use lease::LeaseRow;
pub use lease::{LeaseAttempt, LeaseFence};
pub use memory::MemoryStore;
pub use records::{
    AccountRecord, DeviceRecord, InboundGroupSessionRecord, KeyRequestRecord, LocalTrust,
    MegolmIndexRecord, MemberRecord, NoOlmRoomKey, OlmSessionRecord, OutboundGroupSessionRecord,
    PendingToDevice, QueuedSend, RoomEncryption, RoomRecord, SecretBlob, SendStage, ShareRecipient,
    StoreCounts, StuckReason, TrackedUser, TrackingState, UndecryptableEvent, UnwedgeRecord,
    WithheldNotice,
};
pub(crate) use sqlite::VERIFIED_ONLY_KEY;
pub use sqlite::{NOTIFICATION_WAL_PAGES, SqliteStore};
pub use trust_records::{
    SenderData, SenderDataRetry, SenderDataUpdate, SenderTrust, SessionSender, SharingPolicy,
    UserIdentityRecord,
};

/// Key of the own cross-signing private keys among the secret values (written through
/// [`CryptoChanges::cross_signing_keys`] only).
pub(crate) const CROSS_SIGNING_KEY: &str = "crypto|cross_signing_keys";

/// Prefix of the keys of rooms' own sharing policies among the secret values (the room id
/// follows; written through [`CryptoChanges::room_sharing_policies`] only).
pub(crate) const ROOM_SHARING_PREFIX: &str = "crypto|sharing_policy|";

/// Secret value keys only the crypto machine writes: refused in [`ClientChanges`].
pub(crate) fn is_reserved_key(key: &str) -> bool {
    key == VERIFIED_ONLY_KEY || key == CROSS_SIGNING_KEY || key.starts_with(ROOM_SHARING_PREFIX)
}

/// The secret value key of a room's own sharing policy.
pub(crate) fn room_sharing_key(room_id: &RoomId) -> String {
    format!("{ROOM_SHARING_PREFIX}{room_id}")
}

/// A sharing policy as both stores keep it: a secret value holding its name. The global
/// one lives under [`VERIFIED_ONLY_KEY`] (which once held `true` or `false`).
pub(crate) fn sharing_policy_value(policy: SharingPolicy) -> SecretBlob {
    SecretBlob::new(policy.as_str().as_bytes().to_vec())
}

/// [`sharing_policy_value`] read back (`None` if absent or unknown).
pub(crate) fn sharing_policy_of(value: Option<&SecretBlob>) -> Option<SharingPolicy> {
    value
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(SharingPolicy::parse)
}

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store key does not open this store. Nothing was changed.
    #[error("the store key does not match the key this store was created with")]
    WrongKey,
    /// A value read from the store could not be decrypted or authenticated.
    #[error("a stored value failed authentication (corrupted or tampered store): {0}")]
    Corrupted(String),
    /// A stored value could not be decoded.
    #[error("a stored value could not be decoded: {0}")]
    Decode(String),
    /// The schema version in the file is newer than this build understands.
    #[error("the store schema version is {found}, this build supports up to {supported}")]
    UnsupportedSchema {
        /// version found in the database
        found: i64,
        /// newest version this build knows
        supported: i64,
    },
    /// The underlying database failed.
    #[error("database error: {0}")]
    Database(String),
    /// Filesystem error while opening the store.
    #[error("i/o error: {0}")]
    Io(String),
    /// A record handed to [`Store::save_changes`] is invalid (e.g. an empty id). Nothing
    /// was saved.
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// The write was made under a lease on the crypto state that another process took
    /// since (this one was paused past its expiry). Nothing was saved; reload and retry.
    #[error("the lease on the crypto state passed to another process")]
    LeaseLost,
    /// A queued message to move on is no longer in the send queue (sent or cancelled
    /// meanwhile). Nothing was changed.
    #[error("message {0} is no longer queued")]
    NotQueued(String),
    /// Another process held the lease on the crypto state for longer than we wait.
    #[error("another process holds the crypto state")]
    LeaseBusy,
}

/// The one storage interface of Newt: what the crypto machine reads ([`CryptoStore`]),
/// what the client reads ([`ClientStore`]), and one atomic commit of both halves of a
/// [`Changes`]. Implementations must be safe to share between threads.
///
/// Reads take batches where a caller needs many rows (devices of many users, sessions of
/// many devices) so that a SQLite implementation answers with one query, not one per row.
pub trait Store: CryptoStore + ClientStore + 'static {
    /// Apply all changes atomically; on error nothing is applied. The [`quota`] limits are
    /// enforced in the same transaction (oldest records first). Returns the [`generation`]
    /// this commit wrote (the current one if `changes` is empty), so that a writer knows it
    /// is up to date without reading it back.
    ///
    /// [`generation`]: Store::generation
    fn save_changes(&self, changes: Changes) -> Result<u64, StoreError>;

    /// A counter bumped by every committed `save_changes`, by any process.
    fn generation(&self) -> Result<u64, StoreError>;

    /// How many records of each bounded kind are kept.
    fn counts(&self) -> Result<StoreCounts, StoreError>;

    /// Take the lease on the crypto state for `holder` until `until_ms` (or keep it, with
    /// the same token), unless another holder has it and it has not expired at `now_ms`.
    /// Does not wait. See [`LeaseFence`] for the writes made under it.
    fn acquire_lease(
        &self,
        holder: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<LeaseAttempt, StoreError>;

    /// Give the lease back, if `holder` has it.
    fn release_lease(&self, holder: &str) -> Result<(), StoreError>;
}

/// What the crypto machine reads: its account and sessions, devices and their tracking,
/// replay records, its pending to-device messages, notices and requests, and the two
/// membership questions it must answer about others (is this sender a member, which
/// encrypted rooms do these users share with us).
pub trait CryptoStore: Send + Sync {
    /// The own account, if one was created.
    fn account(&self) -> Result<Option<AccountRecord>, StoreError>;

    /// All Olm sessions with the devices owning these Curve25519 keys, grouped by key.
    fn olm_sessions(
        &self,
        sender_keys: &[&str],
    ) -> Result<HashMap<String, Vec<OlmSessionRecord>>, StoreError>;

    /// One inbound group session.
    fn inbound_group_session(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Option<InboundGroupSessionRecord>, StoreError>;

    /// Number of inbound group sessions stored (for tests and diagnostics).
    fn inbound_group_session_count(&self) -> Result<u64, StoreError>;

    /// Number of inbound group sessions of one room.
    fn room_inbound_group_session_count(&self, room_id: &RoomId) -> Result<u64, StoreError>;

    /// At most `limit` inbound group sessions not in the server-side backup yet, in (room
    /// id, session id) order.
    fn inbound_group_sessions_to_back_up(
        &self,
        limit: u32,
    ) -> Result<Vec<InboundGroupSessionRecord>, StoreError>;

    /// Number of inbound group sessions not in the server-side backup yet.
    fn inbound_group_sessions_to_back_up_count(&self) -> Result<u64, StoreError>;

    /// At most `limit` inbound group sessions in (room id, session id) order, after `after`
    /// (exclusive), only of `room` if given: one page of a key export.
    fn inbound_group_sessions_page(
        &self,
        room: Option<&RoomId>,
        after: Option<(&RoomId, &str)>,
        limit: u32,
    ) -> Result<Vec<InboundGroupSessionRecord>, StoreError>;

    /// The outbound group session of a room.
    fn outbound_group_session(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<OutboundGroupSessionRecord>, StoreError>;

    /// All known devices of these users (deleted ones included), in one batch.
    fn devices(&self, user_ids: &[&UserId]) -> Result<Vec<DeviceRecord>, StoreError>;

    /// The device of `user_id` with this Curve25519 identity key, if known.
    fn device_by_curve25519(
        &self,
        user_id: &UserId,
        curve25519: &str,
    ) -> Result<Option<DeviceRecord>, StoreError>;

    /// Every device (of any user, deleted ones included) with one of these Curve25519
    /// identity keys, sorted by user and device id.
    fn devices_with_curve25519(&self, keys: &[&str]) -> Result<Vec<DeviceRecord>, StoreError>;

    /// All tracked users.
    fn tracked_users(&self) -> Result<Vec<TrackedUser>, StoreError>;

    /// The record of a Megolm index already decrypted.
    fn megolm_index(
        &self,
        sender_key: &str,
        session_id: &str,
        index: u32,
    ) -> Result<Option<MegolmIndexRecord>, StoreError>;

    /// One member record.
    fn member(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<MemberRecord>, StoreError>;

    /// The encrypted rooms in which any of these users is joined or invited, sorted by room
    /// id; answered from an index, without loading member lists.
    fn encrypted_rooms_with(&self, user_ids: &[&UserId]) -> Result<Vec<OwnedRoomId>, StoreError>;

    /// To-device requests not yet confirmed as sent, oldest first.
    fn pending_to_device(&self) -> Result<Vec<PendingToDevice>, StoreError>;

    /// Which of `digests` a notification extension recorded as consumed.
    fn consumed_to_device(&self, digests: &[&str]) -> Result<Vec<String>, StoreError>;

    /// To-device events a notification extension left for the app, oldest first.
    fn deferred_to_device(&self) -> Result<Vec<String>, StoreError>;

    /// The withheld notice `sender` sent for one session.
    fn withheld_notice(
        &self,
        room_id: &RoomId,
        session_id: &str,
        sender: &UserId,
    ) -> Result<Option<WithheldNotice>, StoreError>;

    /// The key request sent for one session, if any.
    fn key_request(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Option<KeyRequestRecord>, StoreError>;

    /// The session key kept at `index` of a room's outbound session for the devices that
    /// were sent `m.no_olm` there.
    fn no_olm_room_key(
        &self,
        room_id: &RoomId,
        session_id: &str,
        index: u32,
    ) -> Result<Option<NoOlmRoomKey>, StoreError>;

    /// When the Olm session with the device owning `curve25519` was last unwedged.
    fn unwedge_record(&self, curve25519: &str) -> Result<Option<UnwedgeRecord>, StoreError>;

    /// The global sharing policy ([`SharingPolicy::AllButBlacklisted`] until set).
    fn sharing_policy(&self) -> Result<SharingPolicy, StoreError>;

    /// A room's own sharing policy, if it has one.
    fn room_sharing_policy(&self, room_id: &RoomId) -> Result<Option<SharingPolicy>, StoreError>;

    /// The cross-signing identities of these users that we know, sorted by user id.
    fn user_identities(&self, user_ids: &[&UserId]) -> Result<Vec<UserIdentityRecord>, StoreError>;

    /// The own cross-signing private keys, if this device has them.
    fn cross_signing_keys(&self) -> Result<Option<SecretBlob>, StoreError>;

    /// The stored sessions of these senders whose sender data may still improve
    /// ([`SenderTrust::may_improve`]), without their ratchets, sorted by room and session.
    fn sessions_to_reevaluate(&self, senders: &[&UserId])
    -> Result<Vec<SessionSender>, StoreError>;

    /// Sessions whose sender-data retry is due at `now_ms`, oldest schedule first, at most
    /// `limit`.
    fn sender_data_retries_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<SessionSender>, StoreError>;

    /// When the earliest sender-data retry is scheduled, if any.
    fn next_sender_data_retry(&self) -> Result<Option<u64>, StoreError>;
}

/// What the client reads: rooms and members, events kept for late keys, the send queue,
/// small values and the sync token.
pub trait ClientStore: Send + Sync {
    /// One room.
    fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>, StoreError>;

    /// All rooms.
    fn rooms(&self) -> Result<Vec<RoomRecord>, StoreError>;

    /// All member records of a room.
    fn members(&self, room_id: &RoomId) -> Result<Vec<MemberRecord>, StoreError>;

    /// The undecryptable events waiting for the key of one Megolm session, in the order
    /// they were first stored.
    fn undecryptable_events(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Vec<UndecryptableEvent>, StoreError>;

    /// The send queue, oldest first.
    fn queued_sends(&self) -> Result<Vec<QueuedSend>, StoreError>;

    /// The event id of a message sent from the queue with `txn_id`, if it is among the
    /// newest [`quota::MAX_SENT_EVENTS`] sent.
    fn sent_event(&self, txn_id: &str) -> Result<Option<OwnedEventId>, StoreError>;

    /// The distinct `(room id, session id)` pairs undecryptable events wait for, sorted.
    fn undecryptable_sessions(&self) -> Result<Vec<(OwnedRoomId, String)>, StoreError>;

    /// The distinct `(room id, session id)` pairs undecryptable events wait for that no
    /// inbound session is stored for (no key at all, not a later index), sorted.
    fn undecryptable_sessions_without_key(&self) -> Result<Vec<(OwnedRoomId, String)>, StoreError>;

    /// Number of undecryptable events kept (to bound them).
    fn undecryptable_event_count(&self) -> Result<u64, StoreError>;

    /// A plain value.
    fn value(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// A secret value.
    fn secret_value(&self, key: &str) -> Result<Option<SecretBlob>, StoreError>;

    /// The last fully processed sync token.
    fn sync_token(&self) -> Result<Option<String>, StoreError>;
}
