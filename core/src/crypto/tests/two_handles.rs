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
