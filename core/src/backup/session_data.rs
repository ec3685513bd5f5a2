//! One session's backup data: the session as the export format holds it (the spec's
//! `SessionData`, without its room and id, which the backup's layout gives), encrypted to
//! the backup's public key.

use std::collections::BTreeMap;

use ruma::api::client::backup::{EncryptedSessionData, EncryptedSessionDataInit};
use ruma::serde::Base64;
use ruma::{OwnedRoomId, RoomId};
use serde::{Deserialize, Serialize};
use vodozemac::Curve25519PublicKey;
use vodozemac::pk_encryption::{Message, PkEncryption};
use zeroize::Zeroizing;

use super::BackupKey;
use crate::key_export::ExportedRoomKey;

/// Why a session's backup data cannot be used (that entry is left out).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackupDataError {
    /// The ephemeral key is not a Curve25519 key.
    #[error("invalid ephemeral key")]
    InvalidEphemeralKey,
    /// It does not decrypt with the backup key (another key's, or damaged).
    #[error("does not decrypt with the backup key: {0}")]
    Decryption(String),
    /// Decrypted, but not a session.
    #[error("not a session: {0}")]
    InvalidContent(String),
}

/// What is encrypted (borrowed from the exported key).
#[derive(Serialize)]
struct SessionDataOut<'a> {
    algorithm: &'a str,
    sender_key: &'a str,
    session_key: &'a str,
    sender_claimed_keys: &'a BTreeMap<String, String>,
    forwarding_curve25519_key_chain: &'a [String],
}

/// What is decrypted.
#[derive(Deserialize)]
struct SessionDataIn {
    algorithm: String,
    sender_key: String,
    session_key: String,
    #[serde(default)]
    sender_claimed_keys: BTreeMap<String, String>,
    #[serde(default)]
    forwarding_curve25519_key_chain: Vec<String>,
}

impl Drop for SessionDataIn {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.session_key);
    }
}

/// Encrypt `key` to the backup's `public_key`.
pub fn encrypt_session(
    public_key: Curve25519PublicKey,
    key: &ExportedRoomKey,
) -> Result<EncryptedSessionData, BackupDataError> {
    let plaintext = Zeroizing::new(
        serde_json::to_vec(&SessionDataOut {
            algorithm: &key.algorithm,
            sender_key: &key.sender_key,
            session_key: &key.session_key,
            sender_claimed_keys: &key.sender_claimed_keys,
            forwarding_curve25519_key_chain: &key.forwarding_curve25519_key_chain,
        })
        .map_err(|e| BackupDataError::InvalidContent(e.to_string()))?,
    );
    let message = PkEncryption::from_key(public_key)
        .encrypt(&plaintext)
        .map_err(|e| BackupDataError::Decryption(e.to_string()))?;
    Ok(EncryptedSessionDataInit {
        ephemeral: Base64::new(message.ephemeral_key.to_vec()),
        ciphertext: Base64::new(message.ciphertext),
        mac: Base64::new(message.mac),
    }
    .into())
}

/// Decrypt the backup data of session `session_id` of `room_id` with the backup key.
pub fn decrypt_session(
    key: &BackupKey,
    room_id: &RoomId,
    session_id: &str,
    data: &EncryptedSessionData,
) -> Result<ExportedRoomKey, BackupDataError> {
    let message = Message {
        ciphertext: data.ciphertext.as_bytes().to_vec(),
        mac: data.mac.as_bytes().to_vec(),
        ephemeral_key: Curve25519PublicKey::from_slice(data.ephemeral.as_bytes())
            .map_err(|_| BackupDataError::InvalidEphemeralKey)?,
    };
    let plaintext = Zeroizing::new(key.decrypt(&message).map_err(BackupDataError::Decryption)?);
    let mut session: SessionDataIn = serde_json::from_slice(&plaintext)
        .map_err(|e| BackupDataError::InvalidContent(e.to_string()))?;
    Ok(ExportedRoomKey {
        algorithm: std::mem::take(&mut session.algorithm),
        room_id: OwnedRoomId::from(room_id),
        sender_key: std::mem::take(&mut session.sender_key),
        session_id: session_id.to_owned(),
        session_key: std::mem::take(&mut session.session_key),
        sender_claimed_keys: std::mem::take(&mut session.sender_claimed_keys),
        forwarding_curve25519_key_chain: std::mem::take(
            &mut session.forwarding_curve25519_key_chain,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_ids::rid;

    fn exported() -> ExportedRoomKey {
        ExportedRoomKey {
            algorithm: "m.megolm.v1.aes-sha2".into(),
            room_id: rid("!r:x"),
            sender_key: "curve".into(),
            session_id: "sid".into(),
            session_key: "secret session key".into(),
            sender_claimed_keys: [("ed25519".to_owned(), "ed".to_owned())].into(),
            forwarding_curve25519_key_chain: vec!["hop".into()],
        }
    }

    #[test]
    fn backup_data_round_trips_for_its_key_only() {
        let key = BackupKey::new();
        let data = encrypt_session(key.public_key(), &exported()).unwrap();
        let json = serde_json::to_string(&data).unwrap();
        assert!(!json.contains("secret"), "{json}");
        assert!(!json.contains('='), "unpadded base64: {json}");
        assert_eq!(
            decrypt_session(&key, &rid("!r:x"), "sid", &data).unwrap(),
            exported()
        );
        let other = BackupKey::new();
        assert!(matches!(
            decrypt_session(&other, &rid("!r:x"), "sid", &data),
            Err(BackupDataError::Decryption(_) | BackupDataError::InvalidContent(_))
        ));
        let mut broken = data.clone();
        broken.ephemeral = Base64::new(vec![1, 2, 3]);
        assert_eq!(
            decrypt_session(&key, &rid("!r:x"), "sid", &broken),
            Err(BackupDataError::InvalidEphemeralKey)
        );
    }
}
