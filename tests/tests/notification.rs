//! Push notifications decrypted beside the app, against a real Synapse: with the key in the
//! store, with the key fetched by a to-device catch-up (the app then skips what the
//! decryptor consumed), with a key that never comes (reported within the budget), with the
//! push handler killed halfway, and with the push handler as a second process decrypting
//! 200 notifications while the app syncs and sends.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use newt_core::client::{Client, TimelineEvent};
use newt_core::notification::{NotificationDecryptor, NotificationError};
use newt_core::ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId};
use newt_core::store::{CryptoStore, SqliteStore, StoreKey};
use newt_e2e_tests::Synapse;
use newt_e2e_tests::attacker::Attacker;
use newt_e2e_tests::clients::{self, STORE_PASSPHRASE, World, receive, room_with, stdout_lines};
use newt_e2e_tests::proxy::{Action, FaultProxy, Rewrite};
use serde_json::{Value, json};

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
            "20000",
            room.as_str(),
            event,
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

/// An app's push handler alive in a process of its own (`notify-process` reading
/// `ROOM EVENT` lines): each push is answered with a JSON line.
struct PushHandler {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    /// The lines it prints: one JSON answer each.
    answers: std::sync::mpsc::Receiver<String>,
}

impl PushHandler {
    fn start(homeserver: &str, store: &std::path::Path) -> Self {
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_notify-process"))
            .args([homeserver, &store.to_string_lossy(), "30000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start notify-process");
        let stdin = child.stdin.take().expect("stdin");
        let answers = stdout_lines(&mut child);
        Self {
            child,
            stdin,
            answers,
        }
    }

    fn push(&mut self, room: &RoomId, event: &EventId) {
        use std::io::Write;
        writeln!(self.stdin, "{room} {event}").expect("push to notify-process");
        self.stdin.flush().expect("flush");
    }

    /// The answers to `n` pushes, by event id; panics after `wait`.
    fn answers(&self, n: usize, wait: Duration) -> HashMap<String, Value> {
        let deadline = Instant::now() + wait;
        let mut out = HashMap::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .answers
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{} of {n} notifications answered: {out:?}", out.len()));
            let answer = serde_json::from_str(&line).unwrap_or(Value::String(line));
            out.insert(answer["event_id"].as_str().unwrap_or("").to_owned(), answer);
        }
        out
    }
}

impl Drop for PushHandler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// bob's app: syncs, and sends now and then, until `stop`; returns what arrived from others
/// and what it sent.
async fn app_loop(
    bob: Arc<Client>,
    room: OwnedRoomId,
    stop: Arc<AtomicBool>,
) -> (Vec<TimelineEvent>, Vec<OwnedEventId>) {
    let own = bob.session().expect("logged in").user_id;
    let mut rx = bob.subscribe_timeline();
    let (mut got, mut sent) = (Vec::new(), Vec::new());
    for round in 1u32.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        bob.sync_once(Duration::from_millis(200))
            .await
            .expect("bob's sync");
        while let Ok(event) = rx.try_recv() {
            if event.room_id == room && event.sender != own {
                got.push(event);
            }
        }
        if round % 4 == 0 {
            let id = bob.send_text(&room, &format!("bob {round}")).await;
            sent.push(id.expect("bob sends"));
        }
    }
    (got, sent)
}

/// Every one-time key id in the uploads through `proxy` goes into the returned list.
fn record_uploaded_key_ids(proxy: &FaultProxy) -> Arc<Mutex<Vec<String>>> {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&ids);
    let record = Rewrite::json(move |body| {
        if let Some(keys) = body["one_time_keys"].as_object() {
            sink.lock().unwrap().extend(keys.keys().cloned());
        }
    });
    proxy.rule("/keys/upload", Action::RewriteRequest(record), None);
    ids
}

/// The two-process test: bob's app syncs and sends while a push handler, a process
/// of its own on the same store, decrypts 200 notifications as they arrive. Room keys are
/// rotated every 20 messages, new devices of alice open Olm sessions to bob (one-time keys
/// used up), and a stranger drains bob's one-time keys twice so that the app generates and
/// uploads new ones while the push handler may be the one decrypting the pre-key messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_store_decrypt_200_notifications() {
    let w = World::new(&["alice", "bob"]);
    let hs = &w.hs;
    let (app_proxy, push_proxy) = (
        FaultProxy::start(&hs.base_url),
        FaultProxy::start(&hs.base_url),
    );
    let uploaded = record_uploaded_key_ids(&app_proxy);
    // The app's syncs are slowed down, so that the push handler is often first to need a
    // room key and fetches it itself, racing the app for the same to-device messages.
    app_proxy.rule("/sync", Action::Delay(Duration::from_millis(400)), None);
    let alice = w.login("alice", "alice").await;
    let bob = clients::login(&app_proxy.base_url, &w.dir("bob"), "bob").await;
    let room = room_with(&alice, &[&bob]).await;
    let stranger = Attacker::register(hs, "mallory");
    let bob_device = bob.session().unwrap().device_id.to_string();

    let mut alice_rx = alice.subscribe_timeline();
    let mut push = PushHandler::start(&push_proxy.base_url, &w.dir("bob"));
    let stop = Arc::new(AtomicBool::new(false));
    let app = tokio::spawn(app_loop(bob.clone(), room.clone(), stop.clone()));
    let (expected, new_devices) =
        alice_sends_200(&w, &alice, &room, (&stranger, &bob_device), &mut push).await;

    // Every notification decrypts, in the push handler's process.
    let answers = push.answers(expected.len(), Duration::from_secs(120));
    for (id, body) in &expected {
        let answer = &answers[id.as_str()];
        assert_eq!(answer["body"], body.as_str(), "{id}: {answer}");
    }
    drop(push);
    // bob's app got every message once, decrypted when it arrived, in order.
    let own_sent = wait_until_received(&bob, &room, &expected, stop, app).await;
    // Nothing the handler did wedged a session or reused an index: alice decrypts all that
    // bob's app sent (a reused index would be refused as a replay), and Olm works both ways.
    let from_bob = sync_until_seen(&alice, &mut alice_rx, &own_sent).await;
    assert!(from_bob.iter().all(|e| e.decrypted), "{from_bob:?}");
    let ids: Vec<_> = from_bob.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids, own_sent);
    olm_works_both_ways(&alice, &bob, &new_devices, &room).await;
    // No Olm channel between bob and alice's devices needed a repair (a new session after
    // a message that could not be decrypted), on either side.
    assert_never_unwedged(&bob, &w.dir("bob"), "@alice:localhost").await;
    assert_never_unwedged(&alice, &w.dir("alice"), "@bob:localhost").await;
    assert_keys_uploaded_once_and_reads_only(&uploaded, &app_proxy, &push_proxy);
    drop(w);
}

/// alice sends 200 messages to `room`, each pushed to `push` as soon as it is sent: a new
/// room key every 20, a stranger draining bob's one-time keys every 60 (from the 30th), a
/// new device of alice's sending every 50th (from the 25th). Returns the messages and the
/// new devices.
async fn alice_sends_200(
    w: &World,
    alice: &Arc<Client>,
    room: &RoomId,
    (stranger, bob_device): (&Attacker, &str),
    push: &mut PushHandler,
) -> (Vec<(OwnedEventId, String)>, Vec<Arc<Client>>) {
    let bob_device = stranger.query_device("@bob:localhost", bob_device);
    let mut expected: Vec<(OwnedEventId, String)> = Vec::new();
    let mut new_devices = Vec::new();
    for i in 0..200 {
        if i % 20 == 0 {
            alice.discard_room_key(room).unwrap();
        }
        if i % 60 == 30 {
            for _ in 0..30 {
                stranger.claim_one_time_key(&bob_device);
            }
        }
        let (sender, body) = if i % 50 == 25 {
            let device = w.login("alice", &format!("alice-{i}")).await;
            new_devices.push(device.clone());
            (device, format!("from a new device {i}"))
        } else {
            (alice.clone(), format!("message {i}"))
        };
        let id = sender.send_text(room, &body).await.expect("alice sends");
        push.push(room, &id);
        expected.push((id, body));
        if i % 10 == 9 {
            alice.sync_once(Duration::ZERO).await.expect("alice's sync");
        }
    }
    (expected, new_devices)
}

/// One-time keys: the app uploaded new ones, each key id once and every upload accepted;
/// the push handler sent nothing but reads, and had to catch up on to-device messages
/// itself (the race was run).
fn assert_keys_uploaded_once_and_reads_only(
    uploaded: &Mutex<Vec<String>>,
    app_proxy: &FaultProxy,
    push_proxy: &FaultProxy,
) {
    let uploaded = uploaded.lock().unwrap().clone();
    let distinct: HashSet<&String> = uploaded.iter().collect();
    assert!(
        uploaded.len() >= 60,
        "only {} keys uploaded",
        uploaded.len()
    );
    assert_eq!(distinct.len(), uploaded.len(), "a key id uploaded twice");
    let uploads: Vec<String> = app_proxy
        .log()
        .into_iter()
        .filter(|l| l.contains("/keys/upload"))
        .collect();
    assert!(uploads.iter().all(|l| l.ends_with(" 200")), "{uploads:?}");
    let writes: Vec<String> = push_proxy
        .log()
        .into_iter()
        .filter(|l| !l.starts_with("GET "))
        .collect();
    assert!(writes.is_empty(), "the push handler wrote: {writes:?}");
    // The race was run: the handler had to catch up on to-device messages itself.
    let catch_ups = push_proxy
        .log()
        .iter()
        .filter(|l| l.contains("/sync"))
        .count();
    eprintln!(
        "push handler: {catch_ups} catch-up requests; app: {} keys uploaded",
        uploaded.len()
    );
    assert!(catch_ups > 0);
}

/// Stops bob's app loop once it received every one of `expected` (syncing on until then),
/// checks they came once each, decrypted, in order; returns what bob's app sent.
async fn wait_until_received(
    bob: &Client,
    room: &RoomId,
    expected: &[(OwnedEventId, String)],
    stop: Arc<AtomicBool>,
    app: tokio::task::JoinHandle<(Vec<TimelineEvent>, Vec<OwnedEventId>)>,
) -> Vec<OwnedEventId> {
    stop.store(true, Ordering::SeqCst);
    let (mut got, sent) = app.await.expect("bob's app loop");
    let first: Vec<TimelineEvent> = got.drain(..).filter(|e| !e.is_update).collect();
    let missing = expected.len().saturating_sub(first.len());
    let mut all = first;
    all.extend(receive(bob, room, missing).await);
    let ids: Vec<_> = all.iter().map(|e| e.event_id.clone()).collect();
    let want: Vec<_> = expected.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, want);
    for (event, (_, body)) in all.iter().zip(expected) {
        assert!(event.decrypted, "{event:?}");
        assert_eq!(event.body.as_deref(), Some(body.as_str()));
    }
    sent
}

/// Syncs `client` until every one of `ids` came through `rx` (panics after 60 s); returns
/// those events as they first came, in the order they came.
async fn sync_until_seen(
    client: &Client,
    rx: &mut tokio::sync::broadcast::Receiver<TimelineEvent>,
    ids: &[OwnedEventId],
) -> Vec<TimelineEvent> {
    let wanted: HashSet<&OwnedEventId> = ids.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while seen.len() < wanted.len() {
        assert!(
            Instant::now() < deadline,
            "saw {} of {}",
            seen.len(),
            ids.len()
        );
        while let Ok(event) = rx.try_recv() {
            if wanted.contains(&event.event_id) && !event.is_update {
                seen.push(event);
            }
        }
        client
            .sync_once(Duration::from_secs(1))
            .await
            .expect("sync");
    }
    seen
}

/// `client` (store in `dir`) never repaired its Olm channel with a device of `peer`.
async fn assert_never_unwedged(client: &Client, dir: &std::path::Path, peer: &str) {
    let peer = newt_core::ruma::OwnedUserId::try_from(peer).unwrap();
    let devices = client.devices(&peer).await.expect("devices");
    let store = SqliteStore::open(dir, &StoreKey::from_passphrase(STORE_PASSPHRASE)).unwrap();
    for device in devices {
        let record = store.unwedge_record(&device.curve25519).unwrap();
        assert!(
            record.is_none(),
            "channel with {} repaired",
            device.device_id
        );
    }
}

/// A new room key from alice reaches bob and one from bob reaches alice; each new device of
/// alice's still reaches bob over the Olm session it opened.
async fn olm_works_both_ways(alice: &Client, bob: &Client, new: &[Arc<Client>], room: &RoomId) {
    alice.discard_room_key(room).unwrap();
    let mut sent = vec![alice.send_text(room, "alice after").await.unwrap()];
    for device in new {
        device.sync_once(Duration::ZERO).await.unwrap();
        device.discard_room_key(room).unwrap();
        sent.push(device.send_text(room, "new device after").await.unwrap());
    }
    let got = receive(bob, room, sent.len()).await;
    assert!(got.iter().all(|e| e.decrypted), "{got:?}");
    assert_eq!(
        got.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>(),
        sent
    );
    bob.discard_room_key(room).unwrap();
    let from_bob = bob.send_text(room, "bob after").await.unwrap();
    let got = receive(alice, room, 1).await;
    assert_eq!(
        (got[0].event_id.clone(), got[0].decrypted),
        (from_bob, true)
    );
}
