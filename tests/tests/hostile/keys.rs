//! Room keys from others: forwarded keys and withheld notices that must change nothing.

use super::support::*;

/// 5. Forwarded room keys from where they must not be taken, over real Olm sessions with
///    bob's device: (a) from another user, unrequested; (b) from a second device of bob
///    himself that he never verified; (c) from that device once verified, but naming a
///    different sending device than the session bob has from alice. None of them changes
///    bob's copy of alice's session. Controls show the channel works: an honest `m.room_key`
///    of mallory's own is taken, and (d) a correct forward from bob's verified device is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_keys_from_strangers_unverified_or_wrong_devices_change_nothing() {
    let w = World::new(&["alice", "bob", "mallory"]);
    let alice = w.login("alice", "alice").await;
    let bob = w.login("bob", "bob").await;
    let mut mallory = Attacker::login(&w.hs.base_url, "mallory", "mallory-pw", None);
    mallory.publish_keys(20);

    // mallory is in the room from the start and gets alice's session from index 0.
    let room = alice
        .create_encrypted_room(None, &[parse_user(&mallory.user_id)])
        .await
        .unwrap();
    mallory.join(room.as_str());
    alice.sync_once(Duration::ZERO).await.unwrap();
    for i in 0..3 {
        alice
            .send_text(&room, &format!("before bob {i}"))
            .await
            .unwrap();
    }
    let session = alice
        .store()
        .unwrap()
        .outbound_group_session(&room)
        .unwrap()
        .expect("alice's session")
        .session_id;
    let mut session_key = None;
    for _ in 0..10 {
        for payload in mallory.sync_olm_payloads() {
            if payload["type"] == "m.room_key" && payload["content"]["session_id"] == session {
                session_key = payload["content"]["session_key"]
                    .as_str()
                    .map(str::to_owned);
            }
        }
        if session_key.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let session_key = session_key.expect("mallory, a member, got alice's room key");
    let from_index_0 = InboundGroupSession::new(
        &SessionKey::from_base64(&session_key).unwrap(),
        SessionConfig::version_1(),
    )
    .export_at_first_known_index()
    .to_base64();

    // bob joins later: he gets the same session from a later index, and asks for the
    // earlier messages' key.
    alice.invite(&room, &user_of(&bob)).await.unwrap();
    bob.sync_once(Duration::ZERO).await.unwrap();
    bob.join(&OwnedRoomOrAliasId::from(room.clone()))
        .await
        .unwrap();
    bob.sync_once(Duration::ZERO).await.unwrap();
    alice.sync_once(Duration::ZERO).await.unwrap();
    let sent = alice.send_text(&room, "bob is here").await.unwrap();
    assert!(receive_event(&bob, &room, &sent).await.decrypted);
    let current = alice
        .store()
        .unwrap()
        .outbound_group_session(&room)
        .unwrap()
        .unwrap();
    assert_eq!(
        current.session_id, session,
        "setup: no rotation when bob joined"
    );
    let original = bob
        .store()
        .unwrap()
        .inbound_group_session(&room, &session)
        .unwrap()
        .expect("bob has alice's session");
    assert!(original.first_known_index > 0, "{original:?}");
    assert!(
        bob.store()
            .unwrap()
            .key_request(&room, &session)
            .unwrap()
            .is_some(),
        "setup: bob asked for the key of the messages from before he joined"
    );
    let before = before(&bob, &alice).await;
    let alice_device = before.devices[0].clone();
    let genuine = forwarded_key(
        room.as_str(),
        &session,
        &from_index_0,
        &alice_device.curve25519,
        &alice_device.ed25519,
    );
    let bob_device: RemoteDevice =
        mallory.query_device(user_of(&bob).as_str(), device_of(&bob).as_str());
    let unchanged = |why: &str| {
        let now = bob
            .store()
            .unwrap()
            .inbound_group_session(&room, &session)
            .unwrap();
        assert_eq!(now.as_ref(), Some(&original), "{why}");
    };

    // (a) From another user: alice's session from index 0, and a forged session claiming
    // alice's keys that nobody asked for. Control: mallory's honest room key of his own.
    mallory.open_olm_session(&bob_device);
    mallory.send_olm(&bob_device, "m.forwarded_room_key", genuine.clone());
    let forged = GroupSession::new(SessionConfig::version_1());
    let forged_export = InboundGroupSession::new(&forged.session_key(), SessionConfig::version_1())
        .export_at_first_known_index()
        .to_base64();
    let forged_forward = forwarded_key(
        room.as_str(),
        &forged.session_id(),
        &forged_export,
        &alice_device.curve25519,
        &alice_device.ed25519,
    );
    mallory.send_olm(&bob_device, "m.forwarded_room_key", forged_forward);
    let own = GroupSession::new(SessionConfig::version_1());
    let own_key = json!({
        "algorithm": MEGOLM, "room_id": room.as_str(), "session_id": own.session_id(),
        "session_key": own.session_key().to_base64(),
    });
    mallory.send_olm(&bob_device, "m.room_key", own_key);
    settle(&bob).await;
    assert!(
        bob.store()
            .unwrap()
            .inbound_group_session(&room, &own.session_id())
            .unwrap()
            .is_some(),
        "control: mallory's honest room key over the same channel was taken"
    );
    unchanged("a forward from another user replaced alice's session");
    assert!(
        bob.store()
            .unwrap()
            .inbound_group_session(&room, &forged.session_id())
            .unwrap()
            .is_none(),
        "an unrequested forward from another user was stored"
    );

    // (b) From a device of bob's own account (the attacker has bob's password) that bob
    // knows but never verified.
    let mut evil = Attacker::login(&w.hs.base_url, "bob", "bob-pw", Some("EVILBOBDEVICE"));
    evil.publish_keys(10);
    let known = wait_for_device(&bob, &user_of(&bob), &evil.device_id).await;
    assert_eq!(known.ed25519, evil.ed25519());
    assert_eq!(known.local_trust, LocalTrust::Unset);
    evil.open_olm_session(&bob_device);
    evil.send_olm(&bob_device, "m.forwarded_room_key", genuine.clone());
    settle(&bob).await;
    unchanged("a forward from an unverified own device replaced alice's session");

    // (c) From that device once verified, with a lower first index but naming another
    // sending device (mallory's) than the one bob has the session from (alice's).
    assert!(
        bob.set_device_trust(
            &user_of(&bob),
            device(&evil.device_id),
            LocalTrust::Verified
        )
        .unwrap()
    );
    let mut other_sender = genuine.clone();
    other_sender["sender_key"] = mallory.curve25519().into();
    other_sender["sender_claimed_ed25519_key"] = mallory.ed25519().into();
    evil.send_olm(&bob_device, "m.forwarded_room_key", other_sender);
    settle(&bob).await;
    unchanged("a forward naming another sender key replaced alice's session");

    // (d) Control: the same device forwarding the session as it is (alice's keys) is
    // taken, so the refusals above were about who and what, not a broken channel.
    evil.send_olm(&bob_device, "m.forwarded_room_key", genuine);
    settle(&bob).await;
    let improved = bob
        .store()
        .unwrap()
        .inbound_group_session(&room, &session)
        .unwrap()
        .expect("alice's session");
    assert_eq!(
        improved.first_known_index, 0,
        "control: a correct forward from a verified own device is taken"
    );
    assert_eq!(improved.sender_key, original.sender_key);

    assert_still_works(&bob, &alice, &room, &before).await;
}

/// 9. `m.room_key.withheld` notices in clear, for alice's session, from a stranger (in no
///    room with bob) and from a member (eve) about a session that is not hers. bob cannot
///    decrypt alice's events (the proxy takes her room key away), and the reason shown on
///    them is never one of these notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_notices_of_strangers_or_other_members_never_explain_alices_events() {
    let s = scene(&["alice", "bob", "eve", "stranger"], |_| {}).await;
    let base = s.w.hs.base_url.clone();
    let mut eve = Attacker::login(&base, "eve", "eve-pw", None);
    eve.publish_keys(10);
    let mut stranger = Attacker::login(&base, "stranger", "stranger-pw", None);
    s.alice
        .invite(&s.room, &parse_user(&eve.user_id))
        .await
        .unwrap();
    eve.join(s.room.as_str());
    s.alice.sync_once(Duration::ZERO).await.unwrap();
    wait_for_device(&s.bob, &parse_user(&eve.user_id), &eve.device_id).await;
    let before = before(&s.bob, &s.alice).await;

    // bob loses alice's room keys on the way (a server that drops them); the notices in
    // clear pass.
    let (stripped, notices) = (counter(), counter());
    let (st, no) = (stripped.clone(), notices.clone());
    let rewrite = Rewrite::json(move |sync| {
        let Some(events) = sync
            .pointer_mut("/to_device/events")
            .and_then(Value::as_array_mut)
        else {
            return;
        };
        let n = events.len();
        no.fetch_add(
            events
                .iter()
                .filter(|e| e["type"] == "m.room_key.withheld")
                .count(),
            Ordering::SeqCst,
        );
        events.retain(|e| !(e["type"] == "m.room.encrypted" && e["sender"] == "@alice:localhost"));
        st.fetch_add(n - events.len(), Ordering::SeqCst);
    });
    s.proxy
        .rule("/sync", Action::RewriteResponse(rewrite), None);

    let hidden = s.alice.send_text(&s.room, "hidden from bob").await.unwrap();
    // eve, a member, reads the session off the event; she and the stranger claim it withheld.
    let event = eve
        .room_messages(s.room.as_str())
        .into_iter()
        .find(|e| e["event_id"] == hidden.as_str())
        .expect("eve sees alice's event");
    let session = event["content"]["session_id"].as_str().unwrap().to_owned();
    let alice_curve = event["content"]["sender_key"].as_str().unwrap().to_owned();
    let bob_device = device_of(&s.bob);
    let lies = [
        (&mut stranger, "m.blacklisted", "STRANGER SAYS SO"),
        (&mut eve, "m.unverified", "MEMBER SAYS SO"),
    ];
    for (attacker, code, reason) in lies {
        let notice = withheld(s.room.as_str(), &session, &alice_curve, code, reason);
        attacker.send_to_device(
            "m.room_key.withheld",
            "@bob:localhost",
            bob_device.as_str(),
            notice,
        );
    }
    let shows_a_lie = |e: &TimelineEvent| {
        let reason = e.error.clone().unwrap_or_default();
        ["STRANGER", "MEMBER", "m.blacklisted", "m.unverified"]
            .iter()
            .any(|lie| reason.contains(lie))
    };

    // The notices and the event arrive in one answer (to-device events are handled first).
    let got = receive_event(&s.bob, &s.room, &hidden).await;
    assert!(count(&stripped) >= 1, "alice's room key was not taken away");
    assert!(count(&notices) >= 2, "the notices did not reach bob");
    assert!(!got.decrypted, "{got:?}");
    assert!(
        !shows_a_lie(&got),
        "a notice of someone else explains alice's event: {got:?}"
    );
    assert!(
        s.bob
            .store()
            .unwrap()
            .withheld_notice(&s.room, &session, &parse_user(&stranger.user_id))
            .unwrap()
            .is_none(),
        "a stranger's notice was kept"
    );
    assert!(
        s.bob
            .store()
            .unwrap()
            .withheld_notice(&s.room, &session, &parse_user(&eve.user_id))
            .unwrap()
            .is_none(),
        "a member's notice naming another member's device was kept"
    );
    // A later event of the same session, once whatever was kept of the notices is stored.
    let later = s.alice.send_text(&s.room, "also hidden").await.unwrap();
    let got = receive_event(&s.bob, &s.room, &later).await;
    assert!(!got.decrypted, "{got:?}");
    assert!(!shows_a_lie(&got), "{got:?}");

    // bob never got this session (the proxy took it) and alice would not send it again:
    // she starts a new one, as after any lost key, before the rule is checked.
    s.proxy.clear();
    s.alice.discard_room_key(&s.room).unwrap();
    assert_still_works(&s.bob, &s.alice, &s.room, &before).await;
}
