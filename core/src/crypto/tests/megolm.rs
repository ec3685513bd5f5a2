//! Megolm room events: decryption between machines, and the room, replay and sender checks.

use super::*;
use crate::store::Changes;

#[test]
fn two_machines_exchange_olm_and_megolm() {
    let (mut server, alice, bob) = setup_pair();
    let members = vec![alice.user(), bob.user()];
    // bob knows alice's device: the room key is attributed to it.
    bob.machine.update_tracked_users(&members).unwrap();
    server.drive(&bob);
    server.share(&alice, room(), &members);
    let outcome = server.sync(&bob);
    assert_eq!(outcome.room_keys.len(), 1);
    assert_eq!(outcome.to_device[0].result, Ok("m.room_key".to_owned()));

    let content = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("hi bob"))
        .unwrap();
    let event = room_event(room(), alice.user(), "$1", content);
    let decrypted = bob.machine.decrypt_room_event(room(), &event).unwrap();
    assert_eq!(decrypted.content["body"], "hi bob");
    assert_eq!(decrypted.sender_device, Some(did("ALICE")));
    assert_eq!(decrypted.sender_curve25519, alice.machine.curve25519_key());

    // And back, bob -> alice, over a session alice created from bob's pre-key message.
    server.share(&bob, room(), &members);
    assert_eq!(server.sync(&alice).room_keys.len(), 1);
    let decrypted = exchange(&bob, &alice, "hi alice", "$2").unwrap();
    assert_eq!(decrypted.content["body"], "hi alice");
}

#[test]
fn session_of_another_room_does_not_decrypt() {
    let (_server, alice, bob) = olm_pair();
    let content = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("secret"))
        .unwrap();
    let err = bob
        .machine
        .decrypt_room_event(
            &rid("!elsewhere:localhost"),
            &room_event("", alice.user(), "$x", content),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        CryptoError::Megolm(MegolmError::MissingSession { .. })
    ));

    // A key that claims another room than the one its messages were encrypted for.
    let room_b: &RoomId = &rid("!b:localhost");
    alice
        .machine
        .share_room_key(room_b, &[alice.user()], RotationSettings::default())
        .unwrap();
    let mut key = room_key_of(&alice, room_b);
    key["room_id"] = ROOM.into();
    receive(
        &bob,
        vec![olm_event(
            &alice,
            &bob,
            alice.user(),
            &payload(&alice, &bob, "m.room_key", key),
        )],
    );
    let content = alice
        .machine
        .encrypt_room_event(room_b, "m.room.message", &text("b"))
        .unwrap();
    let err = bob
        .machine
        .decrypt_room_event(room(), &room_event(room(), alice.user(), "$y", content))
        .unwrap_err();
    assert!(
        matches!(err, CryptoError::Megolm(MegolmError::RoomMismatch { .. })),
        "{err:?}"
    );
}

#[test]
fn replayed_megolm_index_is_detected() {
    let (_server, alice, bob) = olm_pair();
    let content = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("once"))
        .unwrap();
    let first = room_event(room(), alice.user(), "$first", content.clone());
    bob.machine.decrypt_room_event(room(), &first).unwrap();
    // The same event again (e.g. from a second sync or /messages) is fine.
    bob.machine.decrypt_room_event(room(), &first).unwrap();
    let replay = room_event(room(), alice.user(), "$replay", content);
    let err = bob.machine.decrypt_room_event(room(), &replay).unwrap_err();
    assert!(
        matches!(
            err,
            CryptoError::Megolm(MegolmError::Replay { index: 0, .. })
        ),
        "{err:?}"
    );
}

#[test]
fn event_sender_must_own_the_session() {
    let (_server, alice, bob) = olm_pair();
    let content = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("x"))
        .unwrap();
    let err = bob
        .machine
        .decrypt_room_event(
            room(),
            &room_event(room(), "@mallory:localhost", "$m", content.clone()),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        CryptoError::Megolm(MegolmError::SenderMismatch { .. })
    ));
    let mut forged = content;
    forged["sender_key"] = bob.machine.curve25519_key().into();
    let err = bob
        .machine
        .decrypt_room_event(room(), &room_event(room(), alice.user(), "$k", forged))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CryptoError::Megolm(MegolmError::SenderKeyMismatch { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn a_decryption_batch_commits_its_replay_records_once_and_sees_its_own() {
    let (_server, alice, bob) = olm_pair();
    let encrypt = |body: &str| {
        alice
            .machine
            .encrypt_room_event(room(), "m.room.message", &text(body))
            .unwrap()
    };
    let contents = [encrypt("one"), encrypt("two"), encrypt("three")];
    let events: Vec<Value> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| room_event(room(), alice.user(), &format!("${i}"), c.clone()))
        .collect();
    let store = bob.machine.store().clone();
    let before = store.generation().unwrap();

    let mut batch = bob.machine.begin_decrypt();
    for (event, body) in events.iter().zip(["one", "two", "three"]) {
        let decrypted = batch.decrypt_room_event(room(), event).unwrap();
        assert_eq!(decrypted.content["body"], body);
    }
    // The batch sees its own records: another event reusing an index is a replay.
    let replay = room_event(room(), alice.user(), "$replay", contents[1].clone());
    let err = batch.decrypt_room_event(room(), &replay).unwrap_err();
    assert!(
        matches!(
            err,
            CryptoError::Megolm(MegolmError::Replay { index: 1, .. })
        ),
        "{err:?}"
    );
    assert_eq!(
        store.generation().unwrap(),
        before,
        "nothing written before the commit"
    );
    batch.commit(Changes::default()).unwrap();
    assert_eq!(
        store.generation().unwrap(),
        before + 1,
        "one transaction for all events"
    );

    // Committed: a later replay of any of them is refused, a re-delivery is not.
    let err = bob.machine.decrypt_room_event(room(), &replay).unwrap_err();
    assert!(
        matches!(err, CryptoError::Megolm(MegolmError::Replay { .. })),
        "{err:?}"
    );
    bob.machine.decrypt_room_event(room(), &events[2]).unwrap();
}

#[test]
fn a_decryption_batch_dropped_without_commit_stores_nothing() {
    let (_server, alice, bob) = olm_pair();
    let content = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("once"))
        .unwrap();
    let first = room_event(room(), alice.user(), "$first", content.clone());
    let mut batch = bob.machine.begin_decrypt();
    batch.decrypt_room_event(room(), &first).unwrap();
    drop(batch);
    // Nothing recorded: the index is still free for the first event that is committed.
    let other = room_event(room(), alice.user(), "$other", content);
    bob.machine.decrypt_room_event(room(), &other).unwrap();
    let err = bob.machine.decrypt_room_event(room(), &first).unwrap_err();
    assert!(
        matches!(err, CryptoError::Megolm(MegolmError::Replay { .. })),
        "{err:?}"
    );
}

/// The Megolm message index of an encrypted event content.
fn message_index(content: &serde_json::Value) -> u32 {
    let ciphertext = content["ciphertext"].as_str().unwrap();
    vodozemac::megolm::MegolmMessage::from_base64(ciphertext)
        .unwrap()
        .message_index()
}

/// What the caller stores with a ciphertext is stored with the advanced session, or neither
/// is: a failure leaves the session where it was, so the next message takes the same index
/// (nothing was sent with it) and no index is ever used for two messages.
#[test]
fn encrypting_with_the_callers_changes_stores_both_or_neither() {
    let (mut server, alice, bob) = setup_pair();
    let members = vec![alice.user(), bob.user()];
    server.share(&alice, room(), &members);
    let encrypt = |body: &str, fail: bool| {
        alice
            .machine
            .encrypt_room_event_with(room(), "m.room.message", &text(body), |ct| {
                if fail {
                    return Err(CryptoError::InvalidInput("the caller refuses".into()));
                }
                let mut changes = crate::store::ClientChanges::default();
                changes.values.insert("ciphertext".into(), ct.to_string());
                Ok(changes)
            })
    };
    let first = encrypt("one", false).unwrap();
    assert_eq!(message_index(&first), 0);
    let stored = alice.machine.store().value("ciphertext").unwrap();
    assert_eq!(stored, Some(first.to_string()));
    assert!(encrypt("refused", true).is_err());
    let second = encrypt("two", false).unwrap();
    assert_eq!(
        message_index(&second),
        1,
        "the refused message used up no index"
    );
}
