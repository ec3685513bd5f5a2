//! The records the store keeps, one type per kind of row. Ids are ruma types: a record
//! cannot name an invalid user, room or event, and the SQLite store refuses a row whose ids
//! do not parse (`StoreError::Decode`).

use std::fmt;

use ruma::events::ToDeviceEventType;
use ruma::events::room::history_visibility::HistoryVisibility;
use ruma::events::room::member::MembershipState;
use ruma::events::room_key::withheld::RoomKeyWithheldCode;
use ruma::{EventEncryptionAlgorithm, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::SenderData;

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
    pub user_id: OwnedUserId,
    /// Own device id.
    pub device_id: OwnedDeviceId,
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
    pub room_id: OwnedRoomId,
    /// Megolm session id.
    pub session_id: String,
    /// Curve25519 key of the device that sent us the session over Olm.
    pub sender_key: String,
    /// Ed25519 key the sending device claimed (checked against its device keys).
    pub signing_key: String,
    /// User id of the sender, as authenticated by the Olm channel; `None` when the session
    /// came from a forwarded key whose original device we did not know (the sender is then
    /// resolved from the device list at decryption, or the event is refused).
    pub sender_user: Option<OwnedUserId>,
    /// Device id of the sender, as authenticated by the Olm channel; `None` if unknown.
    pub sender_device: Option<OwnedDeviceId>,
    /// Pickled `vodozemac::megolm::InboundGroupSession`.
    pub pickle: SecretBlob,
    /// First message index the session can decrypt.
    pub first_known_index: u32,
    /// Who sent it and how far they were trusted when it arrived (improved later).
    pub sender_data: SenderData,
    /// Brought by the user (a key export file, the server-side backup), not by another
    /// user: not bounded by the quotas on what strangers can make us store.
    pub imported: bool,
    /// In the server-side backup's current version (uploaded, or restored from it).
    pub backed_up: bool,
}

/// Who received an outbound session, at which index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRecipient {
    /// Recipient user.
    pub user_id: OwnedUserId,
    /// Recipient device.
    pub device_id: OwnedDeviceId,
    /// Recipient's Curve25519 identity key at the time of sharing.
    pub curve25519: String,
    /// Message index the recipient got the session at.
    pub index: u32,
    /// Set when the device was deliberately not given the key: the `m.room_key.withheld`
    /// code it was sent instead (e.g. `m.no_olm`, `m.blacklisted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<RoomKeyWithheldCode>,
}

/// Our outbound Megolm session for one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundGroupSessionRecord {
    /// Room.
    pub room_id: OwnedRoomId,
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
    pub user_id: OwnedUserId,
    /// Device id.
    pub device_id: OwnedDeviceId,
    /// Curve25519 identity key (base64).
    pub curve25519: String,
    /// Ed25519 fingerprint key (base64).
    pub ed25519: String,
    /// Algorithms the device supports.
    pub algorithms: Vec<EventEncryptionAlgorithm>,
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
    pub user_id: OwnedUserId,
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

/// What Newt follows of a room's `m.room.encryption` state event: the algorithm and the
/// rotation settings (each `None` when absent or not a positive integer: the defaults then
/// apply). Stored as the JSON of those fields and read back through
/// [`RoomEncryption::from_content`], so a row written by an earlier version that kept the
/// whole content reads the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomEncryption {
    /// `algorithm` (Newt encrypts only with `m.megolm.v1.aes-sha2`).
    pub algorithm: EventEncryptionAlgorithm,
    /// `rotation_period_ms`, if a positive integer.
    pub rotation_period_ms: Option<u64>,
    /// `rotation_period_msgs`, if a positive integer.
    pub rotation_period_msgs: Option<u64>,
}

impl RoomEncryption {
    /// From `m.room.encryption` content as received; `None` without a string `algorithm`
    /// (not an encryption setting at all). Rotation values that are not positive integers
    /// are ignored, never an error: the room is still encrypted.
    pub fn from_content(content: &serde_json::Value) -> Option<Self> {
        let algorithm = content.get("algorithm")?.as_str()?;
        let positive = |name: &str| {
            content
                .get(name)
                .and_then(serde_json::Value::as_u64)
                .filter(|v| *v > 0)
        };
        Some(Self {
            algorithm: EventEncryptionAlgorithm::from(algorithm),
            rotation_period_ms: positive("rotation_period_ms"),
            rotation_period_msgs: positive("rotation_period_msgs"),
        })
    }

    /// The content to store (and to send when creating a room).
    pub fn to_content(&self) -> serde_json::Value {
        let mut content = serde_json::json!({ "algorithm": self.algorithm.as_str() });
        if let Some(ms) = self.rotation_period_ms {
            content["rotation_period_ms"] = ms.into();
        }
        if let Some(msgs) = self.rotation_period_msgs {
            content["rotation_period_msgs"] = msgs.into();
        }
        content
    }
}

/// The encryption-relevant state of one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRecord {
    /// Room id.
    pub room_id: OwnedRoomId,
    /// The room's `m.room.encryption` setting, if encrypted (never removed once set).
    pub encryption: Option<RoomEncryption>,
    /// `m.room.history_visibility` (`shared` when unset).
    pub history_visibility: Option<HistoryVisibility>,
    /// Whether the full member list was loaded (`/members`) since joining.
    pub members_synced: bool,
    /// Own membership.
    pub own_membership: Option<MembershipState>,
}

impl RoomRecord {
    /// A room we know nothing about yet: not encrypted, default history visibility,
    /// members not loaded, no own membership.
    pub fn new(room_id: OwnedRoomId) -> Self {
        Self {
            room_id,
            encryption: None,
            history_visibility: None,
            members_synced: false,
            own_membership: None,
        }
    }
}

/// One member of one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    /// Room.
    pub room_id: OwnedRoomId,
    /// Member.
    pub user_id: OwnedUserId,
    /// Membership.
    pub membership: MembershipState,
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
    pub event_id: OwnedEventId,
    /// Its `origin_server_ts`.
    pub origin_ts: u64,
}

/// A to-device request we must (re)send with the same transaction id after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingToDevice {
    /// Transaction id, reused on every retry.
    pub txn_id: String,
    /// Event type, e.g. `m.room.encrypted`.
    pub event_type: ToDeviceEventType,
    /// `messages` body of `PUT /sendToDevice` as JSON (Olm ciphertexts only, no plaintext).
    pub messages_json: String,
    /// For a room-key share: the room and Megolm session whose key it carries, so that the
    /// recipients of a request the server refuses for good get the key again.
    pub room_key: Option<(OwnedRoomId, String)>,
}

/// A room event that could not be decrypted yet, kept to be decrypted when the key of its
/// Megolm session arrives (late keys), also across restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UndecryptableEvent {
    /// Room.
    pub room_id: OwnedRoomId,
    /// Megolm session id the event needs.
    pub session_id: String,
    /// Event id (one record per event).
    pub event_id: OwnedEventId,
    /// The `m.room.encrypted` event as received (ciphertext, no plaintext).
    pub event_json: String,
}

/// An `m.room_key.withheld` notice: why a session's sender did not give us its key. Shown
/// only on events of that sender (it is sent in clear and proves nothing else).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithheldNotice {
    /// Room.
    pub room_id: OwnedRoomId,
    /// Megolm session id.
    pub session_id: String,
    /// User who sent the notice (a member of the room when it was accepted).
    pub sender: OwnedUserId,
    /// Curve25519 key of the sending device as named in the notice (empty for notices kept
    /// by an earlier version).
    pub sender_key: String,
    /// `code`, e.g. `m.unverified`, `m.blacklisted`, `m.no_olm`.
    pub code: RoomKeyWithheldCode,
    /// Human-readable `reason`, if given.
    pub reason: Option<String>,
}

/// A room-key request we sent for one session (at most one per session).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRequestRecord {
    /// Room.
    pub room_id: OwnedRoomId,
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
    pub room_id: OwnedRoomId,
    /// Megolm session id of our outbound session.
    pub session_id: String,
    /// Message index the key starts at.
    pub index: u32,
    /// The exported session key at `index` (base64, as in `m.room_key`).
    pub session_key: SecretBlob,
}

/// When we last replaced a wedged Olm session with a device (or tried to): at most one
/// unwedging per device per hour. Bounded (see [`quota::MAX_UNWEDGE_RECORDS`](super::quota::MAX_UNWEDGE_RECORDS)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnwedgeRecord {
    /// The device's Curve25519 identity key (base64).
    pub curve25519: String,
    /// Unix millis of the last unwedging.
    pub unwedged_ms: u64,
}

/// How many records of the kinds other users can make us store are kept (see
/// [`quota`](super::quota)).
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

/// How far a queued message got. Each stage's result is stored when it is reached, so that
/// a message resumed after a crash or a failure goes on from there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendStage {
    /// The content as the app gave it; the room key may still have to be shared.
    Queued,
    /// The body to send as it is: in an encrypted room the Megolm ciphertext, stored in the
    /// transaction that advanced the session (a resend never ratchets it again).
    Ready,
}

impl SendStage {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SendStage::Queued => "queued",
            SendStage::Ready => "ready",
        }
    }

    /// The stage stored as `name`, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "queued" => Some(SendStage::Queued),
            "ready" => Some(SendStage::Ready),
            _ => None,
        }
    }
}

/// A message the app sent that has not reached the server yet (the send queue). Its content
/// is encrypted at rest, bound to its transaction id, room, stage and event type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedSend {
    /// Transaction id, reused on every attempt so the server stores the message once.
    pub txn_id: String,
    /// Room.
    pub room_id: OwnedRoomId,
    /// How far it got.
    pub stage: SendStage,
    /// The type of `content`: the app's (`m.room.message`) while queued; once ready, the type
    /// to send (`m.room.encrypted` in an encrypted room).
    pub event_type: String,
    /// The content as JSON (secret: encrypted at rest).
    pub content: SecretBlob,
    /// The content as the app gave it, kept for the local echo once `content` is the
    /// ciphertext (`None` while `content` is still the app's; secret: encrypted at rest).
    pub echo: Option<SecretBlob>,
    /// Why sending it stopped until the app retries or cancels it (`None`: it is sent).
    pub stuck: Option<StuckReason>,
}

impl QueuedSend {
    /// The content as the app gave it (for the local echo).
    pub fn app_content(&self) -> &SecretBlob {
        self.echo.as_ref().unwrap_or(&self.content)
    }
}

/// Why a queued message stopped being sent: retrying by itself will not help; the app
/// retries (once the cause is fixed) or cancels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum StuckReason {
    /// The room has devices the user has not decided about (the app asked to be asked), or
    /// the user dismissed the question.
    UnknownDevices,
    /// The server refused: we are not in the room, or may not send there.
    Forbidden,
    /// The server refused the message or file as too large.
    TooLarge,
    /// The room is not known (never joined or synced).
    UnknownRoom,
    /// The server refused the message for another reason (a 4xx answer).
    Refused,
    /// The queued content cannot be read or sent as it is (e.g. an edit of a message that
    /// was cancelled).
    InvalidContent,
    /// The attachment's file could not be read.
    FileUnreadable,
}

impl StuckReason {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            StuckReason::UnknownDevices => "unknown_devices",
            StuckReason::Forbidden => "forbidden",
            StuckReason::TooLarge => "too_large",
            StuckReason::UnknownRoom => "unknown_room",
            StuckReason::Refused => "refused",
            StuckReason::InvalidContent => "invalid_content",
            StuckReason::FileUnreadable => "file_unreadable",
        }
    }

    /// The reason stored as `name`, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        [
            StuckReason::UnknownDevices,
            StuckReason::Forbidden,
            StuckReason::TooLarge,
            StuckReason::UnknownRoom,
            StuckReason::Refused,
            StuckReason::InvalidContent,
            StuckReason::FileUnreadable,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
    }
}
