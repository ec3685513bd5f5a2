//! The store the cold decryptions read, as a long-used account has it: 10,000 inbound Megolm
//! sessions, 1,000 devices of other users (the reference's 2,000-member `/keys/query`
//! fixture, cut to its first 1,000 devices), 200 encrypted rooms with their members, and a
//! logged-in session. Also what the children decrypt: events whose key is in the store, and
//! events from another device whose key comes with an Olm-encrypted to-device message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use newt_core::client::{KEY_ACCESS_TOKEN, KEY_DEVICE_ID, KEY_USER_ID};
use newt_core::crypto::{
    KeysClaimResponse, KeysQueryResponse, KeysUploadResponse, OlmMachine, OutgoingKind,
    RotationSettings,
};
use newt_core::store::{
    Changes, ClientChanges, CryptoChanges, InboundGroupSessionRecord, MemberRecord, MemoryStore,
    RoomEncryption, RoomRecord, SecretBlob, SenderData, SqliteStore, Store, StoreKey,
};
use ruma::events::room::member::MembershipState;
use ruma::{
    DeviceId, EventEncryptionAlgorithm, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    device_id, room_id, user_id,
};
use serde_json::{Value, json};
use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig};

const SESSIONS: usize = 10_000;
const ROOMS: usize = 200;
const DEVICES: usize = 1_000;
const MEMBERS_PER_ROOM: usize = 5;
/// The store key (the app's).
pub(crate) const KEY: [u8; 32] = [7; 32];

pub(crate) fn user() -> &'static UserId {
    user_id!("@alice:example.org")
}

pub(crate) fn device() -> &'static DeviceId {
    device_id!("JLAFKJWSCS")
}

/// The room of the pushed events (one of the 200).
pub(crate) fn room() -> &'static RoomId {
    room_id!("!push:example.org")
}

fn bob_id() -> &'static UserId {
    user_id!("@bob:example.org")
}

/// An event from bob, and the to-device message from bob's device carrying its room key.
pub(crate) struct Pushed {
    pub event: Value,
    pub to_device: Value,
}

/// What the children decrypt.
pub(crate) struct Prepared {
    /// Events (files) whose room key is in the store: our own device's.
    pub local: Vec<PathBuf>,
    /// Events whose room key comes with a catch-up sync, each with a room key of its own.
    pub pushed: Vec<Pushed>,
}

/// Write the store in `dir` and `events` events of each kind.
pub(crate) fn prepare(dir: &Path, events: usize) -> Prepared {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir, &StoreKey::from_bytes(KEY)).unwrap());
    save_sessions(&*store);
    let fixture = devices_fixture();
    save_rooms_and_login(&*store, &fixture);
    let machine = OlmMachine::open(user(), device(), Arc::clone(&store)).unwrap();
    let bob = OlmMachine::open(
        bob_id(),
        device_id!("BOBDEVICE"),
        Arc::new(MemoryStore::new()),
    );
    let bob = bob.unwrap();
    introduce(&machine, &bob, fixture);
    Prepared {
        local: own_events(&machine, dir, events),
        pushed: (0..events).map(|i| pushed_event(&bob, i)).collect(),
    }
}

/// 9,999 inbound sessions of other rooms and senders.
fn save_sessions(store: &dyn Store) {
    let records: Vec<InboundGroupSessionRecord> = (0..SESSIONS - 1)
        .map(|i| {
            let outbound = GroupSession::new(SessionConfig::version_1());
            let inbound =
                InboundGroupSession::new(&outbound.session_key(), SessionConfig::version_1());
            InboundGroupSessionRecord {
                room_id: room_at(i % ROOMS),
                session_id: outbound.session_id(),
                sender_key: format!("sender-curve-{}", i % 50),
                signing_key: format!("sender-ed-{}", i % 50),
                sender_user: Some(
                    OwnedUserId::try_from(format!("@user{}:example.org", i % 50)).unwrap(),
                ),
                sender_device: Some(OwnedDeviceId::from(format!("DEVICE{}", i % 50))),
                pickle: SecretBlob::new(serde_json::to_vec(&inbound.pickle()).unwrap()),
                first_known_index: 0,
                sender_data: SenderData::unknown(false),
                imported: false,
                backed_up: false,
            }
        })
        .collect();
    for chunk in records.chunks(1_000) {
        let changes = CryptoChanges {
            inbound_group_sessions: chunk.to_vec(),
            ..Default::default()
        };
        store.save_changes(Changes::from(changes)).unwrap();
    }
}

/// Room `i` of the 200; the last one is the pushed events' room.
fn room_at(i: usize) -> OwnedRoomId {
    if i == ROOMS - 1 {
        return room().to_owned();
    }
    OwnedRoomId::try_from(format!("!room{i}:example.org")).unwrap()
}

/// The fixture's first 1,000 devices (`/keys/query` answer) and their users.
fn devices_fixture() -> (KeysQueryResponse, Vec<OwnedUserId>) {
    let mut fixture: Value = serde_json::from_slice(&crate::read_fixture()).unwrap();
    let mut kept = serde_json::Map::new();
    let mut devices = 0;
    for (user, user_devices) in fixture["device_keys"].as_object().unwrap() {
        if devices >= DEVICES {
            break;
        }
        devices += user_devices.as_object().unwrap().len();
        kept.insert(user.clone(), user_devices.clone());
    }
    fixture["device_keys"] = Value::Object(kept.clone());
    let users = kept
        .keys()
        .map(|u| OwnedUserId::try_from(u.as_str()).unwrap());
    let users = users.collect();
    let response = KeysQueryResponse::from_json(fixture.to_string().as_bytes()).unwrap();
    (response, users)
}

/// 200 encrypted rooms, 5 members each (alice, bob and fixture users), and the login.
fn save_rooms_and_login(store: &dyn Store, (_, users): &(KeysQueryResponse, Vec<OwnedUserId>)) {
    let mut changes = ClientChanges::default();
    let mut others = users.iter().cycle();
    for i in 0..ROOMS {
        let mut room = RoomRecord::new(room_at(i));
        room.encryption = Some(RoomEncryption {
            algorithm: EventEncryptionAlgorithm::MegolmV1AesSha2,
            rotation_period_ms: None,
            rotation_period_msgs: None,
        });
        room.members_synced = true;
        room.own_membership = Some(MembershipState::Join);
        let members = [user().to_owned(), bob_id().to_owned()].into_iter();
        let members = members.chain(others.by_ref().take(MEMBERS_PER_ROOM - 2).cloned());
        changes.members.extend(members.map(|user_id| MemberRecord {
            room_id: room.room_id.clone(),
            user_id,
            membership: MembershipState::Join,
        }));
        changes.rooms.push(room);
    }
    let values = [
        (KEY_USER_ID, user().as_str()),
        (KEY_DEVICE_ID, device().as_str()),
    ];
    changes.values = values.map(|(k, v)| (k.to_owned(), v.to_owned())).into();
    let token = SecretBlob::new(b"bench-token".to_vec());
    changes.secret_values = BTreeMap::from([(KEY_ACCESS_TOKEN.to_owned(), token)]);
    store.save_changes(changes.into()).unwrap();
}

/// alice learns bob's device and the fixture's devices; bob learns alice's device and opens
/// an Olm session to it with one of her one-time keys.
fn introduce(
    alice: &OlmMachine,
    bob: &OlmMachine,
    (fixture, mut users): (KeysQueryResponse, Vec<OwnedUserId>),
) {
    let alice_keys = upload(alice);
    let bob_keys = upload(bob);
    users.push(bob_id().to_owned());
    let mut query = fixture;
    query
        .device_keys
        .insert(bob_id().to_owned(), device_entry(&bob_keys));
    learn(alice, &users, &query);
    let alice_query = json!({"device_keys": {user(): device_entry_json(&alice_keys)}});
    let alice_query = KeysQueryResponse::from_json(alice_query.to_string().as_bytes()).unwrap();
    learn(bob, &[user().to_owned()], &alice_query);
    let (key_id, key) = alice_keys.one_time_keys.iter().next().unwrap();
    let key: Value = serde_json::from_str(key.json().get()).unwrap();
    let claim = json!({"one_time_keys": {user(): {device(): {key_id.as_str(): key}}}});
    let claim = KeysClaimResponse::from_json(claim.to_string().as_bytes()).unwrap();
    assert_eq!(
        bob.mark_keys_claim_sent(&claim).unwrap().sessions_created,
        1
    );
}

type UploadRequest = ruma::api::client::keys::upload_keys::v3::Request;

/// The machine's key upload, answered.
fn upload(machine: &OlmMachine) -> UploadRequest {
    let mut requests = machine.outgoing_requests().unwrap().into_iter();
    let request = requests.find_map(|r| match r.kind {
        OutgoingKind::KeysUpload(upload) => Some(upload),
        _ => None,
    });
    let counts = BTreeMap::from([("signed_curve25519".to_owned(), 50)]);
    let response = KeysUploadResponse {
        one_time_key_counts: counts,
    };
    machine.mark_keys_upload_sent(&response).unwrap();
    request.expect("a key upload")
}

fn device_entry_json(upload: &UploadRequest) -> Value {
    let keys = upload.device_keys.as_ref().unwrap().json().get();
    let keys: Value = serde_json::from_str(keys).unwrap();
    json!({keys["device_id"].as_str().unwrap(): keys})
}

fn device_entry(upload: &UploadRequest) -> BTreeMap<String, Value> {
    serde_json::from_value(device_entry_json(upload)).unwrap()
}

/// `machine` tracks `users` and gets `response` to its query.
fn learn(machine: &OlmMachine, users: &[OwnedUserId], response: &KeysQueryResponse) {
    machine.update_tracked_users(users).unwrap();
    let mut requests = machine.outgoing_requests().unwrap().into_iter();
    let id = requests.find(|r| matches!(r.kind, OutgoingKind::KeysQuery(_)));
    machine
        .mark_keys_query_sent(&id.unwrap().id, response)
        .unwrap();
}

/// Events of our own device in the pushed room, as files (the 10,000th session is theirs).
fn own_events(machine: &OlmMachine, dir: &Path, count: usize) -> Vec<PathBuf> {
    machine
        .share_room_key(room(), &[user().to_owned()], never())
        .unwrap();
    let content = json!({"msgtype": "m.text", "body": "You have a new message"});
    (0..count)
        .map(|i| {
            let encrypted = machine
                .encrypt_room_event(room(), "m.room.message", &content)
                .unwrap();
            let event = json!({"type": "m.room.encrypted", "sender": user(),
                "event_id": format!("$push{i}"), "origin_server_ts": 1, "content": encrypted});
            let path = dir.join(format!("event{i}.json"));
            std::fs::write(&path, serde_json::to_vec(&event).unwrap()).unwrap();
            path
        })
        .collect()
}

fn never() -> RotationSettings {
    RotationSettings {
        period_ms: u64::MAX,
        messages: u64::MAX,
    }
}

/// Event `i` from bob with a room key of its own, and the to-device message carrying it.
fn pushed_event(bob: &OlmMachine, i: usize) -> Pushed {
    let requests = bob
        .share_room_key(room(), &[user().to_owned()], never())
        .unwrap();
    let mut to_device = None;
    for request in requests {
        if let OutgoingKind::ToDevice(r) = &request.kind {
            let content = &r.messages[user()].values().next().unwrap();
            let content: Value = serde_json::from_str(content.json().get()).unwrap();
            to_device = Some(json!({"type": "m.room.encrypted", "sender": bob_id(),
                "content": content}));
        }
        bob.mark_to_device_sent(&request.id).unwrap();
    }
    let content = json!({"msgtype": "m.text", "body": "You have a new message"});
    let encrypted = bob
        .encrypt_room_event(room(), "m.room.message", &content)
        .unwrap();
    bob.discard_room_key(room()).unwrap();
    let event = json!({"type": "m.room.encrypted", "sender": bob_id(), "room_id": room(),
        "event_id": format!("$pushed{i}"), "origin_server_ts": 1, "content": encrypted});
    Pushed {
        event,
        to_device: to_device.expect("a room key for alice"),
    }
}
