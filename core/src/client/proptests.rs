//! Property tests: whatever `/sync` and `/keys/query` JSON the server sends, nothing panics,
//! the sync advances, and no error survives into the next sync or request.

use std::sync::Arc;

use proptest::prelude::*;
use ruma::OwnedUserId;
use serde_json::{Map, Value, json};

use super::tests::offline_client;
use crate::crypto::{KeysQueryResponse, OlmMachine, OutgoingKind};
use crate::store::{MemoryStore, Store, TrackingState};
use crate::test_ids::{did, uid};

/// Strings a hostile server likes: empty, wildcards, ids of every kind, invalid ids,
/// control characters, long ones.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("*".to_owned()),
        Just("@alice:localhost".to_owned()),
        Just("@bob:localhost".to_owned()),
        Just("!room:localhost".to_owned()),
        Just("$event:localhost".to_owned()),
        Just("not-an-id".to_owned()),
        Just("@:x".to_owned()),
        Just("!:".to_owned()),
        Just("A\u{0}B".to_owned()),
        Just("m.megolm.v1.aes-sha2".to_owned()),
        Just("m.olm.v1.curve25519-aes-sha2".to_owned()),
        Just("x".repeat(300)),
        "\\PC{0,12}",
    ]
}

/// Mostly valid user ids, sometimes anything.
fn user_id() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("@alice:localhost".to_owned()),
        1 => Just("@bob:localhost".to_owned()),
        1 => Just("@mallory:evil".to_owned()),
        1 => hostile_string(),
    ]
}

/// Mostly valid room ids, sometimes anything.
fn room_id() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just("!room:localhost".to_owned()),
        1 => Just("!other:localhost".to_owned()),
        1 => hostile_string(),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        hostile_string().prop_map(Value::String),
    ]
}

/// Any JSON, a few levels deep, with hostile strings as keys and values.
fn any_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(hostile_string(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An event: mostly well formed, with hostile ids and contents.
fn event() -> impl Strategy<Value = Value> {
    let event_type = prop_oneof![
        Just("m.room.encrypted"),
        Just("m.room.member"),
        Just("m.room.message"),
        Just("m.room.encryption"),
        Just("m.room.history_visibility"),
        Just("m.room_key.withheld"),
        Just("m.room_key_request"),
        Just("m.room_key"),
        Just("m.forwarded_room_key"),
        Just("m.dummy"),
    ];
    let membership = prop_oneof![
        Just("join"),
        Just("invite"),
        Just("leave"),
        Just("sideways")
    ];
    let content = prop_oneof![
        1 => any_json(),
        3 => (hostile_string(), hostile_string(), room_id(), membership).prop_map(
            |(a, b, room, membership)| json!({
                "algorithm": "m.megolm.v1.aes-sha2", "session_id": a, "ciphertext": b,
                "sender_key": b, "device_id": a, "membership": membership, "room_id": room,
                "code": a, "requesting_device_id": b, "action": "request",
                "body": {"room_id": room, "session_id": a},
            })
        ),
    ];
    let state_key = prop::option::of(prop_oneof![user_id(), Just(String::new())]);
    (
        event_type,
        user_id(),
        hostile_string(),
        state_key,
        content,
        any_json(),
    )
        .prop_map(|(t, sender, id, state_key, content, extra)| {
            let mut e = json!({"type": t, "sender": sender, "event_id": id,
                               "origin_server_ts": 1, "content": content, "extra": extra});
            if let Some(key) = state_key {
                e["state_key"] = key.into();
            }
            e
        })
}

/// Sometimes `good`, sometimes anything at all.
fn or_garbage(good: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    prop_oneof![4 => good, 1 => any_json()]
}

fn events() -> BoxedStrategy<Value> {
    prop::collection::vec(event(), 0..4)
        .prop_map(|events| json!({"events": events}))
        .boxed()
}

fn rooms() -> BoxedStrategy<Value> {
    let joined = (
        or_garbage(events()),
        or_garbage(events()),
        any::<bool>(),
        any_json(),
    )
        .prop_map(|(state, timeline, limited, prev)| {
            let mut timeline = timeline;
            if let Some(t) = timeline.as_object_mut() {
                t.insert("limited".into(), limited.into());
                t.insert("prev_batch".into(), prev);
            }
            json!({"state": state, "timeline": timeline})
        })
        .boxed();
    let invited = or_garbage(events()).prop_map(|s| json!({"invite_state": s}));
    (
        prop::collection::btree_map(room_id(), or_garbage(joined), 0..3),
        prop::collection::btree_map(room_id(), invited, 0..3),
        prop::collection::btree_map(room_id(), any_json(), 0..2),
    )
        .prop_map(|(join, invite, leave)| json!({"join": join, "invite": invite, "leave": leave}))
        .boxed()
}

/// A `/sync` answer with a valid token and hostile everything else.
fn sync_answer() -> impl Strategy<Value = Value> {
    let ids = || {
        let id = user_id().prop_map(Value::String).boxed();
        prop::collection::vec(or_garbage(id), 0..4)
    };
    (
        "[a-z0-9_]{1,12}",
        or_garbage(rooms()),
        or_garbage(events()),
        (ids(), ids()),
        any_json(),
        any_json(),
    )
        .prop_map(
            |(token, rooms, to_device, (changed, left), counts, fallback)| {
                json!({
                    "next_batch": token, "rooms": rooms, "to_device": to_device,
                    "device_lists": {"changed": changed, "left": left},
                    "device_one_time_keys_count": counts,
                    "device_unused_fallback_key_types": fallback,
                })
            },
        )
}

/// Device keys under a user and device id: properly self-signed keys for that id (so the
/// checks after the signature run too), someone else's, or garbage.
fn device_keys(user: String, device: String) -> impl Strategy<Value = Value> {
    let signed = crate::crypto::tests::signed_device_keys(&user, &device);
    prop_oneof![
        2 => Just(signed),
        1 => any_json(),
    ]
}

fn keys_query_answer() -> impl Strategy<Value = Value> {
    let device = (user_id(), hostile_string()).prop_flat_map(|(user, device)| {
        (
            Just(user.clone()),
            Just(device.clone()),
            device_keys(user, device),
        )
    });
    (prop::collection::vec(device, 0..6), any_json()).prop_map(|(devices, failures)| {
        let mut by_user: Map<String, Value> = Map::new();
        for (user, device, keys) in devices {
            let entry = by_user.entry(user).or_insert_with(|| json!({}));
            if let Some(map) = entry.as_object_mut() {
                map.insert(device, keys);
            }
        }
        json!({"device_keys": by_user, "failures": failures})
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn any_sync_answer_advances_the_sync_and_leaves_nothing_stuck(answer in sync_answer()) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let client = offline_client(store.clone(), "@bob:localhost", "BOB");
        let token = answer["next_batch"].as_str().unwrap_or_default().to_owned();
        let body = answer.to_string();
        client.receive_sync_response(body.as_bytes()).expect("any answer with a token is taken");
        prop_assert_eq!(store.sync_token().unwrap(), Some(token));
        // Nothing it left behind fails what comes next.
        let machine = client.machine().unwrap();
        machine.outgoing_requests().expect("requests can be built");
        client
            .receive_sync_response(br#"{"next_batch": "next"}"#)
            .expect("the next sync is taken");
        // The same answer again (a retry after a lost response) is taken too.
        client.receive_sync_response(body.as_bytes()).expect("a replayed answer is taken");
    }

    #[test]
    fn any_keys_query_answer_is_taken_and_leaves_no_user_downloading(
        answer in keys_query_answer(),
        extra in prop::collection::vec(user_id(), 0..3),
    ) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let machine = OlmMachine::open(&uid("@bob:localhost"), &did("BOB"), store).unwrap();
        let mut names: Vec<String> = answer["device_keys"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        names.extend(extra);
        // Only user ids can be tracked (the machine used to skip the others itself).
        let users: Vec<OwnedUserId> = names
            .iter()
            .filter_map(|name| OwnedUserId::try_from(name.as_str()).ok())
            .collect();
        machine.update_tracked_users(&users).unwrap();
        let body = answer.to_string();
        let response = KeysQueryResponse::from_json(body.as_bytes()).unwrap();
        for request in machine.outgoing_requests().unwrap() {
            if matches!(request.kind, OutgoingKind::KeysQuery(_)) {
                machine.mark_keys_query_sent(&request.id, &response).expect("the answer is taken");
            }
        }
        for user in &users {
            let state = machine.tracking_state(user).unwrap();
            prop_assert_ne!(state, TrackingState::Downloading, "{} stuck", user);
        }
        machine.outgoing_requests().expect("requests can be built");
    }
}
