//! Room-key requests between our own devices (`m.room_key_request` /
//! `m.forwarded_room_key`).
//!
//! We ask our other devices for keys we miss, and answer only our own devices the user
//! verified; requests of own devices nobody decided about are held until the user (asked
//! by the app) decides. Forwarded keys are accepted only over Olm, from an own verified device, for a
//! key we asked for.

use serde_json::{Value, json};
use tracing::{debug, info};

use ruma::events::ToDeviceEventType;
use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::account::MEGOLM_ALGORITHM;
use super::batch::Batch;
use super::context::sub_machine;
use super::devices::Device;
use super::devices::check_device_id;
use super::error::{CryptoError, OlmError};
use super::megolm::{ForwardedKey, InboundGroup, Merge, merge, original_device};
use super::olm::{IncomingOlm, OlmPayload};
use super::outbox::messages_json;
use super::outcomes::RoomKeyInfo;
use super::sender_data::TrustView;
use super::state::{KeyRequest, State};
use crate::store::{
    Changes, CryptoChanges, DeviceRecord, KeyRequestRecord, LocalTrust, PendingToDevice,
};

const KEY_REQUEST: &str = "m.room_key_request";

sub_machine! {
    /// Room-key requests between own devices: asking, answering, holding, forwarded keys.
    KeyRequests
}

impl KeyRequests<'_> {
    /// Ask our other devices for the key of a session we miss, and tell the session's
    /// sending device (`sender`: user and device id, when the event names them). The
    /// sender does not answer another user's request, but if it does not know this device
    /// yet, its device list of us is stale: the request makes it re-query, and it
    /// shares its current room key with us, so its next messages decrypt. Returns `false` if
    /// it was asked already (one request per session). The request goes out with
    /// [`Self::outgoing_requests`].
    pub(crate) fn request_room_key(
        &self,
        state: &mut State,
        room_id: &RoomId,
        session_id: &str,
        sender_key: &str,
        sender: Option<(&UserId, &DeviceId)>,
    ) -> Result<bool, CryptoError> {
        let pending = Changes::default();
        match self.key_request_changes(room_id, session_id, sender_key, sender, &pending)? {
            Some(changes) => {
                self.ctx.save(state, changes)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The records of a new key request, or `None` if the session was asked for already
    /// (stored, or in `pending`). The sending device is addressed only if its id is usable.
    pub(crate) fn key_request_changes(
        &self,
        room_id: &RoomId,
        session_id: &str,
        sender_key: &str,
        sender: Option<(&UserId, &DeviceId)>,
        pending: &Changes,
    ) -> Result<Option<Changes>, CryptoError> {
        if session_id.is_empty() {
            return Err(CryptoError::InvalidInput("empty session id".into()));
        }
        let asked_in_batch = pending
            .crypto
            .key_requests
            .iter()
            .any(|r| r.room_id == room_id && r.session_id == session_id);
        if asked_in_batch || self.ctx.store.key_request(room_id, session_id)?.is_some() {
            return Ok(None);
        }
        let request_id = ruma::TransactionId::new().to_string();
        let content = json!({
            "action": "request",
            "body": {
                "algorithm": MEGOLM_ALGORITHM, "room_id": room_id,
                "session_id": session_id, "sender_key": sender_key,
            },
            "request_id": request_id,
            "requesting_device_id": self.ctx.device_id,
        });
        let all_devices = OwnedDeviceId::from("*");
        let mut targets = vec![(self.ctx.user_id.to_owned(), all_devices)];
        if let Some((user, device)) = sender
            && user != self.ctx.user_id
            && check_device_id(device.as_str()).is_ok()
        {
            targets.push((user.to_owned(), device.to_owned()));
        }
        let targets: Vec<(&OwnedUserId, &OwnedDeviceId)> =
            targets.iter().map(|(u, d)| (u, d)).collect();
        let changes = Changes::from(CryptoChanges {
            key_requests: vec![KeyRequestRecord {
                room_id: room_id.to_owned(),
                session_id: session_id.to_owned(),
                request_id,
            }],
            pending_to_device: vec![PendingToDevice {
                txn_id: ruma::TransactionId::new().to_string(),
                event_type: ToDeviceEventType::RoomKeyRequest,
                messages_json: messages_json(&targets, content)?,
                room_key: None,
            }],
            ..Default::default()
        });
        debug!(%room_id, "asking own devices for a missing room key");
        Ok(Some(changes))
    }

    /// Answer key requests that waited (held for a decision, or for an Olm session).
    pub(crate) fn answer_key_requests(
        &self,
        state: &mut State,
        requests: Vec<KeyRequest>,
        changes: &mut Changes,
    ) -> Result<(), CryptoError> {
        let mut batch = Batch::default();
        for request in &requests {
            // A request that cannot be answered any more is simply dropped.
            self.answer_request(state, &mut batch, request, changes)?;
        }
        batch.flush(changes)
    }

    /// Answer the requests of own devices we did not know when they came (each deferral
    /// re-queried our own devices). Tried once: a device still unknown is not waited for
    /// again.
    pub(crate) fn answer_deferred_key_requests(
        &self,
        state: &mut State,
        batch: &mut Batch,
        changes: &mut Changes,
    ) -> Result<(), CryptoError> {
        let deferred = std::mem::take(&mut state.held.deferred);
        for request in &deferred {
            // A request that cannot be answered any more is simply dropped.
            self.answer_request(state, batch, request, changes)?;
        }
        state.held.deferred.clear();
        Ok(())
    }

    /// An `m.room_key_request` to-device event: answered if it is one of our own devices
    /// the user verified asking for a key we have. Requests of other users are never
    /// answered.
    pub(super) fn handle_key_request(
        &self,
        state: &mut State,
        batch: &mut Batch,
        event: &Value,
        changes: &mut Changes,
    ) -> Result<Result<String, OlmError>, CryptoError> {
        match parse_key_request(event, self.ctx.user_id, self.ctx.device_id) {
            Err(e) => return Ok(Err(e)),
            Ok(Incoming::Ignored) => {}
            Ok(Incoming::OtherUser { sender, requesting }) => {
                self.note_request_of_other_user(batch, &sender, &requesting)?;
            }
            Ok(Incoming::Request(request)) => {
                self.answer_request(state, batch, &request, changes)?;
            }
        }
        Ok(Ok(KEY_REQUEST.into()))
    }

    /// Forward the key `request` asks for, if its device is verified and we have the key;
    /// hold it if the device is undecided or unknown, or if we have no Olm session with it.
    fn answer_request(
        &self,
        state: &mut State,
        batch: &mut Batch,
        request: &KeyRequest,
        changes: &mut Changes,
    ) -> Result<(), CryptoError> {
        let Some(device) = self.verified_requester(state, batch, request)? else {
            return Ok(());
        };
        let (room_id, session_id) = (&request.room_id, &request.session_id);
        let Some(record) = batch.inbound_session(self.ctx.store, room_id, session_id)? else {
            debug!(%room_id, "key request for a session we don't have");
            return Ok(());
        };
        let group = InboundGroup::from_record(record)?;
        let forwarded = json!({
            "algorithm": MEGOLM_ALGORITHM,
            "room_id": room_id,
            "session_id": session_id,
            "session_key": group.export(),
            "sender_key": group.record.sender_key,
            "sender_claimed_ed25519_key": group.record.signing_key,
            "forwarding_curve25519_key_chain": [],
        });
        let kind = "m.forwarded_room_key";
        if self.encrypt_for_device(state, batch, &device, kind, forwarded, changes)? {
            info!(device = %device.device_id, "forwarded a room key to an own verified device");
        } else {
            // Answered once a session is claimed (`session_repair_request`).
            debug!(device = %device.device_id, "no Olm session to answer a key request yet");
            state.held.await_session(device, request);
        }
        Ok(())
    }

    /// Another user's request is never answered. But a device we don't know asking means our
    /// list of its owner's devices is stale: re-query, so that the device gets our
    /// room keys from now on. Only for users whose devices we keep (we share rooms with
    /// them): a stranger's requests do not make us track anyone.
    fn note_request_of_other_user(
        &self,
        batch: &mut Batch,
        sender: &UserId,
        requesting: &str,
    ) -> Result<(), CryptoError> {
        let devices = self.ctx.store.devices(&[sender])?;
        let known = devices
            .iter()
            .any(|d| d.device_id == requesting && !d.deleted);
        if !devices.is_empty() && !known {
            debug!(
                %sender,
                "key request from a device we don't know; re-querying"
            );
            batch.unknown_senders.insert(sender.to_owned());
        }
        debug!(%sender, "not answering a key request of another user");
        Ok(())
    }

    /// The own device `requesting`, if the user verified it. A request of an own device we
    /// don't know is deferred (our list is stale: re-queried, answered next time), one of an
    /// undecided device is held until the user decides, others are dropped.
    fn verified_requester(
        &self,
        state: &mut State,
        batch: &mut Batch,
        request: &KeyRequest,
    ) -> Result<Option<DeviceRecord>, CryptoError> {
        let requesting = &request.requesting_device;
        let device = self
            .ctx
            .store
            .devices(&[self.ctx.user_id])?
            .into_iter()
            .find(|d| &d.device_id == requesting);
        let Some(device) = device.filter(|d| !d.deleted) else {
            debug!(
                %requesting,
                "key request from an unknown own device; re-querying"
            );
            batch.unknown_senders.insert(self.ctx.user_id.to_owned());
            state.held.defer(request);
            return Ok(None);
        };
        let none = CryptoChanges::default();
        let view = TrustView::load(
            self.ctx.store,
            self.ctx.signatures,
            &[self.ctx.user_id],
            &none,
        )?;
        match device.local_trust {
            LocalTrust::Verified => Ok(Some(device)),
            // Cross-signed by our own verified identity: verified, nothing to ask.
            LocalTrust::Unset if view.is_verified(&device) => Ok(Some(device)),
            LocalTrust::Unset => {
                // Held until the user decides (the app may ask: `take_key_share_prompts`).
                debug!(device = %device.device_id, "holding a key request of an undecided own device");
                state.held.hold_undecided(request);
                Ok(None)
            }
            LocalTrust::Blacklisted | LocalTrust::Ignored => {
                debug!(device = %device.device_id, "not answering a key request of an untrusted own device");
                Ok(None)
            }
        }
    }

    /// Queue an Olm-encrypted to-device message over the newest session with `device`.
    /// Returns `false` if there is no session with it.
    fn encrypt_for_device(
        &self,
        state: &mut State,
        batch: &mut Batch,
        device: &DeviceRecord,
        event_type: &str,
        content: Value,
        changes: &mut Changes,
    ) -> Result<bool, CryptoError> {
        if !batch.sessions.contains_key(&device.curve25519) {
            batch.load_sessions(self.ctx.store, &[&device.curve25519])?;
        }
        let Some(session) = batch
            .sessions
            .get_mut(&device.curve25519)
            .and_then(|s| s.iter_mut().max_by_key(|s| (s.last_used_ms, s.created_ms)))
        else {
            return Ok(false);
        };
        let payload = OlmPayload::to_device(&state.account, device, event_type, content);
        let encrypted = session.encrypt(&state.account.curve25519(), &payload, state.now_ms())?;
        batch.dirty.insert(device.curve25519.clone());
        changes.crypto.pending_to_device.push(PendingToDevice {
            txn_id: ruma::TransactionId::new().to_string(),
            event_type: ToDeviceEventType::RoomEncrypted,
            messages_json: messages_json(&[(&device.user_id, &device.device_id)], encrypted)?,
            room_key: None,
        });
        Ok(true)
    }

    /// Accept an `m.forwarded_room_key` that arrived over Olm: only from an own verified
    /// device, only for a session we asked for, never replacing a session of another sending
    /// device, and attributed to its original device only if we know that device (otherwise
    /// the sender is confirmed at decryption, from the device list).
    pub(super) fn accept_forwarded_key(
        &self,
        batch: &mut Batch,
        incoming: &IncomingOlm,
        payload: &OlmPayload,
        device: Option<&DeviceRecord>,
        pending: &Changes,
    ) -> Result<Result<Option<RoomKeyInfo>, OlmError>, CryptoError> {
        let from_verified_own = match device.filter(|d| d.user_id == self.ctx.user_id) {
            Some(d) => {
                let none = CryptoChanges::default();
                let own = [self.ctx.user_id];
                TrustView::load(self.ctx.store, self.ctx.signatures, &own, &none)?.is_verified(d)
            }
            None => false,
        };
        if !from_verified_own {
            return Ok(Err(OlmError::InvalidRoomKey(
                "forwarded keys are accepted only from own verified devices".into(),
            )));
        }
        let key = match ForwardedKey::parse(&payload.content) {
            Ok(key) => key,
            Err(e) => return Ok(Err(e)),
        };
        let asked = pending
            .crypto
            .key_requests
            .iter()
            .any(|r| r.room_id == key.room_id && r.session_id == key.session_id);
        if !asked
            && self
                .ctx
                .store
                .key_request(&key.room_id, &key.session_id)?
                .is_none()
        {
            return Ok(Err(OlmError::InvalidRoomKey(
                "a forwarded key we did not ask for".into(),
            )));
        }
        let origin = original_device(
            self.ctx.store,
            &key.sender_key,
            &key.sender_claimed_ed25519_key,
        )?;
        if let Err(e) = origin {
            return Ok(Err(e));
        }
        let origin = origin.ok().flatten();
        let sender = origin.as_ref().map(|d| (&*d.user_id, Some(&*d.device_id)));
        let group = match InboundGroup::from_forwarded(&key, sender) {
            Ok(g) => g,
            Err(e) => return Ok(Err(e)),
        };
        let id = (key.room_id.clone(), key.session_id.clone());
        let existing = batch.inbound_session(self.ctx.store, &id.0, &id.1)?;
        let record = match existing {
            None => group.record,
            Some(existing) => match merge(existing, group)? {
                Ok(Merge::Replace(record)) => *record,
                Ok(Merge::Keep) => return Ok(Ok(None)),
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

    /// Own devices that asked for room keys while nobody had decided whether to trust them,
    /// not reported before. The app may ask the user ([`LocalTrust::Verified`] answers the
    /// held requests through [`Self::set_local_trust`]).
    pub(crate) fn take_key_share_prompts(
        &self,
        state: &mut State,
    ) -> Result<Vec<Device>, CryptoError> {
        let ids = std::mem::take(&mut state.held.prompts);
        Ok(self
            .ctx
            .store
            .devices(&[self.ctx.user_id])?
            .iter()
            .filter(|d| ids.contains(&d.device_id) && d.local_trust == LocalTrust::Unset)
            .map(Device::from)
            .collect())
    }
}

/// What an `m.room_key_request` event is, once its ids are checked.
enum Incoming {
    /// A request (or cancellation) of another user, with the device id as given, unchecked
    /// (it is only compared with the devices we know).
    OtherUser {
        sender: OwnedUserId,
        requesting: String,
    },
    /// A cancellation, or a request of this very device: nothing to do.
    Ignored,
    /// A request of another device of ours.
    Request(KeyRequest),
}

/// Parse an `m.room_key_request` at the edge: a sender that is not a user id, and an own
/// device's request without a valid room id or a session id, are malformed.
fn parse_key_request(
    event: &Value,
    own_user: &UserId,
    own_device: &DeviceId,
) -> Result<Incoming, OlmError> {
    let sender = event.get("sender").and_then(Value::as_str);
    let sender = sender
        .and_then(|s| OwnedUserId::try_from(s).ok())
        .ok_or_else(|| OlmError::Malformed("key request from an invalid user id".into()))?;
    let content = event.get("content").unwrap_or(&Value::Null);
    let text = |v: &Value, name: &str| v.get(name).and_then(Value::as_str).map(str::to_owned);
    let requesting = text(content, "requesting_device_id").unwrap_or_default();
    if sender != own_user {
        return Ok(Incoming::OtherUser { sender, requesting });
    }
    let action = content.get("action").and_then(Value::as_str);
    if requesting == own_device.as_str() || action != Some("request") {
        return Ok(Incoming::Ignored);
    }
    let body = content.get("body").unwrap_or(&Value::Null);
    let room_id = text(body, "room_id").and_then(|r| OwnedRoomId::try_from(r).ok());
    let (Some(room_id), Some(session_id)) = (room_id, text(body, "session_id")) else {
        return Err(OlmError::Malformed(
            "key request without room or session".into(),
        ));
    };
    Ok(Incoming::Request(KeyRequest {
        requesting_device: OwnedDeviceId::from(requesting),
        request_id: text(content, "request_id").unwrap_or_default(),
        room_id,
        session_id,
    }))
}
