//! Olm: the pairwise channel that carries room keys to each device.

use ruma::{OwnedDeviceId, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use vodozemac::olm::{OlmMessage, PreKeyMessage, Session, SessionPickle};
use zeroize::Zeroizing;

use super::account::{OLM_ALGORITHM, OwnAccount};
use super::error::{CryptoError, OlmError};
use crate::store::{DeviceRecord, OlmSessionRecord, SecretBlob};

/// The plaintext inside an Olm message (spec: `m.olm.v1.curve25519-aes-sha2`).
#[derive(Serialize, Deserialize)]
pub(crate) struct OlmPayload {
    #[serde(rename = "type")]
    pub event_type: String,
    pub content: Value,
    pub sender: OwnedUserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_device: Option<OwnedDeviceId>,
    pub recipient: OwnedUserId,
    pub recipient_keys: Ed25519Keys,
    pub keys: Ed25519Keys,
}

impl OlmPayload {
    /// The plaintext of an Olm message from `account`'s device to `device`.
    pub(crate) fn to_device(
        account: &OwnAccount,
        device: &DeviceRecord,
        event_type: &str,
        content: Value,
    ) -> Self {
        Self {
            event_type: event_type.into(),
            content,
            sender: account.user_id.clone(),
            sender_device: Some(account.device_id.clone()),
            recipient: device.user_id.clone(),
            recipient_keys: Ed25519Keys {
                ed25519: device.ed25519.clone(),
            },
            keys: Ed25519Keys {
                ed25519: account.ed25519(),
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Ed25519Keys {
    pub ed25519: String,
}

/// A parsed `m.room.encrypted` to-device event addressed to us.
pub(crate) struct IncomingOlm {
    pub sender: OwnedUserId,
    pub sender_key: String,
    pub message: OlmMessage,
}

impl IncomingOlm {
    /// Parse the event; `own_curve25519` selects our ciphertext.
    pub(super) fn parse(event: &Value, own_curve25519: &str) -> Result<Self, OlmError> {
        let sender = event
            .get("sender")
            .and_then(Value::as_str)
            .and_then(|s| OwnedUserId::try_from(s).ok())
            .ok_or_else(|| OlmError::Malformed("missing or invalid sender".into()))?;
        let content = event
            .get("content")
            .ok_or_else(|| OlmError::Malformed("missing content".into()))?;
        let algorithm = content
            .get("algorithm")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if algorithm != OLM_ALGORITHM {
            return Err(OlmError::UnsupportedAlgorithm(algorithm.to_owned()));
        }
        let sender_key = content
            .get("sender_key")
            .and_then(Value::as_str)
            .ok_or_else(|| OlmError::Malformed("missing sender_key".into()))?;
        vodozemac::Curve25519PublicKey::from_base64(sender_key)
            .map_err(|e| OlmError::Malformed(format!("sender_key: {e}")))?;
        let ours = content
            .get("ciphertext")
            .and_then(|c| c.get(own_curve25519))
            .ok_or(OlmError::NotForThisDevice)?;
        let message_type = ours
            .get("type")
            .and_then(Value::as_u64)
            .ok_or_else(|| OlmError::Malformed("missing message type".into()))?;
        let body = ours
            .get("body")
            .and_then(Value::as_str)
            .ok_or_else(|| OlmError::Malformed("missing body".into()))?;
        let message = match message_type {
            0 => OlmMessage::PreKey(
                PreKeyMessage::from_base64(body)
                    .map_err(|e| OlmError::Malformed(format!("pre-key message: {e}")))?,
            ),
            1 => OlmMessage::Normal(
                vodozemac::olm::Message::from_base64(body)
                    .map_err(|e| OlmError::Malformed(format!("message: {e}")))?,
            ),
            other => return Err(OlmError::Malformed(format!("unknown message type {other}"))),
        };
        Ok(Self {
            sender,
            sender_key: sender_key.to_owned(),
            message,
        })
    }
}

/// An Olm session loaded from the store.
pub(crate) struct OlmSession {
    pub sender_key: String,
    pub session: Session,
    pub created_ms: u64,
    pub last_used_ms: u64,
}

impl OlmSession {
    pub(crate) fn new(sender_key: String, session: Session, now: u64) -> Self {
        Self {
            sender_key,
            session,
            created_ms: now,
            last_used_ms: now,
        }
    }

    pub(crate) fn from_record(record: &OlmSessionRecord) -> Result<Self, CryptoError> {
        let pickle: SessionPickle = serde_json::from_slice(record.pickle.as_bytes())
            .map_err(|e| CryptoError::CorruptState(format!("olm session pickle: {e}")))?;
        Ok(Self {
            sender_key: record.sender_key.clone(),
            session: Session::from_pickle(pickle),
            created_ms: record.created_ms,
            last_used_ms: record.last_used_ms,
        })
    }

    pub(crate) fn to_record(&self) -> Result<OlmSessionRecord, CryptoError> {
        let json = Zeroizing::new(
            serde_json::to_vec(&self.session.pickle())
                .map_err(|e| CryptoError::CorruptState(format!("olm session pickle: {e}")))?,
        );
        Ok(OlmSessionRecord {
            sender_key: self.sender_key.clone(),
            session_id: self.session.session_id(),
            pickle: SecretBlob::new(json.to_vec()),
            created_ms: self.created_ms,
            last_used_ms: self.last_used_ms,
        })
    }

    /// Encrypt `payload` and wrap it in `m.room.encrypted` to-device content.
    pub(crate) fn encrypt(
        &mut self,
        own_curve25519: &str,
        payload: &OlmPayload,
        now: u64,
    ) -> Result<Value, OlmError> {
        let plaintext = Zeroizing::new(
            serde_json::to_vec(payload).map_err(|e| OlmError::Encryption(e.to_string()))?,
        );
        let message = self
            .session
            .encrypt(&*plaintext)
            .map_err(|e| OlmError::Encryption(e.to_string()))?;
        self.last_used_ms = now;
        let (message_type, body) = match message {
            OlmMessage::PreKey(m) => (0, m.to_base64()),
            OlmMessage::Normal(m) => (1, m.to_base64()),
        };
        Ok(json!({
            "algorithm": OLM_ALGORITHM,
            "sender_key": own_curve25519,
            "ciphertext": { self.sender_key.clone(): { "type": message_type, "body": body } },
        }))
    }
}
