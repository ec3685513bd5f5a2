//! Room keys exported by one device and imported by another (key files, the backup).

use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig};

use super::*;
use crate::key_export::ExportedRoomKey;
use crate::store::quota::MAX_SESSIONS_FROM_NON_MEMBERS;

/// bob's second device, which knows alice's device but has none of the room's keys.
fn bobs_laptop(server: &mut FakeServer, alice: &Peer) -> Peer {
    let laptop = Peer::new("@bob:localhost", "LAPTOP");
    laptop
        .machine
        .update_tracked_users(&[alice.user()])
        .unwrap();
    server.drive(&laptop);
    laptop
}

fn all_keys(peer: &Peer) -> Vec<ExportedRoomKey> {
    peer.machine
        .export_room_keys_page(None, None, 1000)
        .unwrap()
}

/// A Megolm session of a device nobody knows, exported from index 0.
fn stranger_key(room: &str, account: &vodozemac::olm::Account) -> ExportedRoomKey {
    let outbound = GroupSession::new(SessionConfig::version_1());
    let inbound = InboundGroupSession::new(&outbound.session_key(), SessionConfig::version_1());
    ExportedRoomKey {
        algorithm: MEGOLM_ALGORITHM.into(),
        room_id: rid(room),
        sender_key: account.curve25519_key().to_base64(),
        session_id: outbound.session_id(),
        session_key: inbound.export_at_first_known_index().to_base64(),
        sender_claimed_keys: [("ed25519".into(), account.ed25519_key().to_base64())].into(),
        forwarding_curve25519_key_chain: Vec::new(),
    }
}

#[test]
fn exported_keys_decrypt_on_another_device_as_legacy_sessions() {
    let (mut server, alice, bob) = olm_pair();
    let first = alice
        .machine
        .encrypt_room_event(room(), "m.room.message", &text("before"))
        .unwrap();
    let first = room_event(room(), alice.user(), "$1", first);
    assert_eq!(
        bob.machine
            .decrypt_room_event(room(), &first)
            .unwrap()
            .content["body"],
        "before"
    );
    let keys = all_keys(&bob);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].sender_key, alice.machine.curve25519_key());
    assert_eq!(
        keys[0].sender_claimed_keys["ed25519"],
        alice.machine.ed25519_key()
    );

    let laptop = bobs_laptop(&mut server, &alice);
    assert!(laptop.machine.decrypt_room_event(room(), &first).is_err());
    let outcome = laptop.machine.import_room_keys(&keys).unwrap();
    assert_eq!(
        outcome.imported,
        vec![(room().to_owned(), keys[0].session_id.clone())]
    );
    let decrypted = laptop.machine.decrypt_room_event(room(), &first).unwrap();
    assert_eq!(decrypted.content["body"], "before");
    assert_eq!(decrypted.sender_device, Some(did("ALICE")));
    assert!(decrypted.legacy, "imported keys are legacy (seed 003)");
    let record = laptop
        .store
        .inbound_group_session(room(), &keys[0].session_id)
        .unwrap()
        .unwrap();
    assert!(record.imported && record.sender_data.legacy);

    // The same file again: nothing changes.
    let generation = laptop.store.generation().unwrap();
    let again = laptop.machine.import_room_keys(&keys).unwrap();
    assert_eq!((again.imported.len(), again.already_known), (0, 1));
    assert_eq!(laptop.store.generation().unwrap(), generation);
}

#[test]
fn an_import_never_replaces_a_session_known_from_an_earlier_index() {
    let (mut server, alice, bob) = olm_pair();
    let events: Vec<Value> = (0..3)
        .map(|i| {
            let c = alice
                .machine
                .encrypt_room_event(room(), "m.room.message", &text(&format!("m{i}")))
                .unwrap();
            room_event(room(), alice.user(), &format!("${i}"), c)
        })
        .collect();
    let from_zero = all_keys(&bob);
    // The same session, exported from index 2.
    let mut from_two = from_zero[0].clone();
    let mut inbound = laptop_session(&from_zero[0]);
    from_two.session_key = inbound.export_at(2).unwrap().to_base64();

    let laptop = bobs_laptop(&mut server, &alice);
    laptop.machine.import_room_keys(&from_zero).unwrap();
    let worse = laptop
        .machine
        .import_room_keys(&[from_two.clone()])
        .unwrap();
    assert_eq!((worse.imported.len(), worse.already_known), (0, 1));
    assert_eq!(
        laptop
            .machine
            .decrypt_room_event(room(), &events[0])
            .unwrap()
            .content["body"],
        "m0"
    );

    // The other way round: the copy from index 0 completes the one from index 2.
    let desk = Peer::new("@bob:localhost", "DESK");
    desk.machine.update_tracked_users(&[alice.user()]).unwrap();
    server.drive(&desk);
    desk.machine.import_room_keys(&[from_two]).unwrap();
    assert!(desk.machine.decrypt_room_event(room(), &events[0]).is_err());
    let better = desk.machine.import_room_keys(&from_zero).unwrap();
    assert_eq!(better.imported.len(), 1);
    assert_eq!(
        desk.machine
            .decrypt_room_event(room(), &events[0])
            .unwrap()
            .content["body"],
        "m0"
    );
}

fn laptop_session(key: &ExportedRoomKey) -> InboundGroupSession {
    let exported = vodozemac::megolm::ExportedSessionKey::from_base64(&key.session_key).unwrap();
    InboundGroupSession::import(&exported, SessionConfig::version_1())
}

#[test]
fn keys_that_cannot_be_imported_are_refused_alone() {
    let (mut server, alice, bob) = olm_pair();
    let good = all_keys(&bob).remove(0);
    let laptop = bobs_laptop(&mut server, &alice);
    let stranger = vodozemac::olm::Account::new();
    let mut not_megolm = stranger_key(ROOM, &stranger);
    not_megolm.algorithm = "m.olm.v1.curve25519-aes-sha2".into();
    let mut wrong_session = stranger_key(ROOM, &stranger);
    wrong_session.session_id = good.session_id.clone();
    let mut unclaimed = stranger_key(ROOM, &stranger);
    unclaimed.sender_claimed_keys.clear();
    // alice's Curve25519 key with another Ed25519 key than her device's.
    let mut forged = good.clone();
    forged.sender_claimed_keys = [("ed25519".into(), stranger.ed25519_key().to_base64())].into();
    let mut garbage = stranger_key(ROOM, &stranger);
    garbage.session_key = "not a key".into();
    let batch = [
        not_megolm,
        wrong_session,
        unclaimed,
        forged,
        garbage,
        good.clone(),
    ];
    let outcome = laptop.machine.import_room_keys(&batch).unwrap();
    assert_eq!(outcome.refused, 5);
    assert_eq!(outcome.imported.len(), 1);
    assert_eq!(laptop.store.inbound_group_session_count().unwrap(), 1);
    let stored = laptop
        .store
        .inbound_group_session(room(), &good.session_id)
        .unwrap()
        .unwrap();
    assert_eq!(stored.signing_key, alice.machine.ed25519_key());

    // A session we have, claimed by another device: refused, ours unchanged.
    let mut other_device = good.clone();
    other_device.sender_key = stranger.curve25519_key().to_base64();
    other_device.sender_claimed_keys =
        [("ed25519".into(), stranger.ed25519_key().to_base64())].into();
    let outcome = laptop.machine.import_room_keys(&[other_device]).unwrap();
    assert_eq!(outcome.refused, 1);
    assert_eq!(
        laptop
            .store
            .inbound_group_session(room(), &good.session_id)
            .unwrap(),
        Some(stored)
    );
}

#[test]
fn imported_sessions_of_unknown_senders_are_all_kept() {
    let laptop = Peer::new("@bob:localhost", "LAPTOP");
    let stranger = vodozemac::olm::Account::new();
    let n = MAX_SESSIONS_FROM_NON_MEMBERS as usize + 50;
    let keys: Vec<_> = (0..n)
        .map(|i| stranger_key(&format!("!old{i}:localhost"), &stranger))
        .collect();
    for batch in keys.chunks(200) {
        let outcome = laptop.machine.import_room_keys(batch).unwrap();
        assert_eq!(outcome.imported.len(), batch.len());
    }
    assert_eq!(
        laptop.store.inbound_group_session_count().unwrap(),
        n as u64
    );
    let exported = laptop
        .machine
        .export_room_keys_page(Some(&rid("!old7:localhost")), None, 10)
        .unwrap();
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0].session_key, keys[7].session_key);
}

#[test]
fn a_notification_extension_imports_nothing() {
    let (_server, _alice, bob) = olm_pair();
    let keys = all_keys(&bob);
    let extension =
        OlmMachine::open_for_notifications(&bob.user(), &bob.device(), bob.store.clone()).unwrap();
    assert!(matches!(
        extension.import_room_keys(&keys),
        Err(CryptoError::InvalidInput(_))
    ));
}

#[test]
fn cross_signing_keys_that_are_not_the_published_identity_are_refused() {
    let (_server, _alice, bob) = olm_pair();
    let key = || vodozemac::Ed25519SecretKey::new().to_base64();
    // No identity published: nothing to check planted keys against.
    let err = bob
        .machine
        .import_cross_signing_secrets(&key(), &key(), &key())
        .unwrap_err();
    assert!(matches!(err, CryptoError::InvalidInput(_)), "{err:?}");
    let err = bob
        .machine
        .import_cross_signing_secrets("not base64!", &key(), &key())
        .unwrap_err();
    assert!(matches!(err, CryptoError::InvalidInput(_)), "{err:?}");
    assert!(!bob.machine.has_cross_signing_keys().unwrap());
    assert!(bob.machine.cross_signing_secrets().unwrap().is_none());
}
