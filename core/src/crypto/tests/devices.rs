//! Device lists: `/keys/query` answers and device signatures, tracking states, back-off of
//! failing servers and the rooms a device change affects.

use super::*;

#[test]
fn forged_device_signature_is_rejected_and_not_stored() {
    let (mut server, alice, bob) = setup_pair();
    let keys = server
        .device_keys
        .get_mut(&bob.user())
        .unwrap()
        .get_mut("BOB")
        .unwrap();
    let other = Peer::new("@bob:localhost", "BOB");
    keys["keys"]["curve25519:BOB"] = other.machine.curve25519_key().into();
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    let outcomes = server.drive(&alice);
    let rejected = &outcomes[0].rejected;
    assert_eq!(rejected.len(), 1);
    assert!(matches!(rejected[0].2, DeviceKeyError::Signature(_)));
    assert!(alice.machine.devices(&bob.user()).unwrap().is_empty());
}

#[test]
fn changed_ed25519_key_of_known_device_is_rejected() {
    let (mut server, alice, bob) = setup_pair();
    server.establish(&alice, &[bob.user()]);
    let before = alice.machine.devices(&bob.user()).unwrap();
    // bob's device id is reused by a different account (a forged or reset device).
    let impostor = Peer::new("@bob:localhost", "BOB");
    server
        .device_keys
        .get_mut(&bob.user())
        .unwrap()
        .insert("BOB".into(), impostor.machine.device_keys().unwrap());
    let mut request = get_keys::v3::Request::new();
    request.device_keys.insert(bob.user(), vec![]);
    let response = server.query(&request);
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    let store = alice.store.clone();
    store
        .save_changes(crate::store::Changes::from(crate::store::CryptoChanges {
            tracked_users: vec![crate::store::TrackedUser {
                user_id: bob.user(),
                state: crate::store::TrackingState::PendingDownload,
                sequence: 5,
            }],
            ..Default::default()
        }))
        .unwrap();
    let id = match alice
        .machine
        .outgoing_requests()
        .unwrap()
        .into_iter()
        .find(|r| matches!(r.kind, OutgoingKind::KeysQuery(_)))
    {
        Some(r) => r.id,
        None => panic!("expected a query"),
    };
    let outcome = alice.machine.mark_keys_query_sent(&id, &response).unwrap();
    assert!(matches!(
        outcome.rejected[0].2,
        DeviceKeyError::Ed25519Changed { .. }
    ));
    assert_eq!(alice.machine.devices(&bob.user()).unwrap(), before);
}

#[test]
fn message_from_an_unknown_device_marks_its_user_outdated() {
    let (mut server, alice, bob) = setup_pair();
    // bob tracks alice but downloaded her list before she had this device.
    let alice_keys = server.device_keys.remove(&alice.user()).unwrap();
    bob.machine.update_tracked_users(&[alice.user()]).unwrap();
    server.drive(&bob);
    server.device_keys.insert(alice.user(), alice_keys);
    assert!(
        bob.machine
            .outdated_users(&[alice.user()])
            .unwrap()
            .is_empty()
    );
    server.establish(&alice, &[bob.user()]);
    let outcome = receive(&bob, vec![pre_key_event(&mut server, &alice, &bob)]);
    assert_eq!(outcome.to_device[0].result, Ok("m.dummy".to_owned()));
    assert_eq!(
        bob.machine.outdated_users(&[alice.user()]).unwrap(),
        vec![alice.user()]
    );
    // The next outgoing requests re-query alice at once.
    let queries = bob.machine.outgoing_requests().unwrap();
    assert!(queries.iter().any(|r| matches!(&r.kind, OutgoingKind::KeysQuery(q) if q.device_keys.keys().any(|u| *u == alice.user()))));
}

#[test]
fn a_failing_server_is_backed_off_without_delaying_others() {
    let (mut server, alice, bob) = setup_pair();
    let remote = uid("@carol:remote.example");
    alice
        .machine
        .update_tracked_users(&[bob.user(), remote.clone()])
        .unwrap();
    let requests = alice.machine.outgoing_requests().unwrap();
    let query = requests.iter().find_map(|r| match &r.kind {
        OutgoingKind::KeysQuery(q) => Some((r.id.clone(), q.clone())),
        _ => None,
    });
    let (id, q) = query.expect("a query");
    let mut response = server.query(&q);
    response.device_keys.retain(|u, _| *u != remote);
    response.failures.insert("remote.example".into());
    alice.machine.mark_keys_query_sent(&id, &response).unwrap();
    assert_eq!(
        alice
            .machine
            .outdated_users(&[bob.user(), remote.clone()])
            .unwrap(),
        vec![remote.clone()]
    );
    // carol stays outdated but is not re-queried until her server's back-off ends...
    assert!(
        alice
            .machine
            .outgoing_requests()
            .unwrap()
            .iter()
            .all(|r| !matches!(r.kind, OutgoingKind::KeysQuery(_)))
    );
    // ...while bob's next change is queried at once.
    alice
        .machine
        .receive_sync_changes(SyncChanges {
            changed_users: vec![bob.user()],
            ..Default::default()
        })
        .unwrap();
    let requests = alice.machine.outgoing_requests().unwrap();
    let users: Vec<OwnedUserId> = requests
        .iter()
        .filter_map(|r| match &r.kind {
            OutgoingKind::KeysQuery(q) => Some(q.device_keys.keys().cloned().collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(users, vec![bob.user()]);
    let _ = &mut server;
}

#[test]
fn tracking_states_follow_queries_and_invalidations() {
    use crate::store::TrackingState::*;
    let (server, alice, bob) = setup_pair();
    let state = |user: &ruma::UserId| alice.machine.tracking_state(user).unwrap();
    assert_eq!(state(&bob.user()), NotTracked);
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    assert_eq!(state(&bob.user()), PendingDownload);

    // A query goes out: downloading. A change arrives before the answer: the answer is
    // stored, but the user stays pending, and is queried again.
    let queries = pending_queries(&alice);
    assert_eq!(queries.len(), 1);
    assert_eq!(state(&bob.user()), Downloading);
    assert!(
        pending_queries(&alice).is_empty(),
        "no second query while one is in flight"
    );
    changed(&alice, vec![bob.user()], vec![]);
    let (id, q) = &queries[0];
    let outcome = alice
        .machine
        .mark_keys_query_sent(id, &server.query(q))
        .unwrap();
    assert_eq!(outcome.new_devices, vec![(bob.user(), did("BOB"))]);
    assert_eq!(state(&bob.user()), PendingDownload);
    assert_eq!(alice.machine.devices(&bob.user()).unwrap().len(), 1);

    // A failed query puts the user back to pending.
    let (id, _) = pending_queries(&alice).remove(0);
    alice.machine.mark_query_failed(&id, false).unwrap();
    assert_eq!(state(&bob.user()), PendingDownload);
    let (id, q) = pending_queries(&alice).remove(0);
    alice
        .machine
        .mark_keys_query_sent(&id, &server.query(&q))
        .unwrap();
    assert_eq!(state(&bob.user()), UpToDate);

    // Left: no longer tracked, devices and the user's decision kept, changes ignored.
    alice
        .machine
        .set_local_trust(&bob.user(), "BOB".into(), LocalTrust::Verified)
        .unwrap();
    changed(&alice, vec![], vec![bob.user()]);
    assert_eq!(state(&bob.user()), NotTracked);
    changed(&alice, vec![bob.user()], vec![]);
    assert_eq!(state(&bob.user()), NotTracked);
    assert!(pending_queries(&alice).is_empty());
    let kept = alice.machine.devices(&bob.user()).unwrap();
    assert_eq!(kept[0].local_trust, LocalTrust::Verified);
    // Sharing a room again starts tracking again.
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    assert_eq!(state(&bob.user()), PendingDownload);
}

#[test]
fn leaving_while_a_query_is_in_flight_is_not_undone_by_the_answer() {
    use crate::store::TrackingState::*;
    let (server, alice, bob) = setup_pair();
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    let (id, q) = pending_queries(&alice).remove(0);
    changed(&alice, vec![], vec![bob.user()]);
    alice
        .machine
        .mark_keys_query_sent(&id, &server.query(&q))
        .unwrap();
    assert_eq!(
        alice.machine.tracking_state(&bob.user()).unwrap(),
        NotTracked
    );
}

#[test]
fn a_query_lost_with_a_restart_is_sent_again() {
    use crate::store::TrackingState::*;
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path());
    let (server, _alice, bob) = setup_pair();
    let carol = Peer::with_store("@carol:localhost", "CAROL", store.clone());
    carol.machine.update_tracked_users(&[bob.user()]).unwrap();
    assert_eq!(pending_queries(&carol).len(), 1);
    drop(carol);
    // The process died with the query in flight; the new one sees `Downloading`.
    let carol = Peer::with_store("@carol:localhost", "CAROL", store);
    assert_eq!(
        carol.machine.tracking_state(&bob.user()).unwrap(),
        Downloading
    );
    let (id, q) = pending_queries(&carol).remove(0);
    carol
        .machine
        .mark_keys_query_sent(&id, &server.query(&q))
        .unwrap();
    assert_eq!(carol.machine.tracking_state(&bob.user()).unwrap(), UpToDate);
}

#[test]
fn a_device_change_names_the_affected_rooms_from_the_index() {
    use crate::store::{Changes, ClientChanges, MemberRecord, RoomRecord};
    let (mut server, alice, bob) = setup_pair();
    let member = |room: &str, user: OwnedUserId, membership: MembershipState| MemberRecord {
        room_id: rid(room),
        user_id: user,
        membership,
    };
    let room = |room_id: &str, encrypted: bool| RoomRecord {
        encryption: encrypted.then(megolm_encryption),
        ..RoomRecord::new(rid(room_id))
    };
    alice
        .store
        .save_changes(Changes::from(ClientChanges {
            rooms: vec![
                room("!a:x", true),
                room("!b:x", true),
                room("!plain:x", false),
            ],
            members: vec![
                member("!a:x", bob.user(), MembershipState::Join),
                member("!b:x", bob.user(), MembershipState::Leave),
                member("!plain:x", bob.user(), MembershipState::Join),
            ],
            ..Default::default()
        }))
        .unwrap();
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    let outcomes = server.drive(&alice);
    assert_eq!(outcomes[0].affected_rooms, vec![rid("!a:x")]);

    // Nothing changed: no rooms to look at.
    changed(&alice, vec![bob.user()], vec![]);
    let outcomes = server.drive(&alice);
    assert!(outcomes[0].new_devices.is_empty() && outcomes[0].affected_rooms.is_empty());

    // bob logs out his device.
    server.device_keys.remove(&bob.user());
    changed(&alice, vec![bob.user()], vec![]);
    let outcomes = server.drive(&alice);
    assert_eq!(outcomes[0].removed_devices, vec![(bob.user(), did("BOB"))]);
    assert_eq!(outcomes[0].affected_rooms, vec![rid("!a:x")]);
}
