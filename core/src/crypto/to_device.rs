//! Handling of to-device events: Olm decryption and room keys.

use ruma::events::room_key::withheld::RoomKeyWithheldCode;
use ruma::{DeviceId, OwnedRoomId, OwnedUserId};
use serde_json::Value;
use tracing::{debug, warn};
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{OlmMessage, SessionConfig};
use zeroize::Zeroizing;

use super::account::OwnAccount;
use super::batch::Batch;
use super::context::sub_machine;
use super::error::{CryptoError, OlmError};
use super::key_requests::KeyRequests;
use super::keys_query::DeviceTracker;
use super::megolm::{InboundGroup, Merge, RoomKeyContent, merge};
use super::olm::{IncomingOlm, OlmPayload, OlmSession};
use super::outcomes::{RoomKeyInfo, ToDeviceOutcome};
use super::state::State;
use crate::store::{Changes, DeviceRecord, LocalTrust, WithheldNotice};

/// The event types of interactive verification.
const VERIFICATION_PREFIX: &str = "m.key.verification.";

fn str_of<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// What one batch of to-device events produced.
pub(crate) struct HandledBatch {
    /// The outcome per event, in order.
    pub outcomes: Vec<ToDeviceOutcome>,
    /// The room keys accepted.
    pub room_keys: Vec<RoomKeyInfo>,
    /// A one-time key was used: the account is stored with the batch.
    pub account_changed: bool,
    /// The verification messages, in clear or out of Olm, in order (see `verification/`).
    pub verification: Vec<Value>,
}

sub_machine! {
    /// To-device events: Olm decryption, room keys, withheld notices.
    ToDeviceHandler
}

impl ToDeviceHandler<'_> {
    pub(crate) fn handle_to_device_batch(
        &self,
        state: &mut State,
        events: &[Value],
        changes: &mut Changes,
    ) -> Result<HandledBatch, CryptoError> {
        let mut batch = Batch::for_events(self.ctx.store, events)?;
        let own_curve = state.account.curve25519();
        // In the same batch: answering may advance a session the events then use.
        KeyRequests::new(self.ctx).answer_deferred_key_requests(state, &mut batch, changes)?;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut room_keys = Vec::new();
        for event in events {
            let event_type = str_of(event, "type").to_owned();
            let sender = str_of(event, "sender").to_owned();
            let result = match event_type.as_str() {
                "m.room.encrypted" => {
                    let rk = &mut room_keys;
                    self.handle_encrypted(state, &mut batch, event, &own_curve, rk, changes)?
                }
                "m.room_key.withheld" => self.handle_withheld(&mut batch, event, changes)?,
                "m.room_key_request" => KeyRequests::new(self.ctx)
                    .handle_key_request(state, &mut batch, event, changes)?,
                t if t.starts_with(VERIFICATION_PREFIX) => {
                    batch.verification.push(event.clone());
                    Ok(event_type.clone())
                }
                "m.room_key" | "m.forwarded_room_key" => {
                    warn!(sender, "dropping a room key that was not Olm-encrypted");
                    Err(OlmError::RoomKeyNotOverOlm(event_type.clone()))
                }
                _ => Ok(event_type.clone()),
            };
            if let Err(e) = &result {
                warn!(sender, event_type, error = %e, "to-device event rejected");
            }
            outcomes.push(ToDeviceOutcome {
                event_type,
                sender,
                result,
            });
        }

        self.requery_unknown_senders(&batch, changes)?;
        for device in batch.wedged.drain(..) {
            state.unwedging.note(device);
        }
        let account_changed = batch.account_changed;
        let verification = std::mem::take(&mut batch.verification);
        batch.finish(self.ctx.store, self.ctx.signatures, changes)?;
        Ok(HandledBatch {
            outcomes,
            room_keys,
            account_changed,
            verification,
        })
    }

    /// An Olm message from a device we don't know means our list of its owner's devices is
    /// stale: re-query them, if we track them at all (a stranger's message does not make
    /// us start tracking anyone), and always our own user.
    fn requery_unknown_senders(
        &self,
        batch: &Batch,
        changes: &mut Changes,
    ) -> Result<(), CryptoError> {
        if batch.unknown_senders.is_empty() {
            return Ok(());
        }
        let mut tracked = DeviceTracker::new(self.ctx).tracked_by_user()?;
        for t in &changes.crypto.tracked_users {
            tracked.insert(t.user_id.clone(), t.clone());
        }
        for user in &batch.unknown_senders {
            let current = tracked.get(user);
            if !current.is_some_and(|t| t.is_tracked()) && user != self.ctx.user_id {
                continue;
            }
            debug!(
                %user,
                "message from an unknown device: re-querying the user's devices"
            );
            changes
                .crypto
                .tracked_users
                .push(crate::store::TrackedUser {
                    user_id: user.clone(),
                    state: crate::store::TrackingState::PendingDownload,
                    sequence: current.map_or(1, |t| t.sequence + 1),
                });
        }
        Ok(())
    }

    /// The message came from `sender_key` under `incoming.sender`, whose devices do not
    /// include that key. If a known device of another user has it and the payload names
    /// that device's Ed25519 key, the message is that device's and the sender was rewritten:
    /// refused. Devices of other users whose Ed25519 key the key's holder does not claim
    /// published a key they cannot use (squatters): dropped.
    fn check_other_claimants(
        &self,
        incoming: &IncomingOlm,
        payload: &OlmPayload,
        changes: &mut Changes,
    ) -> Result<Result<(), OlmError>, CryptoError> {
        let claimants: Vec<DeviceRecord> = self
            .ctx
            .store
            .devices_with_curve25519(&[&incoming.sender_key])?
            .into_iter()
            .filter(|d| !d.deleted && d.user_id != incoming.sender)
            .collect();
        if let Some(owner) = claimants.iter().find(|d| d.ed25519 == payload.keys.ed25519) {
            return Ok(Err(OlmError::PayloadMismatch {
                field: "sender",
                expected: owner.user_id.to_string(),
                got: incoming.sender.to_string(),
            }));
        }
        for squatter in claimants {
            tracing::warn!(
                user = %squatter.user_id, device = %squatter.device_id,
                "a device published a Curve25519 key whose holder is someone else; dropped"
            );
            // Blacklisted too: listed again with that key, it never contests it again.
            changes.crypto.devices.push(DeviceRecord {
                deleted: true,
                local_trust: LocalTrust::Blacklisted,
                ..squatter
            });
        }
        Ok(Ok(()))
    }

    /// Decrypt one Olm event. The outer `Result` is a store failure (aborts the batch); the
    /// inner one is this event's verdict.
    pub(super) fn handle_encrypted(
        &self,
        state: &mut State,
        batch: &mut Batch,
        event: &Value,
        own_curve: &str,
        room_keys: &mut Vec<RoomKeyInfo>,
        changes: &mut Changes,
    ) -> Result<Result<String, OlmError>, CryptoError> {
        let incoming = match IncomingOlm::parse(event, own_curve) {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        // Snapshot so that a session created from a message we then reject leaves the account
        // (and its one-time keys) exactly as it was.
        let snapshot = match &incoming.message {
            OlmMessage::PreKey(_) => Some(state.account.inner.pickle()),
            OlmMessage::Normal(_) => None,
        };
        let now = state.now_ms();
        let (plaintext, new_session) = match decrypt(&mut state.account, batch, &incoming, now) {
            Ok(x) => x,
            Err(e) => {
                if matches!(
                    e,
                    OlmError::NoMatchingSession { .. } | OlmError::SessionCreation(_)
                ) && let Some(device) =
                    batch.device_for_key(self.ctx.store, &incoming.sender, &incoming.sender_key)?
                {
                    batch.wedged.push(device);
                }
                return Ok(Err(e));
            }
        };
        let device =
            batch.device_for_key(self.ctx.store, &incoming.sender, &incoming.sender_key)?;
        let mut verdict = check_payload(&state.account, &incoming, device.as_ref(), &plaintext);
        if let (Ok(payload), None) = (&verdict, &device)
            && let Err(e) = self.check_other_claimants(&incoming, payload, changes)?
        {
            verdict = Err(e);
        }
        let payload = match verdict {
            Ok(p) => p,
            Err(e) => {
                if let (Some(_), Some(pickle)) = (&new_session, snapshot) {
                    state.account.inner = vodozemac::olm::Account::from_pickle(pickle);
                }
                return Ok(Err(e));
            }
        };
        if device.is_none() {
            batch.unknown_senders.insert(incoming.sender.clone());
        }
        if let Some(session) = new_session {
            // The one-time key is used up, whatever the message turns out to carry.
            batch.account_changed = true;
            batch
                .sessions
                .entry(incoming.sender_key.clone())
                .or_default()
                .push(session);
        }
        batch.dirty.insert(incoming.sender_key.clone());

        let accepted = self.accept_keys(batch, &incoming, &payload, device.as_ref(), changes)?;
        match accepted {
            Ok(Some(info)) => room_keys.push(info),
            Ok(None) => {}
            Err(e) => return Ok(Err(e)),
        }
        if payload.event_type.starts_with(VERIFICATION_PREFIX) {
            // Sent over Olm: the sender is the authenticated one of the payload.
            batch.verification.push(serde_json::json!({
                "type": payload.event_type,
                "sender": payload.sender,
                "content": payload.content,
            }));
        }
        debug!(sender = %incoming.sender, event_type = %payload.event_type, "decrypted to-device event");
        Ok(Ok(payload.event_type))
    }

    /// The room key a decrypted payload carries, if it carries one: `m.room_key` from the
    /// session's creator, or `m.forwarded_room_key` we asked our own devices for.
    fn accept_keys(
        &self,
        batch: &mut Batch,
        incoming: &IncomingOlm,
        payload: &OlmPayload,
        device: Option<&DeviceRecord>,
        changes: &Changes,
    ) -> Result<Result<Option<RoomKeyInfo>, OlmError>, CryptoError> {
        match payload.event_type.as_str() {
            "m.room_key" => {
                // Only a device we know is authenticated; a claim in the payload is not.
                let sender_device = device.map(|d| &*d.device_id);
                self.accept_room_key(batch, incoming, payload, sender_device)
            }
            "m.forwarded_room_key" => KeyRequests::new(self.ctx)
                .accept_forwarded_key(batch, incoming, payload, device, changes),
            _ => Ok(Ok(None)),
        }
    }

    /// Remember an `m.room_key.withheld` notice. It arrives in clear and proves nothing: it
    /// is kept only from a member of the room (naming one of their devices, once we know
    /// them), and is only ever shown on that sender's events (as the reason they cannot be
    /// decrypted).
    fn handle_withheld(
        &self,
        batch: &mut Batch,
        event: &Value,
        changes: &mut Changes,
    ) -> Result<Result<String, OlmError>, CryptoError> {
        let content = event.get("content").unwrap_or(&Value::Null);
        let field = |name: &str| content.get(name).and_then(Value::as_str);
        let (Some(room_id), Some(session_id), Some(code)) =
            (field("room_id"), field("session_id"), field("code"))
        else {
            return Ok(Err(OlmError::Malformed(
                "withheld notice without room, session or code".into(),
            )));
        };
        let sender_key = field("sender_key").unwrap_or_default();
        let ids = OwnedUserId::try_from(str_of(event, "sender"))
            .ok()
            .zip(OwnedRoomId::try_from(room_id).ok());
        let Some((sender, room_id)) = ids.filter(|_| !session_id.is_empty()) else {
            return Ok(Err(OlmError::Malformed(
                "withheld notice: invalid ids".into(),
            )));
        };
        let member = super::membership::is_member(self.ctx.store, changes, &room_id, &sender)?;
        // Before the sender's devices are downloaded (e.g. the first sync after joining)
        // the key cannot be checked; once they are, it must be one of them.
        let known_device = match batch.device_for_key(self.ctx.store, &sender, sender_key)? {
            Some(_) => true,
            None => self.ctx.store.devices(&[&sender])?.is_empty(),
        };
        if !member || !known_device {
            debug!(
                %sender,
                "ignoring a withheld notice of a non-member or another device"
            );
            return Ok(Err(OlmError::UnauthenticatedNotice));
        }
        changes.crypto.withheld_notices.push(WithheldNotice {
            room_id,
            session_id: session_id.to_owned(),
            sender,
            sender_key: sender_key.to_owned(),
            code: RoomKeyWithheldCode::from(code.chars().take(255).collect::<String>()),
            reason: field("reason").map(|r| r.chars().take(1000).collect()),
        });
        Ok(Ok("m.room_key.withheld".to_owned()))
    }

    fn accept_room_key(
        &self,
        batch: &mut Batch,
        incoming: &IncomingOlm,
        payload: &OlmPayload,
        sender_device: Option<&DeviceId>,
    ) -> Result<Result<Option<RoomKeyInfo>, OlmError>, CryptoError> {
        let key = match RoomKeyContent::parse(&payload.content) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        };
        let group = match InboundGroup::from_room_key(
            &key,
            &incoming.sender_key,
            &payload.keys.ed25519,
            Some((&incoming.sender, sender_device)),
        ) {
            Ok(g) => g,
            Err(CryptoError::Olm(e)) => return Ok(Err(e)),
            Err(e) => return Err(e),
        };
        let id = (key.room_id.clone(), key.session_id.clone());
        let existing = batch.inbound_session(self.ctx.store, &id.0, &id.1)?;
        let record = match existing {
            None => group.record,
            Some(existing) => match merge(existing, group)? {
                Ok(Merge::Replace(record)) => *record,
                Ok(Merge::Keep) => {
                    debug!(room_id = %key.room_id, "room key already known at an equal or better index");
                    return Ok(Ok(None));
                }
                Err(e) => return Ok(Err(e)),
            },
        };
        batch.inbound.insert(id, record);
        Ok(Ok(Some(RoomKeyInfo {
            room_id: key.room_id,
            session_id: key.session_id,
            sender: incoming.sender.clone(),
        })))
    }
}

/// Find or create the session that decrypts `incoming`.
fn decrypt(
    account: &mut OwnAccount,
    batch: &mut Batch,
    incoming: &IncomingOlm,
    now: u64,
) -> Result<(Zeroizing<Vec<u8>>, Option<OlmSession>), OlmError> {
    let sessions = batch
        .sessions
        .entry(incoming.sender_key.clone())
        .or_default();
    sessions.sort_by_key(|s| std::cmp::Reverse(s.last_used_ms));
    match &incoming.message {
        OlmMessage::Normal(_) => {
            for session in sessions.iter_mut() {
                if let Ok(plaintext) = session.session.decrypt(&incoming.message) {
                    session.last_used_ms = now;
                    return Ok((Zeroizing::new(plaintext), None));
                }
            }
            Err(OlmError::NoMatchingSession {
                sender_key: incoming.sender_key.clone(),
            })
        }
        OlmMessage::PreKey(pre_key) => {
            let session_id = pre_key.session_id();
            if let Some(session) = sessions
                .iter_mut()
                .find(|s| s.session.session_id() == session_id)
            {
                let plaintext = session
                    .session
                    .decrypt(&incoming.message)
                    .map_err(|e| OlmError::SessionCreation(e.to_string()))?;
                session.last_used_ms = now;
                return Ok((Zeroizing::new(plaintext), None));
            }
            let their_key = Curve25519PublicKey::from_base64(&incoming.sender_key)
                .map_err(|e| OlmError::Malformed(format!("sender_key: {e}")))?;
            let created = account
                .inner
                .create_inbound_session(SessionConfig::version_1(), their_key, pre_key)
                .map_err(|e| OlmError::SessionCreation(e.to_string()))?;
            let session = OlmSession::new(incoming.sender_key.clone(), created.session, now);
            Ok((Zeroizing::new(created.plaintext), Some(session)))
        }
    }
}

/// Check the decrypted payload against what the Olm channel proves.
fn check_payload(
    account: &OwnAccount,
    incoming: &IncomingOlm,
    device: Option<&DeviceRecord>,
    plaintext: &[u8],
) -> Result<OlmPayload, OlmError> {
    let payload: OlmPayload = serde_json::from_slice(plaintext)
        .map_err(|e| OlmError::Malformed(format!("decrypted payload: {e}")))?;
    let mismatch = |field: &'static str, expected: &str, got: &str| {
        Err(OlmError::PayloadMismatch {
            field,
            expected: expected.to_owned(),
            got: got.to_owned(),
        })
    };
    if payload.sender != incoming.sender {
        return mismatch("sender", incoming.sender.as_str(), payload.sender.as_str());
    }
    if payload.recipient != account.user_id {
        return mismatch(
            "recipient",
            account.user_id.as_str(),
            payload.recipient.as_str(),
        );
    }
    let own_ed = account.ed25519();
    if payload.recipient_keys.ed25519 != own_ed {
        return mismatch(
            "recipient_keys.ed25519",
            &own_ed,
            &payload.recipient_keys.ed25519,
        );
    }
    if let Some(device) = device {
        if device.user_id != incoming.sender {
            return mismatch("sender", device.user_id.as_str(), incoming.sender.as_str());
        }
        if payload.keys.ed25519 != device.ed25519 {
            return mismatch("keys.ed25519", &device.ed25519, &payload.keys.ed25519);
        }
        if let Some(sender_device) = &payload.sender_device
            && sender_device != &device.device_id
        {
            return mismatch(
                "sender_device",
                device.device_id.as_str(),
                sender_device.as_str(),
            );
        }
    }
    Ok(payload)
}
