//! Sync batches: ordered handling of to-device events, and the atomic commit of a batch with
//! its sync token.

use super::*;

#[test]
fn to_device_events_are_handled_in_order_in_one_batch() {
    let (mut server, alice, bob) = setup_pair();
    let members = vec![alice.user(), bob.user()];
    server.establish(&alice, &members);
    let mut events = Vec::new();
    for i in 0..30 {
        let room = rid(&format!("!r{i}:localhost"));
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
    let rooms: Vec<OwnedRoomId> = outcome
        .room_keys
        .iter()
        .map(|k| k.room_id.clone())
        .collect();
    let expected: Vec<OwnedRoomId> = (0..30).map(|i| rid(&format!("!r{i}:localhost"))).collect();
    assert_eq!(rooms, expected);
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
    server.share(&alice, room(), &members);
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
    server.share(&alice, room(), &members);
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
