//! Conformance checks of inbound sessions read in pages (key export) and marked as backed
//! up (server-side backup).

use ruma::OwnedRoomId;

use super::super::*;
use super::fixtures::*;
use crate::test_ids::{eid, rid};

pub(crate) fn inbound_group_sessions_paged_in_order<S: Store>(s: &S) {
    let ids = [
        ("!b:x", "s2"),
        ("!a:x", "s9"),
        ("!b:x", "s1"),
        ("!c:x", "s0"),
        ("!a:x", "s3"),
    ];
    let mut imported = inbound("!c:x", "s0");
    imported.imported = true;
    let mut c = CryptoChanges::default();
    for (room, id) in ids.iter().take(3) {
        c.inbound_group_sessions.push(inbound(room, id));
    }
    c.inbound_group_sessions.push(imported.clone());
    c.inbound_group_sessions.push(inbound("!a:x", "s3"));
    save(s, Changes::from(c));
    let mut seen = Vec::new();
    let mut after: Option<(OwnedRoomId, String)> = None;
    loop {
        let cursor = after.as_ref().map(|(r, s)| (&**r, s.as_str()));
        let page = s.inbound_group_sessions_page(None, cursor, 2).unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some((last.room_id.clone(), last.session_id.clone()));
        seen.extend(
            page.into_iter()
                .map(|r| (r.room_id.to_string(), r.session_id)),
        );
    }
    let expected = [
        ("!a:x", "s3"),
        ("!a:x", "s9"),
        ("!b:x", "s1"),
        ("!b:x", "s2"),
        ("!c:x", "s0"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(r, s)| (r.to_string(), s.to_string()))
        .collect();
    assert_eq!(seen, expected);
    let room_b = s
        .inbound_group_sessions_page(Some(&rid("!b:x")), None, 10)
        .unwrap();
    assert_eq!(room_b, vec![inbound("!b:x", "s1"), inbound("!b:x", "s2")]);
    let after_s1 = s
        .inbound_group_sessions_page(Some(&rid("!b:x")), Some((&rid("!b:x"), "s1")), 10)
        .unwrap();
    assert_eq!(after_s1, vec![inbound("!b:x", "s2")]);
    assert_eq!(s.room_inbound_group_session_count(&rid("!a:x")).unwrap(), 2);
    assert_eq!(s.room_inbound_group_session_count(&rid("!z:x")).unwrap(), 0);
    assert_eq!(
        s.inbound_group_session(&rid("!c:x"), "s0").unwrap(),
        Some(imported)
    );
}

pub(crate) fn backup_marks<S: Store>(s: &S) {
    let mut done = inbound("!r:x", "c");
    done.backed_up = true;
    let c = CryptoChanges {
        inbound_group_sessions: vec![inbound("!r:x", "b"), inbound("!r:x", "a"), done.clone()],
        ..Default::default()
    };
    save(s, Changes::from(c));
    let ids = |records: Vec<InboundGroupSessionRecord>| -> Vec<String> {
        records.into_iter().map(|r| r.session_id).collect()
    };
    assert_eq!(
        ids(s.inbound_group_sessions_to_back_up(10).unwrap()),
        ["a", "b"]
    );
    assert_eq!(ids(s.inbound_group_sessions_to_back_up(1).unwrap()), ["a"]);
    assert_eq!(s.inbound_group_sessions_to_back_up_count().unwrap(), 2);
    let mark = |ids: &[&str]| CryptoChanges {
        backed_up_sessions: ids
            .iter()
            .map(|i| (rid("!r:x"), i.to_string(), 3))
            .collect(),
        ..Default::default()
    };
    save(s, Changes::from(mark(&["a"])));
    assert_eq!(ids(s.inbound_group_sessions_to_back_up(10).unwrap()), ["b"]);
    let a = s.inbound_group_session(&rid("!r:x"), "a").unwrap().unwrap();
    assert!(a.backed_up);
    assert_eq!(
        a.pickle,
        inbound("!r:x", "a").pickle,
        "only the mark changed"
    );
    // A new version: all again, but what the same batch marks.
    save(
        s,
        Changes::from(CryptoChanges {
            backup_reset: true,
            ..mark(&["c"])
        }),
    );
    assert_eq!(
        ids(s.inbound_group_sessions_to_back_up(10).unwrap()),
        ["a", "b"]
    );
    // A session stored again (a better copy) carries its own mark.
    save(
        s,
        Changes::from(CryptoChanges {
            inbound_group_sessions: vec![inbound("!r:x", "c")],
            ..Default::default()
        }),
    );
    assert_eq!(s.inbound_group_sessions_to_back_up_count().unwrap(), 3);
    // A mark of another copy (uploaded from index 3, a copy from index 0 stored since) is
    // not this one's.
    let mut better = inbound("!r:x", "b");
    better.first_known_index = 0;
    save(
        s,
        Changes::from(CryptoChanges {
            inbound_group_sessions: vec![better],
            ..mark(&["b"])
        }),
    );
    assert!(
        !s.inbound_group_session(&rid("!r:x"), "b")
            .unwrap()
            .unwrap()
            .backed_up
    );
    save(s, Changes::from(mark(&["b"])));
    assert!(
        !s.inbound_group_session(&rid("!r:x"), "b")
            .unwrap()
            .unwrap()
            .backed_up
    );
}

pub(crate) fn undecryptable_sessions_without_key<S: Store>(s: &S) {
    let event = |room: &str, session: &str, id: &str| UndecryptableEvent {
        room_id: rid(room),
        session_id: session.into(),
        event_id: eid(id),
        event_json: "{}".into(),
    };
    let mut later_index = inbound("!r:x", "known-later");
    later_index.first_known_index = 5;
    let mut changes = Changes::from(CryptoChanges {
        inbound_group_sessions: vec![later_index, inbound("!other:x", "missing")],
        ..Default::default()
    });
    changes.client.undecryptable_events = vec![
        event("!r:x", "missing", "$a"),
        event("!r:x", "missing", "$b"),
        event("!r:x", "known-later", "$c"),
        event("!other:x", "absent", "$d"),
    ];
    save(s, changes);
    // A session known from a later index is not missing (a key request's business); the
    // same session id in another room is.
    assert_eq!(
        s.undecryptable_sessions_without_key().unwrap(),
        vec![
            (rid("!other:x"), "absent".into()),
            (rid("!r:x"), "missing".into())
        ]
    );
}
