//! Olm session establishment (`/keys/claim`) and Megolm room-key sharing.

use std::collections::{BTreeMap, HashMap, HashSet};

use ruma::api::client::keys::claim_keys;
use ruma::api::client::to_device::send_event_to_device;
use ruma::events::ToDeviceEventType;
use ruma::to_device::DeviceIdOrAllDevices;
use ruma::{OneTimeKeyAlgorithm, OwnedDeviceId, OwnedTransactionId, OwnedUserId, TransactionId};
use serde_json::{Value, json};
use tracing::{info, warn};
use vodozemac::olm::SessionConfig;
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey};

use super::account::{MEGOLM_ALGORITHM, SIGNED_CURVE25519};
use super::error::{CryptoError, OneTimeKeyError};
use super::machine::{ClaimOutcome, OlmMachine};
use super::megolm::{InboundGroup, OutboundGroup, RoomKeyContent, RotationSettings};
use super::olm::{Ed25519Keys, OlmPayload, OlmSession};
use super::requests::{OutgoingKind, OutgoingRequest, raw};
use super::responses::KeysClaimResponse;
use super::signing::verify_json;
use crate::store::{
    Changes, DeviceRecord, LocalTrust, OutboundGroupSessionRecord, PendingToDevice, SecretBlob,
    ShareRecipient,
};

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
            let device = if device == "*" {
                DeviceIdOrAllDevices::AllDevices
            } else {
                DeviceIdOrAllDevices::DeviceId(OwnedDeviceId::from(device))
            };
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
    // An id an older version stored (e.g. `*`, which would address every device) is never
    // addressed.
    let addressable = super::devices::check_device_id(&device.device_id).is_ok();
    !own && addressable && !device.deleted && device.local_trust != LocalTrust::Blacklisted
}

impl OlmMachine {
    /// The plaintext of an Olm message from this device to `device`.
    pub(super) fn payload_for(
        &self,
        device: &DeviceRecord,
        own_ed25519: &str,
        event_type: &str,
        content: Value,
    ) -> OlmPayload {
        OlmPayload {
            event_type: event_type.into(),
            content,
            sender: self.user_id.clone(),
            sender_device: Some(self.device_id.clone()),
            recipient: device.user_id.clone(),
            recipient_keys: Ed25519Keys {
                ed25519: device.ed25519.clone(),
            },
            keys: Ed25519Keys {
                ed25519: own_ed25519.to_owned(),
            },
        }
    }

    fn is_own_device(&self, device: &DeviceRecord) -> bool {
        device.user_id == self.user_id && device.device_id == self.device_id
    }

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
        response: &KeysClaimResponse,
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
        let mut dummies = ToDeviceBatcher::new("m.room.encrypted");
        let mut answerable = Vec::new();
        for (user, by_device) in &response.one_time_keys {
            for (device_id, keys) in by_device {
                let (user, device_id) = (user.to_string(), device_id.clone());
                let result = devices
                    .get(&(user.clone(), device_id.clone()))
                    .ok_or(OneTimeKeyError::UnknownDevice)
                    .and_then(|device| {
                        let prefix = format!("{SIGNED_CURVE25519}:");
                        let (_, key) = keys
                            .iter()
                            .find(|(id, _)| id.starts_with(&prefix))
                            .ok_or_else(|| OneTimeKeyError::Malformed("no signed key".into()))?;
                        session_from_claimed_key(&state.account.inner, device, key)
                    });
                match result {
                    Ok(mut session) => {
                        if let Some(device) = state.wedged.remove(&session.sender_key) {
                            // The new session announces itself; the peer drops the wedged one.
                            let payload = self.payload_for(
                                &device,
                                &state.account.ed25519(),
                                "m.dummy",
                                json!({}),
                            );
                            let content = session.encrypt(&state.account.curve25519(), &payload)?;
                            dummies.push(&device, content);
                            changes.values.insert(
                                unwedge_key(&device.curve25519),
                                crate::time::now_ms().to_string(),
                            );
                            info!(user = %device.user_id, device = %device.device_id, "unwedging an Olm session");
                        }
                        if let Some((_, requests, _)) =
                            state.awaiting_session.remove(&session.sender_key)
                        {
                            answerable.extend(requests);
                        }
                        changes.olm_sessions.push(session.to_record()?);
                        outcome.sessions_created += 1;
                    }
                    Err(e) => {
                        warn!(user, device_id, error = %e, "no Olm session from claimed key");
                        if let Some(device) = devices.get(&(user.clone(), device_id.clone())) {
                            // No key to make a session with: its requests are dropped.
                            state.awaiting_session.remove(&device.curve25519);
                        }
                        outcome.failed.push((user, device_id, e));
                    }
                }
            }
        }
        dummies.finish(&mut changes)?;
        self.save(&mut state, changes)?;
        if !answerable.is_empty() {
            // The sessions are stored now: answer the key requests that waited for them.
            let mut changes = Changes::default();
            self.answer_key_requests(&mut state, answerable, &mut changes)?;
            self.save(&mut state, changes)?;
        }
        Ok(outcome)
    }

    /// Share the room's current outbound session with every eligible device of `users` that
    /// does not have it yet, creating or rotating the session as needed. Returns the
    /// to-device requests (at most [`TO_DEVICE_BATCH`] devices each); they are also stored and
    /// returned by [`Self::outgoing_requests`] until reported sent, with the same transaction
    /// ids. Devices left out on purpose get an `m.room_key.withheld` notice instead, once per
    /// session: blacklisted ones (`m.blacklisted`), unverified ones when sharing with verified
    /// devices only (`m.unverified`), and those we have no Olm session with (`m.no_olm`; call
    /// [`Self::missing_sessions`] first).
    pub fn share_room_key(
        &self,
        room_id: &str,
        users: &[String],
        settings: RotationSettings,
    ) -> Result<Vec<OutgoingRequest>, CryptoError> {
        let mut state = self.lock()?;
        let members: HashSet<&str> = users.iter().map(String::as_str).collect();
        let refs: Vec<&str> = members.iter().copied().collect();
        let verified_only = self.shares_with_verified_only()?;
        let (devices, left_out): (Vec<DeviceRecord>, Vec<DeviceRecord>) = self
            .store
            .devices(&refs)?
            .into_iter()
            .filter(|d| !d.deleted && !self.is_own_device(d))
            .filter(|d| super::devices::check_device_id(&d.device_id).is_ok())
            .partition(|d| left_out_because(d, verified_only).is_none());

        let stored = self.store.outbound_group_session(room_id)?;
        let mut group = match stored.as_ref() {
            Some(record) => {
                let group = OutboundGroup::from_record(record)?;
                if group.expired(settings) || needs_rotation(&group, &members, &devices) {
                    info!(room_id, "rotating the outbound Megolm session");
                    OutboundGroup::new(room_id)
                } else {
                    group
                }
            }
            None => OutboundGroup::new(room_id),
        };

        let journal: HashMap<(String, String, String), bool> = group
            .shared_with
            .iter()
            .map(|r| {
                (
                    (r.user_id.clone(), r.device_id.clone(), r.curve25519.clone()),
                    r.withheld.is_none(),
                )
            })
            .collect();
        let id_of =
            |d: &DeviceRecord| (d.user_id.clone(), d.device_id.clone(), d.curve25519.clone());
        // Devices that do not have the key yet (withheld ones get it once they can).
        let recipients: Vec<&DeviceRecord> = devices
            .iter()
            .filter(|d| journal.get(&id_of(d)) != Some(&true))
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
        let session_id = group.session.session_id();
        let mut changes = Changes::default();
        if stored.as_ref().map(|r| r.session_id.as_str()) != Some(session_id.as_str()) {
            // A new session: keep an inbound copy so our own messages decrypt too.
            let key = RoomKeyContent::parse(&room_key)?;
            let own = InboundGroup::from_room_key(
                &key,
                &own_curve,
                &own_ed,
                Some((&self.user_id, Some(&self.device_id))),
            )?;
            changes.inbound_group_sessions.push(own.record);
        }
        let mut keys_out = ToDeviceBatcher::room_keys(room_id, &session_id);
        let mut notices = ToDeviceBatcher::new("m.room_key.withheld");
        let mut withhold =
            |device: &DeviceRecord, code: &str, reason: &str, group: &mut OutboundGroup| {
                if journal.contains_key(&id_of(device)) {
                    return; // already told, once per session
                }
                notices.push(
                    device,
                    json!({
                        "algorithm": MEGOLM_ALGORITHM, "room_id": room_id, "session_id": session_id,
                        "sender_key": own_curve, "code": code, "reason": reason,
                    }),
                );
                group.shared_with.push(ShareRecipient {
                    user_id: device.user_id.clone(),
                    device_id: device.device_id.clone(),
                    curve25519: device.curve25519.clone(),
                    index,
                    withheld: Some(code.to_owned()),
                });
            };
        for device in &left_out {
            if let Some((code, reason)) = left_out_because(device, verified_only) {
                withhold(device, code, reason, &mut group);
            }
        }
        for device in recipients {
            let Some(session) = sessions.get_mut(&device.curve25519) else {
                withhold(
                    device,
                    "m.no_olm",
                    "Unable to establish a secure channel",
                    &mut group,
                );
                continue;
            };
            // A device that got `m.no_olm` gets the key from the index it was entitled to
            // then (kept for this), so the messages it missed decrypt too.
            let earlier = group
                .shared_with
                .iter()
                .find(|r| {
                    id_of(device) == (r.user_id.clone(), r.device_id.clone(), r.curve25519.clone())
                        && r.withheld.as_deref() == Some("m.no_olm")
                        && r.index < index
                })
                .map(|r| r.index);
            let (content, shared_at) = match earlier {
                Some(at) => match self
                    .store
                    .secret_value(&no_olm_key(room_id, &session_id, at))?
                {
                    Some(key) => {
                        let mut content = room_key.clone();
                        content["session_key"] =
                            String::from_utf8_lossy(key.as_bytes()).into_owned().into();
                        (content, at)
                    }
                    None => (room_key.clone(), index),
                },
                None => (room_key.clone(), index),
            };
            let payload = self.payload_for(device, &own_ed, "m.room_key", content);
            keys_out.push(device, session.encrypt(&own_curve, &payload)?);
            group.shared_with.retain(|r| {
                (r.user_id.as_str(), r.device_id.as_str()) != (&device.user_id, &device.device_id)
            });
            group.shared_with.push(ShareRecipient {
                user_id: device.user_id.clone(),
                device_id: device.device_id.clone(),
                curve25519: device.curve25519.clone(),
                index: shared_at,
                withheld: None,
            });
        }
        let withheld_now = group
            .shared_with
            .iter()
            .any(|r| r.withheld.as_deref() == Some("m.no_olm") && r.index == index);
        if withheld_now && let Some(key) = room_key["session_key"].as_str() {
            // The session key at this index, encrypted at rest, for the retry.
            changes.secret_values.insert(
                no_olm_key(room_id, &session_id, index),
                SecretBlob::new(key.as_bytes().to_vec()),
            );
        }
        let mut requests = keys_out.finish(&mut changes)?;
        requests.extend(notices.finish(&mut changes)?);
        for session in sessions.values() {
            changes.olm_sessions.push(session.to_record()?);
        }
        changes.outbound_group_sessions.push(group.to_record()?);
        // Sessions, journal and the messages themselves are stored before anything is sent.
        self.save(&mut state, changes)?;
        Ok(requests)
    }

    /// A `/keys/claim` for devices we need a new Olm session with: those whose Olm messages
    /// we could not decrypt (a wedged session; at most once per device per hour; the new
    /// session sends an `m.dummy` so the other side switches to it), and own devices whose
    /// key requests we want to answer but have no session with (answered when the claim is).
    pub fn session_repair_request(&self) -> Result<Option<OutgoingRequest>, CryptoError> {
        let mut state = self.lock()?;
        let now = crate::time::now_ms();
        let mut request = claim_keys::v3::Request::new(BTreeMap::new());
        // A device that got no session from a few claims (no keys, or gone): its requests
        // are dropped.
        state
            .awaiting_session
            .retain(|_, (_, _, claims)| *claims < super::machine::MAX_ANSWER_CLAIMS);
        for (device, _, claims) in state.awaiting_session.values_mut() {
            *claims += 1;
            if let Ok(user) = OwnedUserId::try_from(device.user_id.as_str()) {
                request.one_time_keys.entry(user).or_default().insert(
                    device.device_id.as_str().into(),
                    OneTimeKeyAlgorithm::SignedCurve25519,
                );
            }
        }
        let mut due = Vec::new();
        for (key, device) in &state.wedged {
            let last: u64 = self
                .store
                .value(&unwedge_key(key))?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if now.saturating_sub(last) < super::machine::UNWEDGE_INTERVAL_MS {
                due.push((key.clone(), false));
                continue;
            }
            let Ok(user) = OwnedUserId::try_from(device.user_id.as_str()) else {
                continue;
            };
            request.one_time_keys.entry(user).or_default().insert(
                device.device_id.as_str().into(),
                OneTimeKeyAlgorithm::SignedCurve25519,
            );
            due.push((key.clone(), true));
        }
        // Devices unwedged less than an hour ago are dropped from the queue; for the others
        // the attempt counts (whether or not the claim brings a key), so that a device we
        // cannot make a session with is not claimed again on every sync.
        let mut attempts = Changes::default();
        for (key, wanted) in due {
            if wanted {
                attempts.values.insert(unwedge_key(&key), now.to_string());
            } else {
                state.wedged.remove(&key);
            }
        }
        self.save(&mut state, attempts)?;
        if request.one_time_keys.is_empty() {
            return Ok(None);
        }
        let id = state.next_id("claim");
        Ok(Some(OutgoingRequest {
            id,
            kind: OutgoingKind::KeysClaim(request),
        }))
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

    /// A to-device request was refused for good (the server will never accept it): it is
    /// dropped, so that it does not hold up the others. If it carried a room key, its
    /// recipients no longer count as having it: the next share sends it again (from the
    /// session's index then).
    pub fn mark_to_device_failed(&self, txn_id: &str) -> Result<(), CryptoError> {
        warn!(txn_id, "a to-device message was refused for good; dropped");
        let mut state = self.lock()?;
        let mut changes = Changes {
            sent_to_device: vec![txn_id.to_owned()],
            ..Default::default()
        };
        let refused = self
            .store
            .pending_to_device()?
            .into_iter()
            .find(|p| p.txn_id == txn_id);
        if let Some(record) = refused.map(|p| self.unshared(&p)).transpose()?.flatten() {
            info!(room_id = %record.room_id, "recipients of a refused room key get it again");
            changes.outbound_group_sessions.push(record);
        }
        self.save(&mut state, changes)
    }

    /// The room's outbound session without the recipients of `refused`, if that request
    /// carried the room's current session.
    fn unshared(
        &self,
        refused: &PendingToDevice,
    ) -> Result<Option<OutboundGroupSessionRecord>, CryptoError> {
        let Some((room_id, session_id)) = &refused.room_key else {
            return Ok(None);
        };
        let Some(mut record) = self.store.outbound_group_session(room_id)? else {
            return Ok(None);
        };
        let targets: BTreeMap<String, BTreeMap<String, Value>> =
            serde_json::from_str(&refused.messages_json).unwrap_or_default();
        if &record.session_id != session_id {
            return Ok(None);
        }
        record.shared_with.retain(|r| {
            !targets
                .get(&r.user_id)
                .is_some_and(|devices| devices.contains_key(&r.device_id))
        });
        Ok(Some(record))
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

    /// Devices of the room's current outbound session that were sent `m.no_olm` instead of
    /// the key (no Olm session could be made: no one-time key and no fallback key) and
    /// have not received it since: `(user id, device id)`. Sharing again retries them.
    pub fn devices_without_olm(&self, room_id: &str) -> Result<Vec<(String, String)>, CryptoError> {
        Ok(self
            .store
            .outbound_group_session(room_id)?
            .map(|record| {
                record
                    .shared_with
                    .into_iter()
                    .filter(|r| r.withheld.as_deref() == Some("m.no_olm"))
                    .map(|r| (r.user_id, r.device_id))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Share room keys only with devices the user verified (persisted). Other devices get
    /// `m.room_key.withheld` with code `m.unverified`, once per session, and the key as soon as
    /// they are verified. Turning it on rotates sessions that unverified devices have.
    pub fn set_share_with_verified_only(&self, on: bool) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        let mut changes = Changes::default();
        // A secret value: encrypted and bound to its key, so it cannot be edited in the file.
        changes.secret_values.insert(
            VERIFIED_ONLY_KEY.to_owned(),
            SecretBlob::new(on.to_string().into_bytes()),
        );
        self.save(&mut state, changes)
    }

    /// Whether room keys go to verified devices only (see
    /// [`Self::set_share_with_verified_only`]).
    pub fn shares_with_verified_only(&self) -> Result<bool, CryptoError> {
        let value = self.store.secret_value(VERIFIED_ONLY_KEY)?;
        Ok(value.is_some_and(|v| v.as_bytes() == b"true"))
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

/// Store key of the time a device was last unwedged.
/// Store key of the session key at `index`, kept for devices that got `m.no_olm` there.
fn no_olm_key(room_id: &str, session_id: &str, index: u32) -> String {
    format!("no_olm_key|{room_id}|{session_id}|{index}")
}

fn unwedge_key(curve25519: &str) -> String {
    format!("unwedge|{curve25519}")
}

/// Why a device gets an `m.room_key.withheld` instead of the room key: `(code, reason)`.
fn left_out_because(
    device: &DeviceRecord,
    verified_only: bool,
) -> Option<(&'static str, &'static str)> {
    if device.local_trust == LocalTrust::Blacklisted {
        Some(("m.blacklisted", "You have been blocked by this device"))
    } else if verified_only && device.local_trust != LocalTrust::Verified {
        Some((
            "m.unverified",
            "This device only shares keys with verified devices",
        ))
    } else {
        None
    }
}

use crate::store::VERIFIED_ONLY_KEY;

/// Whether the recipients changed in a way that must cut them off from new messages: a
/// member left, or a device that got the key is gone, changed, blacklisted or (when sharing
/// with verified devices only) no longer verified.
fn needs_rotation(
    group: &OutboundGroup,
    members: &HashSet<&str>,
    devices: &[DeviceRecord],
) -> bool {
    let current: HashMap<(&str, &str), &str> = devices
        .iter()
        .map(|d| {
            (
                (d.user_id.as_str(), d.device_id.as_str()),
                d.curve25519.as_str(),
            )
        })
        .collect();
    group
        .shared_with
        .iter()
        .filter(|r| r.withheld.is_none())
        .any(|r| {
            !members.contains(r.user_id.as_str())
                || current.get(&(r.user_id.as_str(), r.device_id.as_str()))
                    != Some(&r.curve25519.as_str())
        })
}

/// Collects to-device messages of one event type into stored requests of at most
/// [`TO_DEVICE_BATCH`] devices each.
struct ToDeviceBatcher {
    event_type: &'static str,
    chunks: Vec<BTreeMap<String, BTreeMap<String, Value>>>,
    in_chunk: usize,
    /// The room and session whose key the messages carry, if they do.
    room_key: Option<(String, String)>,
}

impl ToDeviceBatcher {
    fn new(event_type: &'static str) -> Self {
        Self {
            event_type,
            chunks: Vec::new(),
            in_chunk: TO_DEVICE_BATCH,
            room_key: None,
        }
    }

    /// Batches of room keys of `session_id` in `room_id`.
    fn room_keys(room_id: &str, session_id: &str) -> Self {
        Self {
            room_key: Some((room_id.to_owned(), session_id.to_owned())),
            ..Self::new("m.room.encrypted")
        }
    }

    fn push(&mut self, device: &DeviceRecord, content: Value) {
        if self.in_chunk == TO_DEVICE_BATCH {
            self.chunks.push(BTreeMap::new());
            self.in_chunk = 0;
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk
                .entry(device.user_id.clone())
                .or_default()
                .insert(device.device_id.clone(), content);
            self.in_chunk += 1;
        }
    }

    /// Store the requests in `changes` (sent until confirmed) and return them.
    fn finish(self, changes: &mut Changes) -> Result<Vec<OutgoingRequest>, CryptoError> {
        let mut requests = Vec::new();
        for chunk in self.chunks {
            let pending = PendingToDevice {
                txn_id: TransactionId::new().to_string(),
                event_type: self.event_type.into(),
                messages_json: serde_json::to_string(&chunk)
                    .map_err(|e| CryptoError::CorruptState(e.to_string()))?,
                room_key: self.room_key.clone(),
            };
            requests.push(to_device_request(&pending)?);
            changes.pending_to_device.push(pending);
        }
        Ok(requests)
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
