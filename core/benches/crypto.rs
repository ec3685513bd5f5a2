//! Crypto benchmarks on the reference implementation's own inputs
//! (`../shared/bench-fixtures`, see its README), on the in-memory and the SQLite store.
//!
//! Set `NEWT_BENCH_FIXTURES` to read the fixtures from elsewhere.

// A benchmark may stop at the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

mod common;

use common::{device, read, room, user};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use newt_core::crypto::{
    KeysClaimResponse, KeysQueryResponse, OlmMachine, OutgoingKind, RotationSettings, SyncChanges,
};
use newt_core::store::{
    Changes, ClientChanges, CryptoChanges, InboundGroupSessionRecord, MemberRecord, MemoryStore,
    SecretBlob, SenderData, Store,
};
use ruma::events::room::member::MembershipState;
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::json;

/// A `/keys/query` fixture, parsed as the client parses answers (once, outside the timing,
/// as the reference does).
fn query_response(name: &str) -> KeysQueryResponse {
    KeysQueryResponse::from_json(&read(name)).expect("parse /keys/query fixture")
}

fn claim_response() -> KeysClaimResponse {
    KeysClaimResponse::from_json(&read("keys_claim.json")).expect("parse /keys/claim fixture")
}

type StoreFactory = fn() -> (Arc<dyn Store>, Option<tempfile::TempDir>);

fn memory() -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    (Arc::new(MemoryStore::new()), None)
}

fn sqlite() -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    let (store, dir) = common::sqlite();
    (store, Some(dir))
}

const STORES: [(&str, StoreFactory); 2] = [("memory", memory), ("sqlite", sqlite)];

/// A machine with `users` tracked and one query in flight; returns the query's id.
fn machine_with_query(
    factory: StoreFactory,
    users: &[OwnedUserId],
) -> (OlmMachine, String, Option<tempfile::TempDir>) {
    let (store, dir) = factory();
    let machine = OlmMachine::open(user(), device(), store).unwrap();
    machine.update_tracked_users(users).unwrap();
    let id = machine
        .outgoing_requests()
        .unwrap()
        .into_iter()
        .find(|r| matches!(r.kind, OutgoingKind::KeysQuery(_)))
        .map(|r| r.id)
        .expect("a keys query");
    (machine, id, dir)
}

fn users_of(response: &KeysQueryResponse) -> Vec<OwnedUserId> {
    response.device_keys.keys().cloned().collect()
}

fn keys_query(c: &mut Criterion) {
    let response = query_response("keys_query.json");
    let users = users_of(&response);
    let mut group = c.benchmark_group("keys_query_150_devices");
    for (name, factory) in STORES {
        group.bench_function(name, |b| {
            b.iter_batched(
                || machine_with_query(factory, &users),
                |(machine, id, dir)| {
                    let outcome = machine.mark_keys_query_sent(&id, &response).unwrap();
                    assert_eq!(outcome.updated_devices, 150);
                    // The identity (master, self-signing, user-signing keys) is checked too.
                    assert!(outcome.rejected_identities.is_empty());
                    (machine, dir)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// A machine that knows the 150 devices of the query fixture.
fn machine_with_devices(
    factory: StoreFactory,
    response: &KeysQueryResponse,
) -> (OlmMachine, Option<tempfile::TempDir>) {
    let (machine, id, dir) = machine_with_query(factory, &users_of(response));
    machine.mark_keys_query_sent(&id, response).unwrap();
    (machine, dir)
}

fn olm_session_creation(c: &mut Criterion) {
    let query = query_response("keys_query.json");
    let claim = claim_response();
    let mut group = c.benchmark_group("olm_sessions_from_163_claimed_keys");
    for (name, factory) in STORES {
        group.bench_function(name, |b| {
            b.iter_batched(
                || machine_with_devices(factory, &query),
                |(machine, dir)| {
                    let outcome = machine.mark_keys_claim_sent(&claim).unwrap();
                    // 163 keys: 148 for devices of the query fixture, the rest for devices
                    // we never saw (refused, as they must be).
                    assert_eq!(outcome.sessions_created + outcome.failed.len(), 163);
                    assert_eq!(outcome.sessions_created, 148);
                    (machine, dir)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn room_key_sharing(c: &mut Criterion) {
    let query = query_response("keys_query.json");
    let claim = claim_response();
    let users = users_of(&query);
    let mut group = c.benchmark_group("share_room_key_with_163_devices");
    for (name, factory) in STORES {
        let (machine, _dir) = machine_with_devices(factory, &query);
        machine.mark_keys_claim_sent(&claim).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let requests = machine
                    .share_room_key(room(), &users, RotationSettings::default())
                    .unwrap();
                assert!(!requests.is_empty());
                for r in &requests {
                    machine.mark_to_device_sent(&r.id).unwrap();
                }
                machine.discard_room_key(room()).unwrap();
            })
        });
    }
    group.finish();
}

fn megolm_1kb(c: &mut Criterion) {
    let body = "x".repeat(1024);
    let content = json!({"msgtype": "m.text", "body": body});
    let mut group = c.benchmark_group("megolm_1kb");
    for (name, factory) in STORES {
        let (store, _dir) = factory();
        let machine = OlmMachine::open(user(), device(), store).unwrap();
        // Sharing with nobody still creates the session and our own inbound copy.
        machine
            .share_room_key(
                room(),
                &[user().to_owned()],
                RotationSettings {
                    period_ms: u64::MAX,
                    messages: u64::MAX,
                },
            )
            .unwrap();
        group.bench_function(format!("encrypt/{name}"), |b| {
            b.iter(|| {
                machine
                    .encrypt_room_event(room(), "m.room.message", &content)
                    .unwrap()
            })
        });
        let encrypted = machine
            .encrypt_room_event(room(), "m.room.message", &content)
            .unwrap();
        let event = json!({"type": "m.room.encrypted", "sender": user(), "event_id": "$e",
            "origin_server_ts": 1, "content": encrypted});
        group.bench_function(format!("decrypt/{name}"), |b| {
            b.iter(|| machine.decrypt_room_event(room(), &event).unwrap())
        });
    }
    group.finish();
}

/// Sessions stored for the reevaluation benchmark.
const SESSIONS: usize = 10_000;

/// A machine that knows the fixture's devices and holds [`SESSIONS`] inbound sessions of
/// them whose sender data is still "unknown device" (in 200 rooms the sender is a member
/// of), with a new `/keys/query` of the sender in flight (its device list changed).
fn machine_with_sessions(
    factory: StoreFactory,
    response: &KeysQueryResponse,
) -> (OlmMachine, String, Option<tempfile::TempDir>) {
    let users = users_of(response);
    let (store, dir) = factory();
    let machine = OlmMachine::open(user(), device(), store.clone()).unwrap();
    machine.update_tracked_users(&users).unwrap();
    let id = query_id(&machine);
    machine.mark_keys_query_sent(&id, response).unwrap();
    let devices = machine.devices(&users[0]).unwrap();
    let rooms: Vec<OwnedRoomId> = (0..200)
        .map(|i| OwnedRoomId::try_from(format!("!room{i}:example.org")).unwrap())
        .collect();
    let sessions = (0..SESSIONS)
        .map(|i| {
            let d = &devices[i % devices.len()];
            InboundGroupSessionRecord {
                room_id: rooms[i % rooms.len()].clone(),
                session_id: format!("session-{i}"),
                sender_key: d.curve25519.clone(),
                signing_key: d.ed25519.clone(),
                sender_user: Some(users[0].clone()),
                sender_device: Some(d.device_id.clone()),
                pickle: SecretBlob::new(b"not read by the reevaluation".to_vec()),
                first_known_index: 0,
                sender_data: SenderData::unknown(false),
                imported: false,
                backed_up: false,
            }
        })
        .collect();
    let members = rooms
        .iter()
        .map(|room_id| MemberRecord {
            room_id: room_id.clone(),
            user_id: users[0].clone(),
            membership: MembershipState::Join,
        })
        .collect();
    store
        .save_changes(Changes {
            crypto: CryptoChanges {
                inbound_group_sessions: sessions,
                ..Default::default()
            },
            client: ClientChanges {
                members,
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
    machine
        .receive_sync_changes(SyncChanges {
            changed_users: users,
            ..Default::default()
        })
        .unwrap();
    let id = query_id(&machine);
    (machine, id, dir)
}

/// The id of the `/keys/query` the machine wants to send.
fn query_id(machine: &OlmMachine) -> String {
    machine
        .outgoing_requests()
        .unwrap()
        .into_iter()
        .find(|r| matches!(r.kind, OutgoingKind::KeysQuery(_)))
        .map(|r| r.id)
        .expect("a keys query")
}

/// The answer to a device-list change re-evaluates the sender data of every session of
/// that sender that may improve.
fn sender_data_reevaluation(c: &mut Criterion) {
    let response = query_response("keys_query.json");
    let mut group = c.benchmark_group("reevaluate_sender_data_10000_sessions");
    group.sample_size(10);
    for (name, factory) in STORES {
        group.bench_function(name, |b| {
            b.iter_batched(
                || machine_with_sessions(factory, &response),
                |(machine, id, dir)| {
                    let outcome = machine.mark_keys_query_sent(&id, &response).unwrap();
                    assert_eq!(outcome.improved_sessions.len(), SESSIONS);
                    (machine, dir)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = megolm_1kb, keys_query, olm_session_creation, room_key_sharing,
        sender_data_reevaluation
}
criterion_main!(benches);
