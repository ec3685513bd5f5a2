//! What the app sees and does with its queued messages, against a real Synapse: local
//! echoes and their states, offline queueing and draining, cancel and edit, stuck messages
//! retried once their cause is fixed, and relations to messages still queued.

use std::time::Duration;

use newt_core::client::{OutgoingMessage, SendState};
use newt_core::ruma::UserId;
use newt_core::store::{LocalTrust, SharingPolicy, StuckReason};
use newt_e2e_tests::attacker::{Attacker, encode_segment};
use newt_e2e_tests::clients::{self, SendLog, World};
use newt_e2e_tests::proxy::Action;
use serde_json::{Value, json};

fn text(body: &str) -> OutgoingMessage {
    OutgoingMessage::Text { body: body.into() }
}

fn is_sent(s: &SendState) -> bool {
    matches!(s, SendState::Sent { event_id: Some(_) })
}

fn is_waiting(s: &SendState) -> bool {
    matches!(s, SendState::WaitingToRetry { .. })
}

/// Every request fails as if the network were gone.
const ALL: &str = "/_matrix/";

/// Offline, messages are queued (their echoes at once, in order) and wait; when a sync gets
/// through again they drain, in order, without waiting for the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_wait_then_drain_in_order_when_the_network_is_back() {
    let w = World::new(&["alice", "bob"]);
    let (proxy, alice, bob, room) = w.alice_behind_a_proxy().await;
    let mut log = SendLog::new(&alice);
    proxy.rule(ALL, Action::Drop, None);
    let mut txns = Vec::new();
    for i in 0..5 {
        let txn = alice
            .queue_message(&room, text(&format!("offline {i}")))
            .await;
        txns.push(txn.unwrap());
    }
    let echoes = alice.local_echoes(&room).await.unwrap();
    let echoed: Vec<_> = echoes.iter().map(|e| e.content["body"].clone()).collect();
    assert_eq!(
        echoed,
        (0..5).map(|i| format!("offline {i}")).collect::<Vec<_>>()
    );
    assert_eq!(echoes[0].txn_id, txns[0]);
    // Twice, so that the next attempt is 2-4 s away.
    let SendState::WaitingToRetry {
        next_attempt_ms, ..
    } = log.until_nth(&txns[0], 2, is_waiting).await
    else {
        unreachable!()
    };
    let sends = proxy.log().iter().filter(|l| l.contains("/send/")).count();
    assert_eq!(sends, 0, "nothing can have gone out");

    proxy.clear();
    alice.sync_once(Duration::ZERO).await.unwrap();
    // The sync got through: the queue goes now, not at the next attempt's time.
    log.until_nth(&txns[0], 3, |s| *s == SendState::Sending)
        .await;
    let sending_again = log
        .seen
        .iter()
        .zip(&log.received_ms)
        .filter(|(u, _)| u.txn_id == txns[0] && u.state == SendState::Sending)
        .map(|(_, at)| *at)
        .nth(2)
        .unwrap();
    assert!(
        sending_again < next_attempt_ms,
        "sent again at {sending_again}, the backoff ends at {next_attempt_ms}"
    );
    for txn in &txns {
        log.until(txn, is_sent).await;
    }
    // Sent in order: each Sent comes after the previous one's.
    let sent_at: Vec<_> = txns
        .iter()
        .map(|t| {
            let is_ours = |u: &newt_core::client::SendUpdate| &u.txn_id == t && is_sent(&u.state);
            log.seen.iter().position(is_ours).unwrap()
        })
        .collect();
    assert!(sent_at.windows(2).all(|w| w[0] < w[1]), "{sent_at:?}");
    let got = clients::receive(&bob, &room, 5).await;
    let bodies: Vec<_> = got.iter().map(|e| e.body.clone().unwrap()).collect();
    assert_eq!(
        bodies,
        (0..5).map(|i| format!("offline {i}")).collect::<Vec<_>>()
    );
    assert!(alice.local_echoes(&room).await.unwrap().is_empty());
    drop(w);
}

/// A cancelled message is not sent, nor is what relates to it; an edited one is sent with
/// its new text; an edit into another kind, or of a message no longer queued, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_can_be_cancelled_and_edited() {
    let w = World::new(&["alice", "bob"]);
    let (proxy, alice, bob, room) = w.alice_behind_a_proxy().await;
    let mut log = SendLog::new(&alice);
    proxy.rule(ALL, Action::Drop, None);
    let a = alice.queue_message(&room, text("a")).await.unwrap();
    let b = alice.queue_message(&room, text("b")).await.unwrap();
    let reaction = OutgoingMessage::Reaction {
        target: b.clone(),
        key: "👍".into(),
    };
    let to_b = alice.queue_message(&room, reaction).await.unwrap();
    let c = alice.queue_message(&room, text("c")).await.unwrap();

    alice.cancel_send(&b).await.unwrap();
    log.until(&b, |s| *s == SendState::Cancelled).await;
    log.until(&to_b, |s| *s == SendState::Cancelled).await;
    alice.edit_queued(&c, text("c, edited")).await.unwrap();
    let kind = OutgoingMessage::Reaction {
        target: a.clone(),
        key: "x".into(),
    };
    let err = alice.edit_queued(&c, kind).await.unwrap_err();
    assert!(
        matches!(err, newt_core::client::ClientError::InvalidInput(_)),
        "{err}"
    );
    let err = alice.cancel_send(&b).await.unwrap_err();
    assert!(
        matches!(err, newt_core::client::ClientError::NotQueued(_)),
        "{err}"
    );
    let echoes = alice.local_echoes(&room).await.unwrap();
    let echoed: Vec<_> = echoes.iter().map(|e| e.txn_id.clone()).collect();
    assert_eq!(echoed, [a.clone(), c.clone()]);
    assert_eq!(echoes[1].content["body"], "c, edited");

    proxy.clear();
    alice.sync_once(Duration::ZERO).await.unwrap();
    log.until(&c, is_sent).await;
    let got = clients::receive(&bob, &room, 2).await;
    let bodies: Vec<_> = got.iter().map(|e| e.body.clone().unwrap()).collect();
    assert_eq!(bodies, ["a", "c, edited"]);
    // A sent message can no longer be edited in the queue.
    let err = alice.edit_queued(&a, text("too late")).await.unwrap_err();
    assert!(
        matches!(err, newt_core::client::ClientError::NotQueued(_)),
        "{err}"
    );
    drop(w);
}

/// "Ask me" about new devices and nobody answers: the messages are stuck with the reason,
/// stay stuck across a sync, and go once the user decided and the app retried them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_message_is_sent_when_retried_after_its_cause_is_fixed() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    let mut log = SendLog::new(&alice);
    alice
        .set_room_sharing_policy(&room, Some(SharingPolicy::AskMe))
        .unwrap();
    let first = alice
        .queue_message(&room, text("needs a decision"))
        .await
        .unwrap();
    let stuck = SendState::Stuck {
        reason: StuckReason::UnknownDevices,
    };
    log.until(&first, |s| *s == stuck).await;
    let second = alice
        .queue_message(&room, text("so does this"))
        .await
        .unwrap();
    log.until(&second, |s| *s == stuck).await;
    alice.sync_once(Duration::ZERO).await.unwrap();
    alice.run_due_work().await.unwrap();
    let echoes = alice.local_echoes(&room).await.unwrap();
    assert!(echoes.iter().all(|e| e.state == stuck), "{echoes:?}");
    assert_eq!(echoes.len(), 2);

    let bob_device = bob.session().unwrap().device_id;
    let bob_id = UserId::parse("@bob:localhost").unwrap();
    alice
        .set_device_trust(&bob_id, &bob_device, LocalTrust::Verified)
        .unwrap();
    alice.retry_send(&first).await.unwrap();
    alice.retry_send(&second).await.unwrap();
    log.until(&first, is_sent).await;
    log.until(&second, is_sent).await;
    let got = clients::receive(&bob, &room, 2).await;
    let bodies: Vec<_> = got.iter().map(|e| e.body.clone().unwrap()).collect();
    assert_eq!(bodies, ["needs a decision", "so does this"]);
    assert!(got.iter().all(|e| e.decrypted));
    drop(w);
}

/// The `m.relates_to` of a decrypted event.
fn relation(content: &Value) -> &Value {
    &content["m.relates_to"]
}

/// An edit, a reaction and a reply to a message still queued wait for it, then name its
/// event id; the relation also travels in clear (for the server's aggregations). A
/// redaction goes through the redaction endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relations_to_a_queued_message_wait_for_its_event_id() {
    let w = World::new(&["alice", "bob"]);
    let (proxy, alice, bob, room) = w.alice_behind_a_proxy().await;
    let mut log = SendLog::new(&alice);
    proxy.rule(ALL, Action::Drop, None);
    let hello = alice.queue_message(&room, text("hello")).await.unwrap();
    let relations = [
        OutgoingMessage::Edit {
            target: hello.clone(),
            body: "hello, edited".into(),
        },
        OutgoingMessage::Reaction {
            target: hello.clone(),
            key: "👍".into(),
        },
        OutgoingMessage::Reply {
            target: hello.clone(),
            body: "a reply".into(),
        },
    ];
    let mut txns = Vec::new();
    for r in relations {
        txns.push(alice.queue_message(&room, r).await.unwrap());
    }
    log.until(&hello, is_waiting).await;
    proxy.clear();
    alice.sync_once(Duration::ZERO).await.unwrap();
    for txn in &txns {
        log.until(txn, is_sent).await;
    }
    let got = clients::receive(&bob, &room, 4).await;
    let hello_id = got[0].event_id.to_string();
    assert_eq!(got[0].body.as_deref(), Some("hello"));
    assert_eq!(relation(&got[1].content)["rel_type"], "m.replace");
    assert_eq!(got[1].content["m.new_content"]["body"], "hello, edited");
    assert_eq!(got[2].event_type, "m.reaction");
    assert_eq!(relation(&got[2].content)["key"], "👍");
    assert_eq!(
        relation(&got[3].content)["m.in_reply_to"]["event_id"],
        hello_id
    );
    for item in &got[1..3] {
        assert_eq!(relation(&item.content)["event_id"], hello_id, "{item:?}");
    }
    let clear = proxy.bodies("/send/m.room.encrypted/");
    let in_clear = clear.iter().filter_map(|b| {
        let v: Value = serde_json::from_slice(b).ok()?;
        v.get("m.relates_to").cloned()
    });
    let annotations: Vec<_> = in_clear
        .filter(|r| r["rel_type"] == "m.annotation" && r["event_id"] == hello_id)
        .collect();
    assert_eq!(annotations.len(), 1, "the reaction's relation in clear");

    let redaction = OutgoingMessage::Redaction {
        target: hello_id.clone(),
        reason: Some("oops".into()),
    };
    let redact = alice.queue_message(&room, redaction).await.unwrap();
    log.until(&redact, is_sent).await;
    let redactions = proxy.requests("/redact/");
    assert_eq!(redactions.len(), 1, "{redactions:?}");
    let (path, body) = &redactions[0];
    assert!(
        path.contains(&hello_id[1..]) && path.ends_with(&redact),
        "{path}"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(body).unwrap()["reason"],
        "oops"
    );
    let got = clients::receive(&bob, &room, 1).await;
    assert_eq!(got[0].event_type, "m.room.redaction");
    drop(w);
}

/// The message's answers are lost, but its echo comes back in a sync: the reaction queued
/// behind it learns its event id from the echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_to_a_message_whose_answer_was_lost_names_its_echo() {
    let w = World::new(&["alice", "bob"]);
    let (proxy, alice, bob, room) = w.alice_behind_a_proxy().await;
    let mut log = SendLog::new(&alice);
    proxy.rule("/send/m.room.encrypted/", Action::ForwardThenDrop, Some(4));
    let hello = alice.queue_message(&room, text("hello")).await.unwrap();
    let reaction = OutgoingMessage::Reaction {
        target: hello.clone(),
        key: "🎉".into(),
    };
    let to_hello = alice.queue_message(&room, reaction).await.unwrap();
    log.until(&hello, is_waiting).await;
    alice.sync_once(Duration::ZERO).await.unwrap();
    log.until(&to_hello, is_sent).await;
    let got = clients::receive(&bob, &room, 2).await;
    assert_eq!(got[0].body.as_deref(), Some("hello"));
    assert_eq!(
        relation(&got[1].content)["event_id"],
        got[0].event_id.to_string()
    );
    let puts = proxy.requests("/send/m.room.encrypted/");
    let of = |txn: &str| puts.iter().filter(|(p, _)| p.ends_with(txn)).count();
    assert!(of(&hello) >= 4, "{puts:?}");
    assert_eq!(of(&to_hello), 1, "the reaction is sent once");
    drop(w);
}

/// alice was kicked from a room: her message there is refused (403) and stuck with
/// `Forbidden`; her message to another room, queued after it, goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_a_room_we_were_removed_from_is_stuck_and_others_go_on() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    let mut log = SendLog::new(&alice);
    let carol = Attacker::register(&w.hs, "carol");
    let other_id = w.public_room(&carol, &alice).await;
    let other = other_id.to_string();
    let kick = json!({"user_id": "@alice:localhost"});
    carol.api(
        "POST",
        &format!("/rooms/{}/kick", encode_segment(&other)),
        Some(&kick),
    );
    alice.sync_once(Duration::ZERO).await.unwrap();

    let refused = alice
        .queue_message(&other_id, text("let me in"))
        .await
        .unwrap();
    let fine = alice
        .queue_message(&room, text("still here"))
        .await
        .unwrap();
    let forbidden = SendState::Stuck {
        reason: StuckReason::Forbidden,
    };
    log.until(&refused, |s| *s == forbidden).await;
    log.until(&fine, is_sent).await;
    let got = clients::receive(&bob, &room, 1).await;
    assert_eq!(got[0].body.as_deref(), Some("still here"));
    let echoes = alice.local_echoes(&other_id).await.unwrap();
    assert_eq!(echoes.len(), 1);
    assert_eq!(echoes[0].state, forbidden);
    drop(w);
}

/// While the queue drains (each send slowed down), queueing returns at once (a new echo is
/// published before the message being sent is sent), and a cancel waits for the message
/// being sent only, not for the rest of the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queueing_and_cancelling_do_not_wait_for_the_queue_to_drain() {
    let w = World::new(&["alice", "bob"]);
    let (proxy, alice, bob, room) = w.alice_behind_a_proxy().await;
    let mut log = SendLog::new(&alice);
    let slow = Action::Delay(Duration::from_millis(400));
    proxy.rule("/send/m.room.encrypted/", slow, None);
    let first = alice.queue_message(&room, text("first")).await.unwrap();
    log.until(&first, |s| *s == SendState::Sending).await;
    let mut next = Vec::new();
    for i in 0..6 {
        next.push(
            alice
                .queue_message(&room, text(&format!("next {i}")))
                .await
                .unwrap(),
        );
    }
    log.until(&first, is_sent).await;
    let position = |txn: &str, pred: &dyn Fn(&SendState) -> bool| {
        log.seen
            .iter()
            .position(|u| u.txn_id == txn && pred(&u.state))
            .unwrap()
    };
    let last_echo = position(&next[5], &|s| *s == SendState::Queued);
    assert!(
        last_echo < position(&first, &is_sent),
        "queued while the first was being sent"
    );

    log.until(&next[0], |s| *s == SendState::Sending).await;
    alice.cancel_send(&next[5]).await.unwrap();
    log.until(&next[5], |s| *s == SendState::Cancelled).await;
    log.until(&next[4], is_sent).await;
    let got = clients::receive(&bob, &room, 6).await;
    let bodies: Vec<_> = got.iter().map(|e| e.body.clone().unwrap()).collect();
    assert_eq!(
        bodies,
        ["first", "next 0", "next 1", "next 2", "next 3", "next 4"]
    );
    let puts = proxy.requests("/send/m.room.encrypted/");
    assert!(
        !puts.iter().any(|(p, _)| p.ends_with(&next[5])),
        "the cancelled one"
    );
    assert!(alice.local_echoes(&room).await.unwrap().is_empty());
    drop(w);
}
