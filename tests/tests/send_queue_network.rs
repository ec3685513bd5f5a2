//! The send queue on an unreliable network, against a real Synapse: the 200
//! messages through a proxy that delays, fails (500, 429 with `retry_after_ms`), resets
//! connections and loses answers at random.

use std::collections::BTreeSet;
use std::time::Duration;

use newt_core::client::{OutgoingMessage, SendState};
use newt_e2e_tests::attacker::Attacker;
use newt_e2e_tests::clients::{self, SendLog, World};
use newt_e2e_tests::proxy::{Action, RandomActions};

const MESSAGES: usize = 200;

/// What the proxy does with each of alice's requests (to `/sync`, the key endpoints, the
/// sends...), by weight, from a fixed seed: about one request in three goes wrong, so
/// that some fail even after the request's own retries and the message waits (backoff;
/// how often depends on how the syncs interleave: 0-2 times in the runs seen).
fn unreliable() -> Action {
    RandomActions::action(
        12,
        vec![
            (62, None),
            (6, Some(Action::Delay(Duration::from_millis(300)))),
            (8, Some(Action::Fail(500))),
            (8, Some(Action::RateLimit(400))),
            (8, Some(Action::Drop)),
            (8, Some(Action::ForwardThenDrop)),
        ],
    )
}

/// Every message reaches bob exactly once, in order, decrypted; alice's queue ends empty;
/// each Megolm index on the server is used once (a retry never re-encrypts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_messages_arrive_once_in_order_through_an_unreliable_network() {
    let w = World::new(&["alice", "bob"]);
    let (proxy, alice, bob, room) = w.alice_behind_a_proxy().await;
    let mut log = SendLog::new(&alice);
    proxy.rule("/_matrix/", unreliable(), None);
    let sync = alice.start_sync();
    let mut txns = Vec::new();
    for i in 0..MESSAGES {
        let text = OutgoingMessage::Text {
            body: format!("message {i}"),
        };
        txns.push(alice.queue_message(&room, text).await.unwrap());
    }
    for txn in &txns {
        log.until(txn, |s| matches!(s, SendState::Sent { .. }))
            .await;
    }
    drop(sync);
    let went_wrong = proxy
        .log()
        .iter()
        .filter(|l| {
            [" 500", " 429", " dropped", " answer dropped"]
                .iter()
                .any(|s| l.ends_with(s))
        })
        .count();
    assert!(
        went_wrong >= 40,
        "the network was unreliable: {went_wrong} failures"
    );
    let waited = log
        .seen
        .iter()
        .filter(|u| matches!(u.state, SendState::WaitingToRetry { .. }))
        .count();
    println!("{went_wrong} requests went wrong; {waited} times a message waited to retry");

    let got = clients::receive(&bob, &room, MESSAGES).await;
    let bodies: Vec<_> = got
        .iter()
        .map(|e| e.body.clone().unwrap_or_default())
        .collect();
    let expected: Vec<_> = (0..MESSAGES).map(|i| format!("message {i}")).collect();
    assert_eq!(bodies, expected, "once each, in order");
    assert!(got.iter().all(|e| e.decrypted));
    let ids: BTreeSet<_> = got.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids.len(), MESSAGES);
    assert!(alice.local_echoes(&room).await.unwrap().is_empty());
    let reader = Attacker::login(&w.hs.base_url, "bob", "bob-pw", None);
    reader.assert_each_index_used_once(room.as_str(), "@alice:localhost");
    drop(w);
}
