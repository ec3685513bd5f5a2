//! The send queue against a real Synapse: one queue for encrypted and plain rooms, each
//! message moved on from the stage it reached.

use std::collections::BTreeMap;
use std::time::Duration;

use newt_core::ruma::{OwnedRoomId, OwnedRoomOrAliasId};
use newt_e2e_tests::attacker::{Attacker, encode_segment};
use newt_e2e_tests::clients::{self, World};
use newt_e2e_tests::proxy::{Action, FaultProxy};
use serde_json::{Value, json};

/// The event `event_id` as the server holds it, read by `reader`.
fn stored_event(reader: &Attacker, room: &str, event_id: &str) -> Value {
    let events = reader.room_messages(room);
    let event = events.iter().find(|e| e["event_id"] == event_id);
    event
        .cloned()
        .unwrap_or_else(|| panic!("{event_id} not in {events:?}"))
}

/// In a room without encryption the message goes out in clear through the same queue; once
/// the room turns encryption on, the next one is encrypted (and a room never seen is not
/// sent to in clear).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_room_gets_messages_in_clear_until_encryption_is_turned_on() {
    let w = World::new(&["bob"]);
    let carol = Attacker::register(&w.hs, "carol");
    let created = json!({"preset": "public_chat", "invite": ["@bob:localhost"]});
    let room = carol.api("POST", "/createRoom", Some(&created))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = w.login("bob", "bob").await;
    let room_id = OwnedRoomId::try_from(room.as_str()).unwrap();
    bob.join(&OwnedRoomOrAliasId::from(room_id.clone()))
        .await
        .unwrap();
    bob.sync_once(Duration::ZERO).await.unwrap();

    let clear = bob.send_text(&room_id, "hello in clear").await.unwrap();
    let event = stored_event(&carol, &room, clear.as_str());
    assert_eq!(event["type"], "m.room.message");
    assert_eq!(event["content"]["body"], "hello in clear");

    let path = format!("/rooms/{}/state/m.room.encryption/", encode_segment(&room));
    let encryption = json!({"algorithm": "m.megolm.v1.aes-sha2"});
    carol.api("PUT", &path, Some(&encryption));
    bob.sync_once(Duration::ZERO).await.unwrap();
    let secret = bob.send_text(&room_id, "now encrypted").await.unwrap();
    let event = stored_event(&carol, &room, secret.as_str());
    assert_eq!(event["type"], "m.room.encrypted");
    assert!(event["content"].get("body").is_none(), "{event}");

    // A room bob never saw is not sent to in clear.
    let unknown = OwnedRoomId::try_from("!unknown:localhost").unwrap();
    assert!(bob.send_text(&unknown, "where?").await.is_err());
    drop(w);
}

/// The app sends while the background work resends what is queued: one task moves the
/// messages on at a time, so each is encrypted once (every attempt of a transaction sends
/// the same body), and they reach bob once each, in the order they were queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_while_the_queue_is_resent_encrypts_each_message_once() {
    let w = World::new(&["alice", "bob"]);
    let proxy = FaultProxy::start(&w.hs.base_url);
    let alice = clients::login(&proxy.base_url, &w.dir("alice"), "alice").await;
    let bob = w.login("bob", "bob").await;
    let room = clients::room_with(&alice, &[&bob]).await;
    // The first message is encrypted, then its answers are lost: it stays queued, ready.
    proxy.rule("/send/m.room.encrypted/", Action::ForwardThenDrop, Some(4));
    assert!(alice.send_text(&room, "first").await.is_err());
    // Slow sends from now on, so that the two tasks overlap.
    proxy.rule(
        "/send/m.room.encrypted/",
        Action::Delay(Duration::from_millis(300)),
        None,
    );
    let (second, due) = tokio::join!(alice.send_text(&room, "second"), alice.run_due_work());
    second.unwrap();
    due.unwrap();

    let mut by_txn: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (path, body) in proxy.requests("/send/m.room.encrypted/") {
        by_txn.entry(path).or_default().push(body);
    }
    assert_eq!(by_txn.len(), 2, "{:?}", by_txn.keys());
    for (txn, bodies) in &by_txn {
        assert!(
            bodies.iter().all(|b| b == &bodies[0]),
            "{txn} encrypted twice"
        );
    }
    let got = clients::receive(&bob, &room, 2).await;
    let bodies: Vec<_> = got
        .iter()
        .map(|e| e.body.clone().unwrap_or_default())
        .collect();
    assert_eq!(bodies, ["first", "second"]);
    drop(w);
}

/// The server stored the message but its answers were lost: the message's own echo in the
/// next sync takes it off the queue, and it is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_echo_came_back_is_not_sent_again() {
    let w = World::new(&["alice", "bob"]);
    let proxy = FaultProxy::start(&w.hs.base_url);
    let alice = clients::login(&proxy.base_url, &w.dir("alice"), "alice").await;
    let bob = w.login("bob", "bob").await;
    let room = clients::room_with(&alice, &[&bob]).await;
    proxy.rule("/send/m.room.encrypted/", Action::ForwardThenDrop, Some(4));
    assert!(alice.send_text(&room, "stored once").await.is_err());
    alice.sync_once(Duration::ZERO).await.unwrap();
    let report = alice.run_due_work().await.unwrap();
    assert_eq!((report.completed, report.remaining), (0, 0));
    assert_eq!(
        proxy.bodies("/send/m.room.encrypted/").len(),
        4,
        "sent again"
    );
    let got = clients::receive(&bob, &room, 1).await;
    assert_eq!(got[0].body.as_deref(), Some("stored once"));
    drop(w);
}
