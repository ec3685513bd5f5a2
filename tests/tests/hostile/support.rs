//! Shared by the hostile-input scenarios: the scene, what must not be lost, and
//! the check after each hostile input ([`assert_still_works`]).

pub(crate) use std::sync::Arc;
pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};
pub(crate) use std::time::Duration;

pub(crate) use newt_core::client::{Client, TimelineEvent};
pub(crate) use newt_core::crypto::Device;
pub(crate) use newt_core::ruma::events::room::member::MembershipState;
pub(crate) use newt_core::ruma::{
    DeviceId, EventId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId,
    RoomId, UserId,
};
pub(crate) use newt_core::store::{LocalTrust, TrackingState};
pub(crate) use newt_e2e_tests::attacker::{Attacker, MEGOLM, RemoteDevice, signed_device_keys};
pub(crate) use newt_e2e_tests::clients::{World, login, receive, room_with};
pub(crate) use newt_e2e_tests::proxy::{Action, FaultProxy, Rewrite};
pub(crate) use serde_json::{Value, json};
pub(crate) use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig, SessionKey};

/// alice talks to the server directly; bob, the victim, through `proxy`.
pub(crate) struct Scene {
    pub(crate) w: World,
    pub(crate) proxy: FaultProxy,
    pub(crate) alice: Arc<Client>,
    pub(crate) bob: Arc<Client>,
    pub(crate) room: OwnedRoomId,
}

/// A server with `users` (alice and bob among them), `rules` set on bob's proxy before
/// anybody logs in, alice and bob logged in and in an encrypted room alice created.
pub(crate) async fn scene(users: &[&str], rules: impl FnOnce(&FaultProxy)) -> Scene {
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

pub(crate) fn user_of(client: &Client) -> OwnedUserId {
    client.session().expect("logged in").user_id
}

pub(crate) fn device_of(client: &Client) -> OwnedDeviceId {
    client.session().expect("logged in").device_id
}

/// A user id from a string (a literal, or an attacker's `user_id`).
pub(crate) fn parse_user(id: &str) -> OwnedUserId {
    OwnedUserId::try_from(id).expect("a valid user id")
}

/// A device id from a string (an attacker's `device_id`).
pub(crate) fn device(id: &str) -> &DeviceId {
    id.into()
}

pub(crate) fn token(client: &Client) -> Option<String> {
    client
        .store()
        .unwrap()
        .sync_token()
        .expect("read the sync token")
}

/// A shared counter, for rewrites to report what they did.
pub(crate) fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

pub(crate) fn count(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::SeqCst)
}

/// `value[k1][k2]...`, created as objects where missing.
pub(crate) fn entry<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut Value {
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
pub(crate) struct Before {
    /// Inbound group sessions stored.
    pub(crate) sessions: u64,
    /// The other party's devices the victim knew (not deleted).
    pub(crate) devices: Vec<Device>,
}

pub(crate) async fn before(victim: &Client, other: &Client) -> Before {
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
pub(crate) async fn receive_event(
    client: &Client,
    room: &RoomId,
    event_id: &EventId,
) -> TimelineEvent {
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
pub(crate) fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{what} #{}", N.fetch_add(1, Ordering::SeqCst))
}

/// Issue 8's rule, checked after a hostile input: (1) the victim's sync still advances, (2) a
/// message still goes both ways, decrypted, and (3) nothing the victim had stored is lost
/// (inbound group sessions, the other party's devices with the same keys). Returns the
/// message the victim received (for scenario-specific checks).
pub(crate) async fn assert_still_works(
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
pub(crate) async fn settle(client: &Client) {
    for _ in 0..3 {
        client
            .sync_once(Duration::from_millis(200))
            .await
            .expect("sync");
    }
}

/// A plain message from `from`, so that the next sync of the others has something new (a
/// sync with nothing new may keep its token).
pub(crate) async fn poke(from: &Client, room: &RoomId) -> OwnedEventId {
    from.send_text(room, &unique("poke")).await.expect("poke")
}

/// A stripped-state member event of an invite.
pub(crate) fn stripped_member(state_key: &str, sender: &str, membership: &str) -> Value {
    json!({
        "type": "m.room.member", "state_key": state_key, "sender": sender,
        "content": {"membership": membership},
    })
}

/// An `m.room.encrypted` room event naming a Megolm session (its ciphertext is never read:
/// nobody has the session).
pub(crate) fn encrypted_event(
    event_id: &str,
    sender: &str,
    session_id: &str,
    sender_key: &str,
) -> Value {
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
pub(crate) fn forwarded_key(
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
pub(crate) fn withheld(
    room: &str,
    session_id: &str,
    sender_key: &str,
    code: &str,
    reason: &str,
) -> Value {
    json!({
        "algorithm": MEGOLM, "room_id": room, "session_id": session_id,
        "sender_key": sender_key, "code": code, "reason": reason,
    })
}

/// `client`'s device `device_id` of `user`, once its device list shows it (syncing meanwhile).
pub(crate) async fn wait_for_device(client: &Client, user: &UserId, device_id: &str) -> Device {
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
