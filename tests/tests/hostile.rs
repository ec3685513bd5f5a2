//! Hostile input (issue 8), end to end against a real Synapse: after each hostile input the
//! victim's sync still advances, a message still goes both ways (decrypted), and nothing the
//! victim had stored is lost ([`assert_still_works`]).
//!
//! Where Synapse lets the input through, an attacker sends it through Synapse
//! ([`newt_e2e_tests::attacker`]); where it does not (a homeserver lying in its answers), the
//! victim, bob, talks to the server through a proxy that rewrites what it answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use newt_core::client::{Client, TimelineEvent};
use newt_core::crypto::Device;
use newt_core::ruma::events::room::member::MembershipState;
use newt_core::ruma::{
    DeviceId, EventId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId,
    RoomId, UserId,
};
use newt_core::store::{LocalTrust, TrackingState};
use newt_e2e_tests::attacker::{Attacker, MEGOLM, RemoteDevice, signed_device_keys};
use newt_e2e_tests::clients::{World, login, receive, room_with};
use newt_e2e_tests::proxy::{Action, FaultProxy, Rewrite};
use serde_json::{Value, json};
use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig, SessionKey};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// alice talks to the server directly; bob, the victim, through `proxy`.
struct Scene {
    w: World,
    proxy: FaultProxy,
    alice: Arc<Client>,
    bob: Arc<Client>,
    room: OwnedRoomId,
}

/// A server with `users` (alice and bob among them), `rules` set on bob's proxy before
/// anybody logs in, alice and bob logged in and in an encrypted room alice created.
async fn scene(users: &[&str], rules: impl FnOnce(&FaultProxy)) -> Scene {
    let w = World::new(users);
    let proxy = FaultProxy::start(&w.hs.base_url);
    rules(&proxy);
    let alice = w.login("alice", "alice").await;
    let bob = login(&proxy.base_url, &w.dir("bob"), "bob").await;
    let room = room_with(&alice, &[&bob]).await;
    Scene {
        w,
        proxy,
        alice,
        bob,
        room,
    }
}

fn user_of(client: &Client) -> OwnedUserId {
    client.session().expect("logged in").user_id
}

fn device_of(client: &Client) -> OwnedDeviceId {
    client.session().expect("logged in").device_id
}

/// A user id from a string (a literal, or an attacker's `user_id`).
fn parse_user(id: &str) -> OwnedUserId {
    OwnedUserId::try_from(id).expect("a valid user id")
}

/// A device id from a string (an attacker's `device_id`).
fn device(id: &str) -> &DeviceId {
    id.into()
}

fn token(client: &Client) -> Option<String> {
    client
        .store()
        .unwrap()
        .sync_token()
        .expect("read the sync token")
}

/// A shared counter, for rewrites to report what they did.
fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn count(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::SeqCst)
}

/// `value[k1][k2]...`, created as objects where missing.
fn entry<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(value, |v, key| {
        if !v.is_object() {
            *v = json!({});
        }
        v.as_object_mut()
            .expect("an object")
            .entry(key.to_string())
            .or_insert_with(|| json!({}))
    })
}

/// What the victim had before the hostile input: what must not be lost.
struct Before {
    /// Inbound group sessions stored.
    sessions: u64,
    /// The other party's devices the victim knew (not deleted).
    devices: Vec<Device>,
}

async fn before(victim: &Client, other: &Client) -> Before {
    let devices: Vec<Device> = victim
        .devices(&user_of(other))
        .await
        .expect("the victim's view of the other party's devices")
        .into_iter()
        .filter(|d| !d.deleted)
        .collect();
    assert!(
        devices.iter().any(|d| d.device_id == device_of(other)),
        "setup: the victim must know the other party's device first: {devices:?}"
    );
    Before {
        sessions: victim
            .store()
            .unwrap()
            .inbound_group_session_count()
            .unwrap(),
        devices,
    }
}

/// Sync `client` until the event `event_id` of another user arrives in `room` (as a new
/// item, not an update); panics after a minute without it.
async fn receive_event(client: &Client, room: &RoomId, event_id: &EventId) -> TimelineEvent {
    let mut seen = Vec::new();
    for _ in 0..10 {
        for event in receive(client, room, 1).await {
            if event.event_id == event_id {
                return event;
            }
            seen.push(event);
        }
    }
    panic!("event {event_id} never arrived; got instead: {seen:?}");
}

/// Distinct message texts across one test.
fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{what} #{}", N.fetch_add(1, Ordering::SeqCst))
}

/// Issue 8's rule, checked after a hostile input: (1) the victim's sync still advances, (2) a
/// message still goes both ways, decrypted, and (3) nothing the victim had stored is lost
/// (inbound group sessions, the other party's devices with the same keys). Returns the
/// message the victim received (for scenario-specific checks).
async fn assert_still_works(
    victim: &Client,
    other: &Client,
    room: &RoomId,
    before: &Before,
) -> TimelineEvent {
    // (1) and (2): other -> victim, over the victim's sync.
    let token_before = token(victim);
    let text = unique("to the victim");
    let sent = other
        .send_text(room, &text)
        .await
        .expect("the other side sends");
    let got = receive_event(victim, room, &sent).await;
    assert!(
        got.decrypted,
        "the victim cannot read the other side any more: {got:?}"
    );
    assert_eq!(got.body.as_deref(), Some(text.as_str()));
    assert_ne!(
        token(victim),
        token_before,
        "the victim's sync token did not advance"
    );

    // (2): victim -> other.
    let text = unique("from the victim");
    let sent = victim
        .send_text(room, &text)
        .await
        .expect("the victim sends");
    let back = receive_event(other, room, &sent).await;
    assert!(
        back.decrypted,
        "the other side cannot read the victim any more: {back:?}"
    );
    assert_eq!(back.body.as_deref(), Some(text.as_str()));

    // (3): nothing lost.
    let sessions = victim
        .store()
        .unwrap()
        .inbound_group_session_count()
        .unwrap();
    assert!(
        sessions >= before.sessions,
        "inbound group sessions went from {} to {sessions}",
        before.sessions
    );
    let now = victim.devices(&user_of(other)).await.expect("devices");
    for known in &before.devices {
        assert!(
            now.iter().any(|d| d.device_id == known.device_id
                && d.curve25519 == known.curve25519
                && d.ed25519 == known.ed25519
                && !d.deleted),
            "the victim lost or changed {known:?}; now: {now:?}"
        );
    }
    got
}

/// Sync a few times so that `client` sees what the server has for it.
async fn settle(client: &Client) {
    for _ in 0..3 {
        client
            .sync_once(Duration::from_millis(200))
            .await
            .expect("sync");
    }
}

/// A plain message from `from`, so that the next sync of the others has something new (a
/// sync with nothing new may keep its token).
async fn poke(from: &Client, room: &RoomId) -> OwnedEventId {
    from.send_text(room, &unique("poke")).await.expect("poke")
}

/// A stripped-state member event of an invite.
fn stripped_member(state_key: &str, sender: &str, membership: &str) -> Value {
    json!({
        "type": "m.room.member", "state_key": state_key, "sender": sender,
        "content": {"membership": membership},
    })
}

/// An `m.room.encrypted` room event naming a Megolm session (its ciphertext is never read:
/// nobody has the session).
fn encrypted_event(event_id: &str, sender: &str, session_id: &str, sender_key: &str) -> Value {
    json!({
        "type": "m.room.encrypted", "event_id": event_id, "sender": sender,
        "origin_server_ts": 1_700_000_000_000u64,
        "content": {
            "algorithm": MEGOLM, "ciphertext": "AwgAEhAbogus", "session_id": session_id,
            "sender_key": sender_key, "device_id": "FORGEDDEVICE",
        },
    })
}

/// `m.forwarded_room_key` content for `session_id` in `room`, exported at `session_key`'s
/// first index, claiming the session was made by the device with `sender_key` and
/// `claimed_ed25519`.
fn forwarded_key(
    room: &str,
    session_id: &str,
    exported: &str,
    sender_key: &str,
    claimed_ed25519: &str,
) -> Value {
    json!({
        "algorithm": MEGOLM, "room_id": room, "session_id": session_id,
        "session_key": exported, "sender_key": sender_key,
        "sender_claimed_ed25519_key": claimed_ed25519,
        "forwarding_curve25519_key_chain": [],
    })
}

/// An `m.room_key.withheld` notice (sent in clear).
fn withheld(room: &str, session_id: &str, sender_key: &str, code: &str, reason: &str) -> Value {
    json!({
        "algorithm": MEGOLM, "room_id": room, "session_id": session_id,
        "sender_key": sender_key, "code": code, "reason": reason,
    })
}

/// `client`'s device `device_id` of `user`, once its device list shows it (syncing meanwhile).
async fn wait_for_device(client: &Client, user: &UserId, device_id: &str) -> Device {
    for _ in 0..20 {
        let devices = client.devices(user).await.expect("devices");
        if let Some(d) = devices.into_iter().find(|d| d.device_id == device_id) {
            return d;
        }
        client
            .sync_once(Duration::from_millis(300))
            .await
            .expect("sync");
    }
    panic!("{device_id} of {user} never showed up");
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

/// 1. A homeserver invites bob to a room whose stripped state lists an `m.room.member` with
///    an empty state key and one for a user who is not in the room. Stripped state is
///    written by whoever invites: it must not make anyone a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripped_invite_state_never_makes_anyone_a_member() {
    let s = scene(&["alice", "bob"], |_| {}).await;
    let before = before(&s.bob, &s.alice).await;
    let invite_room = "!hostile-invite:localhost";
    let applied = counter();
    let a = applied.clone();
    let rewrite = Rewrite::json(move |sync| {
        if sync.get("next_batch").is_none() {
            return;
        }
        let invite = json!({"invite_state": {"events": [
            stripped_member("", "@mallory:localhost", "join"),
            stripped_member("@mallory:localhost", "@mallory:localhost", "join"),
            stripped_member("@bob:localhost", "@mallory:localhost", "invite"),
        ]}});
        *entry(sync, &["rooms", "invite", invite_room]) = invite;
        a.fetch_add(1, Ordering::SeqCst);
    });
    s.proxy
        .rule("/sync", Action::RewriteResponse(rewrite), Some(1));

    poke(&s.alice, &s.room).await;
    let token_before = token(&s.bob);
    s.bob
        .sync_once(Duration::ZERO)
        .await
        .expect("the sync carrying the hostile invite");
    assert_eq!(count(&applied), 1, "the invite was injected");
    assert_ne!(token(&s.bob), token_before, "that sync advanced");

    // The invite itself is taken (our own membership is the one thing it may say)...
    let invite_room_id = OwnedRoomId::try_from(invite_room).expect("a valid room id");
    let record = s.bob.store().unwrap().room(&invite_room_id).unwrap();
    assert_eq!(
        record.and_then(|r| r.own_membership),
        Some(MembershipState::Invite),
        "the hostile invite did not reach the client"
    );
    // ...but nobody becomes a member through it, and nobody is tracked because of it.
    // Member and tracked user ids can no longer be empty by type (the member event with an
    // empty state key cannot be stored as one): every one must name alice or bob, the only
    // users actually in a room with bob (so neither the empty key nor mallory).
    let in_scene = |u: &UserId| u == "@alice:localhost" || u == "@bob:localhost";
    let members = s.bob.store().unwrap().members(&invite_room_id).unwrap();
    assert!(
        members.iter().all(|m| in_scene(&m.user_id)),
        "stripped state made members: {members:?}"
    );
    let shared = s.bob.store().unwrap().members(&s.room).unwrap();
    assert!(shared.iter().all(|m| in_scene(&m.user_id)), "{shared:?}");
    let tracked = s.bob.store().unwrap().tracked_users().unwrap();
    assert!(tracked.iter().all(|t| in_scene(&t.user_id)), "{tracked:?}");

    assert_still_works(&s.bob, &s.alice, &s.room, &before).await;
}

/// 2. Timeline events whose sender is empty or not a user id, injected into bob's sync of
///    the shared room as encrypted events naming a session: they are dropped at the edge
///    (not shown, no key asked for). A third, well-formed injected event shows that the
///    injection itself works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_events_without_a_valid_sender_are_dropped_and_ask_for_no_key() {
    let s = scene(&["alice", "bob"], |_| {}).await;
    let before = before(&s.bob, &s.alice).await;
    let alice_curve = before.devices[0].curve25519.clone();
    let injected = [
        ("$hostile-empty-sender", "", "SESSION-OF-AN-EMPTY-SENDER"),
        ("$hostile-not-a-user", "not-a-user", "SESSION-OF-NOT-A-USER"),
        // Control: well-formed, so it is shown (undecryptable) and its key asked for.
        (
            "$hostile-control",
            "@alice:localhost",
            "SESSION-OF-THE-CONTROL",
        ),
    ];
    let (room, applied) = (s.room.clone(), counter());
    let a = applied.clone();
    let rewrite = Rewrite::json(move |sync| {
        if sync.get("next_batch").is_none() {
            return;
        }
        let timeline = entry(
            sync,
            &["rooms", "join", room.as_str(), "timeline", "events"],
        );
        if !timeline.is_array() {
            *timeline = json!([]);
        }
        let events = timeline.as_array_mut().expect("an array");
        for (event_id, sender, session) in injected {
            events.push(encrypted_event(event_id, sender, session, &alice_curve));
        }
        a.fetch_add(1, Ordering::SeqCst);
    });
    s.proxy
        .rule("/sync", Action::RewriteResponse(rewrite), Some(1));

    poke(&s.alice, &s.room).await;
    let mut rx = s.bob.subscribe_timeline();
    let token_before = token(&s.bob);
    s.bob
        .sync_once(Duration::ZERO)
        .await
        .expect("the sync carrying the hostile events");
    assert_eq!(count(&applied), 1);
    assert_ne!(token(&s.bob), token_before, "that sync advanced");
    let mut delivered = Vec::new();
    while let Ok(event) = rx.try_recv() {
        delivered.push(event);
    }
    let ids: Vec<&str> = delivered.iter().map(|e| e.event_id.as_str()).collect();
    assert!(
        !ids.contains(&"$hostile-empty-sender") && !ids.contains(&"$hostile-not-a-user"),
        "events without a valid sender reached the timeline: {delivered:?}"
    );
    let control = delivered
        .iter()
        .find(|e| e.event_id == "$hostile-control")
        .expect("the well-formed injected event is shown: the injection worked");
    assert!(!control.decrypted && control.waiting_for_key, "{control:?}");

    let store = s.bob.store().unwrap();
    for (_, sender, session) in &injected[..2] {
        assert!(
            store.key_request(&s.room, session).unwrap().is_none(),
            "a key was asked for the session of an event from {sender:?}"
        );
        assert!(
            store
                .undecryptable_events(&s.room, session)
                .unwrap()
                .is_empty(),
            "an event from {sender:?} was kept for a late key"
        );
    }
    assert!(
        store
            .key_request(&s.room, "SESSION-OF-THE-CONTROL")
            .unwrap()
            .is_some(),
        "the control's key is asked for"
    );

    assert_still_works(&s.bob, &s.alice, &s.room, &before).await;
}

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

/// 6. One `/sync` answer made huge by others: 60 invites whose stripped state carries seven
///    60 KB events each, and padding the client does not use (over 35 MB in all, more than
///    an answer used to be allowed to be). It is read as a stream without being held: the
///    sync takes it, advances, and delivers the message it carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_answer_bloated_by_others_is_read_without_holding_it() {
    let s = scene(&["alice", "bob"], |_| {}).await;
    let before = before(&s.bob, &s.alice).await;
    let bloat = "x".repeat(60_000);
    let rewrite = Rewrite::json(move |sync| {
        for i in 0..60 {
            let state: Vec<Value> = (0..7)
                .map(|_| {
                    json!({"type": "m.room.topic", "state_key": "", "sender": "@x:evil",
                                "content": {"topic": bloat}})
                })
                .collect();
            *entry(sync, &["rooms", "invite", &format!("!bloat{i}:evil")]) =
                json!({"invite_state": {"events": state}});
        }
        sync["padding"] = "y".repeat(10 * 1024 * 1024).into();
    });
    s.proxy
        .rule("/sync", Action::RewriteResponse(rewrite), Some(1));
    let missed = poke(&s.alice, &s.room).await;
    let token_before = token(&s.bob);
    let mut rx = s.bob.subscribe_timeline();
    s.bob
        .sync_once(Duration::ZERO)
        .await
        .expect("the bloated answer is taken");
    assert_ne!(token(&s.bob), token_before, "the sync advanced");
    let got = std::iter::from_fn(|| rx.try_recv().ok()).find(|e| e.event_id == missed);
    assert!(
        got.is_some_and(|e| e.decrypted),
        "the message it carried arrived"
    );
    assert_eq!(s.bob.store().unwrap().counts().unwrap().invites, 60);
    assert_still_works(&s.bob, &s.alice, &s.room, &before).await;
}

/// 7. The server refuses bob's first to-device request for good (400): it is dropped, not
///    retried forever, and does not hold up what bob sends later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_to_device_request_refused_for_good_is_dropped_and_later_sends_get_through() {
    let s = scene(&["alice", "bob"], |_| {}).await;
    let before = before(&s.bob, &s.alice).await;
    s.proxy.rule("/sendToDevice", Action::Fail(400), Some(1));

    // bob's first to-device request is the room key for his first message.
    s.bob
        .send_text(&s.room, "its room key is refused")
        .await
        .expect("the message itself still goes out");
    let refused: Vec<String> = s
        .proxy
        .log()
        .into_iter()
        .filter(|l| l.contains("/sendToDevice/") && l.ends_with(" 400"))
        .collect();
    assert_eq!(refused.len(), 1, "{:?}", s.proxy.log());
    let refused_path = refused[0].split(' ').nth(1).unwrap().to_owned();
    assert!(
        refused_path.contains("/sendToDevice/m.room.encrypted/"),
        "the refused request is the Olm-encrypted room key: {refused_path}"
    );
    assert!(
        s.bob
            .store()
            .unwrap()
            .pending_to_device()
            .unwrap()
            .is_empty(),
        "the refused request is kept for a retry"
    );

    // bob's next message: alice must be able to read it (the refused key must not leave
    // her without the session for good).
    let later = s
        .bob
        .send_text(&s.room, "sent after the refusal")
        .await
        .expect("a later send");
    let got = receive_event(&s.alice, &s.room, &later).await;
    assert!(
        got.decrypted,
        "alice cannot read bob's message sent after the refusal: the refused room key was \
         never shared again ({:?})",
        got.error
    );
    assert_still_works(&s.bob, &s.alice, &s.room, &before).await;
    let log = s.proxy.log();
    assert_eq!(
        log.iter()
            .filter(|l| l.split(' ').nth(1) == Some(refused_path.as_str()))
            .count(),
        1,
        "the refused request was sent again: {log:?}"
    );
}

/// 8. bob's sync answers say the room's timeline is `limited` (with a `prev_batch`), and every
///    back-fill (`/messages`) fails: the gap stays, but sync advances and messages arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_whose_backfill_always_fails_does_not_hold_up_sync() {
    let s = scene(&["alice", "bob"], |_| {}).await;
    let before = before(&s.bob, &s.alice).await;
    let (room, limited) = (s.room.clone(), counter());
    let l = limited.clone();
    let rewrite = Rewrite::json(move |sync| {
        let Some(timeline) = sync
            .get_mut("rooms")
            .and_then(|r| r.get_mut("join"))
            .and_then(|j| j.get_mut(room.as_str()))
            .and_then(|r| r.get_mut("timeline"))
            .filter(|t| t.is_object())
        else {
            return;
        };
        timeline["limited"] = true.into();
        if !timeline["prev_batch"].is_string() {
            timeline["prev_batch"] = "hostile-prev-batch".into();
        }
        l.fetch_add(1, Ordering::SeqCst);
    });
    s.proxy.rule("/messages", Action::Fail(500), None);
    s.proxy
        .rule("/sync", Action::RewriteResponse(rewrite), None);

    let token_before = token(&s.bob);
    let sent = s
        .alice
        .send_text(&s.room, "across a gap that cannot be filled")
        .await
        .unwrap();
    let got = receive_event(&s.bob, &s.room, &sent).await;
    assert!(got.decrypted, "{got:?}");
    assert_ne!(token(&s.bob), token_before);
    let marked = count(&limited);
    assert!(marked >= 1, "no sync answer was marked limited");
    let failed = s
        .proxy
        .log()
        .iter()
        .filter(|l| l.contains("/messages") && l.ends_with(" 500"))
        .count();
    assert!(
        failed >= 1,
        "the gap was never back-filled: {:?}",
        s.proxy.log()
    );

    // With the gaps and failures still there.
    assert_still_works(&s.bob, &s.alice, &s.room, &before).await;
    let (marked, failed) = (
        count(&limited),
        s.proxy
            .log()
            .iter()
            .filter(|l| l.contains("/messages") && l.ends_with(" 500"))
            .count(),
    );
    println!("{marked} sync answers marked limited, {failed} back-fill requests failed");
    assert!(
        failed <= 4 * marked,
        "{failed} back-fill attempts for {marked} gaps: retried without bound"
    );
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
