//! Protocol tests with two and three in-process machines and a fake homeserver. No network.

// Also built (without its tests) for the fuzzing harnesses, which use its helpers.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]
// Test code (also in the fuzzing build): a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ruma::api::client::keys::{claim_keys, get_keys, upload_keys};
use ruma::events::room::member::MembershipState;
use ruma::to_device::DeviceIdOrAllDevices;
use ruma::{OwnedDeviceId, OwnedOneTimeKeyId, OwnedRoomId, OwnedUserId, RoomId};
use serde_json::{Value, json};

use super::olm::{Ed25519Keys, OlmPayload, OlmSession};
use super::requests::{json_of, raw};
use super::*;
use crate::store::{LocalTrust, MemoryStore, Store};
use crate::test_ids::{did, rid, uid};
use crate::time::ManualClock;

#[cfg(test)]
mod backup;
#[cfg(test)]
mod devices;
#[cfg(test)]
mod hostile;
#[cfg(test)]
mod key_requests;
#[cfg(test)]
mod key_transfer;
#[cfg(test)]
mod megolm;
#[cfg(test)]
mod olm;
#[cfg(test)]
mod sharing;
#[cfg(test)]
mod sync;
#[cfg(test)]
mod trust;
#[cfg(test)]
mod two_handles;
#[cfg(test)]
mod verification;

/// A new device of `owner`'s (no private cross-signing keys), published, that has
/// downloaded its owner's devices and identity.
pub(crate) fn new_own_device(server: &mut FakeServer, owner: &Peer, device: &str) -> Peer {
    let peer = Peer::new(owner.user().as_str(), device);
    server.drive(&peer);
    peer.machine.update_tracked_users(&[owner.user()]).unwrap();
    server.drive(&peer);
    peer
}

/// The parts of a homeserver the crypto machine talks to.
#[derive(Default)]
pub(crate) struct FakeServer {
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Value>>,
    pub one_time_keys: BTreeMap<(OwnedUserId, OwnedDeviceId), BTreeMap<String, Value>>,
    pub fallback_keys: BTreeMap<(OwnedUserId, OwnedDeviceId), BTreeMap<String, Value>>,
    pub inbox: HashMap<(OwnedUserId, OwnedDeviceId), Vec<Value>>,
    pub to_device_requests: Vec<(String, usize)>,
    /// Published cross-signing keys by user: `{master_key, self_signing_key,
    /// user_signing_key}`.
    pub cross_signing: BTreeMap<OwnedUserId, Value>,
}

pub(crate) struct Peer {
    pub machine: OlmMachine,
    pub store: Arc<dyn Store>,
}

impl Peer {
    /// The machine of `user` (a valid user id) and `device` on a fresh memory store.
    pub(crate) fn new(user: &str, device: &str) -> Self {
        Self::with_store(user, device, Arc::new(MemoryStore::new()))
    }
    pub(crate) fn with_store(user: &str, device: &str, store: Arc<dyn Store>) -> Self {
        Self {
            machine: OlmMachine::open(&uid(user), &did(device), store.clone()).unwrap(),
            store,
        }
    }
    /// A peer whose time is `clock` (tests of backoff, rotation periods, retry intervals).
    pub(crate) fn with_clock(user: &str, device: &str, clock: Arc<ManualClock>) -> Self {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        Self {
            machine: OlmMachine::open_with_clock(&uid(user), &did(device), store.clone(), clock)
                .unwrap(),
            store,
        }
    }
    pub(crate) fn user(&self) -> OwnedUserId {
        self.machine.user_id().to_owned()
    }
    pub(crate) fn device(&self) -> OwnedDeviceId {
        self.machine.device_id().to_owned()
    }
    /// Where the server keeps this peer's keys and inbox.
    fn id(&self) -> (OwnedUserId, OwnedDeviceId) {
        (self.user(), self.device())
    }
}

impl FakeServer {
    /// Send everything the machine asks for; returns the query outcomes.
    pub(crate) fn drive(&mut self, peer: &Peer) -> Vec<QueryOutcome> {
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            let requests = peer.machine.outgoing_requests().unwrap();
            if requests.is_empty() {
                break;
            }
            for request in requests {
                match request.kind {
                    OutgoingKind::KeysUpload(r) => {
                        let counts = self.upload(peer, &r);
                        peer.machine.mark_keys_upload_sent(&counts).unwrap();
                    }
                    OutgoingKind::KeysQuery(r) => {
                        let response = self.query(&r);
                        outcomes.push(
                            peer.machine
                                .mark_keys_query_sent(&request.id, &response)
                                .unwrap(),
                        );
                    }
                    OutgoingKind::ToDevice(r) => {
                        self.deliver_to_device(peer, &r);
                        peer.machine.mark_to_device_sent(&request.id).unwrap();
                    }
                    OutgoingKind::KeysClaim(_) => unreachable!("claims come from missing_sessions"),
                }
            }
        }
        outcomes
    }

    fn upload(&mut self, peer: &Peer, r: &upload_keys::v3::Request) -> KeysUploadResponse {
        let id = peer.id();
        if let Some(keys) = &r.device_keys {
            self.device_keys
                .entry(id.0.clone())
                .or_default()
                .insert(id.1.clone(), json_of(keys).unwrap());
        }
        let otks = self.one_time_keys.entry(id.clone()).or_default();
        for (key_id, key) in &r.one_time_keys {
            let key = json_of(key).unwrap();
            if let Some(old) = otks.get(key_id.as_str()) {
                assert_eq!(
                    old, &key,
                    "one-time key {key_id} re-uploaded with other content"
                );
            }
            otks.insert(key_id.to_string(), key);
        }
        let count = otks.len() as u64;
        let fallbacks = self.fallback_keys.entry(id).or_default();
        for (key_id, key) in &r.fallback_keys {
            fallbacks.clear();
            fallbacks.insert(key_id.to_string(), json_of(key).unwrap());
        }
        KeysUploadResponse {
            one_time_key_counts: BTreeMap::from([(SIGNED_CURVE25519.to_owned(), count)]),
        }
    }

    pub(crate) fn query(&self, r: &get_keys::v3::Request) -> KeysQueryResponse {
        let mut response = KeysQueryResponse::from(&self.ruma_query(r));
        for user in r.device_keys.keys() {
            let Some(keys) = self.cross_signing.get(user) else {
                continue;
            };
            for (name, map) in [
                ("master_key", &mut response.master_keys),
                ("self_signing_key", &mut response.self_signing_keys),
                ("user_signing_key", &mut response.user_signing_keys),
            ] {
                if let Some(key) = keys.get(name).filter(|k| !k.is_null()) {
                    map.insert(user.clone(), key.clone());
                }
            }
        }
        response
    }

    /// Publish `peer`'s cross-signing keys (made on the first call) and its device's
    /// signature, as `/keys/device_signing/upload` and `/keys/signatures/upload` would.
    pub(crate) fn publish_cross_signing(&mut self, peer: &Peer) {
        let upload = peer.machine.bootstrap_cross_signing().unwrap();
        self.upload_cross_signing(peer, upload);
    }

    /// Replace `peer`'s cross-signing keys with new ones, published.
    pub(crate) fn reset_cross_signing(&mut self, peer: &Peer) {
        let upload = peer.machine.reset_cross_signing().unwrap();
        self.upload_cross_signing(peer, upload);
    }

    fn upload_cross_signing(&mut self, peer: &Peer, upload: CrossSigningUpload) {
        self.cross_signing.insert(peer.user(), upload.keys);
        self.upload_signatures(&upload.signatures);
        peer.machine.mark_cross_signing_uploaded().unwrap();
    }

    /// Put, under `peer`'s self-signing key's id on its device keys, the device's own
    /// signature: a cross-signing signature that does not verify (tampering).
    pub(crate) fn tamper_cross_signing_signature(&mut self, peer: &Peer) {
        let ssk = self.cross_signing[&peer.user()]["self_signing_key"]["keys"]
            .as_object()
            .and_then(|keys| keys.keys().next().cloned())
            .unwrap();
        let (user, device_id) = peer.id();
        let device = self
            .device_keys
            .get_mut(&user)
            .and_then(|d| d.get_mut(&device_id))
            .unwrap();
        let signatures = &mut device["signatures"][user.as_str()];
        let own = signatures[format!("ed25519:{device_id}")].clone();
        signatures[&ssk] = own;
    }

    /// Merge the signatures of a `/keys/signatures/upload` body into the stored keys.
    pub(crate) fn upload_signatures(&mut self, body: &Value) {
        for (user, objects) in body.as_object().unwrap() {
            let user = uid(user);
            for (id, signed) in objects.as_object().unwrap() {
                let target = match self
                    .device_keys
                    .get_mut(&user)
                    .and_then(|d| d.get_mut(&did(id)))
                {
                    Some(device) => device,
                    None => self
                        .cross_signing
                        .get_mut(&user)
                        .map(|k| &mut k["master_key"])
                        .unwrap(),
                };
                for (signer, sigs) in signed["signatures"].as_object().unwrap() {
                    for (key_id, sig) in sigs.as_object().unwrap() {
                        target["signatures"][signer][key_id] = sig.clone();
                    }
                }
            }
        }
    }

    pub(crate) fn ruma_query(&self, r: &get_keys::v3::Request) -> get_keys::v3::Response {
        let mut response = get_keys::v3::Response::new();
        for user in r.device_keys.keys() {
            let devices = self.device_keys.get(user).cloned().unwrap_or_default();
            let entry = response.device_keys.entry(user.clone()).or_default();
            for (device, keys) in devices {
                entry.insert(device, raw(&keys).unwrap());
            }
        }
        response
    }

    pub(crate) fn claim(&mut self, r: &claim_keys::v3::Request) -> KeysClaimResponse {
        KeysClaimResponse::from(&self.ruma_claim(r))
    }

    pub(crate) fn ruma_claim(&mut self, r: &claim_keys::v3::Request) -> claim_keys::v3::Response {
        let mut keys: BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys> = BTreeMap::new();
        for (user, devices) in &r.one_time_keys {
            for device in devices.keys() {
                let id = (user.clone(), device.clone());
                let otk = self.one_time_keys.get_mut(&id).and_then(|k| k.pop_first());
                let key = otk.or_else(|| {
                    self.fallback_keys
                        .get(&id)
                        .and_then(|k| k.first_key_value().map(|(a, b)| (a.clone(), b.clone())))
                });
                if let Some((key_id, key)) = key {
                    let key_id = OwnedOneTimeKeyId::try_from(key_id).unwrap();
                    keys.entry(user.clone())
                        .or_default()
                        .entry(device.clone())
                        .or_default()
                        .insert(key_id, raw(&key).unwrap());
                }
            }
        }
        claim_keys::v3::Response::new(keys)
    }

    fn deliver_to_device(
        &mut self,
        from: &Peer,
        r: &ruma::api::client::to_device::send_event_to_device::v3::Request,
    ) {
        let mut recipients = 0;
        for (user, devices) in &r.messages {
            for (device, content) in devices {
                let targets: Vec<OwnedDeviceId> = match device {
                    DeviceIdOrAllDevices::DeviceId(device) => vec![device.clone()],
                    DeviceIdOrAllDevices::AllDevices => self
                        .device_keys
                        .get(user)
                        .map(|d| d.keys().cloned().collect())
                        .unwrap_or_default(),
                };
                for device in targets {
                    if *user == from.user() && device == from.machine.device_id() {
                        continue;
                    }
                    recipients += 1;
                    self.inbox
                        .entry((user.clone(), device))
                        .or_default()
                        .push(json!({
                            "type": r.event_type.to_string(),
                            "sender": from.user(),
                            "content": json_of(content).unwrap(),
                        }));
                }
            }
        }
        self.to_device_requests
            .push((r.txn_id.to_string(), recipients));
    }

    pub(crate) fn take_inbox(&mut self, peer: &Peer) -> Vec<Value> {
        self.inbox.remove(&peer.id()).unwrap_or_default()
    }

    /// Deliver the peer's to-device inbox as one sync.
    pub(crate) fn sync(&mut self, peer: &Peer) -> SyncOutcome {
        let events = self.take_inbox(peer);
        peer.machine
            .receive_sync_changes(SyncChanges {
                to_device_events: events,
                ..Default::default()
            })
            .unwrap()
    }

    /// Track `users`, download their devices, claim keys for missing sessions.
    pub(crate) fn establish(&mut self, peer: &Peer, users: &[OwnedUserId]) -> ClaimOutcome {
        peer.machine.update_tracked_users(users).unwrap();
        self.drive(peer);
        match peer.machine.missing_sessions(users).unwrap() {
            Some(OutgoingRequest {
                kind: OutgoingKind::KeysClaim(r),
                ..
            }) => {
                let response = self.claim(&r);
                peer.machine.mark_keys_claim_sent(&response).unwrap()
            }
            _ => ClaimOutcome::default(),
        }
    }

    /// Share the room key of `room` from `peer` with `users` and deliver it to the server.
    pub(crate) fn share(&mut self, peer: &Peer, room: &RoomId, users: &[OwnedUserId]) {
        self.establish(peer, users);
        let requests = peer
            .machine
            .share_room_key(room, users, RotationSettings::default())
            .unwrap();
        assert!(!requests.is_empty() || users.iter().all(|u| u == &peer.user()));
        self.drive(peer);
    }
}

/// Self-signed device keys of a new account for `user`/`device` (any strings: an account
/// needs a valid user id, so the keys are made under one and then named and signed for
/// `user`).
pub(crate) fn signed_device_keys(user: &str, device: &str) -> Value {
    let account = super::account::OwnAccount::new(&uid("@keys:localhost"), &did(device), 0);
    let Ok(mut keys) = account.device_keys() else {
        return Value::Null;
    };
    keys["user_id"] = user.into();
    if let Some(keys) = keys.as_object_mut() {
        keys.remove("signatures");
    }
    let signed =
        super::signing::sign_json_with(&mut keys, user, &format!("ed25519:{device}"), |b| {
            account.inner.sign(b)
        });
    if signed.is_err() {
        return Value::Null;
    }
    keys
}

/// An `m.room.encrypted` room event (`sender` and `event_id` any strings; the room is not
/// part of the event).
pub(crate) fn room_event(
    room: impl AsRef<str>,
    sender: impl AsRef<str>,
    event_id: &str,
    content: Value,
) -> Value {
    let _ = room.as_ref();
    json!({"type": "m.room.encrypted", "sender": sender.as_ref(), "event_id": event_id,
           "origin_server_ts": 1_700_000_000_000u64, "content": content})
}

/// `from` encrypts a text message in [`ROOM`]; `to` decrypts it as event `event_id`.
fn exchange(
    from: &Peer,
    to: &Peer,
    body: &str,
    event_id: &str,
) -> Result<DecryptedRoomEvent, CryptoError> {
    let content = from
        .machine
        .encrypt_room_event(room(), "m.room.message", &text(body))?;
    to.machine
        .decrypt_room_event(room(), &room_event(ROOM, from.user(), event_id, content))
}

/// `peer`'s store knows [`ROOM`] as an encrypted room `joined` are members of.
fn room_members(peer: &Peer, joined: &[OwnedUserId]) {
    peer.store
        .save_changes(crate::store::Changes::from(crate::store::ClientChanges {
            rooms: vec![crate::store::RoomRecord {
                encryption: Some(megolm_encryption()),
                own_membership: Some(MembershipState::Join),
                ..crate::store::RoomRecord::new(room().to_owned())
            }],
            members: joined
                .iter()
                .map(|u| crate::store::MemberRecord {
                    room_id: room().to_owned(),
                    user_id: u.clone(),
                    membership: MembershipState::Join,
                })
                .collect(),
            ..Default::default()
        }))
        .unwrap();
}

/// `err` is a withheld room key with this code.
fn assert_withheld(err: &CryptoError, expected: &str) {
    assert!(
        matches!(err, CryptoError::Megolm(MegolmError::Withheld { code, .. }) if code.as_str() == expected),
        "expected withheld {expected}: {err:?}"
    );
}

/// `m.room.encryption` with Megolm and the default rotation.
fn megolm_encryption() -> crate::store::RoomEncryption {
    crate::store::RoomEncryption::from_content(&json!({"algorithm": MEGOLM_ALGORITHM})).unwrap()
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

const ROOM: &str = "!room:localhost";

/// [`ROOM`] as a room id.
fn room() -> &'static RoomId {
    <&RoomId>::try_from(ROOM).unwrap()
}

fn setup_pair() -> (FakeServer, Peer, Peer) {
    setup_pair_of(Peer::new("@alice:localhost", "ALICE"))
}

/// [`setup_pair`] with alice's time from `clock`.
fn setup_pair_with_clock(clock: &Arc<ManualClock>) -> (FakeServer, Peer, Peer) {
    setup_pair_of(Peer::with_clock(
        "@alice:localhost",
        "ALICE",
        Arc::clone(clock),
    ))
}

fn setup_pair_of(alice: Peer) -> (FakeServer, Peer, Peer) {
    let mut server = FakeServer::default();
    let bob = Peer::new("@bob:localhost", "BOB");
    server.drive(&alice);
    server.drive(&bob);
    (server, alice, bob)
}

/// Encrypt an arbitrary Olm payload from `from` to `to` over their existing session.
fn olm_event(from: &Peer, to: &Peer, event_sender: impl AsRef<str>, payload: &OlmPayload) -> Value {
    let to_key = to.machine.curve25519_key();
    let records = from.store.olm_sessions(&[&to_key]).unwrap();
    let record = &records[&to_key][0];
    let mut session = OlmSession::from_record(record).unwrap();
    let content = session
        .encrypt(&from.machine.curve25519_key(), payload, 0)
        .unwrap();
    from.store
        .save_changes(crate::store::Changes::from(crate::store::CryptoChanges {
            olm_sessions: vec![session.to_record().unwrap()],
            ..Default::default()
        }))
        .unwrap();
    json!({"type": "m.room.encrypted", "sender": event_sender.as_ref(), "content": content})
}

/// An Olm to-device event from `from` to `to` whose plaintext is `plaintext` (any bytes),
/// over their newest session.
pub(crate) fn olm_event_raw(from: &Peer, to: &Peer, plaintext: &[u8]) -> Value {
    let to_key = to.machine.curve25519_key();
    let records = from.store.olm_sessions(&[&to_key]).unwrap_or_default();
    let Some(record) = records.get(&to_key).and_then(|r| r.first()) else {
        return Value::Null;
    };
    let Ok(mut session) = OlmSession::from_record(record) else {
        return Value::Null;
    };
    let Ok(message) = session.session.encrypt(plaintext) else {
        return Value::Null;
    };
    if let Ok(record) = session.to_record() {
        let _ = from
            .store
            .save_changes(crate::store::Changes::from(crate::store::CryptoChanges {
                olm_sessions: vec![record],
                ..Default::default()
            }));
    }
    let (message_type, body) = match message {
        vodozemac::olm::OlmMessage::PreKey(m) => (0, m.to_base64()),
        vodozemac::olm::OlmMessage::Normal(m) => (1, m.to_base64()),
    };
    json!({"type": "m.room.encrypted", "sender": from.user(), "content": {
        "algorithm": OLM_ALGORITHM, "sender_key": from.machine.curve25519_key(),
        "ciphertext": {to_key: {"type": message_type, "body": body}}}})
}

/// The identity fields of an Olm payload from `from` to `to`, as the checks want them.
pub(crate) fn olm_identity(from: &Peer, to: &Peer) -> Value {
    serde_json::to_value(payload(from, to, "m.dummy", json!({}))).unwrap_or_default()
}

/// `m.room.encrypted` content of `plaintext` (any bytes) encrypted with `peer`'s outbound
/// session in `room`.
pub(crate) fn megolm_raw(peer: &Peer, room: &RoomId, plaintext: &[u8]) -> Value {
    let Ok(Some(record)) = peer.store.outbound_group_session(room) else {
        return Value::Null;
    };
    let Ok(mut group) = super::megolm::OutboundGroup::from_record(&record) else {
        return Value::Null;
    };
    let message = group.session.encrypt(plaintext);
    if let Ok(record) = group.to_record() {
        let _ = peer
            .store
            .save_changes(crate::store::Changes::from(crate::store::CryptoChanges {
                outbound_group_sessions: vec![record],
                ..Default::default()
            }));
    }
    json!({"algorithm": MEGOLM_ALGORITHM, "ciphertext": message.to_base64(),
           "session_id": group.session.session_id(), "sender_key": peer.machine.curve25519_key(),
           "device_id": peer.machine.device_id()})
}

fn payload(from: &Peer, to: &Peer, event_type: &str, content: Value) -> OlmPayload {
    OlmPayload {
        event_type: event_type.into(),
        content,
        sender: from.user(),
        sender_device: Some(from.device()),
        recipient: to.user(),
        recipient_keys: Ed25519Keys {
            ed25519: to.machine.ed25519_key(),
        },
        keys: Ed25519Keys {
            ed25519: from.machine.ed25519_key(),
        },
    }
}

fn room_key_of(peer: &Peer, room: &RoomId) -> Value {
    let record = peer.store.outbound_group_session(room).unwrap().unwrap();
    super::megolm::OutboundGroup::from_record(&record)
        .unwrap()
        .room_key_content()
}

fn receive(peer: &Peer, events: Vec<Value>) -> SyncOutcome {
    peer.machine
        .receive_sync_changes(SyncChanges {
            to_device_events: events,
            ..Default::default()
        })
        .unwrap()
}

/// alice and bob with an established Olm channel both ways, bob knowing alice's device.
fn olm_pair() -> (FakeServer, Peer, Peer) {
    olm_pair_of(setup_pair())
}

/// [`olm_pair`] with alice's time from `clock`.
fn olm_pair_with_clock(clock: &Arc<ManualClock>) -> (FakeServer, Peer, Peer) {
    olm_pair_of(setup_pair_with_clock(clock))
}

fn olm_pair_of((mut server, alice, bob): (FakeServer, Peer, Peer)) -> (FakeServer, Peer, Peer) {
    let members = vec![alice.user(), bob.user()];
    server.share(&alice, room(), &members);
    server.sync(&bob);
    server.establish(&bob, &members);
    (server, alice, bob)
}

/// bob claims one of alice's keys and creates an outbound session; returns his pre-key event.
fn pre_key_event(server: &mut FakeServer, from: &Peer, to: &Peer) -> Value {
    server.establish(from, &[to.user()]);
    let p = payload(from, to, "m.dummy", json!({}));
    olm_event(from, to, from.user(), &p)
}

fn sqlite_store(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(
        crate::store::SqliteStore::open(dir, &crate::store::StoreKey::from_bytes([9; 32])).unwrap(),
    )
}

/// [`olm_pair`] plus alice's second device `LAPTOP`, which alice knows (undecided); also
/// the id of alice's outbound session in [`ROOM`].
fn alice_with_laptop() -> (FakeServer, Peer, Peer, Peer, String) {
    let (mut server, alice, bob) = olm_pair();
    let session_id = alice
        .store
        .outbound_group_session(room())
        .unwrap()
        .unwrap()
        .session_id;
    let laptop = Peer::new(alice.user().as_str(), "LAPTOP");
    server.drive(&laptop);
    changed(&alice, vec![alice.user()], vec![]);
    server.drive(&alice);
    (server, alice, bob, laptop, session_id)
}

/// The ids and users of the `/keys/query` requests the machine wants to send now.
fn pending_queries(peer: &Peer) -> Vec<(String, get_keys::v3::Request)> {
    peer.machine
        .outgoing_requests()
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.kind {
            OutgoingKind::KeysQuery(q) => Some((r.id, q)),
            _ => None,
        })
        .collect()
}

fn changed(peer: &Peer, changed_users: Vec<OwnedUserId>, left_users: Vec<OwnedUserId>) {
    peer.machine
        .receive_sync_changes(SyncChanges {
            changed_users,
            left_users,
            ..Default::default()
        })
        .unwrap();
}
