//! Megolm: one outbound session per encrypted room, inbound sessions per sender.

use ruma::{DeviceId, OwnedRoomId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};
use vodozemac::megolm::{
    GroupSession, GroupSessionPickle, InboundGroupSession, InboundGroupSessionPickle,
    MegolmMessage, SessionConfig, SessionKey, SessionOrdering,
};
use zeroize::Zeroizing;

use super::account::MEGOLM_ALGORITHM;
use super::error::{CryptoError, MegolmError, OlmError};
use crate::key_export::ExportedRoomKey;
use crate::store::{
    DeviceRecord, InboundGroupSessionRecord, OutboundGroupSessionRecord, RoomEncryption,
    SecretBlob, SenderData, ShareRecipient, Store,
};

/// Rotation settings from `m.room.encryption`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationSettings {
    /// Rotate after this many milliseconds.
    pub period_ms: u64,
    /// Rotate after this many messages.
    pub messages: u64,
}

impl Default for RotationSettings {
    fn default() -> Self {
        Self {
            period_ms: 7 * 24 * 3600 * 1000,
            messages: 100,
        }
    }
}

impl From<&RoomEncryption> for RotationSettings {
    /// The room's rotation settings; the defaults for what it does not set.
    fn from(encryption: &RoomEncryption) -> Self {
        let default = Self::default();
        Self {
            period_ms: encryption.rotation_period_ms.unwrap_or(default.period_ms),
            messages: encryption.rotation_period_msgs.unwrap_or(default.messages),
        }
    }
}

fn pickle_err(what: &str, e: impl std::fmt::Display) -> CryptoError {
    CryptoError::CorruptState(format!("{what} pickle: {e}"))
}

/// Our outbound session in one room.
pub(crate) struct OutboundGroup {
    pub room_id: OwnedRoomId,
    pub session: GroupSession,
    pub created_ms: u64,
    pub message_count: u64,
    pub shared_with: Vec<ShareRecipient>,
}

impl OutboundGroup {
    pub(super) fn new(room_id: &RoomId, now: u64) -> Self {
        Self {
            room_id: room_id.to_owned(),
            session: GroupSession::new(SessionConfig::version_1()),
            created_ms: now,
            message_count: 0,
            shared_with: Vec::new(),
        }
    }

    pub(super) fn from_record(r: &OutboundGroupSessionRecord) -> Result<Self, CryptoError> {
        let pickle: GroupSessionPickle =
            serde_json::from_slice(r.pickle.as_bytes()).map_err(|e| pickle_err("outbound", e))?;
        Ok(Self {
            room_id: r.room_id.clone(),
            session: GroupSession::from_pickle(pickle),
            created_ms: r.created_ms,
            message_count: r.message_count,
            shared_with: r.shared_with.clone(),
        })
    }

    pub(super) fn to_record(&self) -> Result<OutboundGroupSessionRecord, CryptoError> {
        let json = Zeroizing::new(
            serde_json::to_vec(&self.session.pickle()).map_err(|e| pickle_err("outbound", e))?,
        );
        Ok(OutboundGroupSessionRecord {
            room_id: self.room_id.clone(),
            session_id: self.session.session_id(),
            pickle: SecretBlob::new(json.to_vec()),
            created_ms: self.created_ms,
            message_count: self.message_count,
            shared_with: self.shared_with.clone(),
        })
    }

    pub(super) fn expired(&self, settings: RotationSettings, now: u64) -> bool {
        self.message_count >= settings.messages
            || now.saturating_sub(self.created_ms) >= settings.period_ms
    }

    /// `m.room_key` content carrying the session from its current index.
    pub(super) fn room_key_content(&self) -> Value {
        json!({
            "algorithm": MEGOLM_ALGORITHM,
            "room_id": self.room_id,
            "session_id": self.session.session_id(),
            "session_key": self.session.session_key().to_base64(),
        })
    }

    /// Encrypt an event, returning `m.room.encrypted` content.
    pub(super) fn encrypt(
        &mut self,
        event_type: &str,
        content: &Value,
        own_curve25519: &str,
        own_device_id: &DeviceId,
    ) -> Result<Value, CryptoError> {
        let plaintext = Zeroizing::new(
            serde_json::to_vec(&json!({
                "type": event_type,
                "content": content,
                "room_id": self.room_id,
            }))
            .map_err(|e| CryptoError::CorruptState(e.to_string()))?,
        );
        let message = self.session.encrypt(&*plaintext);
        self.message_count += 1;
        Ok(json!({
            "algorithm": MEGOLM_ALGORITHM,
            "ciphertext": message.to_base64(),
            "session_id": self.session.session_id(),
            "sender_key": own_curve25519,
            "device_id": own_device_id,
        }))
    }
}

/// `m.room_key` content.
#[derive(Deserialize)]
pub(crate) struct RoomKeyContent {
    pub algorithm: String,
    pub room_id: OwnedRoomId,
    pub session_id: String,
    pub session_key: String,
}

impl RoomKeyContent {
    pub(super) fn parse(content: &Value) -> Result<Self, OlmError> {
        let key: Self = parse_key_content(content)?;
        check_algorithm(&key.algorithm)?;
        Ok(key)
    }
}

/// What to do with a newly received copy of a session we already have.
pub(crate) enum Merge {
    /// Keep what we have.
    Keep,
    /// Store this record instead.
    Replace(Box<InboundGroupSessionRecord>),
}

/// Merge a new copy of a session into the stored one (same room and session id). The new
/// copy must come from the same sending and signing keys and be the same ratchet; it
/// replaces the stored one only if it reaches further back, and an authenticated origin is
/// never given up for an unknown one (a copy of unknown origin learns it from the stored
/// one, and a stored copy of unknown origin learns it from an authenticated new one).
pub(crate) fn merge(
    existing: InboundGroupSessionRecord,
    mut new: InboundGroup,
) -> Result<Result<Merge, OlmError>, CryptoError> {
    let refuse = |why: &str| Ok(Err(OlmError::InvalidRoomKey(why.to_owned())));
    if existing.sender_key != new.record.sender_key
        || existing.signing_key != new.record.signing_key
    {
        return refuse("session already known from another device");
    }
    let mut old = InboundGroup::from_record(existing)?;
    let sender_data = SenderData::merged(&old.record.sender_data, &new.record.sender_data);
    Ok(Ok(match new.session.compare(&mut old.session) {
        SessionOrdering::Unconnected => return refuse("not the session we have"),
        SessionOrdering::Better => {
            // Imported once, the user's own: it stays outside the quotas.
            new.record.imported |= old.record.imported;
            if new.record.sender_user.is_none() {
                new.record.sender_user = old.record.sender_user;
                new.record.sender_device = old.record.sender_device;
            }
            new.record.sender_data = sender_data;
            Merge::Replace(Box::new(new.record))
        }
        SessionOrdering::Equal | SessionOrdering::Worse => {
            let learns_sender =
                old.record.sender_user.is_none() && new.record.sender_user.is_some();
            if learns_sender {
                old.record.sender_user = new.record.sender_user;
                old.record.sender_device = new.record.sender_device;
            }
            if learns_sender || sender_data != old.record.sender_data {
                old.record.sender_data = sender_data;
                Merge::Replace(Box::new(old.record))
            } else {
                Merge::Keep
            }
        }
    }))
}

/// `m.forwarded_room_key` content.
#[derive(Deserialize)]
pub(crate) struct ForwardedKey {
    pub algorithm: String,
    pub room_id: OwnedRoomId,
    pub session_id: String,
    pub session_key: String,
    pub sender_key: String,
    pub sender_claimed_ed25519_key: String,
}

impl ForwardedKey {
    pub(super) fn parse(content: &Value) -> Result<Self, OlmError> {
        let key: Self = parse_key_content(content)?;
        check_algorithm(&key.algorithm)?;
        vodozemac::Curve25519PublicKey::from_base64(&key.sender_key)
            .map_err(|e| OlmError::InvalidRoomKey(format!("sender key: {e}")))?;
        Ok(key)
    }
}

/// The device that created a session whose keys we got from elsewhere (forwarded,
/// imported): `Ok(Some)` if we know a device with its Curve25519 key and it claims the same
/// Ed25519 key, `Ok(None)` if we know none, an error if the claimed Ed25519 key is not that
/// device's.
pub(super) fn original_device(
    store: &dyn Store,
    sender_key: &str,
    claimed_ed25519: &str,
) -> Result<Result<Option<DeviceRecord>, OlmError>, CryptoError> {
    let known = store.devices_with_curve25519(&[sender_key])?;
    if known.is_empty() {
        return Ok(Ok(None));
    }
    Ok(known
        .into_iter()
        .find(|d| d.ed25519 == claimed_ed25519)
        .map(Some)
        .ok_or_else(|| OlmError::InvalidRoomKey("the key names another ed25519 key".into())))
}

fn parse_key_content<T: serde::de::DeserializeOwned>(content: &Value) -> Result<T, OlmError> {
    T::deserialize(content).map_err(|e| OlmError::InvalidRoomKey(e.to_string()))
}

/// A room key is a Megolm key (its room id was checked when it was parsed).
pub(super) fn check_algorithm(algorithm: &str) -> Result<(), OlmError> {
    if algorithm != MEGOLM_ALGORITHM {
        return Err(OlmError::InvalidRoomKey(format!("algorithm {algorithm}")));
    }
    Ok(())
}

/// Who a session comes from.
struct Origin<'a> {
    /// Curve25519 key of the device that created the session.
    sender_key: &'a str,
    /// Ed25519 key that device claimed.
    signing_key: &'a str,
    /// The user and device, when authenticated; `None` for a forwarded key of unknown origin.
    sender: Option<(&'a UserId, Option<&'a DeviceId>)>,
    /// Not received from its creator over Olm (forwarded, exported, backed up).
    legacy: bool,
}

/// An inbound session loaded from the store or created from a room key.
pub(crate) struct InboundGroup {
    pub record: InboundGroupSessionRecord,
    pub session: InboundGroupSession,
}

impl InboundGroup {
    /// Create from a room key received over Olm; the session id must match the key. `sender`
    /// is the user (and device, if known) the Olm channel authenticated.
    pub(super) fn from_room_key(
        key: &RoomKeyContent,
        sender_key: &str,
        signing_key: &str,
        sender: Option<(&UserId, Option<&DeviceId>)>,
    ) -> Result<Self, CryptoError> {
        let session_key = SessionKey::from_base64(&key.session_key)
            .map_err(|e| OlmError::InvalidRoomKey(format!("session key: {e}")))?;
        let session = InboundGroupSession::new(&session_key, SessionConfig::version_1());
        let origin = Origin {
            sender_key,
            signing_key,
            sender,
            legacy: false,
        };
        Ok(Self::wrap(session, &key.room_id, &key.session_id, origin)?)
    }

    /// Create from a forwarded (exported) key; the session id must match the key. `sender`
    /// is the original sending device, when we know it.
    pub(super) fn from_forwarded(
        key: &ForwardedKey,
        sender: Option<(&UserId, Option<&DeviceId>)>,
    ) -> Result<Self, OlmError> {
        let exported = vodozemac::megolm::ExportedSessionKey::from_base64(&key.session_key)
            .map_err(|e| OlmError::InvalidRoomKey(format!("forwarded key: {e}")))?;
        let session = InboundGroupSession::import(&exported, SessionConfig::version_1());
        let origin = Origin {
            sender_key: &key.sender_key,
            signing_key: &key.sender_claimed_ed25519_key,
            sender,
            legacy: true,
        };
        Self::wrap(session, &key.room_id, &key.session_id, origin)
    }

    /// Create from a key the user imported (a key file, the backup): a legacy session,
    /// attributed to `sender` when we know the device that created it.
    pub(super) fn imported(
        key: &ExportedRoomKey,
        signing_key: &str,
        sender: Option<(&UserId, Option<&DeviceId>)>,
    ) -> Result<Self, OlmError> {
        let exported = vodozemac::megolm::ExportedSessionKey::from_base64(&key.session_key)
            .map_err(|e| OlmError::InvalidRoomKey(format!("exported key: {e}")))?;
        let session = InboundGroupSession::import(&exported, SessionConfig::version_1());
        let origin = Origin {
            sender_key: &key.sender_key,
            signing_key,
            sender,
            legacy: true,
        };
        let mut group = Self::wrap(session, &key.room_id, &key.session_id, origin)?;
        group.record.imported = true;
        Ok(group)
    }

    /// Check that `session` is the claimed one and build its record.
    fn wrap(
        session: InboundGroupSession,
        room_id: &RoomId,
        session_id: &str,
        origin: Origin<'_>,
    ) -> Result<Self, OlmError> {
        if session.session_id() != session_id {
            return Err(OlmError::InvalidRoomKey(format!(
                "session id {session_id} does not match the key's {}",
                session.session_id()
            )));
        }
        let json = Zeroizing::new(
            serde_json::to_vec(&session.pickle())
                .map_err(|e| OlmError::InvalidRoomKey(format!("inbound pickle: {e}")))?,
        );
        let (sender_user, sender_device) = match origin.sender {
            Some((user, device)) => (Some(user.to_owned()), device.map(DeviceId::to_owned)),
            None => (None, None),
        };
        Ok(Self {
            record: InboundGroupSessionRecord {
                room_id: room_id.to_owned(),
                session_id: session_id.to_owned(),
                sender_key: origin.sender_key.to_owned(),
                signing_key: origin.signing_key.to_owned(),
                sender_user,
                sender_device: sender_device.filter(|d| !d.as_str().is_empty()),
                pickle: SecretBlob::new(json.to_vec()),
                first_known_index: session.first_known_index(),
                sender_data: SenderData::unknown(origin.legacy),
                imported: false,
                backed_up: false,
            },
            session,
        })
    }

    /// The session exported from its first known index (for forwarding to own devices).
    pub(super) fn export(&self) -> String {
        self.session.export_at_first_known_index().to_base64()
    }

    pub(super) fn from_record(record: InboundGroupSessionRecord) -> Result<Self, CryptoError> {
        let pickle: InboundGroupSessionPickle = serde_json::from_slice(record.pickle.as_bytes())
            .map_err(|e| pickle_err("inbound", e))?;
        Ok(Self {
            session: InboundGroupSession::from_pickle(pickle),
            record,
        })
    }

    /// Decrypt a Megolm ciphertext; returns the plaintext payload and the message index.
    pub(super) fn decrypt(&mut self, ciphertext: &str) -> Result<(Value, u32), MegolmError> {
        let message = MegolmMessage::from_base64(ciphertext)
            .map_err(|e| MegolmError::Malformed(format!("ciphertext: {e}")))?;
        let decrypted = self.session.decrypt(&message).map_err(|e| match e {
            vodozemac::megolm::DecryptionError::UnknownMessageIndex(first_known, index) => {
                MegolmError::UnknownIndex { first_known, index }
            }
            other => MegolmError::Decryption(other.to_string()),
        })?;
        let plaintext = Zeroizing::new(decrypted.plaintext);
        let payload: Value = serde_json::from_slice(&plaintext)
            .map_err(|e| MegolmError::Malformed(format!("decrypted payload: {e}")))?;
        Ok((payload, decrypted.message_index))
    }
}
