//! Push notifications decrypted beside the app, against a real Synapse: with the key in the
//! store, with the key fetched by a to-device catch-up (the app then skips what the
//! decryptor consumed), and with a key that never comes (reported within the budget).

use std::time::{Duration, Instant};

use newt_core::notification::{NotificationDecryptor, NotificationError};
use newt_core::ruma::{OwnedEventId, RoomId};
use newt_core::store::StoreKey;
use newt_e2e_tests::Synapse;
use newt_e2e_tests::clients::{STORE_PASSPHRASE, World, receive};
use newt_e2e_tests::proxy::{Action, FaultProxy};
use serde_json::json;

fn decryptor(hs: &Synapse, dir: &std::path::Path) -> NotificationDecryptor {
    let key = StoreKey::from_passphrase(STORE_PASSPHRASE);
    NotificationDecryptor::open(&hs.base_url, dir, &key).expect("open the decryptor")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_decrypt_from_the_store_and_through_a_catch_up() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    let (hs, bob_dir) = (&w.hs, w.dir("bob"));

    // The key reaches bob's app first: the decryptor finds it in the store.
    let first = alice.send_text(&room, "first").await.unwrap();
    assert_eq!(receive(&bob, &room, 1).await[0].event_id, first);
    let push = decryptor(hs, &bob_dir);
    let shown = push
        .decrypt(&room, &first, None, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(shown.encrypted);
    assert_eq!(shown.content["body"], "first");
    assert_eq!(shown.sender.as_str(), "@alice:localhost");

    // A new room key while bob's app sleeps: the decryptor catches up on to-device messages.
    alice.discard_room_key(&room).unwrap();
    let second = alice.send_text(&room, "second").await.unwrap();
    let shown = push
        .decrypt(&room, &second, None, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(shown.content["body"], "second");
    // The app wakes up: it gets the message, decrypted, and no Olm channel looks broken.
    let got = receive(&bob, &room, 1).await;
    assert_eq!(got[0].event_id, second);
    assert!(got[0].decrypted, "{:?}", got[0]);
    let third = alice.send_text(&room, "third").await.unwrap();
    let got = receive(&bob, &room, 1).await;
    assert_eq!((got[0].event_id.clone(), got[0].decrypted), (third, true));
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_never_comes_is_reported_within_the_budget() {
    let w = World::new(&["bob"]);
    let _bob = w.login("bob", "bob").await;
    let push = decryptor(&w.hs, &w.dir("bob"));
    let room = <&RoomId>::try_from("!nowhere:localhost").unwrap();
    let event_id = OwnedEventId::try_from("$never").unwrap();
    let event = json!({"type": "m.room.encrypted", "sender": "@alice:localhost",
        "event_id": event_id, "origin_server_ts": 1, "room_id": room,
        "content": {"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "AAAA",
            "device_id": "ALICE", "session_id": "no-such-session", "ciphertext": "AAAA"}});
    let started = Instant::now();
    let budget = Duration::from_secs(3);
    let outcome = push.decrypt(room, &event_id, Some(event), budget).await;
    assert!(
        matches!(outcome, Err(NotificationError::KeyMissing(_))),
        "{outcome:?}"
    );
    assert!(started.elapsed() < budget + Duration::from_secs(3));
    drop(w);
}

/// `notify-process` (a push handler as a process of its own) decrypting `event`.
fn notify_process(
    homeserver: &str,
    store: &std::path::Path,
    room: &RoomId,
    event: &str,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_notify-process"))
        .args([
            homeserver,
            &store.to_string_lossy(),
            room.as_str(),
            event,
            "20000",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start notify-process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_killed_in_the_middle_loses_nothing_for_the_app() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    let (hs, bob_dir) = (&w.hs, w.dir("bob"));
    // The extension's requests are slowed down, so that each kill lands somewhere else:
    // before its catch-up, during it, or while it stores what it took.
    let proxy = FaultProxy::start(&hs.base_url);
    proxy.rule("/sync", Action::Delay(Duration::from_millis(300)), None);
    let mut sent = Vec::new();
    for (round, kill_after_ms) in [150u64, 400, 700, 1_000, 1_500].into_iter().enumerate() {
        // A new room key each time, sent to bob's sleeping app over Olm.
        alice.discard_room_key(&room).unwrap();
        let event = alice
            .send_text(&room, &format!("round {round}"))
            .await
            .unwrap();
        let mut child = notify_process(&proxy.base_url, &bob_dir, &room, event.as_str());
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        sent.push(event);
    }
    // bob's app wakes up: every message arrives, decrypted, in order.
    let got = receive(&bob, &room, sent.len()).await;
    let ids: Vec<_> = got.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids, sent);
    assert!(got.iter().all(|e| e.decrypted), "{got:?}");
    // Olm still works both ways: bob's own room key reaches alice, alice's next one bob.
    let from_bob = bob.send_text(&room, "bob is fine").await.unwrap();
    assert_eq!(receive(&alice, &room, 1).await[0].event_id, from_bob);
    alice.discard_room_key(&room).unwrap();
    let last = alice.send_text(&room, "after").await.unwrap();
    let got = receive(&bob, &room, 1).await;
    assert_eq!((got[0].event_id.clone(), got[0].decrypted), (last, true));
    drop(w);
}
