//! Client tests without a homeserver: `/sync` answers fed as JSON, crypto peers from the
//! crypto tests' fake server. (The end-to-end tests against Synapse are in `tests/`.)

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use ruma::RoomId;
use ruma::events::room::member::MembershipState;
use serde_json::{Value, json};

use super::{Client, ClientError, KEY_ACCESS_TOKEN, KEY_DEVICE_ID, KEY_USER_ID};
use crate::crypto::tests::{FakeServer, Peer, room_event};
use crate::crypto::{OutgoingKind, RotationSettings};
use crate::store::{ClientChanges, MemoryStore, SecretBlob, SqliteStore, Store, StoreKey};
use crate::test_ids::{did, rid, uid};

const ROOM: &str = "!room:localhost";
const BOB: &str = "@bob:localhost";

/// A logged-in client on `store` that never talks to a server (the address is unroutable).
pub(crate) fn offline_client(store: Arc<dyn Store>, user: &str, device: &str) -> Client {
    let mut changes = ClientChanges::default();
    changes.values.insert(KEY_USER_ID.into(), user.into());
    changes.values.insert(KEY_DEVICE_ID.into(), device.into());
    changes
        .secret_values
        .insert(KEY_ACCESS_TOKEN.into(), SecretBlob::new(b"token".to_vec()));
    store.save_changes(changes.into()).unwrap();
    let client = Client::with_store("http://127.0.0.1:9", store).unwrap();
    assert!(client.restore_session().unwrap());
    client
}

/// A `/sync` answer body.
pub(crate) fn sync_body(next_batch: &str, rooms: Value, to_device: Vec<Value>) -> Vec<u8> {
    json!({"next_batch": next_batch, "rooms": rooms, "to_device": {"events": to_device}})
        .to_string()
        .into_bytes()
}

fn joined(room: &str, timeline: Vec<Value>) -> Value {
    json!({"join": {room: {"timeline": {"events": timeline}}}})
}

#[test]
fn an_invite_whose_stripped_state_names_an_invalid_member_does_not_stall_sync() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let client = offline_client(store.clone(), BOB, "BOB");
    let invite = json!({"invite": {ROOM: {"invite_state": {"events": [
        {"type": "m.room.member", "state_key": "", "sender": "@x:evil",
         "content": {"membership": "join"}},
        {"type": "m.room.member", "state_key": "@mallory:evil", "sender": "@x:evil",
         "content": {"membership": "join"}},
        {"type": "m.room.encryption", "state_key": "", "sender": "@x:evil",
         "content": {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_msgs": 1000000}},
    ]}}}});
    client
        .receive_sync_response(&sync_body("s1", invite, vec![]))
        .expect("the sync goes through");
    assert_eq!(store.sync_token().unwrap().as_deref(), Some("s1"));
    // Stripped state is written by whoever invites us: it decides nothing.
    assert!(store.members(&rid(ROOM)).unwrap().is_empty());
    let room = store.room(&rid(ROOM)).unwrap().unwrap();
    assert_eq!(room.own_membership, Some(MembershipState::Invite));
    assert_eq!(room.encryption, None);
    // Joining: the real state is taken, and the member list will be loaded from scratch.
    let state = json!({"join": {ROOM: {"state": {"events": [
        {"type": "m.room.encryption", "state_key": "", "sender": "@a:localhost",
         "event_id": "$e", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
        {"type": "m.room.member", "state_key": "not a user", "sender": "@a:localhost",
         "event_id": "$m", "content": {"membership": "join"}},
        {"type": "m.room.member", "state_key": "@a:localhost", "sender": "@a:localhost",
         "event_id": "$n", "content": {"membership": "sideways"}},
    ]}}}});
    client
        .receive_sync_response(&sync_body("s2", state, vec![]))
        .unwrap();
    let room = store.room(&rid(ROOM)).unwrap().unwrap();
    assert_eq!(room.own_membership, Some(MembershipState::Join));
    assert!(!room.members_synced);
    assert!(room.encryption.is_some());
    assert!(store.members(&rid(ROOM)).unwrap().is_empty());
    assert_eq!(store.sync_token().unwrap().as_deref(), Some("s2"));
}

#[test]
fn an_event_whose_sender_is_not_a_user_id_is_skipped_and_asks_for_nothing() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let client = offline_client(store.clone(), BOB, "BOB");
    let content = json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA",
        "session_id": "missing", "sender_key": "abc", "device_id": "DEV"});
    let mut forged = room_event(ROOM, "not-a-user", "$1", content.clone());
    forged["origin_server_ts"] = 1.into();
    let mut empty_device = room_event(ROOM, "@alice:localhost", "$2", content);
    empty_device["content"]["device_id"] = "".into();
    empty_device["content"]["session_id"] = "other".into();
    let mut rx = client.subscribe_timeline();
    client
        .receive_sync_response(&sync_body(
            "s1",
            joined(ROOM, vec![forged, empty_device]),
            vec![],
        ))
        .unwrap();
    let item = rx.try_recv().unwrap();
    assert_eq!(item.event_id, "$2");
    assert!(rx.try_recv().is_err(), "the forged event is not shown");
    // Only the valid event is kept for a late key and asked for (from our own devices only:
    // an empty device id is not addressed).
    assert_eq!(store.counts().unwrap().undecryptable_events, 1);
    assert!(store.key_request(&rid(ROOM), "missing").unwrap().is_none());
    let requests = client.machine().unwrap().outgoing_requests().unwrap();
    let to_device: Vec<_> = requests
        .iter()
        .filter_map(|r| match &r.kind {
            OutgoingKind::ToDevice(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(to_device.len(), 1);
    assert_eq!(
        to_device[0]
            .messages
            .keys()
            .map(|u| u.as_str())
            .collect::<Vec<_>>(),
        [BOB]
    );
}

/// alice's peer, bob's device keys published from `bob_store`, and an encrypted event of
/// alice in [`ROOM`] whose room key is waiting in the fake server for bob.
fn alice_event_and_held_key(bob_store: Arc<dyn Store>) -> (FakeServer, Peer, Value) {
    let mut server = FakeServer::default();
    let alice = Peer::new("@alice:localhost", "ALICE");
    let bob = Peer::with_store(BOB, "BOB", bob_store);
    server.drive(&alice);
    server.drive(&bob);
    let members = vec![alice.user(), bob.user()];
    server.establish(&alice, &members);
    alice
        .machine
        .share_room_key(&rid(ROOM), &members, RotationSettings::default())
        .unwrap();
    server.drive(&alice);
    let content = alice
        .machine
        .encrypt_room_event(
            &rid(ROOM),
            "m.room.message",
            &json!({"msgtype": "m.text", "body": "late"}),
        )
        .unwrap();
    let mut event = room_event(ROOM, alice.user(), "$late", content);
    event["origin_server_ts"] = 1.into();
    (server, bob, event)
}

const CRASH_DIR: &str = "NEWT_CLIENT_TEST_CRASH_DIR";
const CRASH_CHILD: &str = "client::tests::crash_child_syncs_then_dies";

fn sqlite(dir: &Path) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(dir, &StoreKey::from_bytes([3; 32])).unwrap())
}

/// Child half of `a_kill_right_after_a_sync_commit_loses_no_late_key_redelivery`: sync an
/// undecryptable event, die right after the commit (before anything else runs).
#[test]
fn crash_child_syncs_then_dies() {
    let Some(dir) = std::env::var_os(CRASH_DIR) else {
        return;
    };
    let dir = Path::new(&dir);
    let event: Value =
        serde_json::from_slice(&std::fs::read(dir.join("event.json")).unwrap()).unwrap();
    let client = offline_client(sqlite(&dir.join("store")), BOB, "BOB");
    let _ = client.receive_sync_response(&sync_body("s1", joined(ROOM, vec![event]), vec![]));
    unreachable!("the crash hook aborts after the commit");
}

#[test]
fn a_kill_right_after_a_sync_commit_loses_no_late_key_redelivery() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let (mut server, bob, event) = alice_event_and_held_key(sqlite(&store_dir));
    drop(bob);
    std::fs::write(dir.path().join("event.json"), event.to_string()).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CRASH_CHILD, "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR, dir.path())
        .env("NEWT_TEST_ABORT_AFTER_SYNC_COMMIT", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(6), "SIGABRT expected: {stderr}");
    }

    // A new process: the event was kept with the sync, so its late key re-delivers it.
    let store = sqlite(&store_dir);
    assert_eq!(store.sync_token().unwrap().as_deref(), Some("s1"));
    assert_eq!(store.counts().unwrap().undecryptable_events, 1);
    let client = offline_client(store, BOB, "BOB");
    let mut rx = client.subscribe_timeline();
    let key = server.inbox.remove(&(uid(BOB), did("BOB"))).unwrap();
    client
        .receive_sync_response(&sync_body("s2", json!({}), key))
        .unwrap();
    let item = rx.try_recv().expect("the kept event is delivered again");
    assert_eq!(item.event_id, "$late");
    assert!(item.is_update && item.decrypted, "{item:?}");
    assert_eq!(item.body.as_deref(), Some("late"));
}

#[test]
fn an_encrypted_event_naming_an_empty_session_does_not_stall_sync() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let client = offline_client(store.clone(), BOB, "BOB");
    let content = json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA",
        "session_id": "", "sender_key": "k", "device_id": "D"});
    let mut event = room_event(ROOM, "@alice:localhost", "$e", content);
    event["origin_server_ts"] = 1.into();
    client
        .receive_sync_response(&sync_body("s1", joined(ROOM, vec![event]), vec![]))
        .expect("the sync goes through");
    assert_eq!(store.sync_token().unwrap().as_deref(), Some("s1"));
    assert_eq!(
        store.counts().unwrap().undecryptable_events,
        0,
        "malformed: not kept"
    );
}

#[test]
fn one_sync_asks_for_a_bounded_number_of_keys() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let client = offline_client(store.clone(), BOB, "BOB");
    let events: Vec<Value> = (0..80)
        .map(|i| {
            let content = json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA",
                "session_id": format!("s{i}"), "sender_key": "k", "device_id": "D"});
            let mut e = room_event(ROOM, "@mallory:evil", &format!("$e{i}"), content);
            e["origin_server_ts"] = 1.into();
            e
        })
        .collect();
    client
        .receive_sync_response(&sync_body("s1", joined(ROOM, events), vec![]))
        .unwrap();
    let counts = store.counts().unwrap();
    assert_eq!(
        counts.undecryptable_events, 80,
        "all are kept for their keys"
    );
    assert_eq!(
        counts.key_requests, 50,
        "but one sync asks for at most 50 keys"
    );
}

/// A policy provider that calls back into the client (as a UI might, for the own device's
/// fingerprint) while it is asked.
struct ReentrantPolicy(std::sync::Mutex<Option<std::sync::Weak<Client>>>);

impl super::TrustPolicyProvider for ReentrantPolicy {
    fn policy_for_room(&self, _room_id: &RoomId) -> super::TrustPolicy {
        let client = self.0.lock().unwrap().as_ref().and_then(|w| w.upgrade());
        if let Some(client) = client {
            let _ = client.fingerprint();
        }
        super::TrustPolicy::default()
    }
}

#[test]
fn a_policy_provider_may_call_back_into_the_client_while_a_sync_is_applied() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let client = Arc::new(offline_client(store, BOB, "BOB"));
    let policy = Arc::new(ReentrantPolicy(std::sync::Mutex::new(None)));
    *policy.0.lock().unwrap() = Some(Arc::downgrade(&client));
    client.set_trust_policy_provider(Some(policy));
    let content = json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA",
        "session_id": "s", "sender_key": "k"});
    let mut event = room_event(ROOM, "@alice:localhost", "$e", content);
    event["origin_server_ts"] = 1.into();
    let body = sync_body("s1", joined(ROOM, vec![event]), vec![]);
    let (done, finished) = std::sync::mpsc::channel();
    let syncing = Arc::clone(&client);
    std::thread::spawn(move || {
        let _ = done.send(syncing.receive_sync_response(&body).is_ok());
    });
    let ok = finished
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("no deadlock");
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_the_sync_loop_releases_the_store_and_later_calls_fail_with_closed() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path());
    let released = Arc::downgrade(&store);
    let client = Arc::new(offline_client(store, BOB, "BOB"));
    let fingerprint = client.fingerprint().unwrap();
    // The server is unreachable: the loop fails, backs off and tries again until closed.
    let sync = client.start_sync();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(Arc::strong_count(&client), 2, "the loop holds the client");

    tokio::time::timeout(std::time::Duration::from_secs(10), client.close())
        .await
        .expect("close returns once the loop has ended");
    assert_eq!(Arc::strong_count(&client), 1, "the sync task has ended");
    // The store was only ever held by the client: its connections are closed now.
    assert!(
        released.upgrade().is_none(),
        "the client and its machine released every reference to the store"
    );
    client.close().await;
    drop(sync);

    assert!(matches!(client.store(), Err(ClientError::Closed)));
    assert!(matches!(client.fingerprint(), Err(ClientError::Closed)));
    assert!(matches!(client.restore_session(), Err(ClientError::Closed)));
    let synced = client.sync_once(std::time::Duration::ZERO).await;
    assert!(matches!(synced, Err(ClientError::Closed)), "{synced:?}");
    let sent = client.send_text(&rid(ROOM), "after close").await;
    assert!(matches!(sent, Err(ClientError::Closed)), "{sent:?}");
    let _nothing = client.start_sync();
    assert_eq!(Arc::strong_count(&client), 1, "no loop starts after close");

    // The same directory opens again, with the same account.
    let reopened = offline_client(sqlite(dir.path()), BOB, "BOB");
    assert_eq!(reopened.fingerprint().unwrap(), fingerprint);
    reopened.close().await;
}
