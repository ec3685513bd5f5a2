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
mod memory;
pub mod quota;
mod sqlite;

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use changes::Changes;
pub use cipher::StoreKey;
pub use memory::MemoryStore;
pub use sqlite::SqliteStore;
pub(crate) use sqlite::VERIFIED_ONLY_KEY;

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
}

/// A serialized secret (a vodozemac pickle as JSON). Wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBlob(pub Zeroizing<Vec<u8>>);

impl SecretBlob {
    /// Wrap bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBlob(<redacted>)")
    }
}

/// The own Olm account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRecord {
    /// Own user id.
    pub user_id: String,
    /// Own device id.
    pub device_id: String,
    /// Pickled `vodozemac::olm::Account`, including not yet published one-time keys.
    pub pickle: SecretBlob,
    /// Whether the device keys were accepted by the server.
    pub device_keys_uploaded: bool,
    /// Number of published, unused one-time keys the server last reported.
    pub server_one_time_key_count: u64,
    /// Unix millis when the current fallback key was created (for rotation).
    pub fallback_key_created_ms: u64,
}

/// One Olm session with one other device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OlmSessionRecord {
    /// The other device's Curve25519 identity key (base64).
    pub sender_key: String,
    /// vodozemac session id.
    pub session_id: String,
    /// Pickled `vodozemac::olm::Session`.
    pub pickle: SecretBlob,
    /// Unix millis of creation.
    pub created_ms: u64,
    /// Unix millis of the last successful encrypt or decrypt.
    pub last_used_ms: u64,
}

/// An inbound Megolm session: lets us decrypt one sender's messages in one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundGroupSessionRecord {
    /// Room the session belongs to.
    pub room_id: String,
    /// Megolm session id.
    pub session_id: String,
    /// Curve25519 key of the device that sent us the session over Olm.
    pub sender_key: String,
    /// Ed25519 key the sending device claimed (checked against its device keys).
    pub signing_key: String,
    /// User id of the sender, as authenticated by the Olm channel; `None` when the session
    /// came from a forwarded key whose original device we did not know (the sender is then
    /// resolved from the device list at decryption, or the event is refused).
    pub sender_user: Option<String>,
    /// Device id of the sender, as authenticated by the Olm channel; `None` if unknown.
    pub sender_device: Option<String>,
    /// Pickled `vodozemac::megolm::InboundGroupSession`.
    pub pickle: SecretBlob,
    /// First message index the session can decrypt.
    pub first_known_index: u32,
}

/// Who received an outbound session, at which index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRecipient {
    /// Recipient user.
    pub user_id: String,
    /// Recipient device.
    pub device_id: String,
    /// Recipient's Curve25519 identity key at the time of sharing.
    pub curve25519: String,
    /// Message index the recipient got the session at.
    pub index: u32,
    /// Set when the device was deliberately not given the key: the `m.room_key.withheld`
    /// code it was sent instead (e.g. `m.no_olm`, `m.blacklisted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
}

/// Our outbound Megolm session for one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundGroupSessionRecord {
    /// Room.
    pub room_id: String,
    /// Megolm session id.
    pub session_id: String,
    /// Pickled `vodozemac::megolm::GroupSession`.
    pub pickle: SecretBlob,
    /// Unix millis of creation.
    pub created_ms: u64,
    /// Messages encrypted with it so far.
    pub message_count: u64,
    /// Devices that were sent the session key (the recipient journal).
    pub shared_with: Vec<ShareRecipient>,
}

/// The local, user-controlled trust of a device.
///
/// Deliberately exhaustive (unlike the other public enums): a new decision must be mapped
/// by every layer that shows or stores it (the bindings' `DeviceTrust`), never defaulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LocalTrust {
    /// No decision yet.
    #[default]
    Unset,
    /// Verified by the user.
    Verified,
    /// Never share keys with it.
    Blacklisted,
    /// The user chose not to be asked about it again.
    Ignored,
}

impl LocalTrust {
    /// Stable string for storage.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalTrust::Unset => "unset",
            LocalTrust::Verified => "verified",
            LocalTrust::Blacklisted => "blacklisted",
            LocalTrust::Ignored => "ignored",
        }
    }
    /// Parse [`LocalTrust::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "unset" => LocalTrust::Unset,
            "verified" => LocalTrust::Verified,
            "blacklisted" => LocalTrust::Blacklisted,
            "ignored" => LocalTrust::Ignored,
            _ => return None,
        })
    }
}

/// A device of some user whose keys were downloaded and verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Owner.
    pub user_id: String,
    /// Device id.
    pub device_id: String,
    /// Curve25519 identity key (base64).
    pub curve25519: String,
    /// Ed25519 fingerprint key (base64).
    pub ed25519: String,
    /// Algorithms the device supports.
    pub algorithms: Vec<String>,
    /// Display name the owner gave it, if any (unsigned).
    pub display_name: Option<String>,
    /// The signed device keys exactly as received (canonical JSON), for re-verification.
    pub keys_json: String,
    /// The user's decision about this device.
    pub local_trust: LocalTrust,
    /// The device disappeared from the owner's list (kept, so old messages still resolve).
    pub deleted: bool,
}

/// Where our copy of one user's device list stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TrackingState {
    /// We share no encrypted room with the user any more: the devices (and the user's
    /// decisions about them) are kept, but no longer updated.
    NotTracked,
    /// The list is stale or was never downloaded and must be queried.
    #[default]
    PendingDownload,
    /// A query is in flight. After a restart this counts as pending: the answer was lost.
    Downloading,
    /// The list is current as far as sync told us.
    UpToDate,
}

impl TrackingState {
    /// Stable string for storage.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackingState::NotTracked => "not_tracked",
            TrackingState::PendingDownload => "pending",
            TrackingState::Downloading => "downloading",
            TrackingState::UpToDate => "up_to_date",
        }
    }

    /// Parse [`TrackingState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "not_tracked" => TrackingState::NotTracked,
            "pending" => TrackingState::PendingDownload,
            "downloading" => TrackingState::Downloading,
            "up_to_date" => TrackingState::UpToDate,
            _ => return None,
        })
    }
}

/// Device-list tracking state of one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedUser {
    /// The user.
    pub user_id: String,
    /// Where our copy of the user's device list stands.
    pub state: TrackingState,
    /// Bumped on every invalidation, so an invalidation during an in-flight query is kept.
    pub sequence: u64,
}

impl TrackedUser {
    /// Whether the devices must be (re)downloaded before encrypting for the user.
    pub fn needs_download(&self) -> bool {
        matches!(
            self.state,
            TrackingState::PendingDownload | TrackingState::Downloading
        )
    }

    /// Whether the user is tracked at all.
    pub fn is_tracked(&self) -> bool {
        self.state != TrackingState::NotTracked
    }
}

/// The encryption-relevant state of one room.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RoomRecord {
    /// Room id.
    pub room_id: String,
    /// Content of the room's `m.room.encryption` state event, if encrypted.
    pub encryption: Option<String>,
    /// `m.room.history_visibility` (`shared` when unset).
    pub history_visibility: Option<String>,
    /// Whether the full member list was loaded (`/members`) since joining.
    pub members_synced: bool,
    /// Own membership (`join`, `invite`, `leave`).
    pub own_membership: Option<String>,
}

/// One member of one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    /// Room.
    pub room_id: String,
    /// Member.
    pub user_id: String,
    /// `join`, `invite`, `leave`, `ban` or `knock`.
    pub membership: String,
}

/// A decrypted Megolm message index, for replay detection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MegolmIndexRecord {
    /// Megolm session id.
    pub session_id: String,
    /// Sender key of the session.
    pub sender_key: String,
    /// Message index.
    pub index: u32,
    /// Event that used this index first.
    pub event_id: String,
    /// Its `origin_server_ts`.
    pub origin_ts: u64,
}

/// A to-device request we must (re)send with the same transaction id after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingToDevice {
    /// Transaction id, reused on every retry.
    pub txn_id: String,
    /// Event type, e.g. `m.room.encrypted`.
    pub event_type: String,
    /// `messages` body of `PUT /sendToDevice` as JSON (Olm ciphertexts only, no plaintext).
    pub messages_json: String,
    /// For a room-key share: the room and Megolm session whose key it carries, so that the
    /// recipients of a request the server refuses for good get the key again.
    pub room_key: Option<(String, String)>,
}

/// A room event that could not be decrypted yet, kept to be decrypted when the key of its
/// Megolm session arrives (late keys), also across restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UndecryptableEvent {
    /// Room.
    pub room_id: String,
    /// Megolm session id the event needs.
    pub session_id: String,
    /// Event id (one record per event).
    pub event_id: String,
    /// The `m.room.encrypted` event as received (ciphertext, no plaintext).
    pub event_json: String,
}

/// An `m.room_key.withheld` notice: why a session's sender did not give us its key. Shown
/// only on events of that sender (it is sent in clear and proves nothing else).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithheldNotice {
    /// Room.
    pub room_id: String,
    /// Megolm session id.
    pub session_id: String,
    /// User who sent the notice (a member of the room when it was accepted).
    pub sender: String,
    /// Curve25519 key of the sending device as named in the notice (empty for notices kept
    /// by an earlier version).
    pub sender_key: String,
    /// `code`, e.g. `m.unverified`, `m.blacklisted`, `m.no_olm`.
    pub code: String,
    /// Human-readable `reason`, if given.
    pub reason: Option<String>,
}

/// A room-key request we sent for one session (at most one per session).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRequestRecord {
    /// Room.
    pub room_id: String,
    /// Megolm session id.
    pub session_id: String,
    /// `request_id` of the `m.room_key_request`.
    pub request_id: String,
}

/// The session key of our outbound Megolm session at one index, kept for the devices that
/// were sent `m.no_olm` there instead of the key: when they get an Olm session, they get
/// the key from that index, so the messages they missed decrypt too. Secret (encrypted at
/// rest). Dropped when the room's outbound session is replaced or discarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoOlmRoomKey {
    /// Room.
    pub room_id: String,
    /// Megolm session id of our outbound session.
    pub session_id: String,
    /// Message index the key starts at.
    pub index: u32,
    /// The exported session key at `index` (base64, as in `m.room_key`).
    pub session_key: SecretBlob,
}

/// When we last replaced a wedged Olm session with a device (or tried to): at most one
/// unwedging per device per hour. Bounded (see [`quota::MAX_UNWEDGE_RECORDS`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnwedgeRecord {
    /// The device's Curve25519 identity key (base64).
    pub curve25519: String,
    /// Unix millis of the last unwedging.
    pub unwedged_ms: u64,
}

/// How many records of the kinds other users can make us store are kept (see
/// [`quota`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Olm sessions in all.
    pub olm_sessions: u64,
    /// Olm sessions with keys of no (live) device we know.
    pub olm_sessions_of_unknown_devices: u64,
    /// Inbound group sessions in all.
    pub inbound_group_sessions: u64,
    /// Inbound group sessions whose sender is not a member of the room as far as we know.
    pub inbound_sessions_from_non_members: u64,
    /// Rooms we are invited to and were never in (no encryption setting kept).
    pub invites: u64,
    /// Withheld notices.
    pub withheld_notices: u64,
    /// Key requests remembered.
    pub key_requests: u64,
    /// Undecryptable events kept.
    pub undecryptable_events: u64,
    /// Unwedge records kept.
    pub unwedge_records: u64,
    /// Room keys kept for devices sent `m.no_olm` (ours, bounded by our outbound sessions).
    pub no_olm_room_keys: u64,
}

/// A message the app sent that has not reached the server yet (the send queue). Its content
/// is plaintext and encrypted at rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedSend {
    /// Transaction id, reused on every attempt so the server stores the message once.
    pub txn_id: String,
    /// Room.
    pub room_id: String,
    /// `m.room.message` content as JSON (secret: encrypted at rest).
    pub content: SecretBlob,
}

/// The one storage interface of Newt. Implementations must be safe to share between threads.
///
/// Reads take batches where a caller needs many rows (devices of many users, sessions of
/// many devices) so that a SQLite implementation answers with one query, not one per row.
pub trait Store: Send + Sync + 'static {
    /// Apply all changes atomically; on error nothing is applied. The [`quota`] limits are
    /// enforced in the same transaction (oldest records first). Returns the [`generation`]
    /// this commit wrote (the current one if `changes` is empty), so that a writer knows it
    /// is up to date without reading it back.
    ///
    /// [`generation`]: Store::generation
    fn save_changes(&self, changes: Changes) -> Result<u64, StoreError>;

    /// A counter bumped by every committed `save_changes`, by any process.
    fn generation(&self) -> Result<u64, StoreError>;

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
        room_id: &str,
        session_id: &str,
    ) -> Result<Option<InboundGroupSessionRecord>, StoreError>;

    /// Number of inbound group sessions stored (for tests and diagnostics).
    fn inbound_group_session_count(&self) -> Result<u64, StoreError>;

    /// The outbound group session of a room.
    fn outbound_group_session(
        &self,
        room_id: &str,
    ) -> Result<Option<OutboundGroupSessionRecord>, StoreError>;

    /// All known devices of these users (deleted ones included), in one batch.
    fn devices(&self, user_ids: &[&str]) -> Result<Vec<DeviceRecord>, StoreError>;

    /// The device of `user_id` with this Curve25519 identity key, if known.
    fn device_by_curve25519(
        &self,
        user_id: &str,
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

    /// One room.
    fn room(&self, room_id: &str) -> Result<Option<RoomRecord>, StoreError>;

    /// All rooms.
    fn rooms(&self) -> Result<Vec<RoomRecord>, StoreError>;

    /// All member records of a room.
    fn members(&self, room_id: &str) -> Result<Vec<MemberRecord>, StoreError>;

    /// One member record.
    fn member(&self, room_id: &str, user_id: &str) -> Result<Option<MemberRecord>, StoreError>;

    /// The encrypted rooms in which any of these users is joined or invited, sorted by room
    /// id; answered from an index, without loading member lists.
    fn encrypted_rooms_with(&self, user_ids: &[&str]) -> Result<Vec<String>, StoreError>;

    /// The undecryptable events waiting for the key of one Megolm session, in the order
    /// they were first stored.
    fn undecryptable_events(
        &self,
        room_id: &str,
        session_id: &str,
    ) -> Result<Vec<UndecryptableEvent>, StoreError>;

    /// The send queue, oldest first.
    fn queued_sends(&self) -> Result<Vec<QueuedSend>, StoreError>;

    /// The distinct `(room id, session id)` pairs undecryptable events wait for, sorted.
    fn undecryptable_sessions(&self) -> Result<Vec<(String, String)>, StoreError>;

    /// Number of undecryptable events kept (to bound them).
    fn undecryptable_event_count(&self) -> Result<u64, StoreError>;

    /// To-device requests not yet confirmed as sent, oldest first.
    fn pending_to_device(&self) -> Result<Vec<PendingToDevice>, StoreError>;

    /// The withheld notice `sender` sent for one session.
    fn withheld_notice(
        &self,
        room_id: &str,
        session_id: &str,
        sender: &str,
    ) -> Result<Option<WithheldNotice>, StoreError>;

    /// The key request sent for one session, if any.
    fn key_request(
        &self,
        room_id: &str,
        session_id: &str,
    ) -> Result<Option<KeyRequestRecord>, StoreError>;

    /// The session key kept at `index` of a room's outbound session for the devices that
    /// were sent `m.no_olm` there.
    fn no_olm_room_key(
        &self,
        room_id: &str,
        session_id: &str,
        index: u32,
    ) -> Result<Option<NoOlmRoomKey>, StoreError>;

    /// When the Olm session with the device owning `curve25519` was last unwedged.
    fn unwedge_record(&self, curve25519: &str) -> Result<Option<UnwedgeRecord>, StoreError>;

    /// How many records of each bounded kind are kept.
    fn counts(&self) -> Result<StoreCounts, StoreError>;

    /// A plain value.
    fn value(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// A secret value.
    fn secret_value(&self, key: &str) -> Result<Option<SecretBlob>, StoreError>;

    /// The last fully processed sync token.
    fn sync_token(&self) -> Result<Option<String>, StoreError>;
}
