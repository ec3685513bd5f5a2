//! Olm: claimed one-time keys, checks of decrypted Olm payloads, pre-key messages, one-time
//! and fallback key upload, and the repair of wedged sessions.

use super::*;

#[test]
fn claimed_one_time_key_with_bad_signature_creates_no_session() {
    let (mut server, alice, bob) = setup_pair();
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    server.drive(&alice);
    for key in server
        .one_time_keys
        .get_mut(&(bob.user(), "BOB".into()))
        .unwrap()
        .values_mut()
    {
        key["key"] = Peer::new("@x:y", "X").machine.curve25519_key().into();
    }
    let Some(OutgoingRequest {
        kind: OutgoingKind::KeysClaim(r),
        ..
    }) = alice.machine.missing_sessions(&[bob.user()]).unwrap()
    else {
        panic!("expected a claim")
    };
    let outcome = alice
        .machine
        .mark_keys_claim_sent(&server.claim(&r))
        .unwrap();
    assert_eq!(outcome.sessions_created, 0);
    assert!(matches!(
        outcome.failed[0].2,
        OneTimeKeyError::BadSignature(_)
    ));
    assert!(
        alice
            .store
            .olm_sessions(&[&bob.machine.curve25519_key()])
            .unwrap()
            .is_empty()
    );
    // Still missing, so a later claim is offered again.
    assert!(
        alice
            .machine
            .missing_sessions(&[bob.user()])
            .unwrap()
            .is_some()
    );
}

#[test]
fn forged_olm_payload_fields_are_rejected_without_storing_the_key() {
    let (_server, alice, bob) = olm_pair();
    let mallory_room: &RoomId = &rid("!other:localhost");
    alice
        .machine
        .share_room_key(mallory_room, &[alice.user()], RotationSettings::default())
        .unwrap();
    let key = room_key_of(&alice, mallory_room);
    type Forgery = Box<dyn Fn(&mut OlmPayload)>;
    let cases: Vec<(&str, Forgery)> = vec![
        ("sender", Box::new(|p| p.sender = uid("@mallory:localhost"))),
        (
            "recipient",
            Box::new(|p| p.recipient = uid("@carol:localhost")),
        ),
        (
            "recipient_keys.ed25519",
            Box::new(|p| p.recipient_keys.ed25519 = "AAAA".into()),
        ),
        ("keys.ed25519", Box::new(|p| p.keys.ed25519 = "BBBB".into())),
    ];
    for (field, forge) in cases {
        let mut p = payload(&alice, &bob, "m.room_key", key.clone());
        forge(&mut p);
        let outcome = receive(&bob, vec![olm_event(&alice, &bob, alice.user(), &p)]);
        match &outcome.to_device[0].result {
            Err(OlmError::PayloadMismatch { field: f, .. }) => assert_eq!(*f, field),
            other => panic!("{field}: expected a mismatch, got {other:?}"),
        }
        assert!(outcome.room_keys.is_empty());
        assert!(
            bob.store
                .inbound_group_session(mallory_room, key["session_id"].as_str().unwrap())
                .unwrap()
                .is_none()
        );
    }
}

#[test]
fn room_key_from_a_device_of_another_user_is_rejected() {
    let (mut server, alice, bob) = olm_pair();
    let mallory = Peer::new("@mallory:localhost", "MAL");
    server.drive(&mallory);
    let members = vec![bob.user(), mallory.user()];
    server.establish(&mallory, &members);
    server.establish(&bob, &members);
    let room: &RoomId = &rid("!mal:localhost");
    mallory
        .machine
        .share_room_key(room, &[mallory.user()], RotationSettings::default())
        .unwrap();
    let mut p = payload(&mallory, &bob, "m.room_key", room_key_of(&mallory, room));
    // Mallory claims to be alice, and a malicious server delivers it as from alice.
    p.sender = alice.user();
    let outcome = receive(&bob, vec![olm_event(&mallory, &bob, alice.user(), &p)]);
    assert!(matches!(
        &outcome.to_device[0].result,
        Err(OlmError::PayloadMismatch {
            field: "sender",
            ..
        })
    ));
    assert_eq!(
        bob.store.inbound_group_session_count().unwrap(),
        1,
        "only alice's real key"
    );
}

#[test]
fn room_keys_not_over_olm_are_rejected() {
    let (_server, alice, bob) = olm_pair();
    let room: &RoomId = &rid("!plain:localhost");
    alice
        .machine
        .share_room_key(room, &[alice.user()], RotationSettings::default())
        .unwrap();
    let key = room_key_of(&alice, room);
    let plaintext = json!({"type": "m.room_key", "sender": alice.user(), "content": key});
    let in_megolm = json!({"type": "m.room.encrypted", "sender": alice.user(), "content": {
        "algorithm": MEGOLM_ALGORITHM, "ciphertext": "AwgAEiBQs", "session_id": "x", "sender_key": alice.machine.curve25519_key()}});
    let outcome = receive(&bob, vec![plaintext, in_megolm]);
    assert!(matches!(
        outcome.to_device[0].result,
        Err(OlmError::RoomKeyNotOverOlm(_))
    ));
    assert!(matches!(
        outcome.to_device[1].result,
        Err(OlmError::UnsupportedAlgorithm(_))
    ));
    assert_eq!(bob.store.inbound_group_session_count().unwrap(), 1);
}

#[test]
fn malformed_pre_key_message_does_not_consume_the_one_time_key() {
    let (mut server, alice, bob) = setup_pair();
    server.establish(&bob, &[alice.user()]);
    let good = pre_key_event(&mut server, &bob, &alice);
    let mut bad = good.clone();
    let alice_key = alice.machine.curve25519_key();
    let body = bad["content"]["ciphertext"][&alice_key]["body"]
        .as_str()
        .unwrap()
        .to_owned();
    // Flip a character near the end: the message still parses, its MAC does not verify.
    let mut chars: Vec<char> = body.chars().collect();
    let i = chars.len() - 5;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    bad["content"]["ciphertext"][&alice_key]["body"] = chars.into_iter().collect::<String>().into();
    let before = alice.store.account().unwrap().unwrap();
    let outcome = receive(&alice, vec![bad]);
    assert!(
        matches!(
            outcome.to_device[0].result,
            Err(OlmError::SessionCreation(_)) | Err(OlmError::Malformed(_))
        ),
        "{:?}",
        outcome.to_device[0]
    );
    assert_eq!(
        alice.store.account().unwrap().unwrap(),
        before,
        "account untouched"
    );
    let garbage = json!({"type": "m.room.encrypted", "sender": bob.user(), "content": {
        "algorithm": OLM_ALGORITHM, "sender_key": bob.machine.curve25519_key(),
        "ciphertext": {alice_key.clone(): {"type": 0, "body": "bm90IGEgbWVzc2FnZQ"}}}});
    assert!(matches!(
        receive(&alice, vec![garbage]).to_device[0].result,
        Err(OlmError::Malformed(_))
    ));
    // The real message that uses the same one-time key still works.
    let outcome = receive(&alice, vec![good.clone()]);
    assert_eq!(outcome.to_device[0].result, Ok("m.dummy".to_owned()));
}

#[test]
fn second_pre_key_message_reusing_a_consumed_one_time_key_is_rejected() {
    let (mut server, alice, bob) = setup_pair();
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    server.drive(&alice);
    bob.machine.update_tracked_users(&[alice.user()]).unwrap();
    server.drive(&bob);
    let Some(OutgoingRequest {
        kind: OutgoingKind::KeysClaim(r),
        ..
    }) = bob.machine.missing_sessions(&[alice.user()]).unwrap()
    else {
        panic!("claim expected")
    };
    let response = server.claim(&r);
    // bob creates two sessions from the same claimed key (a broken or malicious client).
    bob.machine.mark_keys_claim_sent(&response).unwrap();
    let first = olm_event(
        &bob,
        &alice,
        bob.user(),
        &payload(&bob, &alice, "m.dummy", json!({})),
    );
    let key = alice.machine.curve25519_key();
    let sessions = bob.store.olm_sessions(&[&key]).unwrap();
    assert_eq!(sessions[&key].len(), 1);
    // Replace the session with a fresh one built from the same one-time key.
    let bob2 = Peer::with_store(bob.user().as_str(), "BOB", bob.store.clone());
    let _ = bob2.machine.mark_keys_claim_sent(&response).unwrap();
    let second_session = bob.store.olm_sessions(&[&key]).unwrap()[&key]
        .iter()
        .find(|s| s.session_id != sessions[&key][0].session_id)
        .cloned()
        .unwrap();
    let mut s = OlmSession::from_record(&second_session).unwrap();
    let content = s
        .encrypt(
            &bob.machine.curve25519_key(),
            &payload(&bob, &alice, "m.dummy", json!({})),
            0,
        )
        .unwrap();
    let second = json!({"type": "m.room.encrypted", "sender": bob.user(), "content": content});

    assert_eq!(
        receive(&alice, vec![first]).to_device[0].result,
        Ok("m.dummy".to_owned())
    );
    let outcome = receive(&alice, vec![second]);
    assert!(
        matches!(&outcome.to_device[0].result, Err(OlmError::SessionCreation(m)) if m.contains("one-time key")),
        "{:?}",
        outcome.to_device[0]
    );
}

#[test]
fn one_time_keys_are_stored_before_upload_and_reuploaded_identically() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first = Peer::with_store("@alice:localhost", "ALICE", store.clone());
    let upload = |peer: &Peer| -> Value {
        let requests = peer.machine.outgoing_requests().unwrap();
        let OutgoingKind::KeysUpload(r) = &requests[0].kind else {
            panic!("upload expected")
        };
        serde_json::to_value(
            r.one_time_keys
                .iter()
                .map(|(k, v)| (k.to_string(), json_of(v).unwrap()))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap()
    };
    let sent = upload(&first);
    assert_eq!(sent.as_object().unwrap().len(), 50);
    // Killed before the response arrived: the restarted process uploads the very same keys.
    drop(first);
    let restarted = Peer::with_store("@alice:localhost", "ALICE", store.clone());
    assert_eq!(upload(&restarted), sent);
    let mut server = FakeServer::default();
    server.drive(&restarted);
    assert!(restarted.machine.outgoing_requests().unwrap().is_empty());
}

#[test]
fn one_time_keys_are_topped_up_and_fallback_key_rotated() {
    let (mut server, alice, _bob) = setup_pair();
    let sync = |counts: u64, fallback: Vec<String>| {
        alice
            .machine
            .receive_sync_changes(SyncChanges {
                one_time_key_counts: Some(BTreeMap::from([(SIGNED_CURVE25519.to_owned(), counts)])),
                unused_fallback_key_types: Some(fallback),
                ..Default::default()
            })
            .unwrap();
    };
    sync(40, vec![SIGNED_CURVE25519.into()]);
    assert!(
        alice.machine.outgoing_requests().unwrap().is_empty(),
        "40 of 50 is enough"
    );
    sync(10, vec![SIGNED_CURVE25519.into()]);
    let requests = alice.machine.outgoing_requests().unwrap();
    let OutgoingKind::KeysUpload(r) = &requests[0].kind else {
        panic!()
    };
    assert_eq!(r.one_time_keys.len(), 40);
    assert!(r.fallback_keys.is_empty());
    alice
        .machine
        .mark_keys_upload_sent(&KeysUploadResponse {
            one_time_key_counts: BTreeMap::from([(SIGNED_CURVE25519.to_owned(), 50)]),
        })
        .unwrap();
    sync(50, vec![]);
    let requests = alice.machine.outgoing_requests().unwrap();
    let OutgoingKind::KeysUpload(r) = &requests[0].kind else {
        panic!()
    };
    assert_eq!(r.fallback_keys.len(), 1, "a used fallback key is replaced");
    assert!(r.one_time_keys.is_empty());
    let _ = &mut server;
}

#[test]
fn a_wedged_session_is_replaced_and_announced_with_a_dummy() {
    let (mut server, alice, bob) = olm_pair();
    let members = vec![alice.user(), bob.user()];
    // Corrupt bob's copy of his session with alice: same id, unrelated ratchet.
    let alice_key = alice.machine.curve25519_key();
    let mut record = bob.store.olm_sessions(&[&alice_key]).unwrap()[&alice_key][0].clone();
    let stranger = Peer::new("@x:localhost", "X");
    let other = {
        let account = stranger.machine.lock().unwrap();
        let otk = vodozemac::Curve25519SecretKey::new();
        let session = account
            .account
            .inner
            .create_outbound_session(
                vodozemac::olm::SessionConfig::version_1(),
                vodozemac::Curve25519PublicKey::from(&otk),
                vodozemac::Curve25519PublicKey::from(&vodozemac::Curve25519SecretKey::new()),
            )
            .unwrap();
        OlmSession::new(alice_key.clone(), session, 0)
            .to_record()
            .unwrap()
    };
    record.pickle = other.pickle;
    bob.store
        .save_changes(crate::store::Changes::from(crate::store::CryptoChanges {
            olm_sessions: vec![record],
            ..Default::default()
        }))
        .unwrap();
    let bob = Peer::with_store(bob.user().as_str(), "BOB", bob.store.clone());

    // alice rotates and sends the new key over the (now wedged) channel: bob cannot read it.
    alice.machine.discard_room_key(room()).unwrap();
    server.share(&alice, room(), &members);
    let outcome = server.sync(&bob);
    assert!(
        matches!(
            outcome.to_device[0].result,
            Err(OlmError::NoMatchingSession { .. } | OlmError::SessionCreation(_))
        ),
        "{:?}",
        outcome.to_device[0]
    );
    // bob repairs the channel: new session from a claimed key, announced with m.dummy.
    let Some(OutgoingRequest {
        kind: OutgoingKind::KeysClaim(r),
        ..
    }) = bob.machine.session_repair_request().unwrap()
    else {
        panic!("expected an unwedging claim")
    };
    bob.machine.mark_keys_claim_sent(&server.claim(&r)).unwrap();
    server.drive(&bob);
    assert_eq!(
        server.sync(&alice).to_device[0].result,
        Ok("m.dummy".to_owned())
    );
    // At most once an hour.
    assert!(bob.machine.session_repair_request().unwrap().is_none());
    // alice's next key goes over the new session and bob decrypts again.
    alice.machine.discard_room_key(room()).unwrap();
    server.share(&alice, room(), &members);
    assert_eq!(server.sync(&bob).room_keys.len(), 1);
    let d = exchange(&alice, &bob, "healed", "$h").unwrap();
    assert_eq!(d.content["body"], "healed");
}
