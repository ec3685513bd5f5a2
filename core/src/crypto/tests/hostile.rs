//! Hostile input (issue 8): forged, malformed and unbounded data from other users and the
//! homeserver never stops the machine, never loosens a check and never overwrites what is
//! stored.

use ruma::UserId;
use ruma::events::ToDeviceEventType;
use serde_json::{Value, json};
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::SessionConfig;

use super::super::account::OwnAccount;
use super::super::olm::OlmSession;
use super::super::signing::sign_json_with;
use super::super::state::UNWEDGE_INTERVAL_MS;
use super::*;
use crate::store::{Changes, CryptoChanges, PendingToDevice};

/// Device keys of `user`/`device` published with `curve25519` as identity key, self-signed
/// with a fresh ed25519 key (what a homeserver or a user can publish for anyone's key).
fn device_keys_with_curve(user: &UserId, device: &str, curve25519: &str) -> Value {
    let account = OwnAccount::new(user, &did(device), 0);
    let mut keys = account.device_keys().unwrap();
    keys["keys"][format!("curve25519:{device}")] = curve25519.into();
    keys.as_object_mut().unwrap().remove("signatures");
    sign_json_with(
        &mut keys,
        user.as_str(),
        &format!("ed25519:{device}"),
        |b| account.inner.sign(b),
    )
    .unwrap();
    keys
}

#[test]
fn a_device_with_an_empty_id_is_skipped_and_the_rest_of_the_answer_is_stored() {
    let (mut server, alice, bob) = setup_pair();
    let carol = Peer::new("@carol:localhost", "CAROL");
    server.drive(&carol);
    // bob's homeserver lists a device "" whose self-signature verifies.
    let ghost = OwnAccount::new(&bob.user(), &did(""), 0);
    server
        .device_keys
        .get_mut(&bob.user())
        .unwrap()
        .insert(did(""), ghost.device_keys().unwrap());
    alice
        .machine
        .update_tracked_users(&[bob.user(), carol.user()])
        .unwrap();
    let queries = pending_queries(&alice);
    assert_eq!(queries.len(), 1);
    let (id, query) = &queries[0];
    let outcome = alice
        .machine
        .mark_keys_query_sent(id, &server.query(query))
        .expect("one invalid device does not fail the answer");
    assert_eq!(outcome.rejected.len(), 1, "{:?}", outcome.rejected);
    let ids = |user: &UserId| -> Vec<OwnedDeviceId> {
        alice
            .machine
            .devices(user)
            .unwrap()
            .into_iter()
            .map(|d| d.device_id)
            .collect()
    };
    assert_eq!(ids(&bob.user()), ["BOB"]);
    assert_eq!(ids(&carol.user()), ["CAROL"]);
    for user in [bob.user(), carol.user()] {
        assert_eq!(
            alice.machine.tracking_state(&user).unwrap(),
            crate::store::TrackingState::UpToDate
        );
    }
    assert!(pending_queries(&alice).is_empty(), "nothing is re-queried");
}

#[test]
fn a_device_squatting_another_users_curve25519_key_is_refused() {
    let (mut server, alice, bob) = setup_pair();
    let squatter = uid("@0:evil");
    server
        .device_keys
        .entry(squatter.clone())
        .or_default()
        .insert(
            "EVIL".into(),
            device_keys_with_curve(&squatter, "EVIL", &alice.machine.curve25519_key()),
        );
    // bob knows alice's device, then learns the squatter's.
    bob.machine.update_tracked_users(&[alice.user()]).unwrap();
    server.drive(&bob);
    bob.machine
        .update_tracked_users(std::slice::from_ref(&squatter))
        .unwrap();
    let outcomes = server.drive(&bob);
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].rejected.len(), 1, "{:?}", outcomes[0].rejected);
    assert!(bob.machine.devices(&squatter).unwrap().is_empty());

    // alice's Olm messages still reach bob, and bob's reach alice.
    let members = vec![alice.user(), bob.user()];
    server.share(&alice, room(), &members);
    let outcome = server.sync(&bob);
    assert_eq!(outcome.room_keys.len(), 1, "{:?}", outcome.to_device);
    exchange(&alice, &bob, "hello bob", "$a").unwrap();
    server.share(&bob, room(), &members);
    let outcome = server.sync(&alice);
    assert_eq!(outcome.room_keys.len(), 1, "{:?}", outcome.to_device);
    exchange(&bob, &alice, "hello alice", "$b").unwrap();
}

#[test]
fn a_squatter_known_first_loses_the_key_to_the_device_that_proves_it_holds_it() {
    let (mut server, alice, bob) = setup_pair();
    let squatter = uid("@0:evil");
    server
        .device_keys
        .entry(squatter.clone())
        .or_default()
        .insert(
            "EVIL".into(),
            device_keys_with_curve(&squatter, "EVIL", &alice.machine.curve25519_key()),
        );
    // Learnt in one answer, neither can be told from the other: both are refused.
    bob.machine
        .update_tracked_users(&[squatter.clone(), alice.user()])
        .unwrap();
    let outcomes = server.drive(&bob);
    assert_eq!(outcomes[0].rejected.len(), 2, "{:?}", outcomes[0].rejected);
    assert!(
        outcomes[0]
            .rejected
            .iter()
            .all(|(_, _, e)| matches!(e, DeviceKeyError::Curve25519Contested)),
        "{:?}",
        outcomes[0].rejected
    );
    // Learnt first on its own, the squatter is stored and alice's device refused.
    changed(&bob, vec![squatter.clone()], vec![]);
    server.drive(&bob);
    changed(&bob, vec![alice.user()], vec![]);
    let outcomes = server.drive(&bob);
    assert!(matches!(
        outcomes[0].rejected[..],
        [(_, _, DeviceKeyError::Curve25519Taken { .. })]
    ));
    assert_eq!(bob.machine.devices(&squatter).unwrap().len(), 1);
    // alice's first Olm message shows who holds the key (the squatter's Ed25519 key is not
    // the one it claims): the squatter is dropped, alice re-queried and known from then on.
    let members = vec![alice.user(), bob.user()];
    server.share(&alice, room(), &members);
    let outcome = server.sync(&bob);
    assert_eq!(outcome.room_keys.len(), 1, "{:?}", outcome.to_device);
    server.drive(&bob);
    let alice_devices = bob.machine.devices(&alice.user()).unwrap();
    assert_eq!(alice_devices.len(), 1);
    assert!(!alice_devices[0].deleted);
    assert!(bob.machine.devices(&squatter).unwrap()[0].deleted);
    server.share(&bob, room(), &members);
    let outcome = server.sync(&alice);
    assert_eq!(outcome.room_keys.len(), 1, "{:?}", outcome.to_device);
    exchange(&bob, &alice, "hello alice", "$b").unwrap();
}

#[test]
fn a_stored_to_device_request_that_cannot_be_built_is_dropped_alone() {
    let (server, alice, _bob) = setup_pair();
    let _ = server;
    alice
        .store
        .save_changes(Changes::from(CryptoChanges {
            pending_to_device: vec![
                PendingToDevice {
                    txn_id: "bad".into(),
                    event_type: ToDeviceEventType::RoomKeyRequest,
                    messages_json: json!({"not-a-user": {"DEV": {}}}).to_string(),
                    room_key: None,
                },
                PendingToDevice {
                    txn_id: "good".into(),
                    event_type: ToDeviceEventType::RoomKeyRequest,
                    messages_json: json!({"@bob:localhost": {"BOB": {}}}).to_string(),
                    room_key: None,
                },
            ],
            ..Default::default()
        }))
        .unwrap();
    let requests = alice
        .machine
        .outgoing_requests()
        .expect("one bad stored request does not stop the others");
    let ids: Vec<&str> = requests.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["good"]);
    let left: Vec<String> = alice
        .store
        .pending_to_device()
        .unwrap()
        .into_iter()
        .map(|p| p.txn_id)
        .collect();
    assert_eq!(left, ["good"], "the bad one is dropped for good");
}

/// alice and her laptop verified each other and have an Olm channel; bob shared his
/// session of [`ROOM`] with alice (not the laptop, which does not know bob's devices).
/// Returns bob's event in that session and its session id.
fn laptop_missing_bobs_key() -> (FakeServer, Peer, Peer, Peer, Value) {
    let (mut server, alice, bob, laptop, _) = alice_with_laptop();
    server.share(&bob, room(), &[bob.user(), alice.user()]);
    server.sync(&alice);
    let content = bob
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("from bob"))
        .unwrap();
    let event = room_event(room(), bob.user(), "$bob", content);
    server.take_inbox(&laptop);
    for (me, other) in [(&alice, "LAPTOP"), (&laptop, "ALICE")] {
        me.machine.update_tracked_users(&[alice.user()]).unwrap();
        changed(me, vec![alice.user()], vec![]);
        server.drive(me);
        assert!(
            me.machine
                .set_local_trust(&alice.user(), other.into(), LocalTrust::Verified)
                .unwrap()
        );
    }
    server.establish(&alice, &[alice.user()]);
    server.establish(&laptop, &[alice.user()]);
    server.sync(&alice);
    (server, alice, bob, laptop, event)
}

#[test]
fn a_forwarded_key_of_unknown_origin_never_vouches_for_a_sender() {
    let (mut server, alice, bob, laptop, event) = laptop_missing_bobs_key();
    let session_id = event["content"]["session_id"].as_str().unwrap();
    let sender_key = event["content"]["sender_key"].as_str().unwrap();
    assert!(
        laptop
            .machine
            .request_room_key(room(), session_id, sender_key, None)
            .unwrap()
    );
    server.drive(&laptop);
    server.sync(&alice);
    server.drive(&alice);
    let outcome = server.sync(&laptop);
    assert_eq!(outcome.room_keys.len(), 1, "{:?}", outcome.to_device);

    // The server attributes bob's message to mallory: never shown as mallory's.
    let mut forged = event.clone();
    forged["sender"] = "@mallory:localhost".into();
    assert!(laptop.machine.decrypt_room_event(room(), &forged).is_err());
    // Once the laptop knows bob's devices, bob's message decrypts, as bob's, and the
    // forgery is a sender mismatch.
    laptop.machine.update_tracked_users(&[bob.user()]).unwrap();
    server.drive(&laptop);
    let decrypted = laptop.machine.decrypt_room_event(room(), &event).unwrap();
    assert_eq!(decrypted.sender, bob.user());
    assert_eq!(decrypted.sender_device, Some(did("BOB")));
    assert!(matches!(
        laptop.machine.decrypt_room_event(room(), &forged),
        Err(CryptoError::Megolm(MegolmError::SenderMismatch { .. }))
    ));
}

#[test]
fn a_forwarded_key_at_a_lower_index_from_another_sender_key_replaces_nothing() {
    let (mut server, alice, bob, laptop, event) = laptop_missing_bobs_key();
    let session_id = event["content"]["session_id"].as_str().unwrap().to_owned();
    // The laptop gets bob's session directly, after bob's first message (index 1).
    changed(&bob, vec![alice.user()], vec![]);
    server.establish(&bob, &[alice.user()]);
    let key = room_key_of(&bob, room());
    let p = payload(&bob, &laptop, "m.room_key", key);
    let outcome = receive(&laptop, vec![olm_event(&bob, &laptop, bob.user(), &p)]);
    assert_eq!(outcome.room_keys.len(), 1, "{:?}", outcome.to_device);
    let before = laptop
        .store
        .inbound_group_session(room(), &session_id)
        .unwrap()
        .expect("laptop has bob's session");
    assert_eq!(before.first_known_index, 1);

    // alice (verified own device) forwards it from index 0, claiming another sender key.
    assert!(
        laptop
            .machine
            .request_room_key(room(), &session_id, &before.sender_key, None)
            .unwrap()
    );
    let record = alice
        .store
        .inbound_group_session(room(), &session_id)
        .unwrap()
        .unwrap();
    let group = super::super::megolm::InboundGroup::from_record(record).unwrap();
    let other_key = Peer::new("@mallory:localhost", "M")
        .machine
        .curve25519_key();
    let forwarded = json!({
        "algorithm": MEGOLM_ALGORITHM, "room_id": ROOM, "session_id": session_id,
        "session_key": group.export(), "sender_key": other_key,
        "sender_claimed_ed25519_key": bob.machine.ed25519_key(),
        "forwarding_curve25519_key_chain": [],
    });
    let p = payload(&alice, &laptop, "m.forwarded_room_key", forwarded);
    let outcome = receive(&laptop, vec![olm_event(&alice, &laptop, alice.user(), &p)]);
    assert!(outcome.room_keys.is_empty(), "{:?}", outcome.to_device);
    let after = laptop
        .store
        .inbound_group_session(room(), &session_id)
        .unwrap()
        .unwrap();
    assert_eq!(after, before);
}

#[test]
fn a_refused_room_key_still_consumes_the_one_time_key_for_good() {
    let (mut server, alice, bob) = setup_pair();
    bob.machine.update_tracked_users(&[alice.user()]).unwrap();
    server.drive(&bob);
    let bob_id = (bob.user(), did("BOB"));
    let (_, otk) = server.one_time_keys[&bob_id]
        .first_key_value()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    server.establish(&alice, &[bob.user()]);
    // A pre-key message whose payload checks pass but whose room key is invalid.
    let bad_key = json!({"algorithm": MEGOLM_ALGORITHM, "room_id": ROOM,
                         "session_id": "x", "session_key": "not a key"});
    let p = payload(&alice, &bob, "m.room_key", bad_key);
    let outcome = receive(&bob, vec![olm_event(&alice, &bob, alice.user(), &p)]);
    assert!(outcome.to_device[0].result.is_err());

    // After a restart, a second session built on the same one-time key is refused.
    let bob = Peer::with_store(bob.user().as_str(), "BOB", bob.store.clone());
    let alice_account = OwnAccount::from_record(&alice.store.account().unwrap().unwrap()).unwrap();
    let otk = Curve25519PublicKey::from_base64(otk["key"].as_str().unwrap()).unwrap();
    let identity = Curve25519PublicKey::from_base64(&bob.machine.curve25519_key()).unwrap();
    let session = alice_account
        .inner
        .create_outbound_session(SessionConfig::version_1(), identity, otk)
        .unwrap();
    let mut session = OlmSession::new(bob.machine.curve25519_key(), session, 0);
    let p = payload(&alice, &bob, "m.dummy", json!({}));
    let content = session
        .encrypt(&alice.machine.curve25519_key(), &p, 0)
        .unwrap();
    let event = json!({"type": "m.room.encrypted", "sender": alice.user(), "content": content});
    let outcome = receive(&bob, vec![event]);
    assert!(
        matches!(
            outcome.to_device[0].result,
            Err(OlmError::SessionCreation(_))
        ),
        "{:?}",
        outcome.to_device
    );
}

#[test]
fn a_fallback_key_rotated_while_an_upload_is_in_flight_is_uploaded_before_the_next_rotation() {
    let (mut server, alice, bob) = setup_pair();
    let bob_id = (bob.user(), did("BOB"));
    // bob's one-time keys are gone: alice's session is built on bob's fallback key.
    server.one_time_keys.get_mut(&bob_id).unwrap().clear();
    server.establish(&alice, &[bob.user()]);
    let held = olm_event(
        &alice,
        &bob,
        alice.user(),
        &payload(&alice, &bob, "m.dummy", json!({})),
    );
    // bob tops up its one-time keys: an upload is in flight...
    bob.machine
        .receive_sync_changes(SyncChanges {
            one_time_key_counts: Some(BTreeMap::from([(SIGNED_CURVE25519.to_owned(), 0)])),
            ..Default::default()
        })
        .unwrap();
    let upload = bob
        .machine
        .outgoing_requests()
        .unwrap()
        .into_iter()
        .find_map(|r| match r.kind {
            OutgoingKind::KeysUpload(u) => Some(u),
            _ => None,
        })
        .expect("an upload");
    // ...when the server reports the fallback key used.
    let used = || SyncChanges {
        unused_fallback_key_types: Some(Vec::new()),
        ..Default::default()
    };
    bob.machine.receive_sync_changes(used()).unwrap();
    let counts = server.upload(&bob, &upload);
    bob.machine.mark_keys_upload_sent(&counts).unwrap();
    bob.machine.receive_sync_changes(used()).unwrap();
    server.drive(&bob);
    // The message built on the fallback key the server handed out still decrypts.
    let outcome = receive(&bob, vec![held]);
    assert_eq!(
        outcome.to_device[0].result,
        Ok("m.dummy".to_owned()),
        "{:?}",
        outcome.to_device
    );
}

#[test]
fn a_withheld_notice_from_a_stranger_does_not_change_another_senders_events() {
    let (_server, alice, bob) = olm_pair();
    room_members(&bob, &[alice.user(), bob.user()]);
    // A session bob does not have.
    alice.machine.discard_room_key(room()).unwrap();
    alice
        .machine
        .share_room_key(room(), &[alice.user()], RotationSettings::default())
        .unwrap();
    let content = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("x"))
        .unwrap();
    let session_id = content["session_id"].as_str().unwrap().to_owned();
    let event = room_event(room(), alice.user(), "$x", content);
    let notice = |sender: &str| {
        json!({"type": "m.room_key.withheld", "sender": sender, "content": {
            "algorithm": MEGOLM_ALGORITHM, "room_id": ROOM, "session_id": session_id,
            "sender_key": alice.machine.curve25519_key(), "code": "m.blacklisted",
            "reason": "forged"}})
    };
    receive(&bob, vec![notice("@mallory:localhost")]);
    let err = bob.machine.decrypt_room_event(room(), &event).unwrap_err();
    assert!(
        matches!(err, CryptoError::Megolm(MegolmError::MissingSession { .. })),
        "{err:?}"
    );
    // The session's sender may say why.
    receive(&bob, vec![notice(alice.user().as_str())]);
    let err = bob.machine.decrypt_room_event(room(), &event).unwrap_err();
    assert_withheld(&err, "m.blacklisted");
}

#[test]
fn an_olm_message_from_a_stranger_does_not_make_us_track_them() {
    let (mut server, _alice, bob) = setup_pair();
    let mallory = Peer::new("@mallory:evil", "M");
    server.drive(&mallory);
    server.establish(&mallory, &[bob.user()]);
    let p = payload(&mallory, &bob, "m.dummy", json!({}));
    let outcome = receive(&bob, vec![olm_event(&mallory, &bob, mallory.user(), &p)]);
    assert!(outcome.to_device[0].result.is_ok());
    assert_eq!(
        bob.machine.tracking_state(&mallory.user()).unwrap(),
        crate::store::TrackingState::NotTracked
    );
}

#[test]
fn recipients_of_a_room_key_the_server_refused_for_good_get_it_with_the_next_share() {
    let (mut server, alice, bob) = setup_pair();
    let members = vec![alice.user(), bob.user()];
    server.establish(&alice, &members);
    let settings = RotationSettings::default();
    let requests = alice
        .machine
        .share_room_key(room(), &members, settings)
        .unwrap();
    assert_eq!(requests.len(), 1);
    alice
        .machine
        .mark_to_device_failed(&requests[0].id)
        .unwrap();
    assert!(
        alice.store.pending_to_device().unwrap().is_empty(),
        "dropped"
    );
    let again = alice
        .machine
        .share_room_key(room(), &members, settings)
        .unwrap();
    assert_eq!(
        again.len(),
        1,
        "bob gets the key again, in the same session"
    );
    server.drive(&alice);
    let outcome = server.sync(&bob);
    assert_eq!(outcome.room_keys.len(), 1, "{:?}", outcome.to_device);
    exchange(&alice, &bob, "after the refusal", "$r").unwrap();
}

#[test]
fn olm_sessions_a_stranger_starts_with_our_fallback_key_are_bounded() {
    let (server, _alice, bob) = setup_pair();
    let bob_id = (bob.user(), did("BOB"));
    // The fallback key starts any number of sessions, from any number of fresh keys.
    let (_, fallback) = server.fallback_keys[&bob_id].first_key_value().unwrap();
    let fallback = Curve25519PublicKey::from_base64(fallback["key"].as_str().unwrap()).unwrap();
    let bob_curve = bob.machine.curve25519_key();
    let identity = Curve25519PublicKey::from_base64(&bob_curve).unwrap();
    let max = crate::store::quota::MAX_OLM_SESSIONS_OF_UNKNOWN_DEVICES;
    let events: Vec<Value> = (0..max + 20)
        .map(|_| {
            let account = vodozemac::olm::Account::new();
            let mut session = account
                .create_outbound_session(SessionConfig::version_1(), identity, fallback)
                .unwrap();
            let payload = json!({"type": "m.dummy", "content": {}, "sender": "@mallory:evil",
                "recipient": bob.user(), "recipient_keys": {"ed25519": bob.machine.ed25519_key()},
                "keys": {"ed25519": account.ed25519_key().to_base64()}});
            let vodozemac::olm::OlmMessage::PreKey(message) =
                session.encrypt(payload.to_string()).unwrap()
            else {
                unreachable!("the first message of a session is a pre-key message")
            };
            json!({"type": "m.room.encrypted", "sender": "@mallory:evil", "content": {
                "algorithm": OLM_ALGORITHM, "sender_key": account.curve25519_key().to_base64(),
                "ciphertext": {&bob_curve: {"type": 0, "body": message.to_base64()}}}})
        })
        .collect();
    let outcome = receive(&bob, events);
    assert!(outcome.to_device.iter().all(|o| o.result.is_ok()));
    let counts = bob.store.counts().unwrap();
    assert_eq!(counts.olm_sessions_of_unknown_devices, max);
}

#[test]
fn users_of_a_query_refused_for_good_are_queried_alone_and_only_the_culprit_waits() {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let (mut server, alice, bob) = setup_pair_with_clock(&clock);
    let carol = Peer::new("@carol:localhost", "CAROL");
    server.drive(&carol);
    alice
        .machine
        .update_tracked_users(&[bob.user(), carol.user()])
        .unwrap();
    let queries = pending_queries(&alice);
    assert_eq!(queries.len(), 1, "one query for both");
    alice
        .machine
        .mark_query_failed(&queries[0].0, true)
        .unwrap();
    // Each alone now.
    let queries = pending_queries(&alice);
    assert_eq!(queries.len(), 2);
    assert!(queries.iter().all(|(_, q)| q.device_keys.len() == 1));
    // bob's is refused again (bob is the culprit): he waits; carol's is answered.
    for (id, query) in &queries {
        if query.device_keys.keys().any(|u| u.as_str() == bob.user()) {
            alice.machine.mark_query_failed(id, true).unwrap();
        } else {
            alice
                .machine
                .mark_keys_query_sent(id, &server.query(query))
                .unwrap();
        }
    }
    assert_eq!(alice.machine.devices(&carol.user()).unwrap().len(), 1);
    assert!(pending_queries(&alice).is_empty(), "bob is backed off");
    assert_eq!(
        alice.machine.tracking_state(&bob.user()).unwrap(),
        crate::store::TrackingState::PendingDownload
    );
    // bob's first refusal alone: 15 s. Not a moment earlier...
    clock.advance(14_999);
    assert!(pending_queries(&alice).is_empty(), "bob still waits");
    // ...then he is asked again, alone.
    clock.advance(1);
    let queries = pending_queries(&alice);
    assert_eq!(
        queries.len(),
        1,
        "bob is queried again once his backoff is over"
    );
    assert!(
        queries[0]
            .1
            .device_keys
            .keys()
            .all(|u| u.as_str() == bob.user())
    );
}

#[test]
fn a_squatter_caught_once_never_contests_the_key_again() {
    let (mut server, alice, bob) = setup_pair();
    let squatter = uid("@0:evil");
    server
        .device_keys
        .entry(squatter.clone())
        .or_default()
        .insert(
            "EVIL".into(),
            device_keys_with_curve(&squatter, "EVIL", &alice.machine.curve25519_key()),
        );
    bob.machine
        .update_tracked_users(std::slice::from_ref(&squatter))
        .unwrap();
    server.drive(&bob);
    bob.machine.update_tracked_users(&[alice.user()]).unwrap();
    server.drive(&bob);
    assert!(
        bob.machine.devices(&alice.user()).unwrap().is_empty(),
        "the key was taken"
    );
    // alice's Olm message shows the squatter for what it is: blacklisted and dropped.
    let members = vec![alice.user(), bob.user()];
    server.share(&alice, room(), &members);
    server.sync(&bob);
    let caught = &bob.machine.devices(&squatter).unwrap()[0];
    assert!(caught.deleted && caught.local_trust == LocalTrust::Blacklisted);
    // Listed again in the same answer as alice: alice's device wins the key.
    changed(&bob, vec![squatter.clone(), alice.user()], vec![]);
    server.drive(&bob);
    let alice_devices = bob.machine.devices(&alice.user()).unwrap();
    assert_eq!(alice_devices.len(), 1, "{alice_devices:?}");
    assert!(bob.machine.devices(&squatter).unwrap()[0].deleted);
}

#[test]
fn a_room_key_from_an_unknown_device_names_no_device_and_a_later_one_confirms_it() {
    let (mut server, alice, bob) = setup_pair();
    let members = vec![alice.user(), bob.user()];
    // bob does not know alice's device: the device the payload names is only a claim.
    server.share(&alice, room(), &members);
    server.sync(&bob);
    let session_id = alice
        .store
        .outbound_group_session(room())
        .unwrap()
        .unwrap()
        .session_id;
    let record = bob
        .store
        .inbound_group_session(room(), &session_id)
        .unwrap()
        .unwrap();
    assert_eq!(record.sender_user, Some(alice.user()));
    assert_eq!(record.sender_device, None);
    // A copy forwarded at the same index by an own device changes nothing.
    let decrypted = exchange(&alice, &bob, "hi", "$1").unwrap();
    assert_eq!(decrypted.sender_device, None);
}

/// A well-formed normal Olm message of a session between two strangers.
fn foreign_normal_message() -> String {
    let x = vodozemac::olm::Account::new();
    let mut y = vodozemac::olm::Account::new();
    y.generate_one_time_keys(1);
    let otk = *y.one_time_keys().values().next().unwrap();
    let mut outbound = x
        .create_outbound_session(SessionConfig::version_1(), y.curve25519_key(), otk)
        .unwrap();
    let vodozemac::olm::OlmMessage::PreKey(first) = outbound.encrypt("hi").unwrap() else {
        unreachable!("a session's first message is a pre-key message")
    };
    let mut inbound = y
        .create_inbound_session(SessionConfig::version_1(), x.curve25519_key(), &first)
        .unwrap()
        .session;
    let vodozemac::olm::OlmMessage::Normal(reply) = inbound.encrypt("reply").unwrap() else {
        unreachable!("a reply is a normal message")
    };
    reply.to_base64()
}

#[test]
fn a_device_we_cannot_make_a_session_with_is_claimed_once_an_hour_not_every_sync() {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let (mut server, alice, bob) = olm_pair_with_clock(&clock);
    // An Olm message from bob's key that none of alice's sessions decrypts: alice wants
    // to unwedge the channel...
    let garbage = json!({"type": "m.room.encrypted", "sender": bob.user(), "content": {
        "algorithm": OLM_ALGORITHM, "sender_key": bob.machine.curve25519_key(),
        "ciphertext": {alice.machine.curve25519_key(): {"type": 1,
                                                        "body": foreign_normal_message()}}}});
    receive(&alice, vec![garbage.clone()]);
    // ...but bob has no key left to claim.
    let bob_id = (bob.user(), did("BOB"));
    server.one_time_keys.get_mut(&bob_id).unwrap().clear();
    server.fallback_keys.get_mut(&bob_id).unwrap().clear();
    let claim = alice.machine.session_repair_request().unwrap();
    let Some(OutgoingRequest {
        kind: OutgoingKind::KeysClaim(r),
        ..
    }) = claim
    else {
        panic!("a claim to unwedge: {claim:?}");
    };
    let outcome = alice
        .machine
        .mark_keys_claim_sent(&server.claim(&r))
        .unwrap();
    assert_eq!(outcome.sessions_created, 0);
    // The next undecryptable message within the hour asks for no claim again...
    clock.advance(UNWEDGE_INTERVAL_MS - 1);
    receive(&alice, vec![garbage.clone()]);
    assert!(alice.machine.session_repair_request().unwrap().is_none());
    // ...one after the hour does.
    clock.advance(1);
    receive(&alice, vec![garbage]);
    assert!(
        alice.machine.session_repair_request().unwrap().is_some(),
        "claimed again after the hour"
    );
}

#[test]
fn invalid_ids_in_to_device_events_are_refused_where_they_enter() {
    let (_server, alice, bob) = olm_pair();
    room_members(&bob, &[alice.user(), bob.user()]);
    let sessions_before = bob.store.inbound_group_session_count().unwrap();
    // An Olm payload (over a real session, every other identity field right) whose sender
    // is not a user id does not parse; the same payload with alice as sender does.
    let dummy = olm_identity(&alice, &bob);
    let mut forged = dummy.clone();
    forged["sender"] = "not-a-user".into();
    // A room key (a real one) whose room id is not a room id.
    let mut bad_room = olm_identity(&alice, &bob);
    bad_room["type"] = "m.room_key".into();
    bad_room["content"] = room_key_of(&alice, room());
    bad_room["content"]["room_id"] = "not-a-room".into();
    // A withheld notice of the session's sender, a member, naming no valid room; the same
    // notice for the room is kept.
    let session_id = bad_room["content"]["session_id"].clone();
    let notice = |room_id: &str| {
        json!({"type": "m.room_key.withheld", "sender": alice.user(), "content": {
            "algorithm": MEGOLM_ALGORITHM, "room_id": room_id, "session_id": session_id,
            "sender_key": alice.machine.curve25519_key(), "code": "m.blacklisted"}})
    };
    let outcome = receive(
        &bob,
        vec![
            olm_event_raw(&alice, &bob, dummy.to_string().as_bytes()),
            olm_event_raw(&alice, &bob, forged.to_string().as_bytes()),
            olm_event_raw(&alice, &bob, bad_room.to_string().as_bytes()),
            notice("not-a-room"),
            notice(ROOM),
        ],
    );
    let results: Vec<_> = outcome.to_device.iter().map(|o| &o.result).collect();
    assert!(
        matches!(
            &results[..],
            [
                Ok(dummy),
                Err(OlmError::Malformed(_)),
                Err(OlmError::InvalidRoomKey(_)),
                Err(OlmError::Malformed(_)),
                Ok(withheld),
            ] if dummy == "m.dummy" && withheld == "m.room_key.withheld"
        ),
        "{results:?}"
    );
    assert!(outcome.room_keys.is_empty());
    assert_eq!(
        bob.store.inbound_group_session_count().unwrap(),
        sessions_before
    );
    assert_eq!(bob.store.counts().unwrap().withheld_notices, 1);

    // A key request of an own device naming no valid room is malformed; naming the room,
    // it is a request.
    let request = |room_id: &str| {
        json!({"type": "m.room_key_request", "sender": alice.user(), "content": {
            "action": "request", "request_id": room_id, "requesting_device_id": "LAPTOP",
            "body": {"algorithm": MEGOLM_ALGORITHM, "room_id": room_id,
                     "session_id": session_id, "sender_key": alice.machine.curve25519_key()}}})
    };
    let outcome = receive(&alice, vec![request("not-a-room"), request(ROOM)]);
    let results: Vec<_> = outcome.to_device.iter().map(|o| &o.result).collect();
    assert!(
        matches!(
            &results[..],
            [Err(OlmError::Malformed(_)), Ok(request)] if request == "m.room_key_request"
        ),
        "{results:?}"
    );
}
