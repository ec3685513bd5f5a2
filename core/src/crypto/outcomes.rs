//! What the machine's calls return and take: sync input, to-device and query outcomes,
//! decrypted room events. Plain data, shared by the sub-machines and the facade.

use std::collections::BTreeMap;

use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId};
use serde_json::Value;

use super::error::{DeviceKeyError, OlmError, OneTimeKeyError};
use super::identity::IdentityError;
use crate::store::{Changes, SenderTrust};

/// What one `/sync` response carries for the crypto machine.
#[derive(Debug, Default)]
pub struct SyncChanges {
    /// `to_device.events`, as received, in order.
    pub to_device_events: Vec<Value>,
    /// `device_lists.changed`.
    pub changed_users: Vec<OwnedUserId>,
    /// `device_lists.left`.
    pub left_users: Vec<OwnedUserId>,
    /// `device_one_time_keys_count`; `None` if the response had none.
    pub one_time_key_counts: Option<BTreeMap<String, u64>>,
    /// `device_unused_fallback_key_types`; `None` if the response had none.
    pub unused_fallback_key_types: Option<Vec<String>>,
    /// `next_batch`, stored in the same transaction as everything else.
    pub next_batch: Option<String>,
    /// Other state from the same sync (rooms, members) to commit atomically with it.
    pub extra: Changes,
}

/// Result of handling one to-device event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToDeviceOutcome {
    /// Event type as received (`m.room.encrypted` for Olm).
    pub event_type: String,
    /// Sender as given by the server.
    pub sender: String,
    /// The decrypted event type, or why the event was rejected.
    pub result: Result<String, OlmError>,
}

/// A room key that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomKeyInfo {
    /// Room.
    pub room_id: OwnedRoomId,
    /// Megolm session id.
    pub session_id: String,
    /// Sender user.
    pub sender: OwnedUserId,
}

/// What [`super::OlmMachine::receive_sync_changes`] did.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    /// One entry per to-device event, in order.
    pub to_device: Vec<ToDeviceOutcome>,
    /// Room keys accepted in this batch.
    pub room_keys: Vec<RoomKeyInfo>,
    /// Interactive verifications whose state changed (new requests, strings to compare,
    /// completed or cancelled ones), as they are now.
    pub verifications: Vec<super::Verification>,
}

/// What a `/keys/query` answer changed.
#[derive(Debug, Default)]
pub struct QueryOutcome {
    /// Devices stored (new or updated).
    pub updated_devices: usize,
    /// Devices whose keys were rejected, with the reason.
    pub rejected: Vec<(OwnedUserId, OwnedDeviceId, DeviceKeyError)>,
    /// Devices seen for the first time: `(user id, device id)`.
    pub new_devices: Vec<(OwnedUserId, OwnedDeviceId)>,
    /// Devices that disappeared from their owner's list: `(user id, device id)`.
    pub removed_devices: Vec<(OwnedUserId, OwnedDeviceId)>,
    /// Encrypted rooms shared with the users whose devices were added or removed, found
    /// through the store's index (no member list is loaded).
    pub affected_rooms: Vec<OwnedRoomId>,
    /// Users whose cross-signing keys were refused (the stored identity is kept).
    pub rejected_identities: Vec<(OwnedUserId, IdentityError)>,
    /// Users whose identity changed since it was pinned or verified.
    pub identity_changes: Vec<IdentityChange>,
    /// Stored sessions whose sender data improved: `(room id, session id)`.
    pub improved_sessions: Vec<(OwnedRoomId, String)>,
}

/// A user's cross-signing identity changed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityChange {
    /// The identity is not the one pinned on first use, and was never verified: the app
    /// should tell the user and may acknowledge it (`pin_identity`).
    PinViolation(OwnedUserId),
    /// We had verified an earlier identity of this user: their new one must be verified
    /// again (or the verification withdrawn with `pin_identity`).
    VerificationViolation(OwnedUserId),
}

/// What a `/keys/claim` answer changed.
#[derive(Debug, Default)]
pub struct ClaimOutcome {
    /// Sessions created.
    pub sessions_created: usize,
    /// Devices for which no session could be created, with the reason.
    pub failed: Vec<(OwnedUserId, OwnedDeviceId, OneTimeKeyError)>,
}

/// A decrypted room event.
#[derive(Debug, Clone, PartialEq)]
pub struct DecryptedRoomEvent {
    /// Decrypted event type, e.g. `m.room.message`.
    pub event_type: String,
    /// Decrypted content.
    pub content: Value,
    /// Sender user (checked against the session owner).
    pub sender: OwnedUserId,
    /// Device that created the session, when known.
    pub sender_device: Option<OwnedDeviceId>,
    /// Curve25519 key of that device.
    pub sender_curve25519: String,
    /// Megolm session id.
    pub session_id: String,
    /// Message index.
    pub message_index: u32,
    /// How far the sender is trusted now: the session's sender data, raised when the user
    /// has since verified the sender (see [`super::TrustPolicy::allows`]).
    pub sender_trust: SenderTrust,
    /// The session did not come from its creator over Olm (or predates sender data).
    pub legacy: bool,
}
