//! Decryption of `m.room.encrypted` room events (Megolm): the session lookup, the checks of
//! who sent the event, replay detection, and the reason when no key is there.

use ruma::{OwnedDeviceId, OwnedEventId, OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::Value;

use super::account::MEGOLM_ALGORITHM;
use super::context::sub_machine;
use super::error::{CryptoError, MegolmError};
use super::megolm::InboundGroup;
use super::outcomes::DecryptedRoomEvent;
use super::sender_data::TrustView;
use crate::store::{Changes, InboundGroupSessionRecord, MegolmIndexRecord, WithheldNotice};

/// An `m.room.encrypted` room event, parsed at the edge.
#[derive(Deserialize)]
struct EncryptedEvent {
    sender: OwnedUserId,
    event_id: OwnedEventId,
    #[serde(default)]
    origin_server_ts: u64,
    content: MegolmContent,
}

#[derive(Deserialize)]
struct MegolmContent {
    algorithm: String,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    ciphertext: Option<String>,
    /// Deprecated and optional; when present it must name the session's sender.
    #[serde(default)]
    sender_key: Option<String>,
}

impl EncryptedEvent {
    fn parse(event: &Value) -> Result<(Self, String, String), MegolmError> {
        let parsed = Self::deserialize(event)
            .map_err(|e| MegolmError::Malformed(format!("encrypted event: {e}")))?;
        if parsed.content.algorithm != MEGOLM_ALGORITHM {
            let algorithm = parsed.content.algorithm.clone();
            return Err(MegolmError::UnsupportedAlgorithm(algorithm));
        }
        let missing = |what: &str| MegolmError::Malformed(format!("missing {what}"));
        let present = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let session_id = present(&parsed.content.session_id);
        let ciphertext = present(&parsed.content.ciphertext);
        Ok((
            parsed,
            session_id.ok_or_else(|| missing("session_id"))?,
            ciphertext.ok_or_else(|| missing("ciphertext"))?,
        ))
    }
}

/// Records of a sync batch that are not committed yet; decryption inside the batch sees
/// them as if they were stored (later entries win).
pub(crate) fn uncommitted_session<'a>(
    pending: &'a Changes,
    room_id: &RoomId,
    session_id: &str,
) -> Option<&'a InboundGroupSessionRecord> {
    pending
        .crypto
        .inbound_group_sessions
        .iter()
        .rev()
        .find(|s| s.room_id == room_id && s.session_id == session_id)
}

sub_machine! {
    /// Room-event decryption: session lookup, sender checks, replay records.
    RoomDecryptor
}

impl RoomDecryptor<'_> {
    /// [`RoomDecryptor::decrypt_with`], adding the replay record to `pending` (stored when the
    /// batch commits).
    pub(crate) fn decrypt_recording(
        &self,
        room_id: &RoomId,
        event: &Value,
        pending: &mut Changes,
    ) -> Result<DecryptedRoomEvent, CryptoError> {
        let (decrypted, index) = self.decrypt_with(room_id, event, pending)?;
        pending.crypto.megolm_indices.extend(index);
        Ok(decrypted)
    }

    /// Decrypt with the store and the `pending` records of a batch. Returns the index record
    /// to store if this index was not seen before.
    pub(crate) fn decrypt_with(
        &self,
        room_id: &RoomId,
        event: &Value,
        pending: &Changes,
    ) -> Result<(DecryptedRoomEvent, Option<MegolmIndexRecord>), CryptoError> {
        let (event, session_id, ciphertext) = EncryptedEvent::parse(event)?;
        let record = match uncommitted_session(pending, room_id, &session_id) {
            Some(r) => Some(r.clone()),
            None => self.ctx.store.inbound_group_session(room_id, &session_id)?,
        };
        let Some(record) = record else {
            return Err(self
                .why_no_session(room_id, &session_id, &event, pending)?
                .into());
        };
        let mut group = InboundGroup::from_record(record)?;
        let (payload, index) = group.decrypt(&ciphertext)?;
        let payload_room = payload.get("room_id").and_then(Value::as_str);
        if payload_room != Some(room_id.as_str()) {
            return Err(MegolmError::RoomMismatch {
                expected: room_id.to_string(),
                got: payload_room.unwrap_or_default().to_owned(),
            }
            .into());
        }
        let sender_device = self.confirm_sender(&group.record, &event.sender)?;
        let record = &group.record;
        let view = TrustView::for_sender(
            self.ctx.store,
            self.ctx.signatures,
            &event.sender,
            &record.sender_key,
            &pending.crypto,
        )?;
        let sender_trust = view.effective(
            &event.sender,
            &record.sender_key,
            &record.signing_key,
            &record.sender_data,
        );
        let legacy = record.sender_data.legacy;
        let sender_key = group.record.sender_key.clone();
        if let Some(claimed) = &event.content.sender_key
            && claimed != &sender_key
        {
            return Err(MegolmError::SenderKeyMismatch {
                expected: sender_key,
                got: claimed.clone(),
            }
            .into());
        }
        let seen = MegolmIndexRecord {
            session_id: session_id.clone(),
            sender_key: sender_key.clone(),
            index,
            event_id: event.event_id.clone(),
            origin_ts: event.origin_server_ts,
        };
        let new_index = self.check_replay(seen, pending)?;
        let malformed = |what: &str| MegolmError::Malformed(format!("missing decrypted {what}"));
        let event_type = payload
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("type"))?
            .to_owned();
        let content = payload
            .get("content")
            .filter(|c| c.is_object())
            .cloned()
            .ok_or_else(|| malformed("content"))?;
        let decrypted = DecryptedRoomEvent {
            event_type,
            content,
            sender: event.sender,
            sender_device,
            sender_curve25519: sender_key,
            session_id,
            message_index: index,
            sender_trust,
            legacy,
        };
        Ok((decrypted, new_index))
    }

    /// The device that sent the session, checked against the event's `sender`. A session of
    /// unknown origin (a forwarded key) is attributed only to a known device of `sender`
    /// holding its keys; otherwise the event is refused, never shown as `sender`'s.
    fn confirm_sender(
        &self,
        record: &InboundGroupSessionRecord,
        sender: &UserId,
    ) -> Result<Option<OwnedDeviceId>, CryptoError> {
        if let Some(owner) = &record.sender_user {
            if owner != sender {
                return Err(MegolmError::SenderMismatch {
                    expected: owner.clone(),
                    got: sender.to_owned(),
                }
                .into());
            }
            return Ok(record.sender_device.clone());
        }
        let devices = self
            .ctx
            .store
            .devices_with_curve25519(&[&record.sender_key])?;
        let owner = devices
            .iter()
            .find(|d| d.user_id == sender && d.ed25519 == record.signing_key);
        match (owner, devices.first()) {
            (Some(device), _) => Ok(Some(device.device_id.clone())),
            (None, Some(other)) => Err(MegolmError::SenderMismatch {
                expected: other.user_id.clone(),
                got: sender.to_owned(),
            }
            .into()),
            (None, None) => Err(MegolmError::UnknownSenderDevice {
                sender_key: record.sender_key.clone(),
            }
            .into()),
        }
    }

    /// `Ok(Some(record))` if the index is new, `Ok(None)` if this very event used it before,
    /// a [`MegolmError::Replay`] if another event did.
    fn check_replay(
        &self,
        seen: MegolmIndexRecord,
        pending: &Changes,
    ) -> Result<Option<MegolmIndexRecord>, CryptoError> {
        let same_index = |r: &&MegolmIndexRecord| {
            r.sender_key == seen.sender_key
                && r.session_id == seen.session_id
                && r.index == seen.index
        };
        let first = match pending.crypto.megolm_indices.iter().find(same_index) {
            Some(r) => Some(r.clone()),
            None => self
                .ctx
                .store
                .megolm_index(&seen.sender_key, &seen.session_id, seen.index)?,
        };
        match first {
            Some(first) if first.event_id != seen.event_id || first.origin_ts != seen.origin_ts => {
                Err(MegolmError::Replay {
                    index: seen.index,
                    first_event_id: first.event_id,
                }
                .into())
            }
            Some(_) => Ok(None),
            None => Ok(Some(seen)),
        }
    }

    /// Why we have no session: the event's sender withheld it (a notice of that sender for
    /// that key), or it was not received.
    fn why_no_session(
        &self,
        room_id: &RoomId,
        session_id: &str,
        event: &EncryptedEvent,
        pending: &Changes,
    ) -> Result<MegolmError, CryptoError> {
        let sender = &*event.sender;
        let notice = match pending
            .crypto
            .withheld_notices
            .iter()
            .rev()
            .find(|w| w.room_id == room_id && w.session_id == session_id && w.sender == sender)
        {
            Some(n) => Some(n.clone()),
            None => self
                .ctx
                .store
                .withheld_notice(room_id, session_id, sender)?,
        };
        Ok(
            match notice.filter(|n| names_key(n, &event.content.sender_key)) {
                Some(notice) => MegolmError::Withheld {
                    code: notice.code,
                    reason: notice.reason,
                },
                None => MegolmError::MissingSession {
                    session_id: session_id.to_owned(),
                },
            },
        )
    }
}

/// Whether a notice is about the key the event names (when both name one).
fn names_key(notice: &WithheldNotice, event_key: &Option<String>) -> bool {
    match event_key {
        Some(key) if !notice.sender_key.is_empty() => &notice.sender_key == key,
        _ => true,
    }
}
