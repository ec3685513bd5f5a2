//! Rooms and timelines: stripped invite state and events without a valid sender.

use super::support::*;

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
