//! Olm session establishment (`/keys/claim`) and Megolm room-key sharing.

use std::collections::{BTreeMap, HashMap, HashSet};

use ruma::api::client::keys::claim_keys;
use ruma::api::client::to_device::send_event_to_device;
use ruma::events::ToDeviceEventType;
use ruma::to_device::DeviceIdOrAllDevices;
use ruma::{OneTimeKeyAlgorithm, OwnedDeviceId, OwnedTransactionId, OwnedUserId, TransactionId};
use serde_json::Value;
use tracing::{debug, info, warn};
use vodozemac::olm::SessionConfig;
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey};

use super::account::SIGNED_CURVE25519;
use super::error::{CryptoError, OneTimeKeyError};
use super::machine::{ClaimOutcome, OlmMachine};
use super::megolm::{InboundGroup, OutboundGroup, RoomKeyContent, RotationSettings};
use super::olm::{Ed25519Keys, OlmPayload, OlmSession};
use super::requests::{OutgoingKind, OutgoingRequest, json_of, raw};
use super::signing::verify_json;
use crate::store::{Changes, DeviceRecord, LocalTrust, PendingToDevice, ShareRecipient};

/// Recipient devices per `/sendToDevice` request.
pub const TO_DEVICE_BATCH: usize = 250;

/// Build the ruma request for a stored pending to-device message.
pub(crate) fn to_device_request(pending: &PendingToDevice) -> Result<OutgoingRequest, CryptoError> {
    let messages: BTreeMap<String, BTreeMap<String, Value>> =
        serde_json::from_str(&pending.messages_json)
            .map_err(|e| CryptoError::CorruptState(format!("pending to-device: {e}")))?;
    let mut typed: send_event_to_device::v3::Messages = BTreeMap::new();
    for (user, devices) in messages {
        let user = OwnedUserId::try_from(user)
            .map_err(|e| CryptoError::CorruptState(format!("pending to-device user: {e}")))?;
        let entry = typed.entry(user).or_default();
        for (device, content) in devices {
            let device = DeviceIdOrAllDevices::DeviceId(OwnedDeviceId::from(device));
            entry.insert(device, raw(&content)?);
        }
    }
    let txn_id: OwnedTransactionId = pending.txn_id.as_str().into();
    let request = send_event_to_device::v3::Request::new_raw(
        ToDeviceEventType::from(pending.event_type.as_str()),
        txn_id,
        typed,
    );
    Ok(OutgoingRequest {
        id: pending.txn_id.clone(),
        kind: OutgoingKind::ToDevice(request),
    })
}

/// Devices we may encrypt for: not ours, not deleted, not blacklisted.
fn eligible(device: &DeviceRecord, own_user: &str, own_device: &str) -> bool {
    let own = device.user_id == own_user && device.device_id == own_device;
    !own && !device.deleted && device.local_trust != LocalTrust::Blacklisted
}

impl OlmMachine {
    /// A `/keys/claim` request for every device of `users` we have no Olm session with, or
    /// `None` if there is none. All devices go into one request.
    pub fn missing_sessions(
        &self,
        users: &[String],
    ) -> Result<Option<OutgoingRequest>, CryptoError> {
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        let devices: Vec<DeviceRecord> = self
            .store
            .devices(&refs)?
            .into_iter()
            .filter(|d| eligible(d, &self.user_id, &self.device_id))
            .collect();
        let keys: Vec<&str> = devices.iter().map(|d| d.curve25519.as_str()).collect();
        let with_session: HashSet<String> = self.store.olm_sessions(&keys)?.into_keys().collect();
        let mut request = claim_keys::v3::Request::new(BTreeMap::new());
        for device in devices
            .iter()
            .filter(|d| !with_session.contains(&d.curve25519))
        {
            let Ok(user) = OwnedUserId::try_from(device.user_id.as_str()) else {
                continue;
            };
            request.one_time_keys.entry(user).or_default().insert(
                device.device_id.as_str().into(),
                OneTimeKeyAlgorithm::SignedCurve25519,
            );
        }
        if request.one_time_keys.is_empty() {
            return Ok(None);
        }
        let mut state = self.lock()?;
        let id = state.next_id("claim");
        Ok(Some(OutgoingRequest {
            id,
            kind: OutgoingKind::KeysClaim(request),
        }))
    }

    /// Create Olm sessions from a `/keys/claim` answer. Each key's signature is checked
    /// against the device's ed25519 key; a device whose key fails gets no session.
    pub fn mark_keys_claim_sent(
        &self,
        response: &claim_keys::v3::Response,
    ) -> Result<ClaimOutcome, CryptoError> {
        let mut state = self.lock()?;
        let users: Vec<&str> = response.one_time_keys.keys().map(|u| u.as_str()).collect();
        let devices: HashMap<(String, String), DeviceRecord> = self
            .store
            .devices(&users)?
            .into_iter()
            .map(|d| ((d.user_id.clone(), d.device_id.clone()), d))
            .collect();
        let mut outcome = ClaimOutcome::default();
        let mut changes = Changes::default();
        for (user, by_device) in &response.one_time_keys {
            for (device_id, keys) in by_device {
                let (user, device_id) = (user.to_string(), device_id.to_string());
                let result = devices
                    .get(&(user.clone(), device_id.clone()))
                    .ok_or(OneTimeKeyError::UnknownDevice)
                    .and_then(|device| {
                        let (_, key) = keys
                            .iter()
                            .find(|(id, _)| id.algorithm().as_str() == SIGNED_CURVE25519)
                            .ok_or_else(|| OneTimeKeyError::Malformed("no signed key".into()))?;
                        let key = json_of(key)
                            .ok_or_else(|| OneTimeKeyError::Malformed("not JSON".into()))?;
                        session_from_claimed_key(&state.account.inner, device, &key)
                    });
                match result {
                    Ok(session) => {
                        changes.olm_sessions.push(session.to_record()?);
                        outcome.sessions_created += 1;
                    }
                    Err(e) => {
                        warn!(user, device_id, error = %e, "no Olm session from claimed key");
                        outcome.failed.push((user, device_id, e));
                    }
                }
            }
        }
        self.save(&mut state, changes)?;
        Ok(outcome)
    }

    /// Share the room's current outbound session with every eligible device of `users` that
    /// does not have it yet, creating or rotating the session as needed. Returns the
    /// to-device requests (at most [`TO_DEVICE_BATCH`] devices each); they are also stored and
    /// returned by [`Self::outgoing_requests`] until reported sent, with the same transaction
    /// ids. Devices without an Olm session are skipped: call [`Self::missing_sessions`] first.
    pub fn share_room_key(
        &self,
        room_id: &str,
        users: &[String],
        settings: RotationSettings,
    ) -> Result<Vec<OutgoingRequest>, CryptoError> {
        let mut state = self.lock()?;
        let members: HashSet<&str> = users.iter().map(String::as_str).collect();
        let refs: Vec<&str> = members.iter().copied().collect();
        let devices: Vec<DeviceRecord> = self
            .store
            .devices(&refs)?
            .into_iter()
            .filter(|d| eligible(d, &self.user_id, &self.device_id))
            .collect();

        let stored = self.store.outbound_group_session(room_id)?;
        let mut group = match stored.as_ref() {
            Some(record) => {
                let group = OutboundGroup::from_record(record)?;
                let left = group
                    .shared_with
                    .iter()
                    .any(|r| !members.contains(r.user_id.as_str()));
                let current: HashMap<(&str, &str), &str> = devices
                    .iter()
                    .map(|d| {
                        (
                            (d.user_id.as_str(), d.device_id.as_str()),
                            d.curve25519.as_str(),
                        )
                    })
                    .collect();
                // A recipient device that is gone or changed must not keep reading new messages.
                let device_gone = group.shared_with.iter().any(|r| {
                    members.contains(r.user_id.as_str())
                        && current.get(&(r.user_id.as_str(), r.device_id.as_str()))
                            != Some(&r.curve25519.as_str())
                });
                if group.expired(settings) || left || device_gone {
                    info!(room_id, "rotating the outbound Megolm session");
                    OutboundGroup::new(room_id)
                } else {
                    group
                }
            }
            None => OutboundGroup::new(room_id),
        };

        let already: HashSet<(String, String, String)> = group
            .shared_with
            .iter()
            .map(|r| (r.user_id.clone(), r.device_id.clone(), r.curve25519.clone()))
            .collect();
        let recipients: Vec<&DeviceRecord> = devices
            .iter()
            .filter(|d| {
                !already.contains(&(d.user_id.clone(), d.device_id.clone(), d.curve25519.clone()))
            })
            .collect();
        let keys: Vec<&str> = recipients.iter().map(|d| d.curve25519.as_str()).collect();
        let mut sessions: HashMap<String, OlmSession> = HashMap::new();
        for (key, records) in self.store.olm_sessions(&keys)? {
            if let Some(newest) = records
                .iter()
                .max_by_key(|r| (r.last_used_ms, r.created_ms))
            {
                sessions.insert(key, OlmSession::from_record(newest)?);
            }
        }

        let own_curve = state.account.curve25519();
        let own_ed = state.account.ed25519();
        let room_key = group.room_key_content();
        let index = group.session.message_index();
        let mut changes = Changes::default();
        if stored.as_ref().map(|r| r.session_id.as_str()) != Some(&group.session.session_id()) {
            // A new session: keep an inbound copy so our own messages decrypt too.
            let key = RoomKeyContent::parse(&room_key)?;
            let own = InboundGroup::from_room_key(
                &key,
                &own_curve,
                &own_ed,
                &self.user_id,
                &self.device_id,
            )?;
            changes.inbound_group_sessions.push(own.record);
        }
        let mut requests = Vec::new();
        let mut messages: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        let mut in_chunk = 0;
        let flush = |messages: &mut BTreeMap<String, BTreeMap<String, Value>>,
                     changes: &mut Changes,
                     requests: &mut Vec<OutgoingRequest>|
         -> Result<(), CryptoError> {
            if messages.is_empty() {
                return Ok(());
            }
            let pending = PendingToDevice {
                txn_id: TransactionId::new().to_string(),
                event_type: "m.room.encrypted".into(),
                messages_json: serde_json::to_string(&*messages)
                    .map_err(|e| CryptoError::CorruptState(e.to_string()))?,
            };
            requests.push(to_device_request(&pending)?);
            changes.pending_to_device.push(pending);
            messages.clear();
            Ok(())
        };
        let mut skipped = 0usize;
        for device in recipients {
            let Some(session) = sessions.get_mut(&device.curve25519) else {
                skipped += 1;
                continue;
            };
            let payload = OlmPayload {
                event_type: "m.room_key".into(),
                content: room_key.clone(),
                sender: self.user_id.clone(),
                sender_device: Some(self.device_id.clone()),
                recipient: device.user_id.clone(),
                recipient_keys: Ed25519Keys {
                    ed25519: device.ed25519.clone(),
                },
                keys: Ed25519Keys {
                    ed25519: own_ed.clone(),
                },
            };
            let content = session.encrypt(&own_curve, &payload)?;
            messages
                .entry(device.user_id.clone())
                .or_default()
                .insert(device.device_id.clone(), content);
            group.shared_with.push(ShareRecipient {
                user_id: device.user_id.clone(),
                device_id: device.device_id.clone(),
                curve25519: device.curve25519.clone(),
                index,
            });
            in_chunk += 1;
            if in_chunk == TO_DEVICE_BATCH {
                flush(&mut messages, &mut changes, &mut requests)?;
                in_chunk = 0;
            }
        }
        flush(&mut messages, &mut changes, &mut requests)?;
        if skipped > 0 {
            debug!(
                room_id,
                skipped, "devices without an Olm session get no room key"
            );
        }
        for session in sessions.values() {
            changes.olm_sessions.push(session.to_record()?);
        }
        changes.outbound_group_sessions.push(group.to_record()?);
        // Sessions, journal and the messages themselves are stored before anything is sent.
        self.save(&mut state, changes)?;
        Ok(requests)
    }

    /// Encrypt a room event with the room's outbound session (share it first). The advanced
    /// session is stored before the ciphertext is returned, so an index is never reused.
    pub fn encrypt_room_event(
        &self,
        room_id: &str,
        event_type: &str,
        content: &Value,
    ) -> Result<Value, CryptoError> {
        let mut state = self.lock()?;
        let record = self
            .store
            .outbound_group_session(room_id)?
            .ok_or_else(|| CryptoError::RoomNotEncrypted(room_id.to_owned()))?;
        let mut group = OutboundGroup::from_record(&record)?;
        let own_curve = state.account.curve25519();
        let encrypted = group.encrypt(event_type, content, &own_curve, &self.device_id)?;
        self.save(
            &mut state,
            Changes {
                outbound_group_sessions: vec![group.to_record()?],
                ..Default::default()
            },
        )?;
        Ok(encrypted)
    }

    /// A to-device request was accepted by the server.
    pub fn mark_to_device_sent(&self, txn_id: &str) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        self.save(
            &mut state,
            Changes {
                sent_to_device: vec![txn_id.to_owned()],
                ..Default::default()
            },
        )
    }

    /// Forget the room's outbound session; the next share creates a new one.
    pub fn discard_room_key(&self, room_id: &str) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        self.save(
            &mut state,
            Changes {
                discarded_outbound_sessions: vec![room_id.to_owned()],
                ..Default::default()
            },
        )
    }
}

/// Verify a claimed one-time key and create an outbound session with it.
fn session_from_claimed_key(
    account: &vodozemac::olm::Account,
    device: &DeviceRecord,
    key: &Value,
) -> Result<OlmSession, OneTimeKeyError> {
    let ed = Ed25519PublicKey::from_base64(&device.ed25519)
        .map_err(|e| OneTimeKeyError::Malformed(format!("device ed25519: {e}")))?;
    verify_json(
        key,
        &device.user_id,
        &format!("ed25519:{}", device.device_id),
        &ed,
    )
    .map_err(|e| OneTimeKeyError::BadSignature(e.to_string()))?;
    let otk = key
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| OneTimeKeyError::Malformed("missing key".into()))?;
    let otk = Curve25519PublicKey::from_base64(otk)
        .map_err(|e| OneTimeKeyError::Malformed(format!("one-time key: {e}")))?;
    let identity = Curve25519PublicKey::from_base64(&device.curve25519)
        .map_err(|e| OneTimeKeyError::Malformed(format!("identity key: {e}")))?;
    let session = account
        .create_outbound_session(SessionConfig::version_1(), identity, otk)
        .map_err(|e| OneTimeKeyError::SessionCreation(e.to_string()))?;
    Ok(OlmSession::new(device.curve25519.clone(), session))
}
