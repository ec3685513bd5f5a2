//! Two machines of one account on one SQLite store at once (the app and a push extension,
//! here as two handles in one process, racing on threads): the cross-process lease keeps
//! them from using a Megolm ratchet step twice or generating one-time keys twice.

use std::collections::HashSet;
use std::sync::{Barrier, Mutex};

use super::*;
use crate::store::{SqliteStore, StoreKey};

fn handle(dir: &std::path::Path) -> Peer {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir, &StoreKey::from_bytes([3; 32])).unwrap());
    Peer::with_store("@alice:localhost", "ALICE", store)
}

/// alice's app on `dir` with bob as a peer, the room key shared with him.
fn app_and_bob(dir: &std::path::Path) -> (FakeServer, Peer, Peer) {
    let (mut server, app, bob) = setup_pair_of(handle(dir));
    let members = vec![app.user(), bob.user()];
    room_members(&app, &members);
    bob.machine.update_tracked_users(&members).unwrap();
    server.drive(&bob);
    server.share(&app, room(), &members);
    assert_eq!(server.sync(&bob).room_keys.len(), 1);
    (server, app, bob)
}

#[test]
fn two_handles_sending_at_once_never_use_a_megolm_index_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, app, bob) = app_and_bob(dir.path());
    let extension = handle(dir.path());
    let barrier = Barrier::new(2);
    let contents: Vec<Value> = std::thread::scope(|s| {
        let senders = [&app, &extension].map(|peer| {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                (0..40)
                    .map(|i| {
                        let body = text(&format!("message {i}"));
                        peer.machine
                            .encrypt_room_event(room(), "m.room.message", &body)
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        });
        senders
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    let mut indices = HashSet::new();
    for (i, content) in contents.into_iter().enumerate() {
        let event = room_event(ROOM, app.user(), &format!("$e{i}"), content);
        let decrypted = bob.machine.decrypt_room_event(room(), &event);
        let decrypted = decrypted.unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert!(
            indices.insert(decrypted.message_index),
            "index {} used twice",
            decrypted.message_index
        );
    }
    assert_eq!(indices.len(), 80);
}

#[test]
fn two_handles_topping_up_one_time_keys_at_once_never_reuse_a_key_id() {
    let dir = tempfile::tempdir().unwrap();
    let (server, app, _bob) = app_and_bob(dir.path());
    let extension = handle(dir.path());
    let server = Mutex::new(server);
    for _round in 0..10 {
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            for peer in [&app, &extension] {
                let (barrier, server) = (&barrier, &server);
                s.spawn(move || {
                    barrier.wait();
                    let counts = BTreeMap::from([(SIGNED_CURVE25519.to_owned(), 0)]);
                    peer.machine
                        .receive_sync_changes(SyncChanges {
                            one_time_key_counts: Some(counts),
                            ..Default::default()
                        })
                        .unwrap();
                    // The fake server refuses a key id uploaded again with other content.
                    server.lock().unwrap().drive(peer);
                });
            }
        });
    }
    // Both handles still agree with the server on the account (the extension reloads it).
    let keys = server.lock().unwrap().one_time_keys[&(app.user(), app.device())].len();
    assert!(keys > 50, "{keys} one-time keys published");
}

/// bob's app and his notification extension on one SQLite directory, alice a peer.
fn bob_app_and_extension(dir: &std::path::Path) -> (FakeServer, Peer, Peer, Peer) {
    let store = |_: ()| -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(dir, &StoreKey::from_bytes([4; 32])).unwrap())
    };
    let (mut server, alice, app) =
        setup_pair_of_bob(Peer::new("@alice:localhost", "ALICE"), store(()));
    let extension_store = store(());
    let extension = Peer {
        machine: OlmMachine::open_for_notifications(
            &app.user(),
            &app.device(),
            extension_store.clone(),
        )
        .unwrap(),
        store: extension_store,
    };
    let members = vec![alice.user(), app.user()];
    room_members(&alice, &members);
    app.machine.update_tracked_users(&members).unwrap();
    server.drive(&app);
    (server, alice, app, extension)
}

fn setup_pair_of_bob(alice: Peer, bob_store: Arc<dyn Store>) -> (FakeServer, Peer, Peer) {
    let mut server = FakeServer::default();
    let bob = Peer::with_store("@bob:localhost", "BOB", bob_store);
    server.drive(&alice);
    server.drive(&bob);
    (server, alice, bob)
}

#[test]
fn a_key_the_extension_took_is_not_taken_again_by_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, alice, app, extension) = bob_app_and_extension(dir.path());
    server.share(&alice, room(), &[alice.user(), app.user()]);
    let content = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("for the notification"))
        .unwrap();
    let event = room_event(ROOM, alice.user(), "$push", content);
    // The extension catches up on to-device messages: the room key arrives there first.
    let to_device = server.take_inbox(&app);
    let handled = extension
        .machine
        .receive_notification_to_device(&to_device)
        .unwrap();
    assert_eq!((handled.room_keys.len(), handled.consumed), (1, 1));
    let shown = extension
        .machine
        .decrypt_for_notification(room(), &event)
        .unwrap();
    assert_eq!(shown.content["body"], "for the notification");
    // The app's own sync brings the same events again: skipped, nothing looks wedged.
    let outcome = app
        .machine
        .receive_sync_changes(SyncChanges {
            to_device_events: to_device,
            ..Default::default()
        })
        .unwrap();
    assert!(outcome.to_device.is_empty(), "{:?}", outcome.to_device);
    assert!(app.machine.session_repair_request().unwrap().is_none());
    assert!(
        app.store
            .consumed_to_device(&[&super::super::notification::digest(&event)])
            .unwrap()
            .is_empty()
    );
    // And the app decrypts the event (recording its replay record this time).
    let decrypted = app.machine.decrypt_room_event(room(), &event).unwrap();
    assert_eq!(decrypted.content["body"], "for the notification");
}

#[test]
fn events_the_extension_leaves_reach_the_app_first() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, alice, app, extension) = bob_app_and_extension(dir.path());
    let now = crate::time::Clock::now_ms(&crate::time::SystemClock);
    let request = json!({"type": "m.key.verification.request", "sender": alice.user(),
        "content": {"from_device": alice.device(), "transaction_id": "v1",
            "methods": ["m.sas.v1"], "timestamp": now}});
    let handled = extension
        .machine
        .receive_notification_to_device(std::slice::from_ref(&request))
        .unwrap();
    assert_eq!(handled.deferred, 1);
    assert!(
        extension.machine.verifications().unwrap().is_empty(),
        "not for the extension"
    );
    // The app's next sync, with nothing new from the server, handles it.
    let outcome = app
        .machine
        .receive_sync_changes(SyncChanges::default())
        .unwrap();
    assert_eq!(outcome.verifications.len(), 1);
    assert!(app.store.deferred_to_device().unwrap().is_empty());
}

#[test]
fn the_extension_never_uploads_keys_or_encrypts() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, alice, _app, extension) = bob_app_and_extension(dir.path());
    let counts = BTreeMap::from([(SIGNED_CURVE25519.to_owned(), 0)]);
    extension
        .machine
        .receive_sync_changes(SyncChanges {
            one_time_key_counts: Some(counts),
            ..Default::default()
        })
        .unwrap();
    let requests = extension.machine.outgoing_requests().unwrap();
    assert!(
        !requests
            .iter()
            .any(|r| matches!(r.kind, OutgoingKind::KeysUpload(_)))
    );
    let refused = extension
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("no"));
    assert!(matches!(refused, Err(CryptoError::InvalidInput(_))));
    let refused =
        extension
            .machine
            .share_room_key(room(), &[alice.user()], RotationSettings::default());
    assert!(matches!(refused, Err(CryptoError::InvalidInput(_))));
}
