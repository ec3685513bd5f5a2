//! Room key sharing: batches, rotation, and withheld notices.

use super::*;

#[test]
fn three_machines_share_one_session() {
    let (mut server, alice, bob) = setup_pair();
    let carol = Peer::new("@carol:localhost", "CAROL");
    server.drive(&carol);
    let members = vec![alice.user(), bob.user(), carol.user()];
    server.share(&alice, room(), &members);
    server.sync(&bob);
    server.sync(&carol);
    for i in 0..5 {
        let content = alice
            .machine
            .encrypt_room_event(room(), "m.room.message", &text(&format!("m{i}")))
            .unwrap();
        let event = room_event(room(), alice.user(), &format!("${i}"), content);
        for peer in [&bob, &carol] {
            let d = peer.machine.decrypt_room_event(room(), &event).unwrap();
            assert_eq!(d.content["body"], format!("m{i}"));
            assert_eq!(d.message_index, i);
        }
    }
    // Sharing again sends nothing new: everyone has the session.
    let again = alice
        .machine
        .share_room_key(room(), &members, RotationSettings::default())
        .unwrap();
    assert!(again.is_empty());
}

#[test]
fn room_keys_go_out_in_batches_and_retries_reuse_the_transaction_id() {
    let mut server = FakeServer::default();
    let alice = Peer::new("@alice:localhost", "ALICE");
    server.drive(&alice);
    let mut users = Vec::new();
    for i in 0..130 {
        for d in 0..2 {
            let peer = Peer::new(&format!("@u{i}:localhost"), &format!("D{d}"));
            server.drive(&peer);
        }
        users.push(uid(&format!("@u{i}:localhost")));
    }
    server.establish(&alice, &users);
    let requests = alice
        .machine
        .share_room_key(room(), &users, RotationSettings::default())
        .unwrap();
    assert_eq!(requests.len(), 2, "260 devices in chunks of 250");
    let ids: Vec<String> = requests.iter().map(|r| r.id.clone()).collect();
    // Not yet confirmed: the same requests come back with the same transaction ids.
    let pending: Vec<String> = alice
        .machine
        .outgoing_requests()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(pending.len(), 2);
    for id in &ids {
        assert!(pending.contains(id));
    }
    server.drive(&alice);
    let sizes: Vec<usize> = server.to_device_requests.iter().map(|(_, n)| *n).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 260);
    assert!(alice.machine.outgoing_requests().unwrap().is_empty());
}

#[test]
fn devices_without_a_session_get_a_withheld_notice_once() {
    let (mut server, alice, bob) = setup_pair();
    let members = vec![alice.user(), bob.user()];
    for peer in [&alice, &bob] {
        peer.machine.update_tracked_users(&members).unwrap();
        server.drive(peer);
    }
    // Withheld notices are taken only from members of the room.
    room_members(&bob, &members);
    // bob's one-time keys and fallback key are gone: no session can be made.
    server.one_time_keys.clear();
    server.fallback_keys.clear();
    server.establish(&alice, &members);
    alice
        .machine
        .share_room_key(room(), &members, RotationSettings::default())
        .unwrap();
    server.drive(&alice);
    let outcome = server.sync(&bob);
    assert_eq!(outcome.to_device[0].event_type, "m.room_key.withheld");
    let content = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("x"))
        .unwrap();
    let err = bob
        .machine
        .decrypt_room_event(room(), &room_event(room(), alice.user(), "$w", content))
        .unwrap_err();
    assert_withheld(&err, "m.no_olm");
    // Once per session: sharing again sends no second notice.
    assert!(
        alice
            .machine
            .share_room_key(room(), &members, RotationSettings::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn blacklisting_a_recipient_rotates_the_session_and_withholds_the_key() {
    let (mut server, alice, bob) = olm_pair();
    let members = vec![alice.user(), bob.user()];
    room_members(&bob, &members);
    let before = alice
        .store
        .outbound_group_session(room())
        .unwrap()
        .unwrap()
        .session_id;
    alice
        .machine
        .set_local_trust(
            &bob.user(),
            "BOB".into(),
            crate::store::LocalTrust::Blacklisted,
        )
        .unwrap();
    alice
        .machine
        .share_room_key(room(), &members, RotationSettings::default())
        .unwrap();
    server.drive(&alice);
    let after = alice
        .store
        .outbound_group_session(room())
        .unwrap()
        .unwrap()
        .session_id;
    assert_ne!(
        before, after,
        "a blacklisted device must not read new messages"
    );
    let outcome = server.sync(&bob);
    assert_eq!(outcome.to_device[0].event_type, "m.room_key.withheld");
    let content = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("x"))
        .unwrap();
    let err = bob
        .machine
        .decrypt_room_event(room(), &room_event(room(), alice.user(), "$b", content))
        .unwrap_err();
    assert_withheld(&err, "m.blacklisted");
}

#[test]
fn rotation_follows_message_count_and_not_unrelated_changes() {
    let (mut server, alice, bob) = olm_pair();
    let members = vec![alice.user(), bob.user()];
    let settings = RotationSettings {
        period_ms: u64::MAX,
        messages: 3,
    };
    let id = |p: &Peer| {
        p.store
            .outbound_group_session(room())
            .unwrap()
            .unwrap()
            .session_id
    };
    let first = id(&alice);
    for _ in 0..3 {
        alice
            .machine
            .share_room_key(room(), &members, settings)
            .unwrap();
        alice
            .machine
            .encrypt_room_event(room(), "m.room.message", &text("m"))
            .unwrap();
    }
    // A restart is no reason to rotate.
    let restarted = Peer::with_store(alice.user().as_str(), "ALICE", alice.store.clone());
    assert_eq!(id(&restarted), first);
    // A new own device is no reason either; it just gets the key.
    let phone = Peer::new(alice.user().as_str(), "PHONE");
    server.drive(&phone);
    restarted
        .machine
        .receive_sync_changes(SyncChanges {
            changed_users: vec![alice.user()],
            ..Default::default()
        })
        .unwrap();
    restarted.machine.update_tracked_users(&members).unwrap();
    server.establish(&restarted, &members);
    // ...but the 4th message is over the count of 3.
    restarted
        .machine
        .share_room_key(room(), &members, settings)
        .unwrap();
    assert_ne!(id(&restarted), first);
    let _ = bob;
}

#[test]
fn a_member_leaving_rotates_the_session() {
    let (_server, alice, bob) = olm_pair();
    let before = alice
        .store
        .outbound_group_session(room())
        .unwrap()
        .unwrap()
        .session_id;
    alice
        .machine
        .share_room_key(room(), &[alice.user()], RotationSettings::default())
        .unwrap();
    let after = alice
        .store
        .outbound_group_session(room())
        .unwrap()
        .unwrap()
        .session_id;
    assert_ne!(before, after);
    let _ = bob;
}

#[test]
fn sharing_with_verified_devices_only_withholds_unverified_ones_until_verified() {
    let (mut server, alice, bob) = olm_pair();
    let members = vec![alice.user(), bob.user()];
    room_members(&bob, &members);
    let session = |peer: &Peer| {
        peer.store
            .outbound_group_session(room())
            .unwrap()
            .unwrap()
            .session_id
    };
    let before = session(&alice);
    assert!(!alice.machine.shares_with_verified_only().unwrap());
    alice.machine.set_share_with_verified_only(true).unwrap();
    assert!(alice.machine.shares_with_verified_only().unwrap());
    server.take_inbox(&bob);
    alice
        .machine
        .share_room_key(room(), &members, RotationSettings::default())
        .unwrap();
    server.drive(&alice);
    let withheld = session(&alice);
    assert_ne!(
        withheld, before,
        "bob had the key, and is not verified: rotate"
    );
    let outcome = server.sync(&bob);
    assert_eq!(outcome.to_device[0].event_type, "m.room_key.withheld");
    let err = exchange(&alice, &bob, "secret", "$v1").unwrap_err();
    assert_withheld(&err, "m.unverified");
    // Sharing again does not repeat the notice.
    alice
        .machine
        .share_room_key(room(), &members, RotationSettings::default())
        .unwrap();
    server.drive(&alice);
    assert!(server.take_inbox(&bob).is_empty());

    // Verified: bob gets the current session, without another rotation.
    alice
        .machine
        .set_local_trust(&bob.user(), "BOB".into(), LocalTrust::Verified)
        .unwrap();
    alice
        .machine
        .share_room_key(room(), &members, RotationSettings::default())
        .unwrap();
    server.drive(&alice);
    assert_eq!(session(&alice), withheld);
    assert_eq!(server.sync(&bob).room_keys.len(), 1);
    let ok = exchange(&alice, &bob, "for verified bob", "$v2").unwrap();
    assert_eq!(ok.content["body"], "for verified bob");
}

#[test]
fn rotation_follows_the_period_by_the_machines_clock() {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let (_server, alice, bob) = setup_pair_with_clock(&clock);
    let members = vec![alice.user(), bob.user()];
    let settings = RotationSettings {
        period_ms: 3_600_000,
        messages: u64::MAX,
    };
    let id = || {
        alice
            .store
            .outbound_group_session(room())
            .unwrap()
            .unwrap()
            .session_id
    };
    alice
        .machine
        .share_room_key(room(), &members, settings)
        .unwrap();
    let first = id();
    clock.advance(3_599_999);
    alice
        .machine
        .share_room_key(room(), &members, settings)
        .unwrap();
    assert_eq!(id(), first, "within the period");
    clock.advance(1);
    alice
        .machine
        .share_room_key(room(), &members, settings)
        .unwrap();
    assert_ne!(id(), first, "rotated once the period is over");
}

#[test]
fn a_no_olm_device_gets_the_key_from_the_index_it_was_withheld_at() {
    let (mut server, alice, bob) = setup_pair();
    let members = vec![alice.user(), bob.user()];
    for peer in [&alice, &bob] {
        peer.machine.update_tracked_users(&members).unwrap();
        server.drive(peer);
    }
    room_members(&bob, &members);
    let (otks, fbs) = (server.one_time_keys.clone(), server.fallback_keys.clone());
    server.one_time_keys.clear();
    server.fallback_keys.clear();
    server.establish(&alice, &members);
    alice
        .machine
        .share_room_key(room(), &members, RotationSettings::default())
        .unwrap();
    server.drive(&alice);
    server.sync(&bob);
    let session = alice
        .store
        .outbound_group_session(room())
        .unwrap()
        .unwrap()
        .session_id;
    assert!(
        alice
            .store
            .no_olm_room_key(room(), &session, 0)
            .unwrap()
            .is_some()
    );
    assert_eq!(alice.store.counts().unwrap().no_olm_room_keys, 1);
    let content = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("missed"))
        .unwrap();
    let ev = room_event(room(), alice.user(), "$m", content);
    assert!(bob.machine.decrypt_room_event(room(), &ev).is_err());
    server.one_time_keys = otks;
    server.fallback_keys = fbs;
    server.establish(&alice, &members);
    assert!(
        !alice
            .machine
            .share_room_key(room(), &members, RotationSettings::default())
            .unwrap()
            .is_empty()
    );
    server.drive(&alice);
    server.sync(&bob);
    bob.machine.decrypt_room_event(room(), &ev).unwrap();
    alice.machine.discard_room_key(room()).unwrap();
    assert_eq!(alice.store.counts().unwrap().no_olm_room_keys, 0);
}

/// Share the room key from `alice` with `members` and deliver it; bob syncs.
fn share_and_sync(server: &mut FakeServer, alice: &Peer, bob: &Peer, members: &[OwnedUserId]) {
    alice
        .machine
        .share_room_key(room(), members, RotationSettings::default())
        .unwrap();
    server.drive(alice);
    server.sync(bob);
}

#[test]
fn a_rooms_cross_signed_only_policy_waits_for_the_device_to_be_cross_signed() {
    let (mut server, alice, bob) = olm_pair();
    let members = vec![alice.user(), bob.user()];
    room_members(&bob, &members);
    // The global policy stays the default; only this room asks for cross-signed devices.
    alice
        .machine
        .set_room_sharing_policy(room(), Some(SharingPolicy::CrossSignedOnly))
        .unwrap();
    assert_eq!(
        alice.machine.sharing_policy_for(room()).unwrap(),
        SharingPolicy::CrossSignedOnly
    );
    assert_eq!(
        alice
            .machine
            .sharing_policy_for(&rid("!other:localhost"))
            .unwrap(),
        SharingPolicy::AllButBlacklisted
    );
    server.take_inbox(&bob);
    share_and_sync(&mut server, &alice, &bob, &members);
    let err = exchange(&alice, &bob, "not for unsigned devices", "$c1").unwrap_err();
    assert_withheld(&err, "m.unverified");

    // bob cross-signs his device; alice learns it with his device list.
    server.publish_cross_signing(&bob);
    changed(&alice, vec![bob.user()], vec![]);
    server.drive(&alice);
    share_and_sync(&mut server, &alice, &bob, &members);
    let ok = exchange(&alice, &bob, "cross-signed now", "$c2").unwrap();
    assert_eq!(ok.content["body"], "cross-signed now");

    // The room follows the global policy again once its own is removed.
    alice.machine.set_room_sharing_policy(room(), None).unwrap();
    alice
        .machine
        .set_sharing_policy(SharingPolicy::VerifiedOnly)
        .unwrap();
    assert_eq!(
        alice.machine.sharing_policy_for(room()).unwrap(),
        SharingPolicy::VerifiedOnly
    );
    assert!(alice.machine.shares_with_verified_only().unwrap());
    share_and_sync(&mut server, &alice, &bob, &members);
    let err = exchange(&alice, &bob, "verified only", "$c3").unwrap_err();
    assert_withheld(&err, "m.unverified");
    // Verifying bob's identity (not his device by hand) is enough.
    alice.machine.verify_identity(&bob.user()).unwrap();
    share_and_sync(&mut server, &alice, &bob, &members);
    let ok = exchange(&alice, &bob, "verified identity", "$c4").unwrap();
    assert_eq!(ok.content["body"], "verified identity");
}

#[test]
fn all_devices_includes_blacklisted_ones_but_never_a_tampered_device() {
    let (mut server, alice, bob) = olm_pair();
    let members = vec![alice.user(), bob.user()];
    room_members(&bob, &members);
    alice
        .machine
        .set_local_trust(&bob.user(), "BOB".into(), LocalTrust::Blacklisted)
        .unwrap();
    alice
        .machine
        .set_sharing_policy(SharingPolicy::AllDevices)
        .unwrap();
    server.take_inbox(&bob);
    share_and_sync(&mut server, &alice, &bob, &members);
    assert!(exchange(&alice, &bob, "to everyone", "$a1").is_ok());
    alice
        .machine
        .set_sharing_policy(SharingPolicy::AllButBlacklisted)
        .unwrap();
    share_and_sync(&mut server, &alice, &bob, &members);
    let err = exchange(&alice, &bob, "not to blacklisted", "$a2").unwrap_err();
    assert_withheld(&err, "m.blacklisted");

    // A cross-signing signature on bob's device that does not verify: left out even when
    // sharing with all devices.
    alice
        .machine
        .set_local_trust(&bob.user(), "BOB".into(), LocalTrust::Unset)
        .unwrap();
    server.publish_cross_signing(&bob);
    server.tamper_cross_signing_signature(&bob);
    alice
        .machine
        .set_sharing_policy(SharingPolicy::AllDevices)
        .unwrap();
    changed(&alice, vec![bob.user()], vec![]);
    server.drive(&alice);
    // A fresh session, so that bob gets a fresh notice (one per session).
    alice.machine.discard_room_key(room()).unwrap();
    share_and_sync(&mut server, &alice, &bob, &members);
    let err = exchange(&alice, &bob, "not to a tampered device", "$a3").unwrap_err();
    assert_withheld(&err, "m.unverified");
}
