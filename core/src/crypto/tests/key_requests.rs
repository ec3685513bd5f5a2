//! Room key requests (`m.room_key_request`): asking own devices, answering or holding them.

use ruma::events::ToDeviceEventType;
use ruma::{DeviceId, UserId};

use super::*;

#[test]
fn missing_keys_are_requested_from_own_verified_devices_only() {
    let (mut server, alice, bob) = olm_pair();
    let members = vec![alice.user(), bob.user()];
    // alice logs in a second device after bob shared the session: it misses the key.
    let laptop = Peer::new(alice.user().as_str(), "LAPTOP");
    server.drive(&laptop);
    let content = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("x"))
        .unwrap();
    let _ = content;
    let bob_content = {
        server.share(&bob, room(), &[bob.user(), alice.user()]);
        server.sync(&alice);
        bob.machine
            .encrypt_room_event(room(), "m.room.message", &text("for alice"))
            .unwrap()
    };
    let event = room_event(room(), bob.user(), "$k", bob_content);
    server.take_inbox(&laptop);
    let err = laptop
        .machine
        .decrypt_room_event(room(), &event)
        .unwrap_err();
    assert!(matches!(
        err,
        CryptoError::Megolm(MegolmError::MissingSession { .. })
    ));

    // The two own devices know and verified each other, and have an Olm channel.
    for (me, other) in [(&alice, "LAPTOP"), (&laptop, "ALICE")] {
        me.machine.update_tracked_users(&[alice.user()]).unwrap();
        me.machine
            .receive_sync_changes(SyncChanges {
                changed_users: vec![alice.user()],
                ..Default::default()
            })
            .unwrap();
        server.drive(me);
        assert!(
            me.machine
                .set_local_trust(&alice.user(), other.into(), LocalTrust::Verified)
                .unwrap()
        );
    }
    server.establish(&alice, &[alice.user()]);
    let sender_key = event["content"]["sender_key"].as_str().unwrap().to_owned();
    let session_id = event["content"]["session_id"].as_str().unwrap().to_owned();
    assert!(
        laptop
            .machine
            .request_room_key(
                room(),
                &session_id,
                &sender_key,
                Some((&bob.user(), "BOB".into()))
            )
            .unwrap()
    );
    assert!(
        !laptop
            .machine
            .request_room_key(room(), &session_id, &sender_key, None)
            .unwrap(),
        "asked once"
    );
    server.drive(&laptop);
    // The sending device is told too, and does not answer another user.
    let to_bob = server.take_inbox(&bob);
    assert_eq!(to_bob.len(), 1);
    assert_eq!(to_bob[0]["type"], "m.room_key_request");
    let bob_pending = bob.store.pending_to_device().unwrap().len();
    receive(&bob, to_bob);
    assert_eq!(
        bob.store.pending_to_device().unwrap().len(),
        bob_pending,
        "no answer"
    );
    server.sync(&alice);
    server.drive(&alice);
    let outcome = server.sync(&laptop);
    assert_eq!(outcome.room_keys.len(), 1, "{:?}", outcome.to_device);
    // A forwarded key vouches for no sender: the laptop confirms bob's device itself.
    laptop.machine.update_tracked_users(&members).unwrap();
    server.drive(&laptop);
    let d = laptop.machine.decrypt_room_event(room(), &event).unwrap();
    assert_eq!(d.content["body"], "for alice");
    // It is a legacy session (seed 003): shown by the policies that accept legacy ones.
    assert!(d.legacy);
    assert_eq!(d.sender_trust, crate::store::SenderTrust::DeviceOnly);
    assert!(TrustPolicy::CrossSignedOrLegacy.allows(d.sender_trust, d.legacy));
    assert!(!TrustPolicy::CrossSignedOnly.allows(d.sender_trust, d.legacy));
}

/// An `m.room_key_request` to-device event for alice's session `session_id` in [`ROOM`].
pub(super) fn key_request(
    alice: &Peer,
    sender: impl AsRef<str>,
    device: &str,
    request_id: &str,
    session_id: &str,
) -> Value {
    let sender = sender.as_ref();
    json!({"type": "m.room_key_request", "sender": sender, "content": {
        "action": "request", "request_id": request_id, "requesting_device_id": device,
        "body": {"algorithm": MEGOLM_ALGORITHM, "room_id": ROOM, "session_id": session_id,
                 "sender_key": alice.machine.curve25519_key()}}})
}

#[test]
fn key_requests_of_other_users_and_unverified_devices_are_not_answered() {
    let (mut server, alice, bob, _laptop, session_id) = alice_with_laptop();
    let request =
        |sender: &UserId, device: &str| key_request(&alice, sender, device, "r1", &session_id);
    server.establish(&alice, &[alice.user()]);
    let pending_before = alice.store.pending_to_device().unwrap().len();
    // bob's device (another user) and alice's unverified laptop: no answer.
    receive(
        &alice,
        vec![
            request(&bob.user(), "BOB"),
            request(&alice.user(), "LAPTOP"),
        ],
    );
    assert_eq!(
        alice.store.pending_to_device().unwrap().len(),
        pending_before
    );
    // The laptop's request is held, and the app may ask the user about it, once.
    let prompts = alice.machine.take_key_share_prompts().unwrap();
    assert_eq!(
        prompts
            .iter()
            .map(|d| d.device_id.as_str())
            .collect::<Vec<_>>(),
        ["LAPTOP"]
    );
    assert!(alice.machine.take_key_share_prompts().unwrap().is_empty());
    // The same request again is not held twice, and another request of the same device
    // does not ask the user again.
    receive(&alice, vec![request(&alice.user(), "LAPTOP")]);
    assert!(alice.machine.take_key_share_prompts().unwrap().is_empty());
    let mut other = request(&alice.user(), "LAPTOP");
    other["content"]["request_id"] = "r-other".into();
    receive(&alice, vec![other]);
    assert!(alice.machine.take_key_share_prompts().unwrap().is_empty());
    // Once verified, the held request is answered at once (exactly one answer).
    alice
        .machine
        .set_local_trust(&alice.user(), "LAPTOP".into(), LocalTrust::Verified)
        .unwrap();
    let pending = alice.store.pending_to_device().unwrap();
    assert_eq!(
        pending.len(),
        pending_before + 2,
        "both held requests answered"
    );
    assert!(pending[pending_before].messages_json.contains("LAPTOP"));
    assert_eq!(
        pending[pending_before].event_type,
        ToDeviceEventType::RoomEncrypted
    );
    let _ = bob;
}

#[test]
fn held_key_requests_of_a_blacklisted_own_device_are_dropped() {
    let (mut server, alice, _bob, _laptop, session_id) = alice_with_laptop();
    server.establish(&alice, &[alice.user()]);
    let pending_before = alice.store.pending_to_device().unwrap().len();
    receive(
        &alice,
        vec![key_request(
            &alice,
            alice.user(),
            "LAPTOP",
            "r9",
            &session_id,
        )],
    );
    // Held: the app may ask about the laptop.
    assert_eq!(alice.machine.take_key_share_prompts().unwrap().len(), 1);
    assert!(
        alice
            .machine
            .set_local_trust(&alice.user(), "LAPTOP".into(), LocalTrust::Blacklisted)
            .unwrap()
    );
    assert!(alice.machine.take_key_share_prompts().unwrap().is_empty());
    // Changing one's mind later does not revive the dropped request.
    assert!(
        alice
            .machine
            .set_local_trust(&alice.user(), "LAPTOP".into(), LocalTrust::Verified)
            .unwrap()
    );
    assert_eq!(
        alice.store.pending_to_device().unwrap().len(),
        pending_before
    );
}

#[test]
fn a_key_request_without_an_olm_session_is_answered_after_a_claim() {
    let (mut server, alice, _bob, laptop, session_id) = alice_with_laptop();
    alice
        .machine
        .set_local_trust(&alice.user(), "LAPTOP".into(), LocalTrust::Verified)
        .unwrap();
    assert!(alice.machine.session_repair_request().unwrap().is_none());
    let pending_before = alice.store.pending_to_device().unwrap().len();
    receive(
        &alice,
        vec![key_request(
            &alice,
            alice.user(),
            "LAPTOP",
            "r2",
            &session_id,
        )],
    );
    // No Olm channel to the laptop yet: nothing is sent, a session is claimed instead.
    assert_eq!(
        alice.store.pending_to_device().unwrap().len(),
        pending_before
    );
    let Some(OutgoingRequest {
        kind: OutgoingKind::KeysClaim(claim),
        ..
    }) = alice.machine.session_repair_request().unwrap()
    else {
        panic!("expected a claim for the laptop");
    };
    assert!(claim.one_time_keys[&alice.user()].contains_key(<&DeviceId>::from("LAPTOP")));
    let response = server.claim(&claim);
    alice.machine.mark_keys_claim_sent(&response).unwrap();
    assert_eq!(
        alice.store.pending_to_device().unwrap().len(),
        pending_before + 1,
        "the request is answered over the new session"
    );
    assert!(alice.machine.session_repair_request().unwrap().is_none());
    // The laptop accepts the forwarded key (it asked, and trusts alice's device).
    laptop
        .machine
        .update_tracked_users(&[alice.user()])
        .unwrap();
    server.drive(&laptop);
    laptop
        .machine
        .set_local_trust(&alice.user(), "ALICE".into(), LocalTrust::Verified)
        .unwrap();
    laptop
        .machine
        .request_room_key(room(), &session_id, &alice.machine.curve25519_key(), None)
        .unwrap();
    server.drive(&alice);
    let outcome = server.sync(&laptop);
    assert_eq!(outcome.room_keys.len(), 1, "{:?}", outcome.to_device);
}

#[test]
fn a_key_request_from_an_unknown_device_of_a_known_user_makes_us_requery_them() {
    use crate::store::TrackingState::*;
    let (mut server, alice, bob) = olm_pair();
    let session_id = bob
        .store
        .outbound_group_session(room())
        .unwrap()
        .map(|s| s.session_id)
        .unwrap_or_else(|| "unknown-session".into());
    assert_eq!(bob.machine.tracking_state(&alice.user()).unwrap(), UpToDate);
    // alice logs in a laptop; bob's list of her devices is now stale.
    let laptop = Peer::new(alice.user().as_str(), "LAPTOP");
    server.drive(&laptop);
    laptop
        .machine
        .request_room_key(
            room(),
            &session_id,
            &bob.machine.curve25519_key(),
            Some((&bob.user(), "BOB".into())),
        )
        .unwrap();
    server.drive(&laptop);
    let pending = bob.store.pending_to_device().unwrap().len();
    let outcome = server.sync(&bob);
    assert_eq!(outcome.to_device[0].event_type, "m.room_key_request");
    assert_eq!(
        bob.store.pending_to_device().unwrap().len(),
        pending,
        "not answered"
    );
    assert_eq!(
        bob.machine.tracking_state(&alice.user()).unwrap(),
        PendingDownload
    );
    let outcomes = server.drive(&bob);
    assert!(
        outcomes
            .iter()
            .any(|o| o.new_devices == vec![(alice.user(), did("LAPTOP"))]),
        "{outcomes:?}"
    );

    // A stranger's request does not make bob track anyone.
    let stranger = Peer::new("@mallory:localhost", "M");
    server.drive(&stranger);
    stranger
        .machine
        .request_room_key(
            room(),
            &session_id,
            "key",
            Some((&bob.user(), "BOB".into())),
        )
        .unwrap();
    server.drive(&stranger);
    server.sync(&bob);
    assert_eq!(
        bob.machine.tracking_state(&stranger.user()).unwrap(),
        NotTracked
    );
}
