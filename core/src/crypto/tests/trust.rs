//! Sender trust: cross-signing identities from `/keys/query`, sender data recorded at
//! reception (fast lane, slow lane, background retry), and what each decryption policy
//! shows for each sender state.

use super::*;
use crate::store::{SenderData, SenderTrust};
use crate::time::Clock;

/// alice and bob, both cross-signed (alice's device signed by her self-signing key).
fn cross_signed_pair() -> (FakeServer, Peer, Peer) {
    let (mut server, alice, bob) = setup_pair();
    server.publish_cross_signing(&alice);
    server.publish_cross_signing(&bob);
    server.drive(&alice);
    server.drive(&bob);
    (server, alice, bob)
}

/// The stored sender data of alice's current session in [`ROOM`], at bob's.
fn sender_data_at(bob: &Peer, alice: &Peer) -> SenderData {
    let content = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("probe"))
        .unwrap();
    let session_id = content["session_id"].as_str().unwrap().to_owned();
    bob.store
        .inbound_group_session(room(), &session_id)
        .unwrap()
        .expect("session stored")
        .sender_data
}

/// alice sends `body`; bob decrypts it and says how far he trusts the sender.
fn trust_of_message(alice: &Peer, bob: &Peer, body: &str, event_id: &str) -> (SenderTrust, bool) {
    let d = exchange(alice, bob, body, event_id).unwrap();
    assert_eq!(d.content["body"], body);
    (d.sender_trust, d.legacy)
}

/// bob tracks alice, downloads her devices and identity, then gets her room key.
fn share_known(server: &mut FakeServer, alice: &Peer, bob: &Peer) {
    let members = vec![alice.user(), bob.user()];
    bob.machine.update_tracked_users(&members).unwrap();
    server.drive(bob);
    server.share(alice, room(), &members);
    assert_eq!(server.sync(bob).room_keys.len(), 1);
}

#[test]
fn own_identity_is_published_stored_and_verified() {
    let (mut server, alice, _bob) = cross_signed_pair();
    // alice's own query of herself stores her identity, verified: she holds its keys.
    let identity = alice.machine.identity(&alice.user()).unwrap().unwrap();
    assert!(identity.verified, "{identity:?}");
    assert!(!identity.pin_violation && !identity.verification_violation);
    // Publishing again reuses the same keys (a retry after a failed upload).
    let before = server.cross_signing[&alice.user()].clone();
    server.publish_cross_signing(&alice);
    assert_eq!(
        server.cross_signing[&alice.user()]["master_key"],
        before["master_key"]
    );
}

#[test]
fn fast_lane_records_cross_signed_sender_at_reception() {
    let (mut server, alice, bob) = cross_signed_pair();
    share_known(&mut server, &alice, &bob);
    let data = sender_data_at(&bob, &alice);
    assert_eq!(data.trust, SenderTrust::CrossSigned);
    let master = bob
        .machine
        .identity(&alice.user())
        .unwrap()
        .unwrap()
        .master_key;
    assert_eq!(data.master_key.as_deref(), Some(master.as_str()));
    assert!(!data.legacy && data.retry.is_none());
    assert_eq!(
        trust_of_message(&alice, &bob, "hi", "$1"),
        (SenderTrust::CrossSigned, false)
    );

    // Verifying alice's identity raises her messages (the stored data stays what it was).
    assert!(bob.machine.verify_identity(&alice.user()).unwrap());
    assert_eq!(
        trust_of_message(&alice, &bob, "hi", "$2").0,
        SenderTrust::Verified
    );
}

#[test]
fn a_device_without_cross_signing_is_device_only_until_verified_by_hand() {
    let (mut server, alice, bob) = setup_pair();
    share_known(&mut server, &alice, &bob);
    assert_eq!(sender_data_at(&bob, &alice).trust, SenderTrust::DeviceOnly);
    assert_eq!(
        trust_of_message(&alice, &bob, "hi", "$1").0,
        SenderTrust::DeviceOnly
    );
    bob.machine
        .set_local_trust(&alice.user(), &alice.device(), LocalTrust::Verified)
        .unwrap();
    assert_eq!(
        trust_of_message(&alice, &bob, "hi", "$2").0,
        SenderTrust::Verified
    );
}

#[test]
fn slow_lane_stores_the_session_at_once_and_completes_it_after_the_query() {
    let (mut server, alice, bob) = cross_signed_pair();
    let members = vec![alice.user(), bob.user()];
    // bob tracks alice but has not downloaded her devices yet.
    bob.machine.update_tracked_users(&members).unwrap();
    server.share(&alice, room(), &members);
    let outcome = server.sync(&bob);
    assert_eq!(
        outcome.room_keys.len(),
        1,
        "stored without waiting for a query"
    );
    let data = sender_data_at(&bob, &alice);
    assert_eq!((data.trust, data.retry), (SenderTrust::UnknownDevice, None));
    // The message decrypts already; its sender is not known to be anyone yet.
    assert_eq!(
        trust_of_message(&alice, &bob, "early", "$1").0,
        SenderTrust::UnknownDevice
    );

    let outcomes = server.drive(&bob);
    let improved: Vec<_> = outcomes.iter().flat_map(|o| &o.improved_sessions).collect();
    assert_eq!(improved.len(), 1, "{outcomes:?}");
    assert_eq!(sender_data_at(&bob, &alice).trust, SenderTrust::CrossSigned);
    assert_eq!(
        trust_of_message(&alice, &bob, "later", "$2").0,
        SenderTrust::CrossSigned
    );
}

#[test]
fn background_retry_completes_what_the_server_could_not_answer() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let (mut server, alice, _) = setup_pair();
    server.publish_cross_signing(&alice);
    server.drive(&alice);
    let bob = Peer::with_clock("@dave:localhost", "DAVE", Arc::clone(&clock));
    server.drive(&bob);
    let members = vec![alice.user(), bob.user()];
    bob.machine.update_tracked_users(&members).unwrap();
    server.share(&alice, room(), &members);
    // The server forgets alice's device in its answer to bob.
    let hidden = server
        .device_keys
        .get_mut(&alice.user())
        .unwrap()
        .remove(&alice.device());
    server.sync(&bob);
    server.drive(&bob);
    let data = sender_data_at(&bob, &alice);
    assert_eq!(data.trust, SenderTrust::UnknownDevice);
    let retry = data.retry.expect("a retry is scheduled");
    assert_eq!(
        bob.machine.next_sender_data_retry().unwrap(),
        Some(retry.next_ms)
    );
    // Not due yet: nothing happens.
    assert!(bob.machine.retry_sender_data().unwrap().is_empty());
    assert!(pending_queries(&bob).is_empty());

    // Due, still unknown: alice is queried again and the retry pushed back.
    clock.advance(retry.next_ms - clock.now_ms());
    assert!(bob.machine.retry_sender_data().unwrap().is_empty());
    server.drive(&bob);
    let second = sender_data_at(&bob, &alice).retry.unwrap();
    assert!(
        second.attempts == 2 && second.next_ms > retry.next_ms,
        "{second:?}"
    );

    // The server lists the device again: the next retry completes the data.
    server
        .device_keys
        .get_mut(&alice.user())
        .unwrap()
        .insert(alice.device(), hidden.unwrap());
    clock.advance(second.next_ms - clock.now_ms());
    bob.machine.retry_sender_data().unwrap();
    let outcomes = server.drive(&bob);
    assert_eq!(
        outcomes
            .iter()
            .map(|o| o.improved_sessions.len())
            .sum::<usize>(),
        1
    );
    let data = sender_data_at(&bob, &alice);
    assert_eq!((data.trust, data.retry), (SenderTrust::CrossSigned, None));
    assert_eq!(bob.machine.next_sender_data_retry().unwrap(), None);
}

#[test]
fn a_tampered_cross_signing_signature_marks_the_device_and_its_sessions() {
    let (mut server, alice, bob) = cross_signed_pair();
    // The server swaps alice's self-signing signature on her device for another valid one
    // (of different content): it no longer verifies.
    server.tamper_cross_signing_signature(&alice);
    share_known(&mut server, &alice, &bob);
    assert_eq!(sender_data_at(&bob, &alice).trust, SenderTrust::Tampered);
    let (trust, _) = trust_of_message(&alice, &bob, "hi", "$1");
    assert_eq!(trust, SenderTrust::Tampered);
    for policy in [TrustPolicy::ShowAll, TrustPolicy::CrossSignedOrLegacy] {
        assert!(!policy.allows(trust, true), "{policy:?}");
    }
    // Verifying by hand does not undo evidence of tampering.
    bob.machine.verify_identity(&alice.user()).unwrap();
    assert_eq!(
        trust_of_message(&alice, &bob, "hi", "$2").0,
        SenderTrust::Tampered
    );
}

#[test]
fn a_self_signing_key_not_signed_by_the_master_key_is_refused() {
    let (mut server, alice, bob) = cross_signed_pair();
    let members = vec![alice.user(), bob.user()];
    // Replace alice's self-signing key by one the master key never signed.
    let stranger = super::super::cross_signing::OwnCrossSigning::generate();
    let forged = stranger.public_keys(&alice.user()).unwrap();
    server.cross_signing.get_mut(&alice.user()).unwrap()["self_signing_key"] =
        forged["self_signing_key"].clone();
    bob.machine.update_tracked_users(&members).unwrap();
    let outcomes = server.drive(&bob);
    let rejected: Vec<_> = outcomes
        .iter()
        .flat_map(|o| &o.rejected_identities)
        .collect();
    assert!(
        matches!(rejected[..], [(u, IdentityError::BadSignature { usage: "self_signing" })] if *u == alice.user()),
        "{rejected:?}"
    );
    assert_eq!(bob.machine.identity(&alice.user()).unwrap(), None);
}

#[test]
fn identity_changes_are_pin_or_verification_violations() {
    let (mut server, alice, bob) = cross_signed_pair();
    let carol = Peer::new("@carol:localhost", "CAROL");
    server.drive(&carol);
    server.publish_cross_signing(&carol);
    let users = vec![alice.user(), carol.user()];
    bob.machine.update_tracked_users(&users).unwrap();
    server.drive(&bob);
    bob.machine.verify_identity(&alice.user()).unwrap();

    // Both reset their cross-signing keys.
    for peer in [&alice, &carol] {
        server.reset_cross_signing(peer);
    }
    changed(&bob, users.clone(), vec![]);
    let outcomes = server.drive(&bob);
    let mut changes: Vec<IdentityChange> = outcomes
        .into_iter()
        .flat_map(|o| o.identity_changes)
        .collect();
    changes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        changes,
        [
            IdentityChange::PinViolation(carol.user()),
            IdentityChange::VerificationViolation(alice.user()),
        ]
    );
    let carol_id = bob.machine.identity(&carol.user()).unwrap().unwrap();
    assert!(carol_id.pin_violation && !carol_id.verified);
    assert!(bob.machine.pin_identity(&carol.user()).unwrap());
    assert!(
        !bob.machine
            .identity(&carol.user())
            .unwrap()
            .unwrap()
            .pin_violation
    );
    let alice_id = bob.machine.identity(&alice.user()).unwrap().unwrap();
    assert!(alice_id.verification_violation && !alice_id.verified);
}

#[test]
fn a_verification_violation_mid_conversation_hides_only_the_new_sessions() {
    let (mut server, alice, bob) = cross_signed_pair();
    share_known(&mut server, &alice, &bob);
    bob.machine.verify_identity(&alice.user()).unwrap();
    let old = exchange(&alice, &bob, "before", "$1").unwrap();
    assert_eq!(old.sender_trust, SenderTrust::Verified);

    // alice's identity is replaced (by her, or by a malicious server) and she rotates.
    server.reset_cross_signing(&alice);
    changed(&bob, vec![alice.user()], vec![]);
    server.drive(&bob);
    let old_again = exchange(&alice, &bob, "same session", "$2").unwrap();
    alice.machine.discard_room_key(room()).unwrap();
    server.share(&alice, room(), &[alice.user(), bob.user()]);
    server.sync(&bob);
    let new = exchange(&alice, &bob, "after", "$3").unwrap();
    assert_eq!(new.sender_trust, SenderTrust::VerificationViolation);

    for (policy, shows_new) in [
        (TrustPolicy::ShowAll, true),
        (TrustPolicy::CrossSignedOrLegacy, false),
        (TrustPolicy::CrossSignedOnly, false),
        (TrustPolicy::VerifiedOnly, false),
    ] {
        // The session that arrived while alice was verified stays hers, verified at
        // reception: the change is not a silent downgrade of what was received before.
        assert!(
            policy.allows(old_again.sender_trust, old_again.legacy),
            "{policy:?}"
        );
        assert_eq!(
            policy.allows(new.sender_trust, new.legacy),
            shows_new,
            "{policy:?}"
        );
    }
    // Verifying the new identity clears it.
    bob.machine.verify_identity(&alice.user()).unwrap();
    assert_eq!(
        trust_of_message(&alice, &bob, "again", "$4").0,
        SenderTrust::Verified
    );
}

#[test]
fn an_identity_made_by_another_device_is_not_replaced_by_a_bootstrap() {
    let (mut server, alice, _bob) = cross_signed_pair();
    // alice's second device: no private keys, but it downloads the account's identity.
    let laptop = new_own_device(&mut server, &alice, "LAPTOP");
    let published = laptop.machine.identity(&alice.user()).unwrap().unwrap();
    assert!(!published.verified, "the laptop holds none of its keys");
    let err = laptop.machine.bootstrap_cross_signing().unwrap_err();
    assert!(matches!(err, CryptoError::InvalidInput(_)), "{err:?}");
    assert!(!laptop.machine.has_cross_signing_keys().unwrap());
    // On purpose, it can replace it; the first device then sees a changed identity.
    server.reset_cross_signing(&laptop);
    changed(&alice, vec![alice.user()], vec![]);
    server.drive(&alice);
    let replaced = alice.machine.identity(&alice.user()).unwrap().unwrap();
    assert_ne!(replaced.master_key, published.master_key);
    assert!(!replaced.verified && replaced.verification_violation);
    // And alice, whose keys are stale now, cannot publish them again by accident.
    assert!(alice.machine.bootstrap_cross_signing().is_err());
}

#[test]
fn an_own_device_the_user_verified_is_cross_signed_for_everyone() {
    let (mut server, alice, bob) = cross_signed_pair();
    let laptop = Peer::new(alice.user().as_str(), "LAPTOP");
    server.drive(&laptop);
    changed(&alice, vec![alice.user()], vec![]);
    server.drive(&alice);
    // alice verifies her laptop by hand and cross-signs it.
    alice
        .machine
        .set_local_trust(&alice.user(), "LAPTOP".into(), LocalTrust::Verified)
        .unwrap();
    let signature = alice
        .machine
        .device_signature(&alice.user(), "LAPTOP".into())
        .unwrap()
        .expect("alice holds the keys");
    server.upload_signatures(&signature);
    // Only own other devices are signed this way.
    assert!(
        alice
            .machine
            .device_signature(&bob.user(), "BOB".into())
            .unwrap()
            .is_none()
    );
    assert!(
        alice
            .machine
            .device_signature(&alice.user(), "ALICE".into())
            .unwrap()
            .is_none()
    );

    // bob sees the laptop cross-signed, and verified once he verifies alice.
    let laptop_at = |peer: &Peer| {
        peer.machine
            .devices(&alice.user())
            .unwrap()
            .into_iter()
            .find(|d| d.device_id == "LAPTOP")
            .unwrap()
    };
    bob.machine.update_tracked_users(&[alice.user()]).unwrap();
    server.drive(&bob);
    let seen = laptop_at(&bob);
    assert!(seen.cross_signed && !seen.verified, "{seen:?}");
    bob.machine.verify_identity(&alice.user()).unwrap();
    assert!(laptop_at(&bob).verified);

    // alice's own view, were her decision about the laptop still open (another device of
    // hers cross-signed it): verified through her identity, so its key requests are
    // answered without asking.
    changed(&alice, vec![alice.user()], vec![]);
    server.drive(&alice);
    alice
        .machine
        .set_local_trust(&alice.user(), "LAPTOP".into(), LocalTrust::Unset)
        .unwrap();
    let seen = laptop_at(&alice);
    assert!(seen.cross_signed && seen.verified, "{seen:?}");
    server.establish(&alice, &[alice.user()]);
    let session_id = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("for the laptop"))
        .map(|c| c["session_id"].as_str().unwrap().to_owned())
        .unwrap_or_else(|_| {
            alice
                .machine
                .share_room_key(room(), &[alice.user()], RotationSettings::default())
                .unwrap();
            alice
                .store
                .outbound_group_session(room())
                .unwrap()
                .unwrap()
                .session_id
        });
    let pending = alice.store.pending_to_device().unwrap().len();
    let request =
        super::key_requests::key_request(&alice, alice.user(), "LAPTOP", "r1", &session_id);
    receive(&alice, vec![request]);
    assert_eq!(
        alice.store.pending_to_device().unwrap().len(),
        pending + 1,
        "the cross-signed own device is answered"
    );
    assert!(
        alice.machine.take_key_share_prompts().unwrap().is_empty(),
        "nothing to ask"
    );
}
