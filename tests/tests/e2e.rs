//! End-to-end: Newt clients exchanging encrypted messages through a real Synapse.

use std::time::Duration;

use newt_core::client::TimelineEvent;
use newt_core::ruma::{OwnedRoomOrAliasId, OwnedUserId};
use newt_e2e_tests::clients::{World, open, receive, room_with};

fn bodies(events: &[TimelineEvent]) -> Vec<String> {
    for e in events {
        assert!(e.decrypted, "not decrypted: {e:?}");
        assert_eq!(e.error, None);
    }
    events
        .iter()
        .map(|e| e.body.clone().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_and_bob_exchange_messages_both_ways() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;

    alice.send_text(&room, "hello bob").await.unwrap();
    let got = receive(&bob, &room, 1).await;
    assert_eq!(bodies(&got), ["hello bob"]);
    assert_eq!(
        got[0].sender_device.as_ref(),
        Some(&alice.session().unwrap().device_id)
    );

    bob.send_text(&room, "hello alice").await.unwrap();
    assert_eq!(bodies(&receive(&alice, &room, 1).await), ["hello alice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_decrypts_everything_after_restart() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    let bob_device = bob.session().unwrap().device_id;
    drop(bob);

    for i in 0..5 {
        alice
            .send_text(&room, &format!("while you were away {i}"))
            .await
            .unwrap();
    }
    // bob's process restarts from its store: same device, keys and sync position.
    let bob = open(&w.hs.base_url, &w.dir("bob"));
    assert!(bob.restore_session().unwrap());
    assert_eq!(bob.session().unwrap().device_id, bob_device);
    let got = receive(&bob, &room, 5).await;
    let expected: Vec<String> = (0..5).map(|i| format!("while you were away {i}")).collect();
    assert_eq!(bodies(&got), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_device_decrypts_messages_sent_after_it_appeared() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    alice.send_text(&room, "before").await.unwrap();
    receive(&bob, &room, 1).await;

    let bob2 = w.login("bob", "bob-phone").await;
    assert_ne!(
        bob2.session().unwrap().device_id,
        bob.session().unwrap().device_id
    );
    alice.sync_once(Duration::ZERO).await.unwrap();
    alice.send_text(&room, "after").await.unwrap();
    assert_eq!(bodies(&receive(&bob2, &room, 1).await), ["after"]);
    assert_eq!(bodies(&receive(&bob, &room, 1).await), ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_decrypts_new_messages() {
    let w = World::new(&["alice", "bob", "carol"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    alice.send_text(&room, "only bob").await.unwrap();
    receive(&bob, &room, 1).await;

    let carol = w.login("carol", "carol").await;
    let carol_id = OwnedUserId::try_from("@carol:localhost").unwrap();
    alice.invite(&room, &carol_id).await.unwrap();
    carol.sync_once(Duration::ZERO).await.unwrap();
    carol
        .join(&OwnedRoomOrAliasId::from(room.clone()))
        .await
        .unwrap();
    // History from before carol joined arrives now (undecryptable for her, as it should be).
    carol.sync_once(Duration::ZERO).await.unwrap();
    alice.sync_once(Duration::ZERO).await.unwrap();
    bob.sync_once(Duration::ZERO).await.unwrap();
    alice.send_text(&room, "welcome carol").await.unwrap();
    assert_eq!(bodies(&receive(&carol, &room, 1).await), ["welcome carol"]);
    bob.send_text(&room, "hi carol").await.unwrap();
    assert_eq!(bodies(&receive(&carol, &room, 1).await), ["hi carol"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_messages_arrive_decrypted_and_in_order() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    let expected: Vec<String> = (0..100).map(|i| format!("message {i:03}")).collect();
    for body in &expected {
        alice.send_text(&room, body).await.unwrap();
    }
    assert_eq!(bodies(&receive(&bob, &room, 100).await), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_with_the_same_store_reuses_the_device() {
    let w = World::new(&["alice", "bob"]);
    let alice = w.login("alice", "alice").await;
    let bob = w.login("bob", "bob").await;
    let device = alice.session().unwrap().device_id;
    let fingerprint = alice.fingerprint().unwrap();
    drop(alice);
    // Restart by restoring, then by logging in again with the same store.
    let alice = open(&w.hs.base_url, &w.dir("alice"));
    assert!(alice.restore_session().unwrap());
    assert_eq!(alice.fingerprint().unwrap(), fingerprint);
    drop(alice);
    let alice = w.login("alice", "alice").await;
    assert_eq!(alice.session().unwrap().device_id, device);
    assert_eq!(alice.fingerprint().unwrap(), fingerprint);
    let alice_id = OwnedUserId::try_from("@alice:localhost").unwrap();
    let devices = bob.devices(&alice_id).await.unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0].device_id, device);
    assert_eq!(devices[0].ed25519, fingerprint);
    // And messages still flow to the restored device.
    let room = room_with(&bob, &[&alice]).await;
    bob.send_text(&room, "still you").await.unwrap();
    assert_eq!(bodies(&receive(&alice, &room, 1).await), ["still you"]);
}
