//! Olm sessions when a device's one-time keys are exhausted, against a real Synapse
//! (issue 4): the fallback key is used; a device with neither gets `m.no_olm` and is
//! retried through the app's background scheduler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use newt_core::client::{BackgroundScheduler, WakeupRequest};
use newt_core::ruma::OwnedUserId;
use newt_e2e_tests::clients::{World, login, receive, room_with};
use newt_e2e_tests::http_request;
use newt_e2e_tests::proxy::{Action, FaultProxy, Rewrite};
use serde_json::{Value, json};

/// Log `user` in over raw HTTP and return the access token.
fn raw_login(base_url: &str, user: &str) -> String {
    let body = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": format!("{user}-pw"),
    });
    let (status, text) = http_request(
        base_url,
        "POST",
        "/_matrix/client/v3/login",
        None,
        Some(&body.to_string()),
    );
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

/// What one `/keys/claim` for `user`'s `device` returned.
#[derive(Debug, PartialEq, Eq)]
enum Claimed {
    OneTimeKey,
    FallbackKey,
    Nothing,
}

fn claim(base_url: &str, token: &str, user: &str, device: &str) -> Claimed {
    let body = json!({"one_time_keys": {user: {device: "signed_curve25519"}}});
    let (status, text) = http_request(
        base_url,
        "POST",
        "/_matrix/client/v3/keys/claim",
        Some(token),
        Some(&body.to_string()),
    );
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    match v["one_time_keys"][user][device].as_object() {
        Some(keys) if !keys.is_empty() => {
            let key = keys.values().next().unwrap();
            if key["fallback"] == json!(true) {
                Claimed::FallbackKey
            } else {
                Claimed::OneTimeKey
            }
        }
        _ => Claimed::Nothing,
    }
}

/// Claim `user`'s `device`'s one-time keys (as user `thief`) until the server has none
/// left; returns how many were taken and what the next claim got.
fn exhaust(base_url: &str, thief: &str, user: &str, device: &str) -> (usize, Claimed) {
    let token = raw_login(base_url, thief);
    for taken in 0..200 {
        match claim(base_url, &token, user, device) {
            Claimed::OneTimeKey => continue,
            other => return (taken, other),
        }
    }
    panic!("the device never ran out of one-time keys");
}

/// Records wake-up requests.
#[derive(Default)]
struct Scheduler(Mutex<Vec<WakeupRequest>>);

impl BackgroundScheduler for Scheduler {
    fn schedule_wakeup(&self, request: WakeupRequest) {
        self.0.lock().unwrap().push(request);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_one_time_keys_fall_back_to_the_fallback_key() {
    let w = World::new(&["alice", "bob", "mallory"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    let bob_device = bob.session().unwrap().device_id;

    let (taken, next) = exhaust(
        &w.hs.base_url,
        "mallory",
        "@bob:localhost",
        bob_device.as_str(),
    );
    assert!(taken >= 1, "bob had published one-time keys");
    assert_eq!(next, Claimed::FallbackKey);

    // alice has no Olm session with bob yet: it can only be made from the fallback key.
    alice
        .send_text(&room, "via the fallback key")
        .await
        .unwrap();
    let got = receive(&bob, &room, 1).await;
    assert!(got[0].decrypted, "{got:?}");
    assert_eq!(got[0].body.as_deref(), Some("via the fallback key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_any_key_gets_no_olm_and_is_retried_by_due_work() {
    let w = World::new(&["alice", "bob", "mallory"]);
    // bob's homeserver loses every fallback key he uploads.
    let proxy = FaultProxy::start(&w.hs.base_url);
    let strip_fallback = Rewrite(Arc::new(|body: &[u8]| {
        let mut v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.remove("fallback_keys");
        }
        serde_json::to_vec(&v).unwrap()
    }));
    proxy.rule("/keys/upload", Action::RewriteRequest(strip_fallback), None);
    let alice = w.login("alice", "alice").await;
    let bob = login(&proxy.base_url, &w.dir("bob"), "bob").await;
    let room = room_with(&alice, &[&bob]).await;
    let bob_device = bob.session().unwrap().device_id;
    let (taken, next) = exhaust(
        &w.hs.base_url,
        "mallory",
        "@bob:localhost",
        bob_device.as_str(),
    );
    assert!(taken >= 1);
    assert_eq!(next, Claimed::Nothing, "bob's fallback key must be gone");

    let scheduler = Arc::new(Scheduler::default());
    alice.set_background_scheduler(Some(scheduler.clone()));
    // The message is sent; bob's device is told why it has no key.
    alice.send_text(&room, "no channel to bob").await.unwrap();
    assert_eq!(
        alice.devices_without_olm(&room).unwrap(),
        vec![(
            OwnedUserId::try_from("@bob:localhost").unwrap(),
            bob_device.clone()
        )]
    );
    let wakeups = scheduler.0.lock().unwrap().clone();
    assert_eq!(wakeups.len(), 1, "{wakeups:?}");
    assert!(wakeups[0].requires_network && wakeups[0].delay >= Duration::from_secs(60));
    let mut rx = bob.subscribe_timeline();
    let got = receive(&bob, &room, 1).await;
    assert!(!got[0].decrypted);
    assert!(
        got[0].waiting_for_key,
        "the sender retries m.no_olm devices"
    );
    let reason = got[0].error.as_deref().unwrap_or_default();
    assert!(reason.contains("m.no_olm"), "{reason}");
    assert_eq!(bob.store().unwrap().undecryptable_event_count().unwrap(), 1);
    let withheld_event = got[0].event_id.clone();

    // bob's sync saw his key count at zero and uploaded new one-time keys; the wake-up
    // gives him the room key without alice sending anything.
    bob.sync_once(Duration::ZERO).await.unwrap();
    let report = alice.run_due_work().await.unwrap();
    assert_eq!((report.completed, report.remaining), (1, 0));
    assert!(alice.devices_without_olm(&room).unwrap().is_empty());
    let session = alice
        .store()
        .unwrap()
        .outbound_group_session(&room)
        .unwrap()
        .unwrap()
        .session_id;
    bob.sync_once(Duration::ZERO).await.unwrap();
    assert!(
        bob.store()
            .unwrap()
            .inbound_group_session(&room, &session)
            .unwrap()
            .is_some(),
        "bob received the key from the retry"
    );
    // ...from the index he was entitled to: the withheld message is delivered again,
    // decrypted.
    let mut healed = None;
    while let Ok(e) = rx.try_recv() {
        if e.event_id == withheld_event && e.is_update {
            healed = Some(e);
        }
    }
    let healed = healed.expect("the withheld message was re-delivered");
    assert!(healed.decrypted, "{healed:?}");
    assert_eq!(healed.body.as_deref(), Some("no channel to bob"));
    assert_eq!(bob.store().unwrap().undecryptable_event_count().unwrap(), 0);
    alice.send_text(&room, "now bob can read").await.unwrap();
    let got = receive(&bob, &room, 1).await;
    assert!(got[0].decrypted, "{got:?}");
    assert_eq!(got[0].body.as_deref(), Some("now bob can read"));
    // Nothing left: no further wake-up was asked for.
    assert_eq!(scheduler.0.lock().unwrap().len(), 1);
}
