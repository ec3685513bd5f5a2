//! Interactive verification (SAS) between Newt clients on a real Synapse, driven by the UI
//! prompt interface: two users, two devices of one user, a declined request and a
//! mismatch.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use newt_core::client::{Client, Prompt, PromptAnswer, PromptHandler};
use newt_core::crypto::{CancelCode, ShortAuthString};
use newt_core::ruma::{OwnedDeviceId, OwnedUserId};
use newt_e2e_tests::Synapse;
use newt_e2e_tests::clients::login;
use newt_e2e_tests::proxy::{Action, FaultProxy};
use zeroize::Zeroizing;

/// What the simulated user answers when asked to accept or compare.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Match,
    Mismatch,
    Decline,
}

/// A user in front of the device: enters their password, answers verification prompts as
/// told, and remembers every prompt.
struct SasUser {
    password: String,
    answer: Mutex<Answer>,
    seen: Mutex<Vec<Prompt>>,
    /// How long the user looks at the emoji before answering.
    thinks: Mutex<Duration>,
}

impl SasUser {
    fn new(name: &str, answer: Answer) -> Arc<Self> {
        Arc::new(Self {
            password: format!("{name}-pw"),
            answer: Mutex::new(answer),
            seen: Mutex::new(Vec::new()),
            thinks: Mutex::new(Duration::ZERO),
        })
    }

    fn find<T>(&self, f: impl Fn(&Prompt) -> Option<T>) -> Option<T> {
        self.seen.lock().unwrap().iter().rev().find_map(f)
    }

    fn sas(&self) -> Option<ShortAuthString> {
        self.find(|p| match p {
            Prompt::CompareSas { sas, .. } => Some(sas.clone()),
            _ => None,
        })
    }

    /// `identity_verified` of the completed verification, if one completed.
    fn done(&self) -> Option<bool> {
        self.find(|p| match p {
            Prompt::VerificationDone {
                identity_verified, ..
            } => Some(*identity_verified),
            _ => None,
        })
    }

    fn cancelled(&self) -> Option<(CancelCode, bool)> {
        self.find(|p| match p {
            Prompt::VerificationCancelled { code, by_us, .. } => Some((code.clone(), *by_us)),
            _ => None,
        })
    }

    fn forget(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl PromptHandler for SasUser {
    fn on_prompt(&self, prompt: Prompt) -> PromptAnswer {
        self.seen.lock().unwrap().push(prompt.clone());
        let answer = *self.answer.lock().unwrap();
        match (prompt, answer) {
            (Prompt::Password { .. }, _) => {
                PromptAnswer::Password(Zeroizing::new(self.password.clone()))
            }
            (Prompt::VerificationRequest { .. }, Answer::Decline) => PromptAnswer::Dismissed,
            (Prompt::VerificationRequest { .. }, _) => PromptAnswer::Confirmed,
            (Prompt::CompareSas { .. }, Answer::Match) => {
                let thinks = *self.thinks.lock().unwrap();
                std::thread::sleep(thinks);
                PromptAnswer::Confirmed
            }
            (Prompt::CompareSas { .. }, Answer::Mismatch) => PromptAnswer::Mismatch,
            _ => PromptAnswer::Dismissed,
        }
    }
}

/// Both clients sync until `done` holds; panics after 60 s.
async fn until(clients: &[&Client], what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        for client in clients {
            client.sync_once(Duration::from_millis(100)).await.unwrap();
        }
    }
}

/// A Synapse with alice and bob logged in, each answering prompts as told.
struct TwoUsers {
    hs: Synapse,
    _dirs: tempfile::TempDir,
    alice: Arc<Client>,
    bob: Arc<Client>,
    on_alice: Arc<SasUser>,
    on_bob: Arc<SasUser>,
}

async fn two_users(alice_answers: Answer, bob_answers: Answer) -> TwoUsers {
    let hs = Synapse::start();
    hs.register("alice", "alice-pw");
    hs.register("bob", "bob-pw");
    let dirs = tempfile::tempdir().unwrap();
    let alice = login(&hs.base_url, &dirs.path().join("alice"), "alice").await;
    let bob = login(&hs.base_url, &dirs.path().join("bob"), "bob").await;
    let (on_alice, on_bob) = (
        SasUser::new("alice", alice_answers),
        SasUser::new("bob", bob_answers),
    );
    alice.set_prompt_handler(Some(on_alice.clone()));
    bob.set_prompt_handler(Some(on_bob.clone()));
    TwoUsers {
        hs,
        _dirs: dirs,
        alice,
        bob,
        on_alice,
        on_bob,
    }
}

fn ids(client: &Client) -> (OwnedUserId, OwnedDeviceId) {
    let session = client.session().unwrap();
    (session.user_id, session.device_id)
}

async fn device_verified(client: &Client, of: &Client) -> bool {
    let (user, device) = ids(of);
    client
        .devices(&user)
        .await
        .unwrap()
        .into_iter()
        .any(|d| d.device_id == device && d.verified)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_verify_each_other_by_emoji_through_the_prompts() {
    let TwoUsers {
        hs,
        _dirs,
        alice,
        bob,
        on_alice,
        on_bob,
    } = two_users(Answer::Match, Answer::Match).await;
    alice.bootstrap_cross_signing().await.unwrap();
    bob.bootstrap_cross_signing().await.unwrap();
    assert!(!device_verified(&alice, &bob).await);

    let (bob_id, _) = ids(&bob);
    alice.request_verification(&bob_id, None).await.unwrap();
    until(&[&alice, &bob], "the verification", || {
        on_alice.done().is_some() && on_bob.done().is_some()
    })
    .await;
    let sas = on_alice.sas().expect("alice compared");
    assert_eq!(
        Some(sas.clone()),
        on_bob.sas(),
        "both were shown the same string"
    );
    assert_eq!(sas.emoji.len(), 7);
    assert_eq!((on_alice.done(), on_bob.done()), (Some(true), Some(true)));
    assert!(device_verified(&alice, &bob).await);
    assert!(device_verified(&bob, &alice).await);
    let (alice_id, _) = ids(&alice);
    assert!(alice.identity(&bob_id).await.unwrap().unwrap().verified);
    assert!(bob.identity(&alice_id).await.unwrap().unwrap().verified);
    drop(hs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_own_device_is_verified_and_cross_signed_by_the_old_one() {
    let hs = Synapse::start();
    hs.register("alice", "alice-pw");
    hs.register("bob", "bob-pw");
    let dirs = tempfile::tempdir().unwrap();
    let phone = login(&hs.base_url, &dirs.path().join("phone"), "alice").await;
    let on_phone = SasUser::new("alice", Answer::Match);
    phone.set_prompt_handler(Some(on_phone.clone()));
    phone.bootstrap_cross_signing().await.unwrap();
    let laptop = login(&hs.base_url, &dirs.path().join("laptop"), "alice").await;
    let on_laptop = SasUser::new("alice", Answer::Match);
    laptop.set_prompt_handler(Some(on_laptop.clone()));
    let (alice, laptop_device) = ids(&laptop);

    // The new device asks all the user's other devices.
    laptop.request_verification(&alice, None).await.unwrap();
    until(&[&laptop, &phone], "the verification", || {
        on_laptop.done().is_some() && on_phone.done().is_some()
    })
    .await;
    assert_eq!(on_laptop.sas(), on_phone.sas());
    // The laptop learnt the own identity from the phone; the phone cross-signed the laptop.
    assert_eq!(on_laptop.done(), Some(true));
    assert!(laptop.identity(&alice).await.unwrap().unwrap().verified);
    assert!(device_verified(&phone, &laptop).await);
    assert!(device_verified(&laptop, &phone).await);
    let bob = login(&hs.base_url, &dirs.path().join("bob"), "bob").await;
    let seen_by_bob = bob.devices(&alice).await.unwrap();
    let laptop_at_bob = seen_by_bob
        .iter()
        .find(|d| d.device_id == laptop_device)
        .unwrap();
    assert!(
        laptop_at_bob.cross_signed,
        "other users see the new device cross-signed"
    );
    drop(hs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_request_and_a_mismatch_cancel_both_sides_and_verify_nothing() {
    let TwoUsers {
        hs,
        _dirs,
        alice,
        bob,
        on_alice,
        on_bob,
    } = two_users(Answer::Match, Answer::Decline).await;
    let (bob_id, _) = ids(&bob);

    // bob declines.
    alice.request_verification(&bob_id, None).await.unwrap();
    until(&[&alice, &bob], "the refusal", || {
        on_alice.cancelled().is_some()
    })
    .await;
    assert_eq!(on_alice.cancelled(), Some((CancelCode::User, false)));
    assert!(on_alice.sas().is_none() && on_bob.sas().is_none());

    // bob accepts, then sees other emoji than alice (a man in the middle, say).
    on_alice.forget();
    *on_bob.answer.lock().unwrap() = Answer::Mismatch;
    alice.request_verification(&bob_id, None).await.unwrap();
    until(&[&alice, &bob], "the mismatch", || {
        on_alice.cancelled().is_some()
    })
    .await;
    assert_eq!(
        on_alice.cancelled(),
        Some((CancelCode::MismatchedSas, false))
    );
    assert!(on_bob.sas().is_some(), "bob was asked to compare");
    assert!(on_alice.done().is_none() && on_bob.done().is_none());
    assert!(!device_verified(&alice, &bob).await);
    assert!(!device_verified(&bob, &alice).await);
    drop(hs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_that_fails_to_send_still_goes_before_done() {
    let hs = Synapse::start();
    hs.register("alice", "alice-pw");
    hs.register("bob", "bob-pw");
    let dirs = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(&hs.base_url);
    let alice = login(&proxy.base_url, &dirs.path().join("alice"), "alice").await;
    let bob = login(&hs.base_url, &dirs.path().join("bob"), "bob").await;
    let (on_alice, on_bob) = (
        SasUser::new("alice", Answer::Match),
        SasUser::new("bob", Answer::Match),
    );
    alice.set_prompt_handler(Some(on_alice.clone()));
    bob.set_prompt_handler(Some(on_bob.clone()));
    // alice confirms after bob's MAC arrived, so her MAC and her `done` are queued together;
    // the server refuses her MAC for one round of attempts.
    *on_alice.thinks.lock().unwrap() = Duration::from_secs(3);
    proxy.rule("m.key.verification.mac", Action::Fail(500), Some(4));
    let (bob_id, _) = ids(&bob);
    alice.request_verification(&bob_id, None).await.unwrap();
    until(&[&alice, &bob], "the verification", || {
        on_alice.done().is_some() && on_bob.done().is_some()
    })
    .await;
    let log: Vec<String> = proxy
        .log()
        .into_iter()
        .filter(|l| l.contains("sendToDevice"))
        .collect();
    let sent = |kind: &str| {
        log.iter()
            .position(|l| l.contains(kind) && l.ends_with(" 200"))
            .unwrap_or_else(|| panic!("{kind} never sent: {log:?}"))
    };
    assert!(
        log.iter()
            .any(|l| l.contains("verification.mac") && l.ends_with(" 500"))
    );
    assert!(
        sent("verification.mac") < sent("verification.done"),
        "done overtook the MAC: {log:?}"
    );
    drop(hs);
}
