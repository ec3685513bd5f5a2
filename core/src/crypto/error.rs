//! Typed failures of the crypto machine, one enum per failure domain.

use crate::crypto::signing::SigningError;
use crate::store::StoreError;

/// A device's published keys were rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceKeyError {
    /// The keys are not a JSON object with the expected members.
    #[error("malformed device keys: {0}")]
    Malformed(String),
    /// `user_id` inside the keys differs from the user they were listed under.
    #[error("device keys list user {got}, expected {expected}")]
    UserIdMismatch {
        /// user the response listed the device under
        expected: String,
        /// user id inside the signed keys
        got: String,
    },
    /// `device_id` inside the keys differs from the device they were listed under.
    #[error("device keys list device {got}, expected {expected}")]
    DeviceIdMismatch {
        /// device the response listed the keys under
        expected: String,
        /// device id inside the signed keys
        got: String,
    },
    /// The self-signature does not verify.
    #[error("the device's self-signature does not verify: {0}")]
    Signature(String),
    /// The device id is not one we can address (empty, `*`, too long or with control
    /// characters).
    #[error("invalid device id: {0}")]
    InvalidDeviceId(String),
    /// Another device already has this Curve25519 identity key (one key identifies one
    /// device: a device publishing someone else's key is refused).
    #[error("the curve25519 key is already the key of device {device_id} of {user_id}")]
    Curve25519Taken {
        /// owner of the device that has the key
        user_id: ruma::OwnedUserId,
        /// that device
        device_id: ruma::OwnedDeviceId,
    },
    /// Another new device of the same answer claims the same Curve25519 identity key: we
    /// cannot tell which one holds it, so neither is accepted.
    #[error("another new device claims the same curve25519 key")]
    Curve25519Contested,
    /// The user lists more devices than we keep.
    #[error("more than {0} devices listed for one user; the others are ignored")]
    TooManyDevices(usize),
    /// A known device now presents a different ed25519 key.
    #[error("device {device_id} of {user_id} changed its ed25519 key; keeping the old one")]
    Ed25519Changed {
        /// owner
        user_id: ruma::OwnedUserId,
        /// device
        device_id: ruma::OwnedDeviceId,
    },
}

/// An Olm (to-device) message was rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OlmError {
    /// The event or its content could not be parsed.
    #[error("malformed Olm event: {0}")]
    Malformed(String),
    /// The algorithm is not `m.olm.v1.curve25519-aes-sha2`.
    #[error("expected algorithm m.olm.v1.curve25519-aes-sha2, got {0}")]
    UnsupportedAlgorithm(String),
    /// The message has no ciphertext for our identity key.
    #[error("the message has no ciphertext for this device")]
    NotForThisDevice,
    /// A normal message that none of our sessions with the sender can decrypt.
    #[error("no Olm session with {sender_key} decrypts the message")]
    NoMatchingSession {
        /// sender's Curve25519 key
        sender_key: String,
    },
    /// A pre-key message from which no session could be created (bad MAC, unknown or already
    /// used one-time key, mismatched identity key).
    #[error("could not create an Olm session from the pre-key message: {0}")]
    SessionCreation(String),
    /// A member of the decrypted payload differs from what the channel proves.
    #[error("decrypted payload field {field} is {got}, expected {expected}")]
    PayloadMismatch {
        /// payload member, e.g. `sender` or `keys.ed25519`
        field: &'static str,
        /// what the channel or our own identity says
        expected: String,
        /// what the payload says
        got: String,
    },
    /// A room key that did not arrive over Olm (in plaintext or inside Megolm).
    #[error("room key of type {0} did not arrive over an Olm-encrypted channel; ignored")]
    RoomKeyNotOverOlm(String),
    /// The `m.room_key` content is invalid.
    #[error("invalid room key: {0}")]
    InvalidRoomKey(String),
    /// Encrypting failed.
    #[error("Olm encryption failed: {0}")]
    Encryption(String),
    /// A notice sent in clear (e.g. `m.room_key.withheld`) from someone who is not a member
    /// of the room, or from a device of theirs we do not know: ignored.
    #[error("notice from a non-member or an unknown device; ignored")]
    UnauthenticatedNotice,
}

/// A Megolm (room) event could not be decrypted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MegolmError {
    /// The event or its content could not be parsed.
    #[error("malformed encrypted room event: {0}")]
    Malformed(String),
    /// The algorithm is not `m.megolm.v1.aes-sha2`.
    #[error("expected algorithm m.megolm.v1.aes-sha2, got {0}")]
    UnsupportedAlgorithm(String),
    /// We have no key for this session in this room.
    #[error("the room key for session {session_id} was not received")]
    MissingSession {
        /// Megolm session id
        session_id: String,
    },
    /// The sender deliberately did not give us the key.
    #[error("the sender withheld the room key ({code}){}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Withheld {
        /// `m.room_key.withheld` code, e.g. `m.blacklisted`, `m.unverified`, `m.no_olm`.
        code: ruma::events::room_key::withheld::RoomKeyWithheldCode,
        /// Human-readable reason the sender gave.
        reason: Option<String>,
    },
    /// The key does not reach back to this message index.
    #[error("the room key is known only from index {first_known}, message has index {index}")]
    UnknownIndex {
        /// first index our copy of the session decrypts
        first_known: u32,
        /// index of the message
        index: u32,
    },
    /// Decryption or signature check failed.
    #[error("Megolm decryption failed: {0}")]
    Decryption(String),
    /// The decrypted payload names another room.
    #[error("the event was encrypted for room {got}, but arrived in room {expected}")]
    RoomMismatch {
        /// room the event arrived in
        expected: String,
        /// room inside the ciphertext
        got: String,
    },
    /// The session came from a forwarded key whose original device we do not know, and no
    /// known device of the event's sender has its key: who sent it cannot be told yet.
    #[error("the session's sending device ({sender_key}) is not known; the sender is unconfirmed")]
    UnknownSenderDevice {
        /// Curve25519 key the session was created by
        sender_key: String,
    },
    /// The event's sender is not the device that owns the session.
    #[error("the event claims sender {got}, but the session belongs to {expected}")]
    SenderMismatch {
        /// owner of the session
        expected: ruma::OwnedUserId,
        /// `sender` of the event
        got: ruma::OwnedUserId,
    },
    /// The event names another sender key than the device that owns the session.
    #[error("the event names sender key {got}, but the session belongs to {expected}")]
    SenderKeyMismatch {
        /// Curve25519 key of the device that sent us the session
        expected: String,
        /// `sender_key` in the event content
        got: String,
    },
    /// A message index already used by another event: a replay.
    #[error("message index {index} was already used by event {first_event_id}")]
    Replay {
        /// the reused index
        index: u32,
        /// event that used it first
        first_event_id: ruma::OwnedEventId,
    },
}

impl MegolmError {
    /// Whether the event may still become decryptable without anything changing on our
    /// side: its key was not received, was withheld (the sender retries some codes; our own
    /// devices may forward it), starts at a later index, or came from a device we have not
    /// downloaded yet. Forged, replayed and malformed events never will.
    pub fn may_resolve_later(&self) -> bool {
        matches!(
            self,
            MegolmError::MissingSession { .. }
                | MegolmError::UnknownIndex { .. }
                | MegolmError::Withheld { .. }
                | MegolmError::UnknownSenderDevice { .. }
        )
    }
}

/// A claimed one-time key was rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OneTimeKeyError {
    /// The claimed key is malformed.
    #[error("malformed one-time key: {0}")]
    Malformed(String),
    /// The signature by the device's ed25519 key does not verify.
    #[error("the one-time key's signature does not verify: {0}")]
    BadSignature(String),
    /// The device is unknown (its keys were never downloaded).
    #[error("one-time key for unknown device")]
    UnknownDevice,
    /// vodozemac refused to create the session.
    #[error("could not create an outbound Olm session: {0}")]
    SessionCreation(String),
}

/// Any failure of the crypto machine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// Persisting or loading failed; nothing of the operation was stored.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A to-device message was rejected.
    #[error(transparent)]
    Olm(#[from] OlmError),
    /// A room event could not be decrypted.
    #[error(transparent)]
    Megolm(#[from] MegolmError),
    /// Device keys were rejected.
    #[error(transparent)]
    DeviceKeys(#[from] DeviceKeyError),
    /// A claimed one-time key was rejected.
    #[error(transparent)]
    OneTimeKey(#[from] OneTimeKeyError),
    /// Canonical JSON or signing failed.
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// A stored secret could not be restored.
    #[error("stored crypto state is unreadable: {0}")]
    CorruptState(String),
    /// The store belongs to another account.
    #[error("the store holds the account of {stored_user}/{stored_device}, not {user}/{device}")]
    AccountMismatch {
        /// user asked for
        user: ruma::OwnedUserId,
        /// device asked for
        device: ruma::OwnedDeviceId,
        /// user in the store
        stored_user: ruma::OwnedUserId,
        /// device in the store
        stored_device: ruma::OwnedDeviceId,
    },
    /// A request id that is not in flight was reported as sent.
    #[error("unknown request id {0}")]
    UnknownRequest(String),
    /// The room is not known as encrypted.
    #[error("room {0} is not encrypted or not known")]
    RoomNotEncrypted(ruma::OwnedRoomId),
    /// A server answer is not JSON of the expected shape at all (partly invalid answers
    /// are accepted without their invalid entries).
    #[error("invalid server answer: {0}")]
    InvalidResponse(String),
    /// An argument is invalid (e.g. an empty device id).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}
