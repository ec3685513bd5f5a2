//! Room keys in and out of the machine at the user's request: the pages of a key export,
//! and the batches of an import (a key file; the server-side backup imports the same way).

use ruma::{OwnedRoomId, RoomId};
use tracing::debug;

use super::account::MEGOLM_ALGORITHM;
use super::batch::Batch;
use super::error::{CryptoError, OlmError};
use super::machine::OlmMachine;
use super::megolm::{InboundGroup, Merge, check_algorithm, merge, original_device};
use crate::key_export::ExportedRoomKey;
use crate::store::{Changes, InboundGroupSessionRecord};

/// Where imported keys come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// A key export file the user chose: outside the quotas on strangers' sessions.
    File,
    /// The server-side backup, restored by the user: outside those quotas, and marked as
    /// backed up.
    Backup,
    /// The backup, asked by Newt for an undecryptable event's session: marked as backed
    /// up, but counted like any session (the homeserver chooses the events that cause
    /// these lookups).
    BackupLookup,
}

/// What one batch of an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportedKeys {
    /// Sessions stored: new ones, and known ones the import completed (an earlier first
    /// index, or the sender learnt).
    pub imported: Vec<(OwnedRoomId, String)>,
    /// Known already, from the same index or an earlier one: left as they were.
    pub already_known: u64,
    /// Refused: not a Megolm key, a key that is not its session, a session we know from
    /// another device, a creator whose device claims another Ed25519 key.
    pub refused: u64,
}

impl OlmMachine {
    /// One page of a key export: at most `limit` sessions after `after`, in (room id,
    /// session id) order, of `room` only if given, each exported from its first known index.
    pub fn export_room_keys_page(
        &self,
        room: Option<&RoomId>,
        after: Option<(&RoomId, &str)>,
        limit: u32,
    ) -> Result<Vec<ExportedRoomKey>, CryptoError> {
        self.store
            .inbound_group_sessions_page(room, after, limit)?
            .into_iter()
            .map(exported)
            .collect()
    }

    /// Import room keys the user brought. Each becomes a legacy session whose sender is
    /// unconfirmed (seed 003) unless we know the device that created it; a copy we have is
    /// completed, never replaced by one that starts at a later index. One transaction;
    /// what cannot be imported is counted and left out.
    pub fn import_room_keys(&self, keys: &[ExportedRoomKey]) -> Result<ImportedKeys, CryptoError> {
        self.import_room_keys_from(keys, KeySource::File)
    }

    /// [`OlmMachine::import_room_keys`] of keys from `source`.
    pub fn import_room_keys_from(
        &self,
        keys: &[ExportedRoomKey],
        source: KeySource,
    ) -> Result<ImportedKeys, CryptoError> {
        self.refuse_in_notifications()?;
        // Held from the first read to the write: a copy the sync stores meanwhile is merged,
        // not overwritten.
        let mut state = self.lock()?;
        let mut batch = Batch::default();
        let mut outcome = ImportedKeys::default();
        for key in keys {
            match self.import_one(&mut batch, key, source)? {
                Ok(true) => outcome
                    .imported
                    .push((key.room_id.clone(), key.session_id.clone())),
                Ok(false) => outcome.already_known += 1,
                Err(e) => {
                    debug!(room_id = %key.room_id, session_id = %key.session_id, error = %e,
                        "room key not imported");
                    outcome.refused += 1;
                }
            }
        }
        let mut changes = Changes::default();
        batch.finish(&*self.store, &self.signatures, &mut changes)?;
        self.save(&mut state, changes)?;
        Ok(outcome)
    }

    /// `Ok(true)` if the key was new or completed a session, `Ok(false)` if we knew it.
    fn import_one(
        &self,
        batch: &mut Batch,
        key: &ExportedRoomKey,
        source: KeySource,
    ) -> Result<Result<bool, OlmError>, CryptoError> {
        let signing_key = match checked_origin(key) {
            Ok(signing_key) => signing_key,
            Err(e) => return Ok(Err(e)),
        };
        let origin = match original_device(&*self.store, &key.sender_key, signing_key)? {
            Ok(origin) => origin,
            Err(e) => return Ok(Err(e)),
        };
        let sender = origin.as_ref().map(|d| (&*d.user_id, Some(&*d.device_id)));
        let mut group = match InboundGroup::imported(key, signing_key, sender) {
            Ok(group) => group,
            Err(e) => return Ok(Err(e)),
        };
        // Kept only if it is the better copy: then the server has it.
        group.record.backed_up = source != KeySource::File;
        group.record.imported = source != KeySource::BackupLookup;
        let id = (key.room_id.clone(), key.session_id.clone());
        let record = match batch.inbound_session(&*self.store, &id.0, &id.1)? {
            None => group.record,
            Some(existing) => match merge(existing, group)? {
                Ok(Merge::Replace(record)) => *record,
                Ok(Merge::Keep) => return Ok(Ok(false)),
                Err(e) => return Ok(Err(e)),
            },
        };
        batch.inbound.insert(id, record);
        Ok(Ok(true))
    }
}

/// The key is a Megolm key from a well-formed Curve25519 key; its claimed Ed25519 key.
fn checked_origin(key: &ExportedRoomKey) -> Result<&str, OlmError> {
    check_algorithm(&key.algorithm)?;
    vodozemac::Curve25519PublicKey::from_base64(&key.sender_key)
        .map_err(|e| OlmError::InvalidRoomKey(format!("sender key: {e}")))?;
    let ed25519 = key
        .sender_claimed_keys
        .get("ed25519")
        .ok_or_else(|| OlmError::InvalidRoomKey("no claimed ed25519 key".into()))?;
    vodozemac::Ed25519PublicKey::from_base64(ed25519)
        .map_err(|e| OlmError::InvalidRoomKey(format!("claimed ed25519 key: {e}")))?;
    Ok(ed25519)
}

/// A stored session as the export format holds it.
pub(super) fn exported(record: InboundGroupSessionRecord) -> Result<ExportedRoomKey, CryptoError> {
    let group = InboundGroup::from_record(record)?;
    let r = &group.record;
    Ok(ExportedRoomKey {
        algorithm: MEGOLM_ALGORITHM.to_owned(),
        room_id: r.room_id.clone(),
        sender_key: r.sender_key.clone(),
        session_id: r.session_id.clone(),
        session_key: group.export(),
        sender_claimed_keys: [("ed25519".to_owned(), r.signing_key.clone())].into(),
        forwarding_curve25519_key_chain: Vec::new(),
    })
}
