//! Olm session establishment: `/keys/claim` for devices we have no session with, and
//! repairs (a new session for a wedged one, announced with `m.dummy`; a session to answer an
//! own device's key requests).

use std::collections::{BTreeMap, HashMap, HashSet};

use ruma::api::client::keys::claim_keys;
use ruma::events::ToDeviceEventType;
use ruma::{DeviceId, OneTimeKeyAlgorithm, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{Value, json};
use tracing::{info, warn};
use vodozemac::olm::SessionConfig;
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey};

use super::account::SIGNED_CURVE25519;
use super::context::sub_machine;
use super::error::{CryptoError, OneTimeKeyError};
use super::key_requests::KeyRequests;
use super::olm::{OlmPayload, OlmSession};
use super::outbox::ToDeviceBatcher;
use super::outcomes::ClaimOutcome;
use super::requests::{OutgoingKind, OutgoingRequest};
use super::responses::KeysClaimResponse;
use super::signing::verify_json;
use super::state::State;
use super::state::{MAX_ANSWER_CLAIMS, UNWEDGE_INTERVAL_MS};
use crate::store::{Changes, DeviceRecord, LocalTrust, UnwedgeRecord, quota};

// The store forgets an unwedge record only once it can no longer hold back an unwedging.
const _: () = assert!(UNWEDGE_INTERVAL_MS <= quota::UNWEDGE_RECORD_LIFETIME_MS);

/// Devices we may encrypt for: not ours, not deleted, not blacklisted.
fn eligible(device: &DeviceRecord, own_user: &UserId, own_device: &DeviceId) -> bool {
    let own = device.user_id == own_user && device.device_id == own_device;
    // An id an older version stored (e.g. `*`, which would address every device) is never
    // addressed.
    let addressable = super::devices::check_device_id(device.device_id.as_str()).is_ok();
    !own && addressable && !device.deleted && device.local_trust != LocalTrust::Blacklisted
}

sub_machine! {
    /// Olm session establishment and repair (`/keys/claim`).
    OlmSessions
}

impl OlmSessions<'_> {
    /// A `/keys/claim` request for every device of `users` we have no Olm session with, or
    /// `None` if there is none. All devices go into one request.
    pub(crate) fn missing_sessions(
        &self,
        state: &mut State,
        users: &[OwnedUserId],
    ) -> Result<Option<OutgoingRequest>, CryptoError> {
        let refs: Vec<&UserId> = users.iter().map(|u| u.as_ref()).collect();
        let devices: Vec<DeviceRecord> = self
            .ctx
            .store
            .devices(&refs)?
            .into_iter()
            .filter(|d| eligible(d, self.ctx.user_id, self.ctx.device_id))
            .collect();
        let keys: Vec<&str> = devices.iter().map(|d| d.curve25519.as_str()).collect();
        let with_session: HashSet<String> =
            self.ctx.store.olm_sessions(&keys)?.into_keys().collect();
        let mut request = claim_keys::v3::Request::new(BTreeMap::new());
        for device in devices
            .iter()
            .filter(|d| !with_session.contains(&d.curve25519))
        {
            claim_one(&mut request, device);
        }
        if request.one_time_keys.is_empty() {
            return Ok(None);
        }
        let id = state.ids.next("claim");
        Ok(Some(OutgoingRequest {
            id,
            kind: OutgoingKind::KeysClaim(request),
        }))
    }

    /// Create Olm sessions from a `/keys/claim` answer. Each key's signature is checked
    /// against the device's ed25519 key; a device whose key fails gets no session.
    pub(crate) fn mark_keys_claim_sent(
        &self,
        state: &mut State,
        response: &KeysClaimResponse,
    ) -> Result<ClaimOutcome, CryptoError> {
        let users: Vec<&UserId> = response.one_time_keys.keys().map(|u| u.as_ref()).collect();
        let devices: HashMap<(OwnedUserId, OwnedDeviceId), DeviceRecord> = self
            .ctx
            .store
            .devices(&users)?
            .into_iter()
            .map(|d| ((d.user_id.clone(), d.device_id.clone()), d))
            .collect();
        let mut outcome = ClaimOutcome::default();
        let mut changes = Changes::default();
        let mut dummies = ToDeviceBatcher::new(ToDeviceEventType::RoomEncrypted);
        let mut answerable = Vec::new();
        let now = state.now_ms();
        for (user, by_device) in &response.one_time_keys {
            for (device_id, keys) in by_device {
                let (user, device_id) = (user.clone(), OwnedDeviceId::from(device_id.as_str()));
                let result = devices
                    .get(&(user.clone(), device_id.clone()))
                    .ok_or(OneTimeKeyError::UnknownDevice)
                    .and_then(|device| {
                        let prefix = format!("{SIGNED_CURVE25519}:");
                        let (_, key) = keys
                            .iter()
                            .find(|(id, _)| id.starts_with(&prefix))
                            .ok_or_else(|| OneTimeKeyError::Malformed("no signed key".into()))?;
                        session_from_claimed_key(&state.account.inner, device, key, now)
                    });
                match result {
                    Ok(mut session) => {
                        if let Some(device) = state.unwedging.wedged.remove(&session.sender_key) {
                            // The new session announces itself; the peer drops the wedged one.
                            let payload = OlmPayload::to_device(
                                &state.account,
                                &device,
                                "m.dummy",
                                json!({}),
                            );
                            let content =
                                session.encrypt(&state.account.curve25519(), &payload, now)?;
                            dummies.push(&device, content);
                            changes.crypto.unwedge_records.push(UnwedgeRecord {
                                curve25519: device.curve25519.clone(),
                                unwedged_ms: now,
                            });
                            info!(user = %device.user_id, device = %device.device_id, "unwedging an Olm session");
                        }
                        if let Some((_, requests, _)) =
                            state.held.awaiting_session.remove(&session.sender_key)
                        {
                            answerable.extend(requests);
                        }
                        changes.crypto.olm_sessions.push(session.to_record()?);
                        outcome.sessions_created += 1;
                    }
                    Err(e) => {
                        warn!(%user, %device_id, error = %e, "no Olm session from claimed key");
                        if let Some(device) = devices.get(&(user.clone(), device_id.clone())) {
                            // No key to make a session with: its requests are dropped.
                            state.held.awaiting_session.remove(&device.curve25519);
                        }
                        outcome.failed.push((user, device_id, e));
                    }
                }
            }
        }
        dummies.finish(&mut changes)?;
        self.ctx.save(state, changes)?;
        if !answerable.is_empty() {
            // The sessions are stored now: answer the key requests that waited for them.
            let mut changes = Changes::default();
            KeyRequests::new(self.ctx).answer_key_requests(state, answerable, &mut changes)?;
            self.ctx.save(state, changes)?;
        }
        Ok(outcome)
    }

    /// A `/keys/claim` for devices we need a new Olm session with: those whose Olm messages
    /// we could not decrypt (a wedged session; at most once per device per hour; the new
    /// session sends an `m.dummy` so the other side switches to it), and own devices whose
    /// key requests we want to answer but have no session with (answered when the claim is).
    pub(crate) fn session_repair_request(
        &self,
        state: &mut State,
    ) -> Result<Option<OutgoingRequest>, CryptoError> {
        let now = state.now_ms();
        let mut request = claim_keys::v3::Request::new(BTreeMap::new());
        // A device that got no session from a few claims (no keys, or gone): its requests
        // are dropped.
        state
            .held
            .awaiting_session
            .retain(|_, (_, _, claims)| *claims < MAX_ANSWER_CLAIMS);
        for (device, _, claims) in state.held.awaiting_session.values_mut() {
            *claims += 1;
            claim_one(&mut request, device);
        }
        let mut due = Vec::new();
        for (key, device) in &state.unwedging.wedged {
            let last = self
                .ctx
                .store
                .unwedge_record(key)?
                .map_or(0, |u| u.unwedged_ms);
            if now.saturating_sub(last) < UNWEDGE_INTERVAL_MS {
                due.push((key.clone(), false));
                continue;
            }
            claim_one(&mut request, device);
            due.push((key.clone(), true));
        }
        // Devices unwedged less than an hour ago are dropped from the queue; for the others
        // the attempt counts (whether or not the claim brings a key), so that a device we
        // cannot make a session with is not claimed again on every sync.
        let mut attempts = Changes::default();
        for (key, wanted) in due {
            if wanted {
                attempts.crypto.unwedge_records.push(UnwedgeRecord {
                    curve25519: key,
                    unwedged_ms: now,
                });
            } else {
                state.unwedging.wedged.remove(&key);
            }
        }
        self.ctx.save(state, attempts)?;
        if request.one_time_keys.is_empty() {
            return Ok(None);
        }
        let id = state.ids.next("claim");
        Ok(Some(OutgoingRequest {
            id,
            kind: OutgoingKind::KeysClaim(request),
        }))
    }
}

/// Verify a claimed one-time key and create an outbound session with it.
fn session_from_claimed_key(
    account: &vodozemac::olm::Account,
    device: &DeviceRecord,
    key: &Value,
    now: u64,
) -> Result<OlmSession, OneTimeKeyError> {
    let ed = Ed25519PublicKey::from_base64(&device.ed25519)
        .map_err(|e| OneTimeKeyError::Malformed(format!("device ed25519: {e}")))?;
    verify_json(
        key,
        device.user_id.as_str(),
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
    Ok(OlmSession::new(device.curve25519.clone(), session, now))
}

/// Ask for one signed one-time key of `device` in `request`.
fn claim_one(request: &mut claim_keys::v3::Request, device: &DeviceRecord) {
    request
        .one_time_keys
        .entry(device.user_id.clone())
        .or_default()
        .insert(
            device.device_id.clone(),
            OneTimeKeyAlgorithm::SignedCurve25519,
        );
}
