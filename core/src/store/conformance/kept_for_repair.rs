//! Conformance checks of what the crypto machine keeps to repair a channel later: the room
//! keys kept for devices sent `m.no_olm`, and when each device was last unwedged. Both with
//! their retention rules.

use super::super::*;
use super::*;
use crate::test_ids::rid;

pub(crate) fn no_olm_room_keys_by_index<S: Store>(s: &S) {
    save(
        s,
        Changes::from(CryptoChanges {
            outbound_group_sessions: vec![outbound("!r:x", "s1")],
            no_olm_room_keys: vec![no_olm_key("!r:x", "s1", 0), no_olm_key("!r:x", "s1", 3)],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.no_olm_room_key(&rid("!r:x"), "s1", 0).unwrap(),
        Some(no_olm_key("!r:x", "s1", 0))
    );
    assert_eq!(
        s.no_olm_room_key(&rid("!r:x"), "s1", 3).unwrap(),
        Some(no_olm_key("!r:x", "s1", 3))
    );
    assert_eq!(s.no_olm_room_key(&rid("!r:x"), "s1", 1).unwrap(), None);
    assert_eq!(s.no_olm_room_key(&rid("!r:x"), "s2", 0).unwrap(), None);
    assert_eq!(s.no_olm_room_key(&rid("!o:x"), "s1", 0).unwrap(), None);
    // The same index again replaces the key.
    let again = NoOlmRoomKey {
        session_key: blob(b"other"),
        ..no_olm_key("!r:x", "s1", 3)
    };
    save(
        s,
        Changes::from(CryptoChanges {
            no_olm_room_keys: vec![again.clone()],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.no_olm_room_key(&rid("!r:x"), "s1", 3).unwrap(),
        Some(again)
    );
    assert_eq!(s.counts().unwrap().no_olm_room_keys, 2);
}

pub(crate) fn no_olm_room_keys_go_with_their_outbound_session<S: Store>(s: &S) {
    let key = |room: &str, session: &str| s.no_olm_room_key(&rid(room), session, 0).unwrap();
    save(
        s,
        Changes::from(CryptoChanges {
            outbound_group_sessions: vec![outbound("!r:x", "s1"), outbound("!o:x", "o1")],
            no_olm_room_keys: vec![no_olm_key("!r:x", "s1", 0), no_olm_key("!o:x", "o1", 0)],
            ..Default::default()
        }),
    );
    // The same session written again (a message encrypted, a device added) keeps them.
    save(
        s,
        Changes::from(CryptoChanges {
            outbound_group_sessions: vec![outbound("!r:x", "s1")],
            ..Default::default()
        }),
    );
    assert!(key("!r:x", "s1").is_some());
    // A new session of the room (rotation) drops the old session's keys, keeps its own.
    save(
        s,
        Changes::from(CryptoChanges {
            outbound_group_sessions: vec![outbound("!r:x", "s2")],
            no_olm_room_keys: vec![no_olm_key("!r:x", "s2", 0)],
            ..Default::default()
        }),
    );
    assert_eq!(key("!r:x", "s1"), None);
    assert_eq!(key("!r:x", "s2"), Some(no_olm_key("!r:x", "s2", 0)));
    assert!(key("!o:x", "o1").is_some(), "other rooms keep theirs");
    // A discarded session takes its keys along, also one written in the same batch.
    save(
        s,
        Changes::from(CryptoChanges {
            no_olm_room_keys: vec![no_olm_key("!r:x", "s2", 5)],
            discarded_outbound_sessions: vec![rid("!r:x")],
            ..Default::default()
        }),
    );
    assert_eq!(key("!r:x", "s2"), None);
    assert_eq!(s.no_olm_room_key(&rid("!r:x"), "s2", 5).unwrap(), None);
    assert!(key("!o:x", "o1").is_some());
    assert_eq!(s.counts().unwrap().no_olm_room_keys, 1);
}

pub(crate) fn unwedge_records_by_device<S: Store>(s: &S) {
    save(
        s,
        Changes::from(CryptoChanges {
            unwedge_records: vec![unwedged("curve-a", 1_000), unwedged("curve-b", 2_000)],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.unwedge_record("curve-a").unwrap(),
        Some(unwedged("curve-a", 1_000))
    );
    assert_eq!(s.unwedge_record("curve-c").unwrap(), None);
    // A later unwedging replaces the record; within a batch, the last one wins.
    save(
        s,
        Changes::from(CryptoChanges {
            unwedge_records: vec![unwedged("curve-a", 3_000), unwedged("curve-a", 4_000)],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.unwedge_record("curve-a").unwrap(),
        Some(unwedged("curve-a", 4_000))
    );
    assert_eq!(
        s.unwedge_record("curve-b").unwrap(),
        Some(unwedged("curve-b", 2_000))
    );
    assert_eq!(s.counts().unwrap().unwedge_records, 2);
}

pub(crate) fn unwedge_records_expire_and_are_bounded<S: Store>(s: &S) {
    use super::super::quota::{MAX_UNWEDGE_RECORDS as MAX, UNWEDGE_RECORD_LIFETIME_MS as LIFE};
    let start = 1_700_000_000_000;
    save(
        s,
        Changes::from(CryptoChanges {
            unwedge_records: vec![unwedged("old", start), unwedged("newer", start + 1)],
            ..Default::default()
        }),
    );
    // Exactly the lifetime later, the oldest record still counts...
    save(
        s,
        Changes::from(CryptoChanges {
            unwedge_records: vec![unwedged("x", start + LIFE)],
            ..Default::default()
        }),
    );
    assert!(s.unwedge_record("old").unwrap().is_some());
    // ...one millisecond more, and it is forgotten.
    save(
        s,
        Changes::from(CryptoChanges {
            unwedge_records: vec![unwedged("y", start + LIFE + 1)],
            ..Default::default()
        }),
    );
    assert_eq!(s.unwedge_record("old").unwrap(), None);
    assert!(s.unwedge_record("newer").unwrap().is_some());
    // Many devices within the lifetime: the oldest beyond the maximum go first.
    let t = start + 2 * LIFE;
    let mut c = Changes::default();
    for i in 0..MAX + 5 {
        c.crypto
            .unwedge_records
            .push(unwedged(&format!("k{i:05}"), t + i));
    }
    save(s, c);
    assert_eq!(s.counts().unwrap().unwedge_records, MAX);
    assert_eq!(s.unwedge_record("k00004").unwrap(), None);
    assert!(s.unwedge_record("k00005").unwrap().is_some());
    assert_eq!(s.unwedge_record("y").unwrap(), None, "expired meanwhile");
}
