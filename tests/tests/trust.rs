//! Sender trust against a real Synapse: cross-signing set-up through the password prompt,
//! sender data completed when the sender cross-signs, and trust policies that hide a
//! message until its sender is cross-signed, then verified.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use newt_core::client::{
    Client, Prompt, PromptAnswer, PromptHandler, TimelineEvent, TrustPolicy, TrustPolicyProvider,
};
use newt_core::ruma::{OwnedEventId, OwnedUserId, RoomId};
use newt_core::store::SenderTrust;
use newt_e2e_tests::Synapse;
use newt_e2e_tests::clients::{login, receive, room_with};
use tokio::sync::broadcast::Receiver;
use zeroize::Zeroizing;

/// Answers password prompts with alice's password and counts them.
struct Password(AtomicUsize);

impl PromptHandler for Password {
    fn on_prompt(&self, prompt: Prompt) -> PromptAnswer {
        match prompt {
            Prompt::Password { .. } => {
                self.0.fetch_add(1, Ordering::SeqCst);
                PromptAnswer::Password(Zeroizing::new("alice-pw".to_owned()))
            }
            _ => PromptAnswer::Dismissed,
        }
    }
}

/// A policy the test changes as it goes.
struct Switch(Mutex<TrustPolicy>);

impl TrustPolicyProvider for Switch {
    fn policy_for_room(&self, _room_id: &RoomId) -> TrustPolicy {
        *self.0.lock().unwrap()
    }
}

/// Sync until `event_id` is delivered again (`is_update`), shown, on `rx` (subscribed
/// before whatever shows it); panics after 60 s.
async fn shown_again(
    client: &Client,
    rx: &mut Receiver<TimelineEvent>,
    room: &RoomId,
    event_id: &OwnedEventId,
) -> TimelineEvent {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        while let Ok(e) = rx.try_recv() {
            if &e.event_id == event_id && e.room_id == room && e.is_update && e.is_shown() {
                return e;
            }
        }
        assert!(Instant::now() < deadline, "{event_id} was not shown again");
        client.sync_once(Duration::from_millis(500)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_hide_a_sender_until_cross_signed_then_verified() {
    let hs = Synapse::start();
    hs.register("alice", "alice-pw");
    hs.register("bob", "bob-pw");
    let dirs = tempfile::tempdir().unwrap();
    let alice = login(&hs.base_url, &dirs.path().join("alice"), "alice").await;
    let bob = login(&hs.base_url, &dirs.path().join("bob"), "bob").await;
    let room = room_with(&alice, &[&bob]).await;
    let policy = Arc::new(Switch(Mutex::new(TrustPolicy::CrossSignedOnly)));
    bob.set_trust_policy_provider(Some(policy.clone()));
    let alice_id = OwnedUserId::try_from("@alice:localhost").unwrap();

    // alice has no cross-signing yet: bob decrypts her message but does not show it.
    alice
        .send_text(&room, "before cross-signing")
        .await
        .unwrap();
    let hidden = receive(&bob, &room, 1).await.remove(0);
    assert!(hidden.decrypted && hidden.hidden_by_policy, "{hidden:?}");
    assert_eq!(hidden.body, None);
    assert_eq!(hidden.sender_trust, Some(SenderTrust::DeviceOnly));

    // alice sets up cross-signing (the password comes from her prompt handler if Synapse
    // asks for it) and her device is signed: bob learns it through his device list and
    // shows the message, completed sender data and all.
    let mut rx = bob.subscribe_timeline();
    let prompts = Arc::new(Password(AtomicUsize::new(0)));
    alice.set_prompt_handler(Some(prompts.clone()));
    alice.bootstrap_cross_signing().await.unwrap();
    let own = alice.identity(&alice_id).await.unwrap().expect("published");
    assert!(own.verified, "alice holds her own keys: {own:?}");
    let shown = shown_again(&bob, &mut rx, &room, &hidden.event_id).await;
    assert_eq!(shown.body.as_deref(), Some("before cross-signing"));
    assert_eq!(shown.sender_trust, Some(SenderTrust::CrossSigned));
    // Setting it up again publishes the same keys.
    alice.bootstrap_cross_signing().await.unwrap();
    let again = alice.identity(&alice_id).await.unwrap().unwrap();
    assert_eq!(again.master_key, own.master_key);

    // Only verified senders: alice's next message is hidden; a looser policy chosen later
    // shows it (after `refresh_trust`).
    *policy.0.lock().unwrap() = TrustPolicy::VerifiedOnly;
    alice.send_text(&room, "cross-signed only").await.unwrap();
    let hidden = receive(&bob, &room, 1).await.remove(0);
    assert!(hidden.hidden_by_policy, "{hidden:?}");
    assert_eq!(hidden.sender_trust, Some(SenderTrust::CrossSigned));
    *policy.0.lock().unwrap() = TrustPolicy::CrossSignedOrLegacy;
    let mut rx = bob.subscribe_timeline();
    bob.refresh_trust().await.unwrap();
    let shown = shown_again(&bob, &mut rx, &room, &hidden.event_id).await;
    assert_eq!(shown.trust_policy, TrustPolicy::CrossSignedOrLegacy);

    // Verified senders again: hidden until bob verifies alice's identity.
    *policy.0.lock().unwrap() = TrustPolicy::VerifiedOnly;
    alice.send_text(&room, "verify me").await.unwrap();
    let hidden = receive(&bob, &room, 1).await.remove(0);
    assert!(hidden.hidden_by_policy, "{hidden:?}");
    let identity = bob
        .identity(&alice_id)
        .await
        .unwrap()
        .expect("alice's identity");
    assert_eq!(identity.master_key, own.master_key);
    assert!(!identity.verified && !identity.pin_violation);
    let mut rx = bob.subscribe_timeline();
    assert!(bob.verify_identity(&alice_id).await.unwrap());
    let shown = shown_again(&bob, &mut rx, &room, &hidden.event_id).await;
    assert_eq!(shown.body.as_deref(), Some("verify me"));
    assert_eq!(shown.sender_trust, Some(SenderTrust::Verified));

    // alice replaces her keys (Synapse wants her password for that): bob, who verified
    // her, is told of a verification violation.
    let changes = Arc::new(Changes(Mutex::new(Vec::new())));
    bob.set_prompt_handler(Some(changes.clone()));
    alice.reset_cross_signing().await.unwrap();
    assert_eq!(prompts.0.load(Ordering::SeqCst), 1, "one password prompt");
    let deadline = Instant::now() + Duration::from_secs(60);
    while changes.0.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "bob was not told of the change");
        bob.sync_once(Duration::from_millis(500)).await.unwrap();
    }
    assert_eq!(*changes.0.lock().unwrap(), [(alice_id.clone(), true)]);
    let changed = bob.identity(&alice_id).await.unwrap().unwrap();
    assert!(
        changed.verification_violation && !changed.verified,
        "{changed:?}"
    );
    assert_ne!(changed.master_key, own.master_key);
}

/// Records identity-change prompts (and acknowledges none).
struct Changes(Mutex<Vec<(OwnedUserId, bool)>>);

impl PromptHandler for Changes {
    fn on_prompt(&self, prompt: Prompt) -> PromptAnswer {
        if let Prompt::IdentityChanged {
            user_id,
            verification_violation,
        } = prompt
        {
            self.0
                .lock()
                .unwrap()
                .push((user_id, verification_violation));
        }
        PromptAnswer::Dismissed
    }
}
