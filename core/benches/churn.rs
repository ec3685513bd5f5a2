//! Device-tracking and key-distribution benchmarks on the SQLite store (issue 4 workloads).
//!
//! - find devices without an Olm session among 2,002 users / 2,003 devices
//!   (`keys_query_2000_members.json`, the reference implementation's input);
//! - share a room key with 1,000 users x 2 devices (synthetic devices with real keys),
//!   reporting the number of HTTP requests it takes;
//! - handle a `device_lists.changed` of 500 tracked users (mark them, build the queries).

// A benchmark may stop at the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

mod common;

use common::{device, read, room, sqlite, user};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use newt_core::crypto::{
    KeysClaimResponse, KeysQueryResponse, KeysUploadResponse, OlmMachine, OutgoingKind,
    RotationSettings, SIGNED_CURVE25519, SyncChanges,
};
use newt_core::store::MemoryStore;
use ruma::api::IncomingResponseExt;
use ruma::api::client::keys::{claim_keys, get_keys};
use ruma::serde::Raw;
use ruma::{OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId};
use serde_json::Value;

fn raw<T>(value: &Value) -> Raw<T> {
    Raw::from_json(serde_json::value::to_raw_value(value).unwrap())
}

/// Machine with `users` tracked and `response` handled.
fn machine_knowing(response: &get_keys::v3::Response) -> (OlmMachine, tempfile::TempDir) {
    let (store, dir) = sqlite();
    let machine = OlmMachine::open(user(), device(), store).unwrap();
    let users: Vec<OwnedUserId> = response.device_keys.keys().cloned().collect();
    machine.update_tracked_users(&users).unwrap();
    let response = KeysQueryResponse::from(response);
    for request in machine.outgoing_requests().unwrap() {
        if matches!(request.kind, OutgoingKind::KeysQuery(_)) {
            machine
                .mark_keys_query_sent(&request.id, &response)
                .unwrap();
        }
    }
    (machine, dir)
}

fn missing_sessions_2000(c: &mut Criterion) {
    let body = read("keys_query_2000_members.json");
    let response = get_keys::v3::Response::try_from_http_response(
        http::Response::builder()
            .status(200)
            .body(body.as_slice())
            .unwrap(),
    )
    .unwrap();
    let users: Vec<OwnedUserId> = response.device_keys.keys().cloned().collect();
    let (machine, _dir) = machine_knowing(&response);
    c.bench_function("missing_sessions_2000_users/sqlite", |b| {
        b.iter(|| {
            let request = machine.missing_sessions(&users).unwrap().expect("a claim");
            let OutgoingKind::KeysClaim(claim) = request.kind else {
                unreachable!()
            };
            assert!(claim.one_time_keys.len() >= 2000);
        })
    });
}

/// 1,000 users with 2 devices each: signed device keys and one signed one-time key each.
fn synthetic_devices() -> (get_keys::v3::Response, claim_keys::v3::Response) {
    let mut query = get_keys::v3::Response::new();
    let mut claims: BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys> = BTreeMap::new();
    for u in 0..1000 {
        let user_id = OwnedUserId::try_from(format!("@u{u}:example.org")).unwrap();
        for d in 0..2 {
            let device = OwnedDeviceId::from(format!("D{d}"));
            let peer = OlmMachine::open(&user_id, &device, Arc::new(MemoryStore::new())).unwrap();
            let keys = peer.device_keys().unwrap();
            query
                .device_keys
                .entry(user_id.clone())
                .or_default()
                .insert(device.clone(), raw(&keys));
            let upload = peer.outgoing_requests().unwrap().remove(0);
            let OutgoingKind::KeysUpload(upload) = upload.kind else {
                unreachable!()
            };
            let (id, key) = upload.one_time_keys.into_iter().next().unwrap();
            let key: Value = serde_json::from_str(key.json().get()).unwrap();
            claims
                .entry(user_id.clone())
                .or_default()
                .entry(device)
                .or_default()
                .insert(OwnedOneTimeKeyId::try_from(id.as_str()).unwrap(), raw(&key));
        }
    }
    (query, claim_keys::v3::Response::new(claims))
}

fn share_with_2000_devices(c: &mut Criterion) {
    let (query, claim) = synthetic_devices();
    let users: Vec<OwnedUserId> = query.device_keys.keys().cloned().collect();
    let (machine, _dir) = machine_knowing(&query);
    assert_eq!(
        machine
            .mark_keys_claim_sent(&KeysClaimResponse::from(&claim))
            .unwrap()
            .sessions_created,
        2000
    );
    let requests = machine
        .share_room_key(room(), &users, RotationSettings::default())
        .unwrap();
    println!(
        "share_room_key 1000 users x 2 devices: {} /sendToDevice requests",
        requests.len()
    );
    for r in &requests {
        machine.mark_to_device_sent(&r.id).unwrap();
    }
    c.bench_function("share_room_key_1000_users_x2/sqlite", |b| {
        b.iter(|| {
            machine.discard_room_key(room()).unwrap();
            let requests = machine
                .share_room_key(room(), &users, RotationSettings::default())
                .unwrap();
            assert_eq!(requests.len(), 8);
            for r in &requests {
                machine.mark_to_device_sent(&r.id).unwrap();
            }
        })
    });
}

fn device_lists_changed_500(c: &mut Criterion) {
    use newt_core::store::{Changes, CryptoChanges, TrackedUser, TrackingState};
    let users: Vec<OwnedUserId> = (0..500)
        .map(|i| OwnedUserId::try_from(format!("@m{i}:example.org")).unwrap())
        .collect();
    let changed = users.clone();
    // The users are tracked and up to date; the sync names all of them as changed. Measured:
    // marking them pending (one transaction with the sync token) and building the
    // `/keys/query` requests (250 users each, their state persisted as downloading).
    c.bench_function("device_lists_changed_500_users/sqlite", |b| {
        b.iter_batched(
            || {
                let (store, dir) = sqlite();
                let tracked = users
                    .iter()
                    .map(|u| TrackedUser {
                        user_id: u.clone(),
                        state: TrackingState::UpToDate,
                        sequence: 1,
                    })
                    .collect();
                store
                    .save_changes(Changes::from(CryptoChanges {
                        tracked_users: tracked,
                        ..Default::default()
                    }))
                    .unwrap();
                let machine = OlmMachine::open(user(), device(), store).unwrap();
                // Own keys already published, so that only the queries are built.
                assert_eq!(machine.outgoing_requests().unwrap().len(), 1);
                let counts = BTreeMap::from([(SIGNED_CURVE25519.to_owned(), 50)]);
                machine
                    .mark_keys_upload_sent(&KeysUploadResponse {
                        one_time_key_counts: counts,
                    })
                    .unwrap();
                (machine, dir)
            },
            |(machine, dir)| {
                machine
                    .receive_sync_changes(SyncChanges {
                        changed_users: changed.clone(),
                        next_batch: Some("s2".into()),
                        ..Default::default()
                    })
                    .unwrap();
                let queries = machine
                    .outgoing_requests()
                    .unwrap()
                    .into_iter()
                    .filter(|r| matches!(r.kind, OutgoingKind::KeysQuery(_)))
                    .count();
                assert_eq!(queries, 2);
                (machine, dir)
            },
            BatchSize::PerIteration,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = missing_sessions_2000, share_with_2000_devices, device_lists_changed_500
}
criterion_main!(benches);
