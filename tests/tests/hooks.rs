//! The app hooks against a real Synapse: prompts, trust policy, background retries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use newt_core::client::{
    BackgroundScheduler, Client, ClientError, Prompt, PromptAnswer, PromptHandler, TimelineEvent,
    TrustPolicy, TrustPolicyProvider, WakeupRequest,
};
use newt_core::crypto::{MegolmError, SharingPolicy};
use newt_core::ruma::events::room_key::withheld::RoomKeyWithheldCode;
use newt_core::ruma::{OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId, RoomId};
use newt_core::store::{LocalTrust, SenderTrust};
use newt_e2e_tests::Synapse;
use newt_e2e_tests::clients::login;
use newt_e2e_tests::proxy::{Action, FaultProxy};
use zeroize::Zeroizing;

/// A user id from a literal.
fn user(id: &str) -> OwnedUserId {
    OwnedUserId::try_from(id).unwrap()
}

async fn next_message(client: &Client, room: &RoomId) -> TimelineEvent {
    let own = client.session().unwrap().user_id;
    let mut rx = client.subscribe_timeline();
    for _ in 0..30 {
        client.sync_once(Duration::from_secs(1)).await.unwrap();
        while let Ok(e) = rx.try_recv() {
            // A new message, not the re-delivery of an earlier one (`is_update`).
            if e.room_id == room && e.sender != own && !e.is_update {
                return e;
            }
        }
    }
    panic!("no message arrived");
}

struct Setup {
    hs: Synapse,
    _dirs: tempfile::TempDir,
    alice: Arc<Client>,
    bob: Arc<Client>,
    room: OwnedRoomId,
}

async fn setup() -> Setup {
    setup_with_proxy(false).await.0
}

/// [`setup`], with alice talking to the server through a fault proxy if `proxy`.
async fn setup_with_proxy(proxy: bool) -> (Setup, Option<FaultProxy>) {
    let hs = Synapse::start();
    hs.register("alice", "alice-pw");
    hs.register("bob", "bob-pw");
    let dirs = tempfile::tempdir().unwrap();
    let proxy = proxy.then(|| FaultProxy::start(&hs.base_url));
    let alice_url = proxy.as_ref().map_or(&hs.base_url, |p| &p.base_url);
    let alice = login(alice_url, &dirs.path().join("alice"), "alice").await;
    let bob = login(&hs.base_url, &dirs.path().join("bob"), "bob").await;
    let room = alice
        .create_encrypted_room(None, &[user("@bob:localhost")])
        .await
        .unwrap();
    bob.sync_once(Duration::ZERO).await.unwrap();
    bob.join(&OwnedRoomOrAliasId::from(room.clone()))
        .await
        .unwrap();
    bob.sync_once(Duration::ZERO).await.unwrap();
    alice.sync_once(Duration::ZERO).await.unwrap();
    let setup = Setup {
        hs,
        _dirs: dirs,
        alice,
        bob,
        room,
    };
    (setup, proxy)
}

/// Answers every new-device prompt with one decision and records what it was asked.
struct Decide(LocalTrust, Mutex<Vec<Prompt>>);

impl PromptHandler for Decide {
    fn on_prompt(&self, prompt: Prompt) -> PromptAnswer {
        self.1.lock().unwrap().push(prompt.clone());
        match prompt {
            Prompt::NewDevices { devices } => PromptAnswer::DeviceDecisions(
                devices
                    .into_iter()
                    .map(|d| (d.user_id, d.device_id, self.0))
                    .collect(),
            ),
            _ => PromptAnswer::Dismissed,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_device_prompt_blacklist_withholds_the_key_and_verify_shares_it() {
    let s = setup().await;
    // "Ask me" for this room (the same as `set_ask_about_new_devices(true)` for all rooms).
    s.alice
        .set_room_sharing_policy(&s.room, Some(SharingPolicy::AskMe))
        .unwrap();
    // No handler: the send is refused, naming the undecided device.
    let err = s
        .alice
        .send_text(&s.room, "nobody decided")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::UnknownDevices(d) if d.len() == 1 && d[0].starts_with("@bob:localhost/")),
        "{err:?}"
    );

    let blacklist = Arc::new(Decide(LocalTrust::Blacklisted, Mutex::new(Vec::new())));
    s.alice.set_prompt_handler(Some(blacklist.clone()));
    s.alice.send_text(&s.room, "not for bob").await.unwrap();
    let asked = blacklist.1.lock().unwrap().clone();
    assert!(
        matches!(&asked[..], [Prompt::NewDevices { devices }] if devices[0].user_id == "@bob:localhost")
    );
    let got = next_message(&s.bob, &s.room).await;
    assert!(!got.decrypted, "a blacklisted device must not get the key");
    // The reason is typed on the item: what an app switches on.
    assert!(
        matches!(&got.failure, Some(MegolmError::Withheld { code, .. })
            if *code == RoomKeyWithheldCode::Blacklisted),
        "{:?}",
        got.failure
    );

    // Verified later: the next message's key reaches bob too.
    let bob_device = s.bob.session().unwrap().device_id;
    assert!(
        s.alice
            .set_device_trust(&user("@bob:localhost"), &bob_device, LocalTrust::Verified)
            .unwrap()
    );
    s.alice.send_text(&s.room, "now for bob").await.unwrap();
    let got = next_message(&s.bob, &s.room).await;
    assert_eq!(got.body.as_deref(), Some("now for bob"));
    drop(s.hs);
}

struct Password(&'static str, AtomicUsize);

impl PromptHandler for Password {
    fn on_prompt(&self, prompt: Prompt) -> PromptAnswer {
        self.1.fetch_add(1, Ordering::SeqCst);
        match prompt {
            Prompt::Password { user_id, .. } if user_id == "@alice:localhost" => {
                PromptAnswer::Password(Zeroizing::new(self.0.to_owned()))
            }
            _ => PromptAnswer::Dismissed,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_device_asks_for_the_password() {
    let s = setup().await;
    let dirs = tempfile::tempdir().unwrap();
    let phone = login(&s.hs.base_url, dirs.path(), "alice").await;
    let phone_device = phone.session().unwrap().device_id;
    // bob tracks alice already: the new device reaches him through device_lists.changed.
    s.bob.sync_once(Duration::ZERO).await.unwrap();
    assert_eq!(
        s.bob
            .devices(&user("@alice:localhost"))
            .await
            .unwrap()
            .len(),
        2
    );

    // Without a handler the prompt counts as dismissed.
    assert!(matches!(
        s.alice.delete_device(&phone_device).await,
        Err(ClientError::PromptDismissed)
    ));
    let wrong = Arc::new(Password("wrong", AtomicUsize::new(0)));
    s.alice.set_prompt_handler(Some(wrong.clone()));
    let err = s.alice.delete_device(&phone_device).await.unwrap_err();
    assert_eq!(wrong.1.load(Ordering::SeqCst), 1);
    assert!(
        matches!(&err, ClientError::Http(e) if e.errcode() == Some("M_FORBIDDEN")),
        "{err:?}"
    );

    let right = Arc::new(Password("alice-pw", AtomicUsize::new(0)));
    s.alice.set_prompt_handler(Some(right.clone()));
    s.alice.delete_device(&phone_device).await.unwrap();
    assert_eq!(right.1.load(Ordering::SeqCst), 1);
    // bob learns of the deletion through device_lists.changed.
    s.bob.sync_once(Duration::ZERO).await.unwrap();
    let devices = s.bob.devices(&user("@alice:localhost")).await.unwrap();
    let live: Vec<_> = devices.iter().filter(|d| !d.deleted).collect();
    assert_eq!(live.len(), 1, "{devices:?}");
}

struct Policy(TrustPolicy, Mutex<Vec<OwnedRoomId>>);

impl TrustPolicyProvider for Policy {
    fn policy_for_room(&self, room_id: &RoomId) -> TrustPolicy {
        self.1.lock().unwrap().push(room_id.to_owned());
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_policy_is_consulted_and_enforced_on_events() {
    let s = setup().await;
    let strict = Arc::new(Policy(TrustPolicy::CrossSignedOnly, Mutex::new(Vec::new())));
    s.bob.set_trust_policy_provider(Some(strict.clone()));
    s.alice.send_text(&s.room, "policy").await.unwrap();
    let got = next_message(&s.bob, &s.room).await;
    assert!(strict.1.lock().unwrap().contains(&s.room));
    assert_eq!(got.trust_policy, TrustPolicy::CrossSignedOnly);
    // alice has no cross-signing: decrypted, but not shown.
    assert!(got.decrypted && got.hidden_by_policy, "{got:?}");
    assert_eq!(got.body, None);
    assert_eq!(got.sender_trust, Some(SenderTrust::DeviceOnly));

    s.bob.set_trust_policy_provider(Some(Arc::new(Policy(
        TrustPolicy::ShowAll,
        Mutex::new(Vec::new()),
    ))));
    s.alice.send_text(&s.room, "show all").await.unwrap();
    let got = next_message(&s.bob, &s.room).await;
    assert_eq!(got.trust_policy, TrustPolicy::ShowAll);
    assert!(got.is_shown(), "{got:?}");
    assert_eq!(got.body.as_deref(), Some("show all"));
}

struct Scheduler(Mutex<Vec<WakeupRequest>>);

impl BackgroundScheduler for Scheduler {
    fn schedule_wakeup(&self, request: WakeupRequest) {
        self.0.lock().unwrap().push(request);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_send_schedules_a_wakeup_and_due_work_sends_it() {
    let s = setup().await;
    let scheduler = Arc::new(Scheduler(Mutex::new(Vec::new())));
    s.alice.set_background_scheduler(Some(scheduler.clone()));
    s.alice.send_text(&s.room, "warm up").await.unwrap();
    next_message(&s.bob, &s.room).await;

    // The server goes away: the send fails transiently and a wake-up is requested.
    let url = s.hs.base_url.clone();
    s.hs.stop();
    let err = s.alice.send_text(&s.room, "sent later").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Http(e) if e.is_transient()),
        "{err:?}"
    );
    let requests = scheduler.0.lock().unwrap().clone();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|r| r.requires_network && r.delay > Duration::ZERO)
    );
    let report = s.alice.run_due_work().await.unwrap();
    assert_eq!(
        (report.completed, report.remaining),
        (0, 1),
        "still offline"
    );

    // Back online (same port and database): the due work delivers the message (unless the
    // queue's own retry timer, which runs while the process does, was first).
    s.hs.restart_same_port()
        .unwrap_or_else(|e| panic!("restart {url}: {e}"));
    let report = s.alice.run_due_work().await.unwrap();
    assert_eq!(report.remaining, 0);
    assert!(report.completed <= 1, "{report:?}");
    let got = next_message(&s.bob, &s.room).await;
    assert_eq!(got.body.as_deref(), Some("sent later"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_queued_offline_is_sent_by_the_next_process() {
    let Setup {
        hs,
        _dirs,
        alice,
        bob,
        room,
    } = setup().await;
    alice.send_text(&room, "warm up").await.unwrap();
    next_message(&bob, &room).await;

    hs.stop();
    let err = alice
        .send_text(&room, "survives a restart")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Http(e) if e.is_transient()),
        "{err:?}"
    );
    assert_eq!(alice.store().unwrap().queued_sends().unwrap().len(), 1);
    // The app is killed before any wake-up; the server comes back.
    drop(alice);
    hs.restart_same_port().unwrap();
    let alice = newt_e2e_tests::clients::open(&hs.base_url, &_dirs.path().join("alice"));
    assert!(alice.restore_session().unwrap());
    assert_eq!(
        alice.store().unwrap().queued_sends().unwrap().len(),
        1,
        "kept on disk"
    );
    // The first sync of the new process sends it (in the background).
    alice.sync_once(Duration::ZERO).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !alice.store().unwrap().queued_sends().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "still queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = next_message(&bob, &room).await;
    assert_eq!(got.body.as_deref(), Some("survives a restart"));
    assert!(got.decrypted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_answers_are_lost_reaches_the_room_once() {
    let (s, proxy) = setup_with_proxy(true).await;
    let (alice, bob, room) = (&s.alice, &s.bob, s.room.clone());
    let proxy = proxy.unwrap();

    // The server stores the event each time, but its answers never come back: the send
    // fails after its retries and stays queued; the retry later sends the same ciphertext
    // (stored in the queue when it was made) with the same transaction id.
    proxy.rule("/send/m.room.encrypted/", Action::ForwardThenDrop, Some(4));
    let err = alice.send_text(&room, "exactly once").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Http(e) if e.is_transient()),
        "{err:?}"
    );
    let lost = proxy
        .log()
        .iter()
        .filter(|l| l.ends_with("answer dropped"))
        .count();
    assert_eq!(lost, 4);
    let report = alice.run_due_work().await.unwrap();
    assert_eq!((report.completed, report.remaining), (1, 0));
    // Five attempts, one body: the room key ratcheted once for the message.
    let bodies = proxy.bodies("/send/m.room.encrypted/");
    assert_eq!(bodies.len(), 5);
    assert!(
        bodies.iter().all(|b| b == &bodies[0]),
        "a resend was encrypted again"
    );

    let mut rx = bob.subscribe_timeline();
    for _ in 0..3 {
        bob.sync_once(Duration::from_millis(300)).await.unwrap();
    }
    let mut copies = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if e.room_id == room && e.sender == "@alice:localhost" {
            copies.push(e);
        }
    }
    assert_eq!(copies.len(), 1, "the room got the message once: {copies:?}");
    assert!(copies[0].decrypted);
    assert_eq!(copies[0].body.as_deref(), Some("exactly once"));
}
