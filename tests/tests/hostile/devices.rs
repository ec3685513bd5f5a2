//! Device lists: an empty device id, a squatted Curve25519 key, a tampered cross-signing signature.

use super::support::*;

/// 3. bob's `/keys/query` answers list, next to alice's real device, a device of alice whose
///    id is the empty string (properly self-signed). bob stores the real device, refuses the
///    other one, and room keys still reach alice's real device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_an_empty_id_in_a_key_query_is_refused_and_the_rest_kept() {
    let ghost = vodozemac::olm::Account::new();
    let ghost_curve = ghost.curve25519_key().to_base64();
    let ghost_keys = signed_device_keys(&ghost, "@alice:localhost", "", &ghost_curve);
    let applied = counter();
    let a = applied.clone();
    // From the start: bob's very first download of alice's devices carries the ghost.
    let s = scene(&["alice", "bob"], |proxy| {
        let rewrite = Rewrite::json(move |answer| {
            let Some(alice) = answer
                .pointer_mut("/device_keys/@alice:localhost")
                .and_then(Value::as_object_mut)
            else {
                return;
            };
            alice.insert(String::new(), ghost_keys.clone());
            a.fetch_add(1, Ordering::SeqCst);
        });
        proxy.rule("/keys/query", Action::RewriteResponse(rewrite), None);
    })
    .await;
    assert!(count(&applied) >= 1, "no key query of bob listed alice");

    let devices = s
        .bob
        .devices(&parse_user("@alice:localhost"))
        .await
        .unwrap();
    assert!(
        devices
            .iter()
            .all(|d| !d.device_id.as_str().is_empty() && d.curve25519 != ghost_curve),
        "the device with an empty id was stored: {devices:?}"
    );
    let real = devices
        .iter()
        .find(|d| d.device_id == device_of(&s.alice))
        .unwrap_or_else(|| panic!("alice's real device was not stored: {devices:?}"));
    assert_eq!(real.ed25519, s.alice.fingerprint().unwrap());
    assert!(!real.deleted);

    let before = before(&s.bob, &s.alice).await;
    assert_still_works(&s.bob, &s.alice, &s.room, &before).await;
}

/// 4. Squatting: mallory, a real user of the server, publishes device keys carrying alice's
///    Curve25519 key (signed with his own Ed25519 key) and joins the room after bob already
///    knows alice's device. bob downloads mallory's devices when he sees him join, refuses
///    the squatter, and alice's messages still decrypt as hers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_squatting_a_members_curve25519_key_is_refused() {
    let w = World::new(&["alice", "bob", "mallory"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    let first = alice
        .send_text(&room, "bob learns alice's device")
        .await
        .unwrap();
    assert!(receive_event(&bob, &room, &first).await.decrypted);
    let before = before(&bob, &alice).await;
    let alice_device = before
        .devices
        .iter()
        .find(|d| d.device_id == device_of(&alice))
        .expect("alice's device")
        .clone();

    let mut mallory = Attacker::login(&w.hs.base_url, "mallory", "mallory-pw", None);
    let squat = signed_device_keys(
        &mallory.account,
        &mallory.user_id,
        &mallory.device_id,
        &alice_device.curve25519,
    );
    mallory.upload_keys(squat, 10);
    let published = mallory.query_device(&mallory.user_id, &mallory.device_id);
    assert_eq!(
        published.curve25519, alice_device.curve25519,
        "the server publishes the squatted key as it is"
    );
    alice
        .invite(&room, &parse_user(&mallory.user_id))
        .await
        .unwrap();
    mallory.join(room.as_str());

    // bob sees the new member and downloads his devices.
    let mut up_to_date = false;
    for _ in 0..10 {
        bob.sync_once(Duration::from_millis(300)).await.unwrap();
        up_to_date = bob
            .store()
            .unwrap()
            .tracked_users()
            .unwrap()
            .iter()
            .any(|t| t.user_id == mallory.user_id && t.state == TrackingState::UpToDate);
        if up_to_date {
            break;
        }
    }
    assert!(up_to_date, "bob never downloaded the new member's devices");
    let mallorys = bob.devices(&parse_user(&mallory.user_id)).await.unwrap();
    assert!(
        mallorys.iter().all(|d| d.device_id != mallory.device_id),
        "the squatting device was stored: {mallorys:?}"
    );

    let got = assert_still_works(&bob, &alice, &room, &before).await;
    assert_eq!(
        got.sender_device.as_ref(),
        Some(&alice_device.device_id),
        "alice's message is attributed to her device"
    );
}

/// 10. bob's homeserver adds to alice's cross-signed device a signature under her
///     self-signing key that does not verify (tampering). bob never shows what that device
///     sends, not even under the "show everything" policy, and never gives it his room key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_cross_signing_signature_hides_the_device_and_its_messages() {
    let applied = counter();
    let a = applied.clone();
    let s = scene(&["alice", "bob"], |proxy| {
        let rewrite = Rewrite::json(move |answer| {
            let ssk = answer
                .pointer("/self_signing_keys/@alice:localhost/keys")
                .and_then(Value::as_object)
                .and_then(|keys| keys.keys().next().cloned());
            let Some(ssk) = ssk else {
                return;
            };
            let devices = answer
                .pointer_mut("/device_keys/@alice:localhost")
                .and_then(Value::as_object_mut);
            for keys in devices.into_iter().flat_map(|d| d.values_mut()) {
                let signatures = entry(keys, &["signatures", "@alice:localhost"]);
                // The device's own signature, put under the self-signing key's id.
                let own = signatures
                    .as_object()
                    .and_then(|s| s.iter().find(|(id, _)| **id != ssk))
                    .map(|(_, sig)| sig.clone());
                if let Some(own) = own {
                    signatures[ssk.as_str()] = own;
                    a.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        proxy.rule("/keys/query", Action::RewriteResponse(rewrite), None);
    })
    .await;
    s.alice.bootstrap_cross_signing().await.unwrap();
    // bob downloads alice's devices again (her device list changed): the tampered answer.
    let alice_id = user_of(&s.alice);
    s.bob.sync_once(Duration::ZERO).await.unwrap();
    let identity = s.bob.identity(&alice_id).await.unwrap();
    assert!(identity.is_some(), "bob knows alice's identity");
    assert!(
        count(&applied) >= 1,
        "no key query of bob listed alice's signed device"
    );

    // Under "show everything", alice's message arrives decrypted but hidden: tampering.
    let text = unique("from a tampered device");
    let sent = s.alice.send_text(&s.room, &text).await.unwrap();
    let got = receive_event(&s.bob, &s.room, &sent).await;
    assert_eq!(got.trust_policy, newt_core::client::TrustPolicy::ShowAll);
    assert!(got.decrypted && got.hidden_by_policy, "{got:?}");
    assert_eq!(
        got.sender_trust,
        Some(newt_core::store::SenderTrust::Tampered)
    );
    assert_eq!(got.body, None);

    // bob's room key never reaches that device: alice gets a withheld notice instead.
    let reply = s
        .bob
        .send_text(&s.room, &unique("not for a tampered device"))
        .await
        .unwrap();
    let at_alice = receive_event(&s.alice, &s.room, &reply).await;
    assert!(!at_alice.decrypted, "{at_alice:?}");
    assert!(
        matches!(&at_alice.failure, Some(newt_core::crypto::MegolmError::Withheld { code, .. })
            if code.as_str() == "m.unverified"),
        "{:?}",
        at_alice.failure
    );
}
