//! Protocol tests with two and three in-process machines and a fake homeserver. No network.

// Also built (without its tests) for the fuzzing harnesses, which use its helpers.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ruma::api::client::keys::{claim_keys, get_keys, upload_keys};
use ruma::to_device::DeviceIdOrAllDevices;
use ruma::{OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId};
use serde_json::{Value, json};

use super::olm::{Ed25519Keys, OlmPayload, OlmSession};
use super::requests::{json_of, raw};
use super::*;
use crate::store::{LocalTrust, MemoryStore, Store};

#[cfg(test)]
mod hostile;

/// The parts of a homeserver the crypto machine talks to.
#[derive(Default)]
pub(crate) struct FakeServer {
    pub device_keys: BTreeMap<String, BTreeMap<String, Value>>,
    pub one_time_keys: BTreeMap<(String, String), BTreeMap<String, Value>>,
    pub fallback_keys: BTreeMap<(String, String), BTreeMap<String, Value>>,
    pub inbox: HashMap<(String, String), Vec<Value>>,
    pub to_device_requests: Vec<(String, usize)>,
}

pub(crate) struct Peer {
    pub machine: OlmMachine,
    pub store: Arc<dyn Store>,
}

impl Peer {
    pub fn new(user: &str, device: &str) -> Self {
        Self::with_store(user, device, Arc::new(MemoryStore::new()))
    }
    pub fn with_store(user: &str, device: &str, store: Arc<dyn Store>) -> Self {
        Self {
            machine: OlmMachine::open(user, device, store.clone()).unwrap(),
            store,
        }
    }
    pub fn user(&self) -> String {
        self.machine.user_id().to_owned()
    }
}

impl FakeServer {
    /// Send everything the machine asks for; returns the query outcomes.
    pub fn drive(&mut self, peer: &Peer) -> Vec<QueryOutcome> {
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
        let id = (peer.user(), peer.machine.device_id().to_owned());
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

    pub fn query(&self, r: &get_keys::v3::Request) -> KeysQueryResponse {
        KeysQueryResponse::from(&self.ruma_query(r))
    }

    pub fn ruma_query(&self, r: &get_keys::v3::Request) -> get_keys::v3::Response {
        let mut response = get_keys::v3::Response::new();
        for user in r.device_keys.keys() {
            let devices = self
                .device_keys
                .get(user.as_str())
                .cloned()
                .unwrap_or_default();
            let entry = response.device_keys.entry(user.clone()).or_default();
            for (device, keys) in devices {
                entry.insert(OwnedDeviceId::from(device), raw(&keys).unwrap());
            }
        }
        response
    }

    pub fn claim(&mut self, r: &claim_keys::v3::Request) -> KeysClaimResponse {
        KeysClaimResponse::from(&self.ruma_claim(r))
    }

    pub fn ruma_claim(&mut self, r: &claim_keys::v3::Request) -> claim_keys::v3::Response {
        let mut keys: BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys> = BTreeMap::new();
        for (user, devices) in &r.one_time_keys {
            for device in devices.keys() {
                let id = (user.to_string(), device.to_string());
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
                let targets: Vec<String> = match device {
                    DeviceIdOrAllDevices::DeviceId(device) => vec![device.to_string()],
                    DeviceIdOrAllDevices::AllDevices => self
                        .device_keys
                        .get(user.as_str())
                        .map(|d| d.keys().cloned().collect())
                        .unwrap_or_default(),
                };
                for device in targets {
                    if user.as_str() == from.user() && device == from.machine.device_id() {
                        continue;
                    }
                    recipients += 1;
                    self.inbox
                        .entry((user.to_string(), device))
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

    pub fn take_inbox(&mut self, peer: &Peer) -> Vec<Value> {
        self.inbox
            .remove(&(peer.user(), peer.machine.device_id().to_owned()))
            .unwrap_or_default()
    }

    /// Deliver the peer's to-device inbox as one sync.
    pub fn sync(&mut self, peer: &Peer) -> SyncOutcome {
        let events = self.take_inbox(peer);
        peer.machine
            .receive_sync_changes(SyncChanges {
                to_device_events: events,
                ..Default::default()
            })
            .unwrap()
    }

    /// Track `users`, download their devices, claim keys for missing sessions.
    pub fn establish(&mut self, peer: &Peer, users: &[String]) -> ClaimOutcome {
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
    pub fn share(&mut self, peer: &Peer, room: &str, users: &[String]) {
        self.establish(peer, users);
        let requests = peer
            .machine
            .share_room_key(room, users, RotationSettings::default())
            .unwrap();
        assert!(!requests.is_empty() || users.iter().all(|u| u == &peer.user()));
        self.drive(peer);
    }
}

/// Self-signed device keys of a new account for `user`/`device` (any strings).
pub(crate) fn signed_device_keys(user: &str, device: &str) -> Value {
    super::account::OwnAccount::new(user, device)
        .device_keys()
        .unwrap_or(Value::Null)
}

pub(crate) fn room_event(room: &str, sender: &str, event_id: &str, content: Value) -> Value {
    let _ = room;
    json!({"type": "m.room.encrypted", "sender": sender, "event_id": event_id,
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
        .encrypt_room_event(ROOM, "m.room.message", &text(body))?;
    to.machine
        .decrypt_room_event(ROOM, &room_event(ROOM, &from.user(), event_id, content))
}

/// `peer`'s store knows [`ROOM`] as an encrypted room `joined` are members of.
fn room_members(peer: &Peer, joined: &[String]) {
    peer.store
        .save_changes(crate::store::Changes {
            rooms: vec![crate::store::RoomRecord {
                room_id: ROOM.into(),
                encryption: Some(json!({"algorithm": MEGOLM_ALGORITHM}).to_string()),
                own_membership: Some("join".into()),
                ..Default::default()
            }],
            members: joined
                .iter()
                .map(|u| crate::store::MemberRecord {
                    room_id: ROOM.into(),
                    user_id: u.clone(),
                    membership: "join".into(),
                })
                .collect(),
            ..Default::default()
        })
        .unwrap();
}

/// `err` is a withheld room key with this code.
fn assert_withheld(err: &CryptoError, expected: &str) {
    assert!(
        matches!(err, CryptoError::Megolm(MegolmError::Withheld { code, .. }) if code == expected),
        "expected withheld {expected}: {err:?}"
    );
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

const ROOM: &str = "!room:localhost";

/// [`ROOM`] as a room id.
fn room_id() -> ruma::OwnedRoomId {
    ruma::OwnedRoomId::try_from(ROOM).unwrap()
}

/// A user id from a string the test knows is valid.
fn uid(user: &str) -> OwnedUserId {
    OwnedUserId::try_from(user).unwrap()
}

fn setup_pair() -> (FakeServer, Peer, Peer) {
    let mut server = FakeServer::default();
    let alice = Peer::new("@alice:localhost", "ALICE");
    let bob = Peer::new("@bob:localhost", "BOB");
    server.drive(&alice);
    server.drive(&bob);
    (server, alice, bob)
}

#[test]
fn two_machines_exchange_olm_and_megolm() {
    let (mut server, alice, bob) = setup_pair();
    let members = vec![alice.user(), bob.user()];
    // bob knows alice's device: the room key is attributed to it.
    bob.machine.update_tracked_users(&members).unwrap();
    server.drive(&bob);
    server.share(&alice, ROOM, &members);
    let outcome = server.sync(&bob);
    assert_eq!(outcome.room_keys.len(), 1);
    assert_eq!(outcome.to_device[0].result, Ok("m.room_key".to_owned()));

    let content = alice
        .machine
        .encrypt_room_event(ROOM, "m.room.message", &text("hi bob"))
        .unwrap();
    let event = room_event(ROOM, &alice.user(), "$1", content);
    let decrypted = bob.machine.decrypt_room_event(ROOM, &event).unwrap();
    assert_eq!(decrypted.content["body"], "hi bob");
    assert_eq!(decrypted.sender_device.as_deref(), Some("ALICE"));
    assert_eq!(decrypted.sender_curve25519, alice.machine.curve25519_key());

    // And back, bob -> alice, over a session alice created from bob's pre-key message.
    server.share(&bob, ROOM, &members);
    assert_eq!(server.sync(&alice).room_keys.len(), 1);
    let decrypted = exchange(&bob, &alice, "hi alice", "$2").unwrap();
    assert_eq!(decrypted.content["body"], "hi alice");
}

#[test]
fn three_machines_share_one_session() {
    let (mut server, alice, bob) = setup_pair();
    let carol = Peer::new("@carol:localhost", "CAROL");
    server.drive(&carol);
    let members = vec![alice.user(), bob.user(), carol.user()];
    server.share(&alice, ROOM, &members);
    server.sync(&bob);
    server.sync(&carol);
    for i in 0..5 {
        let content = alice
            .machine
            .encrypt_room_event(ROOM, "m.room.message", &text(&format!("m{i}")))
            .unwrap();
        let event = room_event(ROOM, &alice.user(), &format!("${i}"), content);
        for peer in [&bob, &carol] {
            let d = peer.machine.decrypt_room_event(ROOM, &event).unwrap();
            assert_eq!(d.content["body"], format!("m{i}"));
            assert_eq!(d.message_index, i);
        }
    }
    // Sharing again sends nothing new: everyone has the session.
    let again = alice
        .machine
        .share_room_key(ROOM, &members, RotationSettings::default())
        .unwrap();
    assert!(again.is_empty());
}

#[test]
fn forged_device_signature_is_rejected_and_not_stored() {
    let (mut server, alice, bob) = setup_pair();
    let keys = server
        .device_keys
        .get_mut(&bob.user())
        .unwrap()
        .get_mut("BOB")
        .unwrap();
    let other = Peer::new("@bob:localhost", "BOB");
    keys["keys"]["curve25519:BOB"] = other.machine.curve25519_key().into();
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    let outcomes = server.drive(&alice);
    let rejected = &outcomes[0].rejected;
    assert_eq!(rejected.len(), 1);
    assert!(matches!(rejected[0].2, DeviceKeyError::Signature(_)));
    assert!(alice.machine.devices(&bob.user()).unwrap().is_empty());
}

#[test]
fn changed_ed25519_key_of_known_device_is_rejected() {
    let (mut server, alice, bob) = setup_pair();
    server.establish(&alice, &[bob.user()]);
    let before = alice.machine.devices(&bob.user()).unwrap();
    // bob's device id is reused by a different account (a forged or reset device).
    let impostor = Peer::new("@bob:localhost", "BOB");
    server
        .device_keys
        .get_mut(&bob.user())
        .unwrap()
        .insert("BOB".into(), impostor.machine.device_keys().unwrap());
    let mut request = get_keys::v3::Request::new();
    request
        .device_keys
        .insert(OwnedUserId::try_from(bob.user()).unwrap(), vec![]);
    let response = server.query(&request);
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    let store = alice.store.clone();
    store
        .save_changes(crate::store::Changes {
            tracked_users: vec![crate::store::TrackedUser {
                user_id: bob.user(),
                state: crate::store::TrackingState::PendingDownload,
                sequence: 5,
            }],
            ..Default::default()
        })
        .unwrap();
    let id = match alice
        .machine
        .outgoing_requests()
        .unwrap()
        .into_iter()
        .find(|r| matches!(r.kind, OutgoingKind::KeysQuery(_)))
    {
        Some(r) => r.id,
        None => panic!("expected a query"),
    };
    let outcome = alice.machine.mark_keys_query_sent(&id, &response).unwrap();
    assert!(matches!(
        outcome.rejected[0].2,
        DeviceKeyError::Ed25519Changed { .. }
    ));
    assert_eq!(alice.machine.devices(&bob.user()).unwrap(), before);
}

#[test]
fn claimed_one_time_key_with_bad_signature_creates_no_session() {
    let (mut server, alice, bob) = setup_pair();
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    server.drive(&alice);
    for key in server
        .one_time_keys
        .get_mut(&(bob.user(), "BOB".into()))
        .unwrap()
        .values_mut()
    {
        key["key"] = Peer::new("@x:y", "X").machine.curve25519_key().into();
    }
    let Some(OutgoingRequest {
        kind: OutgoingKind::KeysClaim(r),
        ..
    }) = alice.machine.missing_sessions(&[bob.user()]).unwrap()
    else {
        panic!("expected a claim")
    };
    let outcome = alice
        .machine
        .mark_keys_claim_sent(&server.claim(&r))
        .unwrap();
    assert_eq!(outcome.sessions_created, 0);
    assert!(matches!(
        outcome.failed[0].2,
        OneTimeKeyError::BadSignature(_)
    ));
    assert!(
        alice
            .store
            .olm_sessions(&[&bob.machine.curve25519_key()])
            .unwrap()
            .is_empty()
    );
    // Still missing, so a later claim is offered again.
    assert!(
        alice
            .machine
            .missing_sessions(&[bob.user()])
            .unwrap()
            .is_some()
    );
}

/// Encrypt an arbitrary Olm payload from `from` to `to` over their existing session.
fn olm_event(from: &Peer, to: &Peer, event_sender: &str, payload: &OlmPayload) -> Value {
    let to_key = to.machine.curve25519_key();
    let records = from.store.olm_sessions(&[&to_key]).unwrap();
    let record = &records[&to_key][0];
    let mut session = OlmSession::from_record(record).unwrap();
    let content = session
        .encrypt(&from.machine.curve25519_key(), payload)
        .unwrap();
    from.store
        .save_changes(crate::store::Changes {
            olm_sessions: vec![session.to_record().unwrap()],
            ..Default::default()
        })
        .unwrap();
    json!({"type": "m.room.encrypted", "sender": event_sender, "content": content})
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
        let _ = from.store.save_changes(crate::store::Changes {
            olm_sessions: vec![record],
            ..Default::default()
        });
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
pub(crate) fn megolm_raw(peer: &Peer, room: &str, plaintext: &[u8]) -> Value {
    let Ok(Some(record)) = peer.store.outbound_group_session(room) else {
        return Value::Null;
    };
    let Ok(mut group) = super::megolm::OutboundGroup::from_record(&record) else {
        return Value::Null;
    };
    let message = group.session.encrypt(plaintext);
    if let Ok(record) = group.to_record() {
        let _ = peer.store.save_changes(crate::store::Changes {
            outbound_group_sessions: vec![record],
            ..Default::default()
        });
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
        sender_device: Some(from.machine.device_id().into()),
        recipient: to.user(),
        recipient_keys: Ed25519Keys {
            ed25519: to.machine.ed25519_key(),
        },
        keys: Ed25519Keys {
            ed25519: from.machine.ed25519_key(),
        },
    }
}

fn room_key_of(peer: &Peer, room: &str) -> Value {
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
    let (mut server, alice, bob) = setup_pair();
    let members = vec![alice.user(), bob.user()];
    server.share(&alice, ROOM, &members);
    server.sync(&bob);
    server.establish(&bob, &members);
    (server, alice, bob)
}

#[test]
fn forged_olm_payload_fields_are_rejected_without_storing_the_key() {
    let (_server, alice, bob) = olm_pair();
    let mallory_room = "!other:localhost";
    alice
        .machine
        .share_room_key(mallory_room, &[alice.user()], RotationSettings::default())
        .unwrap();
    let key = room_key_of(&alice, mallory_room);
    type Forgery = Box<dyn Fn(&mut OlmPayload)>;
    let cases: Vec<(&str, Forgery)> = vec![
        (
            "sender",
            Box::new(|p| p.sender = "@mallory:localhost".into()),
        ),
        (
            "recipient",
            Box::new(|p| p.recipient = "@carol:localhost".into()),
        ),
        (
            "recipient_keys.ed25519",
            Box::new(|p| p.recipient_keys.ed25519 = "AAAA".into()),
        ),
        ("keys.ed25519", Box::new(|p| p.keys.ed25519 = "BBBB".into())),
    ];
    for (field, forge) in cases {
        let mut p = payload(&alice, &bob, "m.room_key", key.clone());
        forge(&mut p);
        let outcome = receive(&bob, vec![olm_event(&alice, &bob, &alice.user(), &p)]);
        match &outcome.to_device[0].result {
            Err(OlmError::PayloadMismatch { field: f, .. }) => assert_eq!(*f, field),
            other => panic!("{field}: expected a mismatch, got {other:?}"),
        }
        assert!(outcome.room_keys.is_empty());
        assert!(
            bob.store
                .inbound_group_session(mallory_room, key["session_id"].as_str().unwrap())
                .unwrap()
                .is_none()
        );
    }
}

#[test]
fn room_key_from_a_device_of_another_user_is_rejected() {
    let (mut server, alice, bob) = olm_pair();
    let mallory = Peer::new("@mallory:localhost", "MAL");
    server.drive(&mallory);
    let members = vec![bob.user(), mallory.user()];
    server.establish(&mallory, &members);
    server.establish(&bob, &members);
    let room = "!mal:localhost";
    mallory
        .machine
        .share_room_key(room, &[mallory.user()], RotationSettings::default())
        .unwrap();
    let mut p = payload(&mallory, &bob, "m.room_key", room_key_of(&mallory, room));
    // Mallory claims to be alice, and a malicious server delivers it as from alice.
    p.sender = alice.user();
    let outcome = receive(&bob, vec![olm_event(&mallory, &bob, &alice.user(), &p)]);
    assert!(matches!(
        &outcome.to_device[0].result,
        Err(OlmError::PayloadMismatch {
            field: "sender",
            ..
        })
    ));
    assert_eq!(
        bob.store.inbound_group_session_count().unwrap(),
        1,
        "only alice's real key"
    );
}

#[test]
fn room_keys_not_over_olm_are_rejected() {
    let (_server, alice, bob) = olm_pair();
    let room = "!plain:localhost";
    alice
        .machine
        .share_room_key(room, &[alice.user()], RotationSettings::default())
        .unwrap();
    let key = room_key_of(&alice, room);
    let plaintext = json!({"type": "m.room_key", "sender": alice.user(), "content": key});
    let in_megolm = json!({"type": "m.room.encrypted", "sender": alice.user(), "content": {
        "algorithm": MEGOLM_ALGORITHM, "ciphertext": "AwgAEiBQs", "session_id": "x", "sender_key": alice.machine.curve25519_key()}});
    let outcome = receive(&bob, vec![plaintext, in_megolm]);
    assert!(matches!(
        outcome.to_device[0].result,
        Err(OlmError::RoomKeyNotOverOlm(_))
    ));
    assert!(matches!(
        outcome.to_device[1].result,
        Err(OlmError::UnsupportedAlgorithm(_))
    ));
    assert_eq!(bob.store.inbound_group_session_count().unwrap(), 1);
}

#[test]
fn session_of_another_room_does_not_decrypt() {
    let (_server, alice, bob) = olm_pair();
    let content = alice
        .machine
        .encrypt_room_event(ROOM, "m.room.message", &text("secret"))
        .unwrap();
    let err = bob
        .machine
        .decrypt_room_event(
            "!elsewhere:localhost",
            &room_event("", &alice.user(), "$x", content),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        CryptoError::Megolm(MegolmError::MissingSession { .. })
    ));

    // A key that claims another room than the one its messages were encrypted for.
    let room_b = "!b:localhost";
    alice
        .machine
        .share_room_key(room_b, &[alice.user()], RotationSettings::default())
        .unwrap();
    let mut key = room_key_of(&alice, room_b);
    key["room_id"] = ROOM.into();
    receive(
        &bob,
        vec![olm_event(
            &alice,
            &bob,
            &alice.user(),
            &payload(&alice, &bob, "m.room_key", key),
        )],
    );
    let content = alice
        .machine
        .encrypt_room_event(room_b, "m.room.message", &text("b"))
        .unwrap();
    let err = bob
        .machine
        .decrypt_room_event(ROOM, &room_event(ROOM, &alice.user(), "$y", content))
        .unwrap_err();
    assert!(
        matches!(err, CryptoError::Megolm(MegolmError::RoomMismatch { .. })),
        "{err:?}"
    );
}

#[test]
fn replayed_megolm_index_is_detected() {
    let (_server, alice, bob) = olm_pair();
    let content = alice
        .machine
        .encrypt_room_event(ROOM, "m.room.message", &text("once"))
        .unwrap();
    let first = room_event(ROOM, &alice.user(), "$first", content.clone());
    bob.machine.decrypt_room_event(ROOM, &first).unwrap();
    // The same event again (e.g. from a second sync or /messages) is fine.
    bob.machine.decrypt_room_event(ROOM, &first).unwrap();
    let replay = room_event(ROOM, &alice.user(), "$replay", content);
    let err = bob.machine.decrypt_room_event(ROOM, &replay).unwrap_err();
    assert!(
        matches!(
            err,
            CryptoError::Megolm(MegolmError::Replay { index: 0, .. })
        ),
        "{err:?}"
    );
}

#[test]
fn event_sender_must_own_the_session() {
    let (_server, alice, bob) = olm_pair();
    let content = alice
        .machine
        .encrypt_room_event(ROOM, "m.room.message", &text("x"))
        .unwrap();
    let err = bob
        .machine
        .decrypt_room_event(
            ROOM,
            &room_event(ROOM, "@mallory:localhost", "$m", content.clone()),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        CryptoError::Megolm(MegolmError::SenderMismatch { .. })
    ));
    let mut forged = content;
    forged["sender_key"] = bob.machine.curve25519_key().into();
    let err = bob
        .machine
        .decrypt_room_event(ROOM, &room_event(ROOM, &alice.user(), "$k", forged))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CryptoError::Megolm(MegolmError::SenderKeyMismatch { .. })
        ),
        "{err:?}"
    );
}

/// bob claims one of alice's keys and creates an outbound session; returns his pre-key event.
fn pre_key_event(server: &mut FakeServer, from: &Peer, to: &Peer) -> Value {
    server.establish(from, &[to.user()]);
    let p = payload(from, to, "m.dummy", json!({}));
    olm_event(from, to, &from.user(), &p)
}

#[test]
fn malformed_pre_key_message_does_not_consume_the_one_time_key() {
    let (mut server, alice, bob) = setup_pair();
    server.establish(&bob, &[alice.user()]);
    let good = pre_key_event(&mut server, &bob, &alice);
    let mut bad = good.clone();
    let alice_key = alice.machine.curve25519_key();
    let body = bad["content"]["ciphertext"][&alice_key]["body"]
        .as_str()
        .unwrap()
        .to_owned();
    // Flip a character near the end: the message still parses, its MAC does not verify.
    let mut chars: Vec<char> = body.chars().collect();
    let i = chars.len() - 5;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    bad["content"]["ciphertext"][&alice_key]["body"] = chars.into_iter().collect::<String>().into();
    let before = alice.store.account().unwrap().unwrap();
    let outcome = receive(&alice, vec![bad]);
    assert!(
        matches!(
            outcome.to_device[0].result,
            Err(OlmError::SessionCreation(_)) | Err(OlmError::Malformed(_))
        ),
        "{:?}",
        outcome.to_device[0]
    );
    assert_eq!(
        alice.store.account().unwrap().unwrap(),
        before,
        "account untouched"
    );
    let garbage = json!({"type": "m.room.encrypted", "sender": bob.user(), "content": {
        "algorithm": OLM_ALGORITHM, "sender_key": bob.machine.curve25519_key(),
        "ciphertext": {alice_key.clone(): {"type": 0, "body": "bm90IGEgbWVzc2FnZQ"}}}});
    assert!(matches!(
        receive(&alice, vec![garbage]).to_device[0].result,
        Err(OlmError::Malformed(_))
    ));
    // The real message that uses the same one-time key still works.
    let outcome = receive(&alice, vec![good.clone()]);
    assert_eq!(outcome.to_device[0].result, Ok("m.dummy".to_owned()));
}

#[test]
fn second_pre_key_message_reusing_a_consumed_one_time_key_is_rejected() {
    let (mut server, alice, bob) = setup_pair();
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    server.drive(&alice);
    bob.machine.update_tracked_users(&[alice.user()]).unwrap();
    server.drive(&bob);
    let Some(OutgoingRequest {
        kind: OutgoingKind::KeysClaim(r),
        ..
    }) = bob.machine.missing_sessions(&[alice.user()]).unwrap()
    else {
        panic!("claim expected")
    };
    let response = server.claim(&r);
    // bob creates two sessions from the same claimed key (a broken or malicious client).
    bob.machine.mark_keys_claim_sent(&response).unwrap();
    let first = olm_event(
        &bob,
        &alice,
        &bob.user(),
        &payload(&bob, &alice, "m.dummy", json!({})),
    );
    let key = alice.machine.curve25519_key();
    let sessions = bob.store.olm_sessions(&[&key]).unwrap();
    assert_eq!(sessions[&key].len(), 1);
    // Replace the session with a fresh one built from the same one-time key.
    let bob2 = Peer::with_store(&bob.user(), "BOB", bob.store.clone());
    let _ = bob2.machine.mark_keys_claim_sent(&response).unwrap();
    let second_session = bob.store.olm_sessions(&[&key]).unwrap()[&key]
        .iter()
        .find(|s| s.session_id != sessions[&key][0].session_id)
        .cloned()
        .unwrap();
    let mut s = OlmSession::from_record(&second_session).unwrap();
    let content = s
        .encrypt(
            &bob.machine.curve25519_key(),
            &payload(&bob, &alice, "m.dummy", json!({})),
        )
        .unwrap();
    let second = json!({"type": "m.room.encrypted", "sender": bob.user(), "content": content});

    assert_eq!(
        receive(&alice, vec![first]).to_device[0].result,
        Ok("m.dummy".to_owned())
    );
    let outcome = receive(&alice, vec![second]);
    assert!(
        matches!(&outcome.to_device[0].result, Err(OlmError::SessionCreation(m)) if m.contains("one-time key")),
        "{:?}",
        outcome.to_device[0]
    );
}

#[test]
fn to_device_events_are_handled_in_order_in_one_batch() {
    let (mut server, alice, bob) = setup_pair();
    let members = vec![alice.user(), bob.user()];
    server.establish(&alice, &members);
    let mut events = Vec::new();
    for i in 0..30 {
        let room = format!("!r{i}:localhost");
        alice
            .machine
            .share_room_key(&room, &members, RotationSettings::default())
            .unwrap();
        server.drive(&alice);
        events.extend(server.take_inbox(&bob));
    }
    // All 30 are Olm messages on one session; the first is a pre-key message.
    let outcome = receive(&bob, events);
    assert_eq!(outcome.room_keys.len(), 30);
    let rooms: Vec<String> = outcome
        .room_keys
        .iter()
        .map(|k| k.room_id.clone())
        .collect();
    let expected: Vec<String> = (0..30).map(|i| format!("!r{i}:localhost")).collect();
    assert_eq!(rooms, expected);
}

#[test]
fn room_keys_go_out_in_batches_and_retries_reuse_the_transaction_id() {
    let mut server = FakeServer::default();
    let alice = Peer::new("@alice:localhost", "ALICE");
    server.drive(&alice);
    let mut users = Vec::new();
    for i in 0..130 {
        for d in 0..2 {
            let peer = Peer::new(&format!("@u{i}:localhost"), &format!("D{d}"));
            server.drive(&peer);
        }
        users.push(format!("@u{i}:localhost"));
    }
    server.establish(&alice, &users);
    let requests = alice
        .machine
        .share_room_key(ROOM, &users, RotationSettings::default())
        .unwrap();
    assert_eq!(requests.len(), 2, "260 devices in chunks of 250");
    let ids: Vec<String> = requests.iter().map(|r| r.id.clone()).collect();
    // Not yet confirmed: the same requests come back with the same transaction ids.
    let pending: Vec<String> = alice
        .machine
        .outgoing_requests()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(pending.len(), 2);
    for id in &ids {
        assert!(pending.contains(id));
    }
    server.drive(&alice);
    let sizes: Vec<usize> = server.to_device_requests.iter().map(|(_, n)| *n).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 260);
    assert!(alice.machine.outgoing_requests().unwrap().is_empty());
}

#[test]
fn one_time_keys_are_stored_before_upload_and_reuploaded_identically() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first = Peer::with_store("@alice:localhost", "ALICE", store.clone());
    let upload = |peer: &Peer| -> Value {
        let requests = peer.machine.outgoing_requests().unwrap();
        let OutgoingKind::KeysUpload(r) = &requests[0].kind else {
            panic!("upload expected")
        };
        serde_json::to_value(
            r.one_time_keys
                .iter()
                .map(|(k, v)| (k.to_string(), json_of(v).unwrap()))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap()
    };
    let sent = upload(&first);
    assert_eq!(sent.as_object().unwrap().len(), 50);
    // Killed before the response arrived: the restarted process uploads the very same keys.
    drop(first);
    let restarted = Peer::with_store("@alice:localhost", "ALICE", store.clone());
    assert_eq!(upload(&restarted), sent);
    let mut server = FakeServer::default();
    server.drive(&restarted);
    assert!(restarted.machine.outgoing_requests().unwrap().is_empty());
}

#[test]
fn one_time_keys_are_topped_up_and_fallback_key_rotated() {
    let (mut server, alice, _bob) = setup_pair();
    let sync = |counts: u64, fallback: Vec<String>| {
        alice
            .machine
            .receive_sync_changes(SyncChanges {
                one_time_key_counts: Some(BTreeMap::from([(SIGNED_CURVE25519.to_owned(), counts)])),
                unused_fallback_key_types: Some(fallback),
                ..Default::default()
            })
            .unwrap();
    };
    sync(40, vec![SIGNED_CURVE25519.into()]);
    assert!(
        alice.machine.outgoing_requests().unwrap().is_empty(),
        "40 of 50 is enough"
    );
    sync(10, vec![SIGNED_CURVE25519.into()]);
    let requests = alice.machine.outgoing_requests().unwrap();
    let OutgoingKind::KeysUpload(r) = &requests[0].kind else {
        panic!()
    };
    assert_eq!(r.one_time_keys.len(), 40);
    assert!(r.fallback_keys.is_empty());
    alice
        .machine
        .mark_keys_upload_sent(&KeysUploadResponse {
            one_time_key_counts: BTreeMap::from([(SIGNED_CURVE25519.to_owned(), 50)]),
        })
        .unwrap();
    sync(50, vec![]);
    let requests = alice.machine.outgoing_requests().unwrap();
    let OutgoingKind::KeysUpload(r) = &requests[0].kind else {
        panic!()
    };
    assert_eq!(r.fallback_keys.len(), 1, "a used fallback key is replaced");
    assert!(r.one_time_keys.is_empty());
    let _ = &mut server;
}

fn sqlite_store(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(
        crate::store::SqliteStore::open(dir, &crate::store::StoreKey::from_bytes([9; 32])).unwrap(),
    )
}

#[test]
fn room_key_and_sync_token_are_committed_together_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FakeServer::default();
    let alice = Peer::new("@alice:localhost", "ALICE");
    let bob = Peer::with_store("@bob:localhost", "BOB", sqlite_store(dir.path()));
    server.drive(&alice);
    server.drive(&bob);
    let members = vec![alice.user(), bob.user()];
    server.share(&alice, ROOM, &members);
    let events = server.take_inbox(&bob);
    assert!(bob.store.sync_token().unwrap().is_none());
    let outcome = bob
        .machine
        .receive_sync_changes(SyncChanges {
            to_device_events: events,
            next_batch: Some("s42".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(outcome.room_keys.len(), 1);
    // The process dies here: nothing else runs, no clean shutdown.
    std::mem::forget(bob);

    let bob = Peer::with_store("@bob:localhost", "BOB", sqlite_store(dir.path()));
    assert_eq!(bob.store.sync_token().unwrap().as_deref(), Some("s42"));
    let decrypted = exchange(&alice, &bob, "after restart", "$r").unwrap();
    assert_eq!(decrypted.content["body"], "after restart");
}

#[test]
fn a_failed_sync_commit_stores_neither_the_key_nor_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        crate::store::SqliteStore::open(dir.path(), &crate::store::StoreKey::from_bytes([5; 32]))
            .unwrap(),
    );
    let mut server = FakeServer::default();
    let alice = Peer::new("@alice:localhost", "ALICE");
    let bob = Peer::with_store("@bob:localhost", "BOB", sqlite.clone());
    server.drive(&alice);
    server.drive(&bob);
    let members = vec![alice.user(), bob.user()];
    server.share(&alice, ROOM, &members);
    let events = server.take_inbox(&bob);
    // The commit fails (e.g. the disk is full): nothing of the batch is stored.
    sqlite.set_fail_before_commit(true);
    let result = bob.machine.receive_sync_changes(SyncChanges {
        to_device_events: events.clone(),
        next_batch: Some("s1".into()),
        ..Default::default()
    });
    sqlite.set_fail_before_commit(false);
    assert!(matches!(result, Err(CryptoError::Store(_))));
    assert_eq!(bob.store.sync_token().unwrap(), None);
    assert_eq!(bob.store.inbound_group_session_count().unwrap(), 0);
    // The same sync handled again by the same machine succeeds: the one-time key the
    // failed batch used is still there.
    let outcome = receive(&bob, events);
    assert_eq!(outcome.room_keys.len(), 1);
}

#[test]
fn devices_without_a_session_get_a_withheld_notice_once() {
    let (mut server, alice, bob) = setup_pair();
    let members = vec![alice.user(), bob.user()];
    for peer in [&alice, &bob] {
        peer.machine.update_tracked_users(&members).unwrap();
        server.drive(peer);
    }
    // Withheld notices are taken only from members of the room.
    room_members(&bob, &members);
    // bob's one-time keys and fallback key are gone: no session can be made.
    server.one_time_keys.clear();
    server.fallback_keys.clear();
    server.establish(&alice, &members);
    alice
        .machine
        .share_room_key(ROOM, &members, RotationSettings::default())
        .unwrap();
    server.drive(&alice);
    let outcome = server.sync(&bob);
    assert_eq!(outcome.to_device[0].event_type, "m.room_key.withheld");
    let content = alice
        .machine
        .encrypt_room_event(ROOM, "m.room.message", &text("x"))
        .unwrap();
    let err = bob
        .machine
        .decrypt_room_event(ROOM, &room_event(ROOM, &alice.user(), "$w", content))
        .unwrap_err();
    assert_withheld(&err, "m.no_olm");
    // Once per session: sharing again sends no second notice.
    assert!(
        alice
            .machine
            .share_room_key(ROOM, &members, RotationSettings::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn blacklisting_a_recipient_rotates_the_session_and_withholds_the_key() {
    let (mut server, alice, bob) = olm_pair();
    let members = vec![alice.user(), bob.user()];
    room_members(&bob, &members);
    let before = alice
        .store
        .outbound_group_session(ROOM)
        .unwrap()
        .unwrap()
        .session_id;
    alice
        .machine
        .set_local_trust(&bob.user(), "BOB", crate::store::LocalTrust::Blacklisted)
        .unwrap();
    alice
        .machine
        .share_room_key(ROOM, &members, RotationSettings::default())
        .unwrap();
    server.drive(&alice);
    let after = alice
        .store
        .outbound_group_session(ROOM)
        .unwrap()
        .unwrap()
        .session_id;
    assert_ne!(
        before, after,
        "a blacklisted device must not read new messages"
    );
    let outcome = server.sync(&bob);
    assert_eq!(outcome.to_device[0].event_type, "m.room_key.withheld");
    let content = alice
        .machine
        .encrypt_room_event(ROOM, "m.room.message", &text("x"))
        .unwrap();
    let err = bob
        .machine
        .decrypt_room_event(ROOM, &room_event(ROOM, &alice.user(), "$b", content))
        .unwrap_err();
    assert_withheld(&err, "m.blacklisted");
}

#[test]
fn rotation_follows_message_count_and_not_unrelated_changes() {
    let (mut server, alice, bob) = olm_pair();
    let members = vec![alice.user(), bob.user()];
    let settings = RotationSettings {
        period_ms: u64::MAX,
        messages: 3,
    };
    let id = |p: &Peer| {
        p.store
            .outbound_group_session(ROOM)
            .unwrap()
            .unwrap()
            .session_id
    };
    let first = id(&alice);
    for _ in 0..3 {
        alice
            .machine
            .share_room_key(ROOM, &members, settings)
            .unwrap();
        alice
            .machine
            .encrypt_room_event(ROOM, "m.room.message", &text("m"))
            .unwrap();
    }
    // A restart is no reason to rotate.
    let restarted = Peer::with_store(&alice.user(), "ALICE", alice.store.clone());
    assert_eq!(id(&restarted), first);
    // A new own device is no reason either; it just gets the key.
    let phone = Peer::new(&alice.user(), "PHONE");
    server.drive(&phone);
    restarted
        .machine
        .receive_sync_changes(SyncChanges {
            changed_users: vec![uid(&alice.user())],
            ..Default::default()
        })
        .unwrap();
    restarted.machine.update_tracked_users(&members).unwrap();
    server.establish(&restarted, &members);
    // ...but the 4th message is over the count of 3.
    restarted
        .machine
        .share_room_key(ROOM, &members, settings)
        .unwrap();
    assert_ne!(id(&restarted), first);
    let _ = bob;
}

#[test]
fn a_member_leaving_rotates_the_session() {
    let (_server, alice, bob) = olm_pair();
    let before = alice
        .store
        .outbound_group_session(ROOM)
        .unwrap()
        .unwrap()
        .session_id;
    alice
        .machine
        .share_room_key(ROOM, &[alice.user()], RotationSettings::default())
        .unwrap();
    let after = alice
        .store
        .outbound_group_session(ROOM)
        .unwrap()
        .unwrap()
        .session_id;
    assert_ne!(before, after);
    let _ = bob;
}

#[test]
fn message_from_an_unknown_device_marks_its_user_outdated() {
    let (mut server, alice, bob) = setup_pair();
    // bob tracks alice but downloaded her list before she had this device.
    let alice_keys = server.device_keys.remove(&alice.user()).unwrap();
    bob.machine.update_tracked_users(&[alice.user()]).unwrap();
    server.drive(&bob);
    server.device_keys.insert(alice.user(), alice_keys);
    assert!(
        bob.machine
            .outdated_users(&[alice.user()])
            .unwrap()
            .is_empty()
    );
    server.establish(&alice, &[bob.user()]);
    let outcome = receive(&bob, vec![pre_key_event(&mut server, &alice, &bob)]);
    assert_eq!(outcome.to_device[0].result, Ok("m.dummy".to_owned()));
    assert_eq!(
        bob.machine.outdated_users(&[alice.user()]).unwrap(),
        vec![alice.user()]
    );
    // The next outgoing requests re-query alice at once.
    let queries = bob.machine.outgoing_requests().unwrap();
    assert!(queries.iter().any(|r| matches!(&r.kind, OutgoingKind::KeysQuery(q) if q.device_keys.keys().any(|u| u.as_str() == alice.user()))));
}

#[test]
fn a_wedged_session_is_replaced_and_announced_with_a_dummy() {
    let (mut server, alice, bob) = olm_pair();
    let members = vec![alice.user(), bob.user()];
    // Corrupt bob's copy of his session with alice: same id, unrelated ratchet.
    let alice_key = alice.machine.curve25519_key();
    let mut record = bob.store.olm_sessions(&[&alice_key]).unwrap()[&alice_key][0].clone();
    let stranger = Peer::new("@x:localhost", "X");
    let other = {
        let account = stranger.machine.lock().unwrap();
        let otk = vodozemac::Curve25519SecretKey::new();
        let session = account
            .account
            .inner
            .create_outbound_session(
                vodozemac::olm::SessionConfig::version_1(),
                vodozemac::Curve25519PublicKey::from(&otk),
                vodozemac::Curve25519PublicKey::from(&vodozemac::Curve25519SecretKey::new()),
            )
            .unwrap();
        OlmSession::new(alice_key.clone(), session)
            .to_record()
            .unwrap()
    };
    record.pickle = other.pickle;
    bob.store
        .save_changes(crate::store::Changes {
            olm_sessions: vec![record],
            ..Default::default()
        })
        .unwrap();
    let bob = Peer::with_store(&bob.user(), "BOB", bob.store.clone());

    // alice rotates and sends the new key over the (now wedged) channel: bob cannot read it.
    alice.machine.discard_room_key(ROOM).unwrap();
    server.share(&alice, ROOM, &members);
    let outcome = server.sync(&bob);
    assert!(
        matches!(
            outcome.to_device[0].result,
            Err(OlmError::NoMatchingSession { .. } | OlmError::SessionCreation(_))
        ),
        "{:?}",
        outcome.to_device[0]
    );
    // bob repairs the channel: new session from a claimed key, announced with m.dummy.
    let Some(OutgoingRequest {
        kind: OutgoingKind::KeysClaim(r),
        ..
    }) = bob.machine.session_repair_request().unwrap()
    else {
        panic!("expected an unwedging claim")
    };
    bob.machine.mark_keys_claim_sent(&server.claim(&r)).unwrap();
    server.drive(&bob);
    assert_eq!(
        server.sync(&alice).to_device[0].result,
        Ok("m.dummy".to_owned())
    );
    // At most once an hour.
    assert!(bob.machine.session_repair_request().unwrap().is_none());
    // alice's next key goes over the new session and bob decrypts again.
    alice.machine.discard_room_key(ROOM).unwrap();
    server.share(&alice, ROOM, &members);
    assert_eq!(server.sync(&bob).room_keys.len(), 1);
    let d = exchange(&alice, &bob, "healed", "$h").unwrap();
    assert_eq!(d.content["body"], "healed");
}

#[test]
fn missing_keys_are_requested_from_own_verified_devices_only() {
    let (mut server, alice, bob) = olm_pair();
    let members = vec![alice.user(), bob.user()];
    // alice logs in a second device after bob shared the session: it misses the key.
    let laptop = Peer::new(&alice.user(), "LAPTOP");
    server.drive(&laptop);
    let content = alice
        .machine
        .encrypt_room_event(ROOM, "m.room.message", &text("x"))
        .unwrap();
    let _ = content;
    let bob_content = {
        server.share(&bob, ROOM, &[bob.user(), alice.user()]);
        server.sync(&alice);
        bob.machine
            .encrypt_room_event(ROOM, "m.room.message", &text("for alice"))
            .unwrap()
    };
    let event = room_event(ROOM, &bob.user(), "$k", bob_content);
    server.take_inbox(&laptop);
    let err = laptop.machine.decrypt_room_event(ROOM, &event).unwrap_err();
    assert!(matches!(
        err,
        CryptoError::Megolm(MegolmError::MissingSession { .. })
    ));

    // The two own devices know and verified each other, and have an Olm channel.
    for (me, other) in [(&alice, "LAPTOP"), (&laptop, "ALICE")] {
        me.machine.update_tracked_users(&[alice.user()]).unwrap();
        me.machine
            .receive_sync_changes(SyncChanges {
                changed_users: vec![uid(&alice.user())],
                ..Default::default()
            })
            .unwrap();
        server.drive(me);
        assert!(
            me.machine
                .set_local_trust(&alice.user(), other, crate::store::LocalTrust::Verified)
                .unwrap()
        );
    }
    server.establish(&alice, &[alice.user()]);
    let sender_key = event["content"]["sender_key"].as_str().unwrap().to_owned();
    let session_id = event["content"]["session_id"].as_str().unwrap().to_owned();
    assert!(
        laptop
            .machine
            .request_room_key(
                &room_id(),
                &session_id,
                &sender_key,
                Some((&uid(&bob.user()), "BOB".into()))
            )
            .unwrap()
    );
    assert!(
        !laptop
            .machine
            .request_room_key(&room_id(), &session_id, &sender_key, None)
            .unwrap(),
        "asked once"
    );
    server.drive(&laptop);
    // The sending device is told too, and does not answer another user.
    let to_bob = server.take_inbox(&bob);
    assert_eq!(to_bob.len(), 1);
    assert_eq!(to_bob[0]["type"], "m.room_key_request");
    let bob_pending = bob.store.pending_to_device().unwrap().len();
    receive(&bob, to_bob);
    assert_eq!(
        bob.store.pending_to_device().unwrap().len(),
        bob_pending,
        "no answer"
    );
    server.sync(&alice);
    server.drive(&alice);
    let outcome = server.sync(&laptop);
    assert_eq!(outcome.room_keys.len(), 1, "{:?}", outcome.to_device);
    // A forwarded key vouches for no sender: the laptop confirms bob's device itself.
    laptop.machine.update_tracked_users(&members).unwrap();
    server.drive(&laptop);
    let d = laptop.machine.decrypt_room_event(ROOM, &event).unwrap();
    assert_eq!(d.content["body"], "for alice");
}

/// [`olm_pair`] plus alice's second device `LAPTOP`, which alice knows (undecided); also
/// the id of alice's outbound session in [`ROOM`].
fn alice_with_laptop() -> (FakeServer, Peer, Peer, Peer, String) {
    let (mut server, alice, bob) = olm_pair();
    let session_id = alice
        .store
        .outbound_group_session(ROOM)
        .unwrap()
        .unwrap()
        .session_id;
    let laptop = Peer::new(&alice.user(), "LAPTOP");
    server.drive(&laptop);
    changed(&alice, vec![alice.user()], vec![]);
    server.drive(&alice);
    (server, alice, bob, laptop, session_id)
}

/// An `m.room_key_request` to-device event for alice's session `session_id` in [`ROOM`].
fn key_request(
    alice: &Peer,
    sender: &str,
    device: &str,
    request_id: &str,
    session_id: &str,
) -> Value {
    json!({"type": "m.room_key_request", "sender": sender, "content": {
        "action": "request", "request_id": request_id, "requesting_device_id": device,
        "body": {"algorithm": MEGOLM_ALGORITHM, "room_id": ROOM, "session_id": session_id,
                 "sender_key": alice.machine.curve25519_key()}}})
}

#[test]
fn key_requests_of_other_users_and_unverified_devices_are_not_answered() {
    let (mut server, alice, bob, _laptop, session_id) = alice_with_laptop();
    let request =
        |sender: &str, device: &str| key_request(&alice, sender, device, "r1", &session_id);
    server.establish(&alice, &[alice.user()]);
    let pending_before = alice.store.pending_to_device().unwrap().len();
    // bob's device (another user) and alice's unverified laptop: no answer.
    receive(
        &alice,
        vec![
            request(&bob.user(), "BOB"),
            request(&alice.user(), "LAPTOP"),
        ],
    );
    assert_eq!(
        alice.store.pending_to_device().unwrap().len(),
        pending_before
    );
    // The laptop's request is held, and the app may ask the user about it, once.
    let prompts = alice.machine.take_key_share_prompts().unwrap();
    assert_eq!(
        prompts
            .iter()
            .map(|d| d.device_id.as_str())
            .collect::<Vec<_>>(),
        ["LAPTOP"]
    );
    assert!(alice.machine.take_key_share_prompts().unwrap().is_empty());
    // The same request again is not held twice, and another request of the same device
    // does not ask the user again.
    receive(&alice, vec![request(&alice.user(), "LAPTOP")]);
    assert!(alice.machine.take_key_share_prompts().unwrap().is_empty());
    let mut other = request(&alice.user(), "LAPTOP");
    other["content"]["request_id"] = "r-other".into();
    receive(&alice, vec![other]);
    assert!(alice.machine.take_key_share_prompts().unwrap().is_empty());
    // Once verified, the held request is answered at once (exactly one answer).
    alice
        .machine
        .set_local_trust(&alice.user(), "LAPTOP", LocalTrust::Verified)
        .unwrap();
    let pending = alice.store.pending_to_device().unwrap();
    assert_eq!(
        pending.len(),
        pending_before + 2,
        "both held requests answered"
    );
    assert!(pending[pending_before].messages_json.contains("LAPTOP"));
    assert_eq!(pending[pending_before].event_type, "m.room.encrypted");
    let _ = bob;
}

#[test]
fn held_key_requests_of_a_blacklisted_own_device_are_dropped() {
    let (mut server, alice, _bob, _laptop, session_id) = alice_with_laptop();
    server.establish(&alice, &[alice.user()]);
    let pending_before = alice.store.pending_to_device().unwrap().len();
    receive(
        &alice,
        vec![key_request(
            &alice,
            &alice.user(),
            "LAPTOP",
            "r9",
            &session_id,
        )],
    );
    // Held: the app may ask about the laptop.
    assert_eq!(alice.machine.take_key_share_prompts().unwrap().len(), 1);
    assert!(
        alice
            .machine
            .set_local_trust(&alice.user(), "LAPTOP", LocalTrust::Blacklisted)
            .unwrap()
    );
    assert!(alice.machine.take_key_share_prompts().unwrap().is_empty());
    // Changing one's mind later does not revive the dropped request.
    assert!(
        alice
            .machine
            .set_local_trust(&alice.user(), "LAPTOP", LocalTrust::Verified)
            .unwrap()
    );
    assert_eq!(
        alice.store.pending_to_device().unwrap().len(),
        pending_before
    );
}

#[test]
fn a_failing_server_is_backed_off_without_delaying_others() {
    let (mut server, alice, bob) = setup_pair();
    let remote = "@carol:remote.example".to_owned();
    alice
        .machine
        .update_tracked_users(&[bob.user(), remote.clone()])
        .unwrap();
    let requests = alice.machine.outgoing_requests().unwrap();
    let query = requests.iter().find_map(|r| match &r.kind {
        OutgoingKind::KeysQuery(q) => Some((r.id.clone(), q.clone())),
        _ => None,
    });
    let (id, q) = query.expect("a query");
    let mut response = server.query(&q);
    response.device_keys.retain(|u, _| u.as_str() != remote);
    response.failures.insert("remote.example".into());
    alice.machine.mark_keys_query_sent(&id, &response).unwrap();
    assert_eq!(
        alice
            .machine
            .outdated_users(&[bob.user(), remote.clone()])
            .unwrap(),
        vec![remote.clone()]
    );
    // carol stays outdated but is not re-queried until her server's back-off ends...
    assert!(
        alice
            .machine
            .outgoing_requests()
            .unwrap()
            .iter()
            .all(|r| !matches!(r.kind, OutgoingKind::KeysQuery(_)))
    );
    // ...while bob's next change is queried at once.
    alice
        .machine
        .receive_sync_changes(SyncChanges {
            changed_users: vec![uid(&bob.user())],
            ..Default::default()
        })
        .unwrap();
    let requests = alice.machine.outgoing_requests().unwrap();
    let users: Vec<String> = requests
        .iter()
        .filter_map(|r| match &r.kind {
            OutgoingKind::KeysQuery(q) => Some(
                q.device_keys
                    .keys()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(users, vec![bob.user()]);
    let _ = &mut server;
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

fn changed(peer: &Peer, changed_users: Vec<String>, left_users: Vec<String>) {
    peer.machine
        .receive_sync_changes(SyncChanges {
            changed_users: changed_users.iter().map(|u| uid(u)).collect(),
            left_users: left_users.iter().map(|u| uid(u)).collect(),
            ..Default::default()
        })
        .unwrap();
}

#[test]
fn tracking_states_follow_queries_and_invalidations() {
    use crate::store::TrackingState::*;
    let (server, alice, bob) = setup_pair();
    let state = |user: &str| alice.machine.tracking_state(user).unwrap();
    assert_eq!(state(&bob.user()), NotTracked);
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    assert_eq!(state(&bob.user()), PendingDownload);

    // A query goes out: downloading. A change arrives before the answer: the answer is
    // stored, but the user stays pending, and is queried again.
    let queries = pending_queries(&alice);
    assert_eq!(queries.len(), 1);
    assert_eq!(state(&bob.user()), Downloading);
    assert!(
        pending_queries(&alice).is_empty(),
        "no second query while one is in flight"
    );
    changed(&alice, vec![bob.user()], vec![]);
    let (id, q) = &queries[0];
    let outcome = alice
        .machine
        .mark_keys_query_sent(id, &server.query(q))
        .unwrap();
    assert_eq!(outcome.new_devices, vec![(bob.user(), "BOB".to_owned())]);
    assert_eq!(state(&bob.user()), PendingDownload);
    assert_eq!(alice.machine.devices(&bob.user()).unwrap().len(), 1);

    // A failed query puts the user back to pending.
    let (id, _) = pending_queries(&alice).remove(0);
    alice.machine.mark_query_failed(&id, false).unwrap();
    assert_eq!(state(&bob.user()), PendingDownload);
    let (id, q) = pending_queries(&alice).remove(0);
    alice
        .machine
        .mark_keys_query_sent(&id, &server.query(&q))
        .unwrap();
    assert_eq!(state(&bob.user()), UpToDate);

    // Left: no longer tracked, devices and the user's decision kept, changes ignored.
    alice
        .machine
        .set_local_trust(&bob.user(), "BOB", LocalTrust::Verified)
        .unwrap();
    changed(&alice, vec![], vec![bob.user()]);
    assert_eq!(state(&bob.user()), NotTracked);
    changed(&alice, vec![bob.user()], vec![]);
    assert_eq!(state(&bob.user()), NotTracked);
    assert!(pending_queries(&alice).is_empty());
    let kept = alice.machine.devices(&bob.user()).unwrap();
    assert_eq!(kept[0].local_trust, LocalTrust::Verified);
    // Sharing a room again starts tracking again.
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    assert_eq!(state(&bob.user()), PendingDownload);
}

#[test]
fn leaving_while_a_query_is_in_flight_is_not_undone_by_the_answer() {
    use crate::store::TrackingState::*;
    let (server, alice, bob) = setup_pair();
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    let (id, q) = pending_queries(&alice).remove(0);
    changed(&alice, vec![], vec![bob.user()]);
    alice
        .machine
        .mark_keys_query_sent(&id, &server.query(&q))
        .unwrap();
    assert_eq!(
        alice.machine.tracking_state(&bob.user()).unwrap(),
        NotTracked
    );
}

#[test]
fn a_query_lost_with_a_restart_is_sent_again() {
    use crate::store::TrackingState::*;
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path());
    let (server, _alice, bob) = setup_pair();
    let carol = Peer::with_store("@carol:localhost", "CAROL", store.clone());
    carol.machine.update_tracked_users(&[bob.user()]).unwrap();
    assert_eq!(pending_queries(&carol).len(), 1);
    drop(carol);
    // The process died with the query in flight; the new one sees `Downloading`.
    let carol = Peer::with_store("@carol:localhost", "CAROL", store);
    assert_eq!(
        carol.machine.tracking_state(&bob.user()).unwrap(),
        Downloading
    );
    let (id, q) = pending_queries(&carol).remove(0);
    carol
        .machine
        .mark_keys_query_sent(&id, &server.query(&q))
        .unwrap();
    assert_eq!(carol.machine.tracking_state(&bob.user()).unwrap(), UpToDate);
}

#[test]
fn a_device_change_names_the_affected_rooms_from_the_index() {
    use crate::store::{Changes, MemberRecord, RoomRecord};
    let (mut server, alice, bob) = setup_pair();
    let member = |room: &str, user: String, membership: &str| MemberRecord {
        room_id: room.into(),
        user_id: user,
        membership: membership.into(),
    };
    let room = |room_id: &str, encrypted: bool| RoomRecord {
        room_id: room_id.into(),
        encryption: encrypted.then(|| json!({"algorithm": MEGOLM_ALGORITHM}).to_string()),
        ..Default::default()
    };
    alice
        .store
        .save_changes(Changes {
            rooms: vec![
                room("!a:x", true),
                room("!b:x", true),
                room("!plain:x", false),
            ],
            members: vec![
                member("!a:x", bob.user(), "join"),
                member("!b:x", bob.user(), "leave"),
                member("!plain:x", bob.user(), "join"),
            ],
            ..Default::default()
        })
        .unwrap();
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    let outcomes = server.drive(&alice);
    assert_eq!(outcomes[0].affected_rooms, vec!["!a:x".to_owned()]);

    // Nothing changed: no rooms to look at.
    changed(&alice, vec![bob.user()], vec![]);
    let outcomes = server.drive(&alice);
    assert!(outcomes[0].new_devices.is_empty() && outcomes[0].affected_rooms.is_empty());

    // bob logs out his device.
    server.device_keys.remove(&bob.user());
    changed(&alice, vec![bob.user()], vec![]);
    let outcomes = server.drive(&alice);
    assert_eq!(
        outcomes[0].removed_devices,
        vec![(bob.user(), "BOB".to_owned())]
    );
    assert_eq!(outcomes[0].affected_rooms, vec!["!a:x".to_owned()]);
}

#[test]
fn a_key_request_without_an_olm_session_is_answered_after_a_claim() {
    let (mut server, alice, _bob, laptop, session_id) = alice_with_laptop();
    alice
        .machine
        .set_local_trust(&alice.user(), "LAPTOP", LocalTrust::Verified)
        .unwrap();
    assert!(alice.machine.session_repair_request().unwrap().is_none());
    let pending_before = alice.store.pending_to_device().unwrap().len();
    receive(
        &alice,
        vec![key_request(
            &alice,
            &alice.user(),
            "LAPTOP",
            "r2",
            &session_id,
        )],
    );
    // No Olm channel to the laptop yet: nothing is sent, a session is claimed instead.
    assert_eq!(
        alice.store.pending_to_device().unwrap().len(),
        pending_before
    );
    let Some(OutgoingRequest {
        kind: OutgoingKind::KeysClaim(claim),
        ..
    }) = alice.machine.session_repair_request().unwrap()
    else {
        panic!("expected a claim for the laptop");
    };
    assert!(
        claim.one_time_keys[&OwnedUserId::try_from(alice.user()).unwrap()]
            .contains_key(&OwnedDeviceId::from("LAPTOP"))
    );
    let response = server.claim(&claim);
    alice.machine.mark_keys_claim_sent(&response).unwrap();
    assert_eq!(
        alice.store.pending_to_device().unwrap().len(),
        pending_before + 1,
        "the request is answered over the new session"
    );
    assert!(alice.machine.session_repair_request().unwrap().is_none());
    // The laptop accepts the forwarded key (it asked, and trusts alice's device).
    laptop
        .machine
        .update_tracked_users(&[alice.user()])
        .unwrap();
    server.drive(&laptop);
    laptop
        .machine
        .set_local_trust(&alice.user(), "ALICE", LocalTrust::Verified)
        .unwrap();
    laptop
        .machine
        .request_room_key(
            &room_id(),
            &session_id,
            &alice.machine.curve25519_key(),
            None,
        )
        .unwrap();
    server.drive(&alice);
    let outcome = server.sync(&laptop);
    assert_eq!(outcome.room_keys.len(), 1, "{:?}", outcome.to_device);
}

#[test]
fn sharing_with_verified_devices_only_withholds_unverified_ones_until_verified() {
    let (mut server, alice, bob) = olm_pair();
    let members = vec![alice.user(), bob.user()];
    room_members(&bob, &members);
    let session = |peer: &Peer| {
        peer.store
            .outbound_group_session(ROOM)
            .unwrap()
            .unwrap()
            .session_id
    };
    let before = session(&alice);
    assert!(!alice.machine.shares_with_verified_only().unwrap());
    alice.machine.set_share_with_verified_only(true).unwrap();
    assert!(alice.machine.shares_with_verified_only().unwrap());
    server.take_inbox(&bob);
    alice
        .machine
        .share_room_key(ROOM, &members, RotationSettings::default())
        .unwrap();
    server.drive(&alice);
    let withheld = session(&alice);
    assert_ne!(
        withheld, before,
        "bob had the key, and is not verified: rotate"
    );
    let outcome = server.sync(&bob);
    assert_eq!(outcome.to_device[0].event_type, "m.room_key.withheld");
    let err = exchange(&alice, &bob, "secret", "$v1").unwrap_err();
    assert_withheld(&err, "m.unverified");
    // Sharing again does not repeat the notice.
    alice
        .machine
        .share_room_key(ROOM, &members, RotationSettings::default())
        .unwrap();
    server.drive(&alice);
    assert!(server.take_inbox(&bob).is_empty());

    // Verified: bob gets the current session, without another rotation.
    alice
        .machine
        .set_local_trust(&bob.user(), "BOB", LocalTrust::Verified)
        .unwrap();
    alice
        .machine
        .share_room_key(ROOM, &members, RotationSettings::default())
        .unwrap();
    server.drive(&alice);
    assert_eq!(session(&alice), withheld);
    assert_eq!(server.sync(&bob).room_keys.len(), 1);
    let ok = exchange(&alice, &bob, "for verified bob", "$v2").unwrap();
    assert_eq!(ok.content["body"], "for verified bob");
}

#[test]
fn a_key_request_from_an_unknown_device_of_a_known_user_makes_us_requery_them() {
    use crate::store::TrackingState::*;
    let (mut server, alice, bob) = olm_pair();
    let session_id = bob
        .store
        .outbound_group_session(ROOM)
        .unwrap()
        .map(|s| s.session_id)
        .unwrap_or_else(|| "unknown-session".into());
    assert_eq!(bob.machine.tracking_state(&alice.user()).unwrap(), UpToDate);
    // alice logs in a laptop; bob's list of her devices is now stale (seed 002).
    let laptop = Peer::new(&alice.user(), "LAPTOP");
    server.drive(&laptop);
    laptop
        .machine
        .request_room_key(
            &room_id(),
            &session_id,
            &bob.machine.curve25519_key(),
            Some((&uid(&bob.user()), "BOB".into())),
        )
        .unwrap();
    server.drive(&laptop);
    let pending = bob.store.pending_to_device().unwrap().len();
    let outcome = server.sync(&bob);
    assert_eq!(outcome.to_device[0].event_type, "m.room_key_request");
    assert_eq!(
        bob.store.pending_to_device().unwrap().len(),
        pending,
        "not answered"
    );
    assert_eq!(
        bob.machine.tracking_state(&alice.user()).unwrap(),
        PendingDownload
    );
    let outcomes = server.drive(&bob);
    assert!(
        outcomes
            .iter()
            .any(|o| o.new_devices == vec![(alice.user(), "LAPTOP".to_owned())]),
        "{outcomes:?}"
    );

    // A stranger's request does not make bob track anyone.
    let stranger = Peer::new("@mallory:localhost", "M");
    server.drive(&stranger);
    stranger
        .machine
        .request_room_key(
            &room_id(),
            &session_id,
            "key",
            Some((&uid(&bob.user()), "BOB".into())),
        )
        .unwrap();
    server.drive(&stranger);
    server.sync(&bob);
    assert_eq!(
        bob.machine.tracking_state("@mallory:localhost").unwrap(),
        NotTracked
    );
}
