//! Key distribution under membership and device churn, against a real Synapse (issue 4).

use std::sync::Arc;
use std::time::Duration;

use newt_core::client::{Client, TimelineEvent};
use newt_core::ruma::{
    OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId, RoomId,
};
use newt_core::store::{Changes, CryptoChanges};
use newt_e2e_tests::clients::{World, login, open, receive, room_with};
use newt_e2e_tests::proxy::{Action, FaultProxy};

/// A user id from a literal.
fn user(id: &str) -> OwnedUserId {
    OwnedUserId::try_from(id).unwrap()
}

fn session_id(client: &Client, room: &RoomId) -> String {
    client
        .store()
        .unwrap()
        .outbound_group_session(room)
        .unwrap()
        .unwrap()
        .session_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_rotates_the_session_and_stays_members_keep_reading() {
    let w = World::new(&["alice", "bob", "carol"]);
    let alice = w.login("alice", "alice").await;
    let bob = w.login("bob", "bob").await;
    let carol = w.login("carol", "carol").await;
    let room = room_with(&alice, &[&bob, &carol]).await;
    alice.send_text(&room, "all three").await.unwrap();
    receive(&carol, &room, 1).await;
    let before = session_id(&alice, &room);

    carol.leave(&room).await.unwrap();
    alice.sync_once(Duration::ZERO).await.unwrap();
    alice.send_text(&room, "without carol").await.unwrap();
    assert_ne!(
        session_id(&alice, &room),
        before,
        "the leaver's session must not be reused"
    );
    let got = receive(&bob, &room, 2).await;
    assert_eq!(got[1].body.as_deref(), Some("without carol"));
    // carol never received the new session.
    let new_session = session_id(&alice, &room);
    assert!(
        carol
            .store()
            .unwrap()
            .inbound_group_session(&room, &new_session)
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rotation_on_restart_or_new_own_device() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    alice.send_text(&room, "one").await.unwrap();
    let first = session_id(&alice, &room);
    drop(alice);
    let alice = open(&w.hs.base_url, &w.dir("alice"));
    assert!(alice.restore_session().unwrap());
    let _phone = w.login("alice", "alice-phone").await;
    alice.sync_once(Duration::ZERO).await.unwrap();
    alice.send_text(&room, "two").await.unwrap();
    assert_eq!(session_id(&alice, &room), first);
    assert_eq!(
        receive(&bob, &room, 2).await[1].body.as_deref(),
        Some("two")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_key_queries_and_claims_are_retried_and_nothing_is_lost() {
    let w = World::new(&["alice", "bob"]);
    let proxy = FaultProxy::start(&w.hs.base_url);
    let alice = login(&proxy.base_url, &w.dir("alice"), "alice").await;
    let bob = w.login("bob", "bob").await;
    let room = room_with(&alice, &[&bob]).await;
    // The first two queries and claims fail with 5xx; the client retries with the same body.
    proxy.rule("/keys/query", Action::Fail(503), Some(2));
    proxy.rule("/keys/claim", Action::Fail(502), Some(2));
    alice.send_text(&room, "despite failures").await.unwrap();
    let got = receive(&bob, &room, 1).await;
    assert_eq!(got[0].body.as_deref(), Some("despite failures"));
    let log = proxy.log();
    assert!(
        log.iter()
            .filter(|l| l.contains("/keys/claim") && l.ends_with("502"))
            .count()
            == 2,
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("/keys/claim") && l.ends_with("200")),
        "{log:?}"
    );
    // Never in plaintext: everything alice sent to the room was m.room.encrypted.
    assert!(
        log.iter()
            .filter(|l| l.contains("/send/"))
            .all(|l| l.contains("/send/m.room.encrypted/")),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_key_from_a_new_device_is_kept_while_queries_fail() {
    let w = World::new(&["alice", "bob"]);
    let proxy = FaultProxy::start(&w.hs.base_url);
    let alice = w.login("alice", "alice").await;
    let bob = login(&proxy.base_url, &w.dir("bob"), "bob").await;
    let room = room_with(&alice, &[&bob]).await;
    // bob cannot download device lists for a while.
    proxy.rule("/keys/query", Action::Fail(500), None);
    let phone = w.login("alice", "alice-phone").await;
    phone.sync_once(Duration::ZERO).await.unwrap();
    phone.send_text(&room, "from the new phone").await.unwrap();
    let got = receive(&bob, &room, 1).await;
    assert_eq!(got[0].body.as_deref(), Some("from the new phone"));
    assert!(got[0].decrypted);
    // Once queries work again, bob knows the phone.
    proxy.clear();
    bob.sync_once(Duration::ZERO).await.unwrap();
    let phone_id = phone.session().unwrap().device_id;
    let devices = bob.devices(&user("@alice:localhost")).await.unwrap();
    assert!(
        devices.iter().any(|d| d.device_id == phone_id),
        "{devices:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_to_device_messages_in_one_sync_are_all_handled_in_order() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    // 120 messages, each with its own session: 120 room keys reach bob in one sync.
    let expected: Vec<String> = (0..120).map(|i| format!("rotated {i:03}")).collect();
    for body in &expected {
        alice.discard_room_key(&room).unwrap();
        alice.send_text(&room, body).await.unwrap();
    }
    // Synapse hands out at most 100 to-device events per sync: the last keys arrive after
    // their events, which are then re-delivered decrypted (`is_update`).
    let own = bob.session().unwrap().user_id;
    let mut rx = bob.subscribe_timeline();
    let mut order: Vec<OwnedEventId> = Vec::new();
    let mut latest: std::collections::HashMap<OwnedEventId, TimelineEvent> = Default::default();
    let mut updates = 0;
    for _ in 0..40 {
        bob.sync_once(Duration::from_secs(1)).await.unwrap();
        while let Ok(e) = rx.try_recv() {
            if e.room_id != room || e.sender == own {
                continue;
            }
            if e.is_update {
                updates += 1;
                assert!(
                    latest.contains_key(&e.event_id),
                    "an update of an event never delivered"
                );
            } else {
                order.push(e.event_id.clone());
            }
            latest.insert(e.event_id.clone(), e);
        }
        if order.len() == 120 && latest.values().all(|e| e.decrypted) {
            break;
        }
    }
    let bodies: Vec<String> = order
        .iter()
        .map(|id| latest[id].body.clone().unwrap_or_default())
        .collect();
    assert_eq!(bodies, expected);
    println!("late keys re-delivered {updates} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_olm_session_recovers_with_a_dummy() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    alice.send_text(&room, "before").await.unwrap();
    receive(&bob, &room, 1).await;
    bob.send_text(&room, "reply").await.unwrap();
    receive(&alice, &room, 1).await;

    // Corrupt bob's Olm sessions with alice: same ids, another session's state.
    let alice_curve = bob.devices(&user("@alice:localhost")).await.unwrap()[0]
        .curve25519
        .clone();
    let sessions = bob
        .store()
        .unwrap()
        .olm_sessions(&[&alice_curve])
        .unwrap()
        .remove(&alice_curve)
        .unwrap();
    let mut corrupted = Vec::new();
    for (i, mut s) in sessions.clone().into_iter().enumerate() {
        s.pickle = sessions[(i + 1) % sessions.len()].pickle.clone();
        if sessions.len() == 1 {
            let mut bytes = s.pickle.as_bytes().to_vec();
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let mut json = json;
            scramble(&mut json);
            bytes = serde_json::to_vec(&json).unwrap();
            s.pickle = newt_core::store::SecretBlob::new(bytes);
        }
        corrupted.push(s);
    }
    bob.store()
        .unwrap()
        .save_changes(Changes::from(CryptoChanges {
            olm_sessions: corrupted,
            ..Default::default()
        }))
        .unwrap();
    drop(bob);
    let bob = open(&w.hs.base_url, &w.dir("bob"));
    assert!(bob.restore_session().unwrap());

    // alice's next key cannot be read by bob; bob repairs the channel on his own.
    alice.discard_room_key(&room).unwrap();
    alice.send_text(&room, "lost").await.unwrap();
    let got = receive(&bob, &room, 1).await;
    assert!(!got[0].decrypted);
    alice.sync_once(Duration::ZERO).await.unwrap(); // receives bob's m.dummy
    alice.discard_room_key(&room).unwrap();
    alice.send_text(&room, "healed").await.unwrap();
    let got = receive(&bob, &room, 1).await;
    assert_eq!(got[0].body.as_deref(), Some("healed"), "{got:?}");
}

/// Flip every number inside ratchet key material of a pickle (keeps it parseable).
fn scramble(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) => {
            if let Some(v) = n.as_u64()
                && v < 256
            {
                *value = serde_json::Value::from((v + 1) % 256);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(scramble),
        serde_json::Value::Object(o) => o.values_mut().for_each(scramble),
        _ => {}
    }
}

/// Seed 002's start: alice's phone and bob share a room and bob knows the phone; then alice
/// logs in on a laptop while bob does not sync, so his list of her devices is stale.
/// Returns `(phone, bob, laptop, room)`.
async fn stale_device_list(w: &World) -> (Arc<Client>, Arc<Client>, Arc<Client>, OwnedRoomId) {
    let phone = w.login("alice", "alice-phone").await;
    let bob = w.login("bob", "bob").await;
    let room = room_with(&phone, &[&bob]).await;
    phone.send_text(&room, "hi").await.unwrap();
    receive(&bob, &room, 1).await;
    let laptop = w.login("alice", "alice-laptop").await;
    (phone, bob, laptop, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_device_list_is_repaired_by_a_key_request_to_an_own_verified_device() {
    use newt_core::store::LocalTrust;
    let w = World::new(&["alice", "bob"]);
    let (phone, bob, laptop, room) = stale_device_list(&w).await;
    let (phone_id, laptop_id) = (
        phone.session().unwrap().device_id,
        laptop.session().unwrap().device_id,
    );
    phone.sync_once(Duration::ZERO).await.unwrap();
    assert!(
        phone
            .devices(&user("@alice:localhost"))
            .await
            .unwrap()
            .iter()
            .any(|d| d.device_id == laptop_id)
    );
    assert!(
        laptop
            .devices(&user("@alice:localhost"))
            .await
            .unwrap()
            .iter()
            .any(|d| d.device_id == phone_id)
    );
    // The user verified both own devices.
    phone
        .set_device_trust(&user("@alice:localhost"), &laptop_id, LocalTrust::Verified)
        .unwrap();
    laptop
        .set_device_trust(&user("@alice:localhost"), &phone_id, LocalTrust::Verified)
        .unwrap();
    phone
        .send_text(&room, "phone knows the laptop")
        .await
        .unwrap();

    bob.send_text(&room, "sent with a stale list")
        .await
        .unwrap();
    let own = laptop.session().unwrap().user_id;
    let mut rx = laptop.subscribe_timeline();
    let mut first = None;
    let mut healed = None;
    for _ in 0..30 {
        laptop.sync_once(Duration::from_millis(500)).await.unwrap();
        phone.sync_once(Duration::from_millis(500)).await.unwrap(); // answers the request
        while let Ok(e) = rx.try_recv() {
            if e.room_id != room || e.sender == own || e.sender != "@bob:localhost" {
                continue;
            }
            if e.is_update {
                healed = Some(e);
            } else {
                first = Some(e);
            }
        }
        if healed.is_some() {
            break;
        }
    }
    let first = first.expect("the laptop saw bob's message");
    assert!(
        !first.decrypted,
        "bob did not know the laptop, so it could not decrypt at first"
    );
    let healed = healed.expect("the key arrived from the phone and the event was re-delivered");
    assert_eq!(healed.event_id, first.event_id);
    assert_eq!(healed.body.as_deref(), Some("sent with a stale list"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_gets_the_current_room_key_before_the_next_message() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    bob.send_text(&room, "before the phone").await.unwrap();
    receive(&alice, &room, 1).await;
    let session = session_id(&bob, &room);

    let phone = w.login("alice", "alice-phone").await;
    // bob only syncs: the device-list change names alice, the query finds the new device,
    // the room index names the room, and the current key goes to the phone.
    let mut shared = false;
    for _ in 0..20 {
        bob.sync_once(Duration::from_millis(500)).await.unwrap();
        phone.sync_once(Duration::ZERO).await.unwrap();
        if phone
            .store()
            .unwrap()
            .inbound_group_session(&room, &session)
            .unwrap()
            .is_some()
        {
            shared = true;
            break;
        }
    }
    assert!(shared, "the phone never got bob's current room key");
    assert_eq!(
        session_id(&bob, &room),
        session,
        "no rotation for a new device"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_invited_while_the_inviters_sync_is_delayed_gets_the_next_key() {
    let w = World::new(&["alice", "bob", "carol"]);
    let proxy = FaultProxy::start(&w.hs.base_url);
    let alice = login(&proxy.base_url, &w.dir("alice"), "alice").await;
    let bob = w.login("bob", "bob").await;
    let carol = w.login("carol", "carol").await;
    let room = room_with(&alice, &[&bob]).await;
    alice.send_text(&room, "before carol").await.unwrap();
    receive(&bob, &room, 1).await;

    // alice's syncs are held back by the network; one is in flight in the background.
    proxy.rule("/sync", Action::Delay(Duration::from_secs(8)), None);
    let mut sync = alice.start_sync();
    let syncs_done = || {
        proxy
            .log()
            .iter()
            .filter(|l| l.contains("/sync") && l.ends_with(" 200"))
            .count()
    };
    let before = syncs_done();
    alice
        .invite(&room, &user("@carol:localhost"))
        .await
        .unwrap();
    alice.send_text(&room, "welcome carol").await.unwrap();
    assert_eq!(
        syncs_done(),
        before,
        "the message must go out before alice's sync saw the invite"
    );
    sync.stop().await;
    proxy.clear();

    carol.sync_once(Duration::ZERO).await.unwrap();
    carol
        .join(&OwnedRoomOrAliasId::from(room.clone()))
        .await
        .unwrap();
    let got = receive(&carol, &room, 2).await;
    let welcome = got
        .iter()
        .find(|e| e.decrypted && e.body.as_deref() == Some("welcome carol"));
    assert!(welcome.is_some(), "{got:?}");
    // History before the invite stays closed to carol.
    assert!(
        !got.iter()
            .any(|e| e.body.as_deref() == Some("before carol")),
        "{got:?}"
    );
}

/// Answers key-share prompts with `Verified` and records the devices asked about.
struct VerifyOnKeyRequest(std::sync::Mutex<Vec<OwnedDeviceId>>);

impl newt_core::client::PromptHandler for VerifyOnKeyRequest {
    fn on_prompt(&self, prompt: newt_core::client::Prompt) -> newt_core::client::PromptAnswer {
        use newt_core::client::{Prompt, PromptAnswer};
        match prompt {
            Prompt::KeyShareRequest { device } => {
                self.0.lock().unwrap().push(device.device_id.clone());
                PromptAnswer::DeviceDecisions(vec![(
                    device.user_id,
                    device.device_id,
                    newt_core::store::LocalTrust::Verified,
                )])
            }
            _ => PromptAnswer::Dismissed,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_request_of_an_unverified_own_device_is_answered_once_the_user_verifies_it() {
    use newt_core::store::LocalTrust;
    let w = World::new(&["alice", "bob"]);
    let phone = w.login("alice", "alice-phone").await;
    let bob = w.login("bob", "bob").await;
    let room = room_with(&phone, &[&bob]).await;
    bob.send_text(&room, "before the laptop").await.unwrap();
    receive(&phone, &room, 1).await;
    let handler = Arc::new(VerifyOnKeyRequest(std::sync::Mutex::new(Vec::new())));
    phone.set_prompt_handler(Some(handler.clone()));

    // The laptop cannot read bob's earlier message and asks alice's other devices.
    let laptop = w.login("alice", "alice-laptop").await;
    let (phone_id, laptop_id) = (
        phone.session().unwrap().device_id,
        laptop.session().unwrap().device_id,
    );
    let own = laptop.session().unwrap().user_id;
    let mut rx = laptop.subscribe_timeline();
    assert!(
        laptop
            .set_device_trust(&user("@alice:localhost"), &phone_id, LocalTrust::Verified)
            .unwrap(),
        "the laptop knows the phone"
    );
    let mut healed = None;
    for _ in 0..30 {
        phone.sync_once(Duration::from_millis(300)).await.unwrap();
        laptop.sync_once(Duration::from_millis(300)).await.unwrap();
        while let Ok(e) = rx.try_recv() {
            if e.room_id == room && e.sender != own && e.is_update {
                healed = Some(e);
            }
        }
        if healed.is_some() {
            break;
        }
    }
    assert_eq!(
        *handler.0.lock().unwrap(),
        vec![laptop_id.clone()],
        "asked once"
    );
    let trust = phone
        .devices(&user("@alice:localhost"))
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.device_id == laptop_id)
        .unwrap()
        .local_trust;
    assert_eq!(trust, LocalTrust::Verified, "the user's answer is stored");
    let healed = healed.expect("the phone shared the key after the user verified the laptop");
    assert!(healed.decrypted);
    assert_eq!(healed.body.as_deref(), Some("before the laptop"));
}

/// Answers password prompts.
struct PasswordPrompt(&'static str);

impl newt_core::client::PromptHandler for PasswordPrompt {
    fn on_prompt(&self, prompt: newt_core::client::Prompt) -> newt_core::client::PromptAnswer {
        use newt_core::client::{Prompt, PromptAnswer};
        match prompt {
            Prompt::Password { .. } => {
                PromptAnswer::Password(zeroize::Zeroizing::new(self.0.to_owned()))
            }
            _ => PromptAnswer::Dismissed,
        }
    }
}

/// Sync `client` a few times so that it sees what the server has for it.
async fn settle(client: &Client) {
    for _ in 0..3 {
        client.sync_once(Duration::from_millis(200)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_on_count_logout_blacklisting_and_period_but_not_on_renames() {
    use newt_core::crypto::RotationSettings;
    use newt_core::store::LocalTrust;
    use newt_e2e_tests::http_request;
    let w = World::new(&["alice", "bob"]);
    let alice = w.login("alice", "alice").await;
    let bob = w.login("bob", "bob").await;
    let bob_phone = w.login("bob", "bob-phone").await;
    let rotation = RotationSettings {
        period_ms: 3_600_000,
        messages: 3,
    };
    let room = alice
        .create_encrypted_room_with_rotation(Some("rotating"), &[user("@bob:localhost")], rotation)
        .await
        .unwrap();
    bob.sync_once(Duration::ZERO).await.unwrap();
    bob.join(&OwnedRoomOrAliasId::from(room.clone()))
        .await
        .unwrap();
    alice.sync_once(Duration::ZERO).await.unwrap();
    let send = async |text: &str| {
        alice.send_text(&room, text).await.unwrap();
        session_id(&alice, &room)
    };

    // The message count: three messages per session.
    let s1 = send("1").await;
    assert_eq!(send("2").await, s1);
    assert_eq!(send("3").await, s1);
    let s2 = send("4").await;
    assert_ne!(s2, s1, "the fourth message starts a new session");

    // bob renames himself and his device: no rotation.
    let bob_device = bob.session().unwrap().device_id;
    let token = {
        let body = serde_json::json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "bob"}, "password": "bob-pw"});
        let (status, text) = http_request(
            &w.hs.base_url,
            "POST",
            "/_matrix/client/v3/login",
            None,
            Some(&body.to_string()),
        );
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for (path, body) in [
        (
            "/_matrix/client/v3/profile/@bob:localhost/displayname".to_owned(),
            r#"{"displayname": "Bobby"}"#,
        ),
        (
            format!("/_matrix/client/v3/devices/{bob_device}"),
            r#"{"display_name": "Bob's laptop"}"#,
        ),
    ] {
        let (status, text) = http_request(&w.hs.base_url, "PUT", &path, Some(&token), Some(body));
        assert_eq!(status, 200, "{path}: {text}");
    }
    settle(&alice).await;
    let renamed = alice
        .devices(&user("@bob:localhost"))
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.device_id == bob_device)
        .unwrap();
    assert_eq!(renamed.display_name.as_deref(), Some("Bob's laptop"));
    assert_eq!(send("5").await, s2, "renames do not rotate");

    // bob logs his phone out: rotation.
    bob.set_prompt_handler(Some(Arc::new(PasswordPrompt("bob-pw"))));
    bob.delete_device(&bob_phone.session().unwrap().device_id)
        .await
        .unwrap();
    settle(&alice).await;
    let s3 = send("6").await;
    assert_ne!(s3, s2, "a logged-out device must not get later messages");

    // alice blacklists bob's remaining device: rotation, and bob is told why.
    alice
        .set_device_trust(
            &user("@bob:localhost"),
            &bob_device,
            LocalTrust::Blacklisted,
        )
        .unwrap();
    let s4 = send("7").await;
    assert_ne!(s4, s3);
    let got = receive(&bob, &room, 7).await;
    assert!(got[..6].iter().all(|e| e.decrypted), "{got:?}");
    assert!(!got[6].decrypted);
    let reason = got[6].error.as_deref().unwrap_or_default();
    assert!(reason.contains("m.blacklisted"), "{reason}");

    // The period: a room whose sessions live 1.5 s.
    let short = alice
        .create_encrypted_room_with_rotation(
            None,
            &[],
            RotationSettings {
                period_ms: 1_500,
                messages: 100,
            },
        )
        .await
        .unwrap();
    alice.send_text(&short, "a").await.unwrap();
    let first = session_id(&alice, &short);
    alice.send_text(&short, "b").await.unwrap();
    assert_eq!(session_id(&alice, &short), first);
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    alice.send_text(&short, "c").await.unwrap();
    assert_ne!(session_id(&alice, &short), first, "the period ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_keys_decrypt_events_kept_from_before_a_restart() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    // 110 sessions: Synapse hands out at most 100 to-device events per sync, so some
    // events arrive before their keys.
    for i in 0..110 {
        alice.discard_room_key(&room).unwrap();
        alice.send_text(&room, &format!("m{i:03}")).await.unwrap();
    }
    let own = bob.session().unwrap().user_id;
    let mut rx = bob.subscribe_timeline();
    bob.sync_once(Duration::from_secs(1)).await.unwrap();
    let mut waiting = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if e.room_id == room && e.sender != own && !e.decrypted {
            assert!(e.waiting_for_key, "{e:?}");
            waiting.push(e.event_id);
        }
    }
    assert!(
        !waiting.is_empty(),
        "some keys must come after their events"
    );
    assert_eq!(
        bob.store().unwrap().undecryptable_event_count().unwrap(),
        waiting.len() as u64
    );

    // bob's app is killed before the remaining keys arrive; a new process picks up.
    drop(rx);
    drop(bob);
    let bob = open(&w.hs.base_url, &w.dir("bob"));
    assert!(bob.restore_session().unwrap());
    let mut rx = bob.subscribe_timeline();
    let mut healed = std::collections::BTreeMap::new();
    for _ in 0..10 {
        bob.sync_once(Duration::from_millis(500)).await.unwrap();
        while let Ok(e) = rx.try_recv() {
            if e.room_id == room && e.is_update {
                assert!(e.decrypted, "{e:?}");
                healed.insert(e.event_id.clone(), e.body.unwrap_or_default());
            }
        }
        if healed.len() == waiting.len() {
            break;
        }
    }
    waiting.sort();
    assert_eq!(healed.keys().cloned().collect::<Vec<_>>(), waiting);
    assert!(healed.values().all(|b| b.starts_with('m')));
    assert_eq!(bob.store().unwrap().undecryptable_event_count().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_sender_learns_the_new_device_from_its_key_request() {
    // Seed 002 without a verified own device to help: the new device's key request to the
    // sender makes the sender re-query and share its current key. Later messages decrypt;
    // the one sent with the stale list cannot be recovered and says why.
    let w = World::new(&["alice", "bob"]);
    let (_phone, bob, laptop, room) = stale_device_list(&w).await;
    let stale = bob
        .send_text(&room, "sent with a stale list")
        .await
        .unwrap();
    let own = laptop.session().unwrap().user_id;
    let mut rx = laptop.subscribe_timeline();
    let mut latest: std::collections::HashMap<OwnedEventId, TimelineEvent> = Default::default();
    let mut repaired = None;
    for round in 0..20 {
        laptop.sync_once(Duration::from_millis(300)).await.unwrap();
        bob.sync_once(Duration::from_millis(300)).await.unwrap();
        while let Ok(e) = rx.try_recv() {
            if e.room_id == room && e.sender != own {
                latest.insert(e.event_id.clone(), e);
            }
        }
        if round == 3 {
            // By now bob got the laptop's request, re-queried and shared his current key.
            repaired = Some(bob.send_text(&room, "after the repair").await.unwrap());
        }
        if let Some(id) = &repaired
            && latest.get(id).is_some_and(|e| e.decrypted)
        {
            break;
        }
    }
    let repaired = repaired.expect("bob sent after the repair");
    let after = latest
        .get(&repaired)
        .expect("the laptop got bob's later message");
    assert!(after.decrypted, "{after:?}");
    assert_eq!(after.body.as_deref(), Some("after the repair"));
    let lost = latest
        .get(&stale)
        .expect("the laptop saw the stale message");
    assert!(!lost.decrypted);
    let reason = lost.error.as_deref().unwrap_or_default();
    assert!(
        reason.contains("known only from index"),
        "the reason says the key starts after this message: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_query_cut_off_by_stopping_sync_is_sent_again() {
    use newt_core::store::TrackingState;
    let w = World::new(&["alice", "bob"]);
    let proxy = FaultProxy::start(&w.hs.base_url);
    let alice = login(&proxy.base_url, &w.dir("alice"), "alice").await;
    let bob = w.login("bob", "bob").await;
    let room = room_with(&alice, &[&bob]).await;
    alice.send_text(&room, "hi").await.unwrap();
    let state_of_bob = |alice: &Client| {
        alice
            .store()
            .unwrap()
            .tracked_users()
            .unwrap()
            .into_iter()
            .find(|u| u.user_id == "@bob:localhost")
            .map(|u| u.state)
    };
    assert_eq!(state_of_bob(&alice), Some(TrackingState::UpToDate));

    // bob logs in a phone; alice's background sync starts a query the network holds back,
    // and the app stops syncing (e.g. it goes to the background) while it is in flight.
    proxy.rule("/keys/query", Action::Delay(Duration::from_secs(8)), None);
    let mut sync = alice.start_sync();
    let phone = w.login("bob", "bob-phone").await;
    let mut in_flight = false;
    for _ in 0..100 {
        if state_of_bob(&alice) == Some(TrackingState::Downloading) {
            in_flight = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(in_flight, "alice's query for bob never started");
    sync.stop().await;
    proxy.clear();

    // The dropped query is not considered in flight forever: the next sync sends it again.
    alice.sync_once(Duration::ZERO).await.unwrap();
    assert_eq!(state_of_bob(&alice), Some(TrackingState::UpToDate));
    let phone_id = phone.session().unwrap().device_id;
    let devices = alice.devices(&user("@bob:localhost")).await.unwrap();
    assert!(
        devices.iter().any(|d| d.device_id == phone_id),
        "{devices:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stored_just_before_a_crash_decrypts_the_waiting_event_after_restart() {
    use newt_core::store::{Changes, LocalTrust};
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    // bob gets the event but not its key (alice withholds it from him).
    let bob_device = bob.session().unwrap().device_id;
    alice
        .set_device_trust(
            &user("@bob:localhost"),
            &bob_device,
            LocalTrust::Blacklisted,
        )
        .unwrap();
    let event_id = alice.send_text(&room, "kept for later").await.unwrap();
    let got = receive(&bob, &room, 1).await;
    assert!(!got[0].decrypted && got[0].waiting_for_key, "{got:?}");
    assert_eq!(bob.store().unwrap().undecryptable_event_count().unwrap(), 1);

    // The key reaches bob's store (as if a sync committed it) and the process dies before
    // the retry that sync would have made.
    let session = session_id(&alice, &room);
    let key = alice
        .store()
        .unwrap()
        .inbound_group_session(&room, &session)
        .unwrap()
        .unwrap();
    bob.store()
        .unwrap()
        .save_changes(Changes::from(CryptoChanges {
            inbound_group_sessions: vec![key],
            ..Default::default()
        }))
        .unwrap();
    drop(bob);

    let bob = open(&w.hs.base_url, &w.dir("bob"));
    assert!(bob.restore_session().unwrap());
    let mut rx = bob.subscribe_timeline();
    bob.sync_once(Duration::ZERO).await.unwrap();
    let mut healed = None;
    while let Ok(e) = rx.try_recv() {
        if e.event_id == event_id && e.is_update {
            healed = Some(e);
        }
    }
    let healed = healed.expect("the first sync re-delivers the event");
    assert!(healed.decrypted, "{healed:?}");
    assert_eq!(healed.body.as_deref(), Some("kept for later"));
    assert_eq!(bob.store().unwrap().undecryptable_event_count().unwrap(), 0);
}
