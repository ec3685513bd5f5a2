//! The machine's side of the server-side key backup: the backup's `auth_data` signed and
//! checked, the sessions still to upload as a request body, and the marks once the server
//! has them. The client talks to the server (`client/backup.rs`).

use std::collections::BTreeMap;

use ruma::api::client::backup::{KeyBackupData, KeyBackupDataInit, RoomKeyBackup};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, UInt};
use serde_json::{Value, json};
use tracing::warn;
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey};

use super::cross_signing;
use super::error::CryptoError;
use super::machine::OlmMachine;
use super::room_key_transfer::exported;
use super::sender_data::TrustView;
use super::signing::verify_json;
use crate::backup::{BackupDataError, encrypt_session};
use crate::store::{Changes, CryptoChanges, InboundGroupSessionRecord, SenderTrust};

/// One upload: the body's rooms and the sessions it holds.
#[derive(Debug, Default)]
pub struct BackupBatch {
    /// `rooms` of `PUT /room_keys/keys`.
    pub rooms: BTreeMap<OwnedRoomId, RoomKeyBackup>,
    /// (room id, session id, first index) of each session in it, to mark once the server
    /// has them.
    pub sessions: Vec<(OwnedRoomId, String, u32)>,
}

impl OlmMachine {
    /// `auth_data` of a new backup with this public key (unpadded base64), signed by this
    /// device and, when this device holds it, by the own master key (what other clients
    /// check: any device of the user that trusts its identity then trusts the backup).
    pub fn signed_backup_auth_data(&self, public_key: &str) -> Result<Value, CryptoError> {
        let mut auth_data = json!({ "public_key": public_key });
        self.lock()?.account.sign(&mut auth_data)?;
        if let Some(own) = cross_signing::stored(&*self.store)? {
            own.sign_with_master(&self.user_id, &mut auth_data)?;
        }
        Ok(auth_data)
    }

    /// Whether a backup's `auth_data` is ours to upload to: signed by this device, by an
    /// own device the user verified, or by the own master key of an identity this device
    /// trusts (it holds its keys, or verified it). A backup someone else made (the
    /// homeserver, say) would collect our keys for them.
    pub fn backup_is_trusted(&self, auth_data: &Value) -> Result<bool, CryptoError> {
        let own = [&*self.user_id];
        let Some(signatures) = auth_data["signatures"][self.user_id.as_str()].as_object() else {
            return Ok(false);
        };
        let devices = self.store.devices(&own)?;
        let view = TrustView::load(&*self.store, &self.signatures, &own, &Default::default())?;
        let master = view
            .identity(&self.user_id)
            .filter(|i| i.is_verified())
            .map(|i| i.master_key.clone());
        for key_id in signatures.keys() {
            let Some(name) = key_id.strip_prefix("ed25519:") else {
                continue;
            };
            // The master key is named by itself, a device key by its device id.
            let (ed25519, trusted) = if master.as_deref() == Some(name) {
                (name.to_owned(), true)
            } else if name == self.device_id.as_str() {
                (self.ed25519_key(), true)
            } else {
                match devices.iter().find(|d| d.device_id.as_str() == name) {
                    Some(d) => (d.ed25519.clone(), view.is_verified(d)),
                    None => continue,
                }
            };
            let Ok(key) = Ed25519PublicKey::from_base64(&ed25519) else {
                continue;
            };
            if trusted && verify_json(auth_data, self.user_id.as_str(), key_id, &key).is_ok() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Up to `limit` sessions not in the backup yet, encrypted to `public_key`. A session
    /// that cannot be encrypted is left out of the body (and stays to do).
    pub fn backup_batch(
        &self,
        public_key: Curve25519PublicKey,
        limit: u32,
    ) -> Result<BackupBatch, CryptoError> {
        let mut batch = BackupBatch::default();
        for record in self.store.inbound_group_sessions_to_back_up(limit)? {
            let id = (record.room_id.clone(), record.session_id.clone());
            let index = record.first_known_index;
            let data = match backup_data(public_key, record) {
                Ok(data) => data,
                Err(e) => {
                    warn!(room_id = %id.0, session_id = %id.1, error = %e,
                        "a session cannot be backed up; left out");
                    continue;
                }
            };
            let raw = Raw::new(&data).map_err(|e| CryptoError::CorruptState(e.to_string()))?;
            batch
                .rooms
                .entry(id.0.clone())
                .or_insert_with(|| RoomKeyBackup::new(BTreeMap::new()))
                .sessions
                .insert(id.1.clone(), raw);
            batch.sessions.push((id.0, id.1, index));
        }
        Ok(batch)
    }

    /// The server has these sessions in the current backup version.
    pub fn mark_backed_up(
        &self,
        sessions: Vec<(OwnedRoomId, String, u32)>,
    ) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        let changes = Changes::from(CryptoChanges {
            backed_up_sessions: sessions,
            ..Default::default()
        });
        self.save(&mut state, changes)
    }

    /// A new backup version: every session is to be uploaded again.
    pub fn reset_backup(&self) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        let changes = Changes::from(CryptoChanges {
            backup_reset: true,
            ..Default::default()
        });
        self.save(&mut state, changes)
    }

    /// Sessions not in the backup yet.
    pub fn sessions_to_back_up(&self) -> Result<u64, CryptoError> {
        Ok(self.store.inbound_group_sessions_to_back_up_count()?)
    }
}

/// One session's `KeyBackupData`.
fn backup_data(
    public_key: Curve25519PublicKey,
    record: InboundGroupSessionRecord,
) -> Result<KeyBackupData, CryptoError> {
    let first_message_index = UInt::from(record.first_known_index);
    let legacy = record.sender_data.legacy;
    // A legacy session's sender is not proven, whatever its device's trust.
    let is_verified = !legacy && matches!(record.sender_data.trust, SenderTrust::Verified);
    let key = exported(record)?;
    let session_data = encrypt_session(public_key, &key)
        .map_err(|e: BackupDataError| CryptoError::CorruptState(e.to_string()))?;
    Ok(KeyBackupDataInit {
        first_message_index,
        // Not known for a session that was forwarded or imported: at least one hop.
        forwarded_count: UInt::from(u32::from(legacy)),
        is_verified,
        session_data,
    }
    .into())
}
