//! The send queue against a real Synapse: one queue for encrypted and plain rooms, each
//! message moved on from the stage it reached.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use newt_core::client::Client;
use newt_core::ruma::{OwnedRoomId, RoomId};
use newt_core::store::{ClientStore, SqliteStore, StoreKey};
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
    let bob = w.login("bob", "bob").await;
    let room_id = w.public_room(&carol, &bob).await;
    let room = room_id.to_string();

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
    let (proxy, alice, bob, room) = w.alice_behind_a_proxy().await;
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
    let (proxy, alice, bob, room) = w.alice_behind_a_proxy().await;
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

/// The queued transaction ids in the store in `dir` (read by a handle of the test's own).
fn queued_txn_ids(dir: &std::path::Path) -> Vec<String> {
    let key = StoreKey::from_passphrase(clients::STORE_PASSPHRASE);
    let store = SqliteStore::open(dir, &key).unwrap();
    store
        .queued_sends()
        .unwrap()
        .into_iter()
        .map(|q| q.txn_id)
        .collect()
}

/// The crash test: alice's client (a process of its own) is killed with SIGKILL at
/// seven points of sending, each landing in another step of the encrypting path (every
/// request is slowed down; a new device of bob's each round, and a new room key every third
/// round, make the steps run: device list, one-time key claim, room key share, encryption,
/// send). Each next
/// process resumes the queue. Afterwards bob has every message once, in order, and alice's
/// Megolm session advanced exactly once per message (no index skipped or used twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_each_step_every_message_arrives_once_and_ratchets_once() {
    let w = World::new(&["alice", "bob"]);
    let proxy = FaultProxy::start(&w.hs.base_url);
    let (alice_dir, bob) = (w.dir("alice"), w.login("bob", "bob").await);
    let room = {
        let alice = clients::login(&proxy.base_url, &alice_dir, "alice").await;
        let room = clients::room_with(&alice, &[&bob]).await;
        alice.close().await;
        room
    };
    let (printed, observed, intents) = kill_rounds(&w, &proxy, &room).await;
    assert!(
        printed.len() + observed.len() >= 7,
        "the kills came too early"
    );
    // A last process, not killed, sends what is left.
    let out = send_process(&proxy.base_url, &alice_dir, &room, &[], false).wait_with_output();
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        queued_txn_ids(&alice_dir).is_empty(),
        "messages left in the queue"
    );

    // bob: each message once, in the order queued; every one the sender saw sent, and at
    // least as many as were ever seen waiting in the queue besides those.
    let lower = printed.len() + observed.len();
    let got = clients::receive(&bob, &room, lower).await;
    let mut bodies: Vec<String> = got
        .iter()
        .map(|e| e.body.clone().unwrap_or_default())
        .collect();
    assert!(got.iter().all(|e| e.decrypted), "{got:?}");
    // Anything beyond the lower bound that came too.
    bodies.extend(more_from(&bob, &room).await);
    let mut sorted = bodies.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        bodies.len(),
        "a message arrived twice: {bodies:?}"
    );
    assert!(bodies.len() <= intents);
    for text in &printed {
        assert!(
            bodies.contains(text),
            "{text} was sent but never arrived: {bodies:?}"
        );
    }
    assert_eq!(bodies, sorted, "out of order");
    eprintln!(
        "{} printed, {} seen queued, {} arrived of {intents}",
        printed.len(),
        observed.len(),
        bodies.len()
    );
    assert_each_index_used_once(&w, &room, "@alice:localhost");
    drop(w);
}

/// Bodies of messages from others arriving in `room` during one more sync.
async fn more_from(client: &Client, room: &RoomId) -> Vec<String> {
    let mut rx = client.subscribe_timeline();
    client.sync_once(Duration::from_secs(1)).await.unwrap();
    let mut more = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if e.room_id == room && e.sender != "@bob:localhost" && !e.is_update {
            more.push(e.body.unwrap_or_default());
        }
    }
    more
}

/// Every request of the encrypting path slowed by 250 ms; the first attempt of the next
/// message never reaches the server (a network failure): a kill during the retry's wait
/// finds it encrypted, not sent.
fn slow_down(proxy: &FaultProxy) {
    proxy.clear();
    proxy.rule("/send/", Action::Drop, Some(1));
    let steps = [
        "/members",
        "/keys/query",
        "/keys/claim",
        "/sendToDevice",
        "/send/",
    ];
    for path in steps {
        proxy.rule(path, Action::Delay(Duration::from_millis(250)), None);
    }
}

/// Seven rounds of `send-process` sending two messages as alice, killed 200–1,900 ms after
/// its first sync. Returns what the processes printed as sent, the transaction ids ever
/// seen waiting in the queue, and how many messages were to be sent.
async fn kill_rounds(
    w: &World,
    proxy: &FaultProxy,
    room: &RoomId,
) -> (Vec<String>, BTreeSet<String>, usize) {
    let (mut printed, mut observed) = (Vec::new(), BTreeSet::new());
    let mut intents = 0;
    for (round, kill_ms) in [200u64, 450, 700, 950, 1_200, 1_500, 1_900]
        .into_iter()
        .enumerate()
    {
        // A new device of bob's: the next message needs a query, a claim and a share.
        let mut device = Attacker::login(&w.hs.base_url, "bob", "bob-pw", None);
        device.publish_keys(2);
        slow_down(proxy);
        let texts = [format!("r{round} a"), format!("r{round} b")];
        intents += texts.len();
        // Every third round starts a new session (claims and shares run while sending); the
        // others go on with the session, so a wasted index would show as a gap.
        let new_session = round % 3 == 0;
        let mut child = send_process(&proxy.base_url, &w.dir("alice"), room, &texts, new_session);
        // Killed that long after its first sync, while it sends.
        let lines = clients::stdout_lines(&mut child);
        let first = lines.recv_timeout(Duration::from_secs(30)).ok();
        assert_eq!(first.as_deref(), Some("synced"));
        tokio::time::sleep(Duration::from_millis(kill_ms)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        printed.extend(lines.try_iter());
        observed.extend(queued_txn_ids(&w.dir("alice")));
    }
    (printed, observed, intents)
}

/// Per Megolm session of `sender`'s events in `room`, the indices on the server are
/// exactly 0, 1, 2, ...: none skipped (a ratchet wasted) or used twice.
fn assert_each_index_used_once(w: &World, room: &RoomId, sender: &str) {
    let reader = Attacker::login(&w.hs.base_url, "bob", "bob-pw", None);
    reader.assert_each_index_used_once(room.as_str(), sender);
}

/// `send-process` sending `texts` as alice (none: what the queue holds), with a new room
/// key if `new_session`.
fn send_process(
    homeserver: &str,
    store: &std::path::Path,
    room: &RoomId,
    texts: &[String],
    new_session: bool,
) -> std::process::Child {
    let flag = new_session.then_some("--new-session");
    std::process::Command::new(env!("CARGO_BIN_EXE_send-process"))
        .args(flag)
        .args([homeserver, &store.to_string_lossy(), room.as_str()])
        .args(texts)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start send-process")
}
