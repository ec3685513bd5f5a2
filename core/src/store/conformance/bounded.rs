//! Conformance checks of what other users can make us store: withheld notices, key
//! requests, member lists replaced by a full answer, and the [`quota`] limits.

use super::super::*;
use super::*;
use crate::test_ids::{eid, rid, uid};

pub(crate) fn withheld_notices_by_sender<S: Store>(s: &S) {
    let first = notice("!r:x", "s1", "@a:x");
    let other_sender = notice("!r:x", "s1", "@b:x");
    save(
        s,
        Changes::from(CryptoChanges {
            withheld_notices: vec![first.clone(), other_sender.clone()],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.withheld_notice(&rid("!r:x"), "s1", &uid("@a:x")).unwrap(),
        Some(first)
    );
    assert_eq!(
        s.withheld_notice(&rid("!r:x"), "s1", &uid("@b:x")).unwrap(),
        Some(other_sender)
    );
    assert_eq!(
        s.withheld_notice(&rid("!r:x"), "s2", &uid("@a:x")).unwrap(),
        None
    );
    assert_eq!(
        s.withheld_notice(&rid("!other:x"), "s1", &uid("@a:x"))
            .unwrap(),
        None
    );
    // A newer notice of the same sender replaces the older one.
    let mut newer = notice("!r:x", "s1", "@a:x");
    newer.code = "m.blacklisted".into();
    newer.reason = None;
    save(
        s,
        Changes::from(CryptoChanges {
            withheld_notices: vec![newer.clone()],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.withheld_notice(&rid("!r:x"), "s1", &uid("@a:x")).unwrap(),
        Some(newer)
    );
    assert_eq!(s.counts().unwrap().withheld_notices, 2);
}

pub(crate) fn key_requests_one_per_session<S: Store>(s: &S) {
    let first = key_request("!r:x", "s1");
    save(
        s,
        Changes::from(CryptoChanges {
            key_requests: vec![first.clone(), key_request("!r:x", "s2")],
            ..Default::default()
        }),
    );
    let mut again = key_request("!r:x", "s1");
    again.request_id = "another".into();
    save(
        s,
        Changes::from(CryptoChanges {
            key_requests: vec![again],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.key_request(&rid("!r:x"), "s1").unwrap(),
        Some(first),
        "the first stays"
    );
    assert_eq!(s.key_request(&rid("!r:x"), "s3").unwrap(), None);
    assert_eq!(s.counts().unwrap().key_requests, 2);
}

pub(crate) fn member_lists_replaced_by_a_full_answer<S: Store>(s: &S) {
    save(
        s,
        Changes::from(ClientChanges {
            rooms: vec![room("!r:x"), room("!o:x")],
            members: vec![
                member("!r:x", "@stale:x", "join"),
                member("!r:x", "@kept:x", "invite"),
                member("!o:x", "@stale:x", "join"),
            ],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.member(&rid("!r:x"), &uid("@stale:x")).unwrap(),
        Some(member("!r:x", "@stale:x", "join"))
    );
    save(
        s,
        Changes::from(ClientChanges {
            replaced_member_lists: vec![rid("!r:x")],
            members: vec![member("!r:x", "@kept:x", "join")],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.members(&rid("!r:x")).unwrap(),
        vec![member("!r:x", "@kept:x", "join")]
    );
    assert_eq!(s.member(&rid("!r:x"), &uid("@stale:x")).unwrap(), None);
    assert_eq!(
        s.members(&rid("!o:x")).unwrap().len(),
        1,
        "other rooms keep theirs"
    );
    assert_eq!(
        s.encrypted_rooms_with(&[&uid("@stale:x")]).unwrap(),
        ["!o:x"]
    );
}

/// Save `n` records made by `make(i)` in batches of at most 500.
fn save_many<S: Store>(s: &S, n: u64, make: impl Fn(u64, &mut Changes)) {
    let mut i = 0;
    while i < n {
        let mut c = Changes::default();
        for j in i..(i + 500).min(n) {
            make(j, &mut c);
        }
        save(s, c);
        i += 500;
    }
}

pub(crate) fn quotas_forget_the_oldest_first<S: Store>(s: &S) {
    use super::super::quota::*;
    let over = |max: u64| max + 7;
    save_many(s, over(MAX_UNDECRYPTABLE_EVENTS), |i, c| {
        c.client.undecryptable_events.push(UndecryptableEvent {
            room_id: rid("!r:x"),
            session_id: format!("s{i}"),
            event_id: eid(&format!("$e{i}")),
            event_json: "{}".into(),
        })
    });
    save_many(s, over(MAX_WITHHELD_NOTICES), |i, c| {
        c.crypto
            .withheld_notices
            .push(notice("!r:x", &format!("s{i}"), "@a:x"))
    });
    save_many(s, over(MAX_KEY_REQUESTS), |i, c| {
        c.crypto
            .key_requests
            .push(key_request("!r:x", &format!("s{i}")))
    });
    let counts = s.counts().unwrap();
    assert_eq!(counts.undecryptable_events, MAX_UNDECRYPTABLE_EVENTS);
    assert_eq!(counts.withheld_notices, MAX_WITHHELD_NOTICES);
    assert_eq!(counts.key_requests, MAX_KEY_REQUESTS);
    assert!(
        s.undecryptable_events(&rid("!r:x"), "s6")
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.undecryptable_events(&rid("!r:x"), "s7").unwrap().len(), 1);
    assert_eq!(
        s.withheld_notice(&rid("!r:x"), "s6", &uid("@a:x")).unwrap(),
        None
    );
    assert!(
        s.withheld_notice(&rid("!r:x"), "s7", &uid("@a:x"))
            .unwrap()
            .is_some()
    );
    assert_eq!(s.key_request(&rid("!r:x"), "s6").unwrap(), None);
    assert!(s.key_request(&rid("!r:x"), "s7").unwrap().is_some());
}

pub(crate) fn sessions_of_non_members_are_bounded<S: Store>(s: &S) {
    use super::super::quota::MAX_SESSIONS_FROM_NON_MEMBERS as MAX;
    // A member's sessions are never counted against the limit.
    let mut members_session = inbound("!known:x", "member-session");
    members_session.sender_user = Some(uid("@alice:x"));
    save(
        s,
        Changes {
            crypto: CryptoChanges {
                inbound_group_sessions: vec![members_session.clone()],
                ..Default::default()
            },
            client: ClientChanges {
                rooms: vec![room("!known:x")],
                members: vec![member("!known:x", "@alice:x", "join")],
                ..Default::default()
            },
            ..Default::default()
        },
    );
    save_many(s, MAX + 10, |i, c| {
        let mut session = inbound(&format!("!unknown{i}:x"), "s");
        session.sender_user = if i % 2 == 0 {
            Some(uid("@stranger:x"))
        } else {
            None
        };
        c.crypto.inbound_group_sessions.push(session);
    });
    let counts = s.counts().unwrap();
    assert_eq!(counts.inbound_sessions_from_non_members, MAX);
    assert_eq!(counts.inbound_group_sessions, MAX + 1);
    assert_eq!(
        s.inbound_group_session(&rid("!unknown9:x"), "s").unwrap(),
        None
    );
    assert!(
        s.inbound_group_session(&rid("!unknown10:x"), "s")
            .unwrap()
            .is_some()
    );
    assert_eq!(
        s.inbound_group_session(&rid("!known:x"), "member-session")
            .unwrap(),
        Some(members_session)
    );
    // Membership learnt later keeps a session.
    save(
        s,
        Changes::from(ClientChanges {
            members: vec![member("!unknown10:x", "@stranger:x", "join")],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.counts().unwrap().inbound_sessions_from_non_members,
        MAX - 1
    );
}

pub(crate) fn invites_are_bounded<S: Store>(s: &S) {
    use super::super::quota::MAX_INVITES;
    let mut joined = room("!joined:x");
    joined.own_membership = Some("join".into());
    save(
        s,
        Changes::from(ClientChanges {
            rooms: vec![joined.clone()],
            ..Default::default()
        }),
    );
    // A room we were in once and are invited to again keeps its record (and the first
    // encryption setting in it).
    let mut again = room("!again:x");
    again.own_membership = Some("invite".into());
    save(
        s,
        Changes::from(ClientChanges {
            rooms: vec![again.clone()],
            ..Default::default()
        }),
    );
    save_many(s, MAX_INVITES + 3, |i, c| {
        c.client.rooms.push(RoomRecord {
            own_membership: Some("invite".into()),
            ..RoomRecord::new(rid(&format!("!inv{i}:x")))
        });
    });
    assert_eq!(s.counts().unwrap().invites, MAX_INVITES);
    assert_eq!(s.room(&rid("!inv2:x")).unwrap(), None);
    assert!(s.room(&rid("!inv3:x")).unwrap().is_some());
    assert_eq!(s.room(&rid("!joined:x")).unwrap(), Some(joined));
    assert_eq!(s.room(&rid("!again:x")).unwrap(), Some(again));
}

pub(crate) fn olm_sessions_are_bounded<S: Store>(s: &S) {
    use super::super::quota::{MAX_OLM_SESSIONS_OF_UNKNOWN_DEVICES, MAX_OLM_SESSIONS_PER_KEY};
    let session = |key: &str, id: u64| OlmSessionRecord {
        last_used_ms: id,
        ..olm(key, &format!("s{id:05}"), b"p")
    };
    // A known device that keeps starting sessions: the most recently used ones stay.
    let per_key = MAX_OLM_SESSIONS_PER_KEY;
    save(
        s,
        Changes::from(CryptoChanges {
            devices: vec![device("@a:x", "A", "known-key")],
            olm_sessions: (0..per_key + 5).map(|i| session("known-key", i)).collect(),
            ..Default::default()
        }),
    );
    let kept = &s.olm_sessions(&["known-key"]).unwrap()["known-key"];
    assert_eq!(kept.len() as u64, per_key);
    assert!(
        kept.iter().all(|k| k.last_used_ms >= 5),
        "least recently used go first"
    );
    // Sessions with keys of no device we know: bounded in all.
    let unknown = MAX_OLM_SESSIONS_OF_UNKNOWN_DEVICES;
    save_many(s, unknown + 7, |i, c| {
        c.crypto
            .olm_sessions
            .push(session(&format!("stranger-{i}"), 1_000 + i))
    });
    let counts = s.counts().unwrap();
    assert_eq!(counts.olm_sessions_of_unknown_devices, unknown);
    assert_eq!(
        counts.olm_sessions,
        unknown + per_key,
        "the known device keeps its own"
    );
    assert!(s.olm_sessions(&["stranger-6"]).unwrap().is_empty());
    assert_eq!(s.olm_sessions(&["stranger-7"]).unwrap().len(), 1);
}

pub(crate) fn a_flooding_room_evicts_its_own_records_first<S: Store>(s: &S) {
    use super::super::quota::MAX_UNDECRYPTABLE_EVENTS as MAX;
    let event = |room: &str, i: u64| UndecryptableEvent {
        room_id: rid(room),
        session_id: format!("s{i}"),
        event_id: eid(&format!("$e{i}")),
        event_json: "{}".into(),
    };
    // A private room keeps 100 events; then a public room floods the table.
    save_many(s, 100, |i, c| {
        c.client.undecryptable_events.push(event("!private:x", i))
    });
    save_many(s, MAX + 50, |i, c| {
        c.client.undecryptable_events.push(event("!public:x", i))
    });
    assert_eq!(s.counts().unwrap().undecryptable_events, MAX);
    assert_eq!(
        s.undecryptable_events(&rid("!private:x"), "s0")
            .unwrap()
            .len(),
        1,
        "kept"
    );
    assert!(
        s.undecryptable_events(&rid("!public:x"), "s0")
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.undecryptable_sessions()
            .unwrap()
            .iter()
            .filter(|(room, _)| room == "!private:x")
            .count(),
        100
    );
}

pub(crate) fn sessions_per_sender_and_room_are_bounded<S: Store>(s: &S) {
    use super::super::quota::MAX_SESSIONS_PER_SENDER_PER_ROOM as MAX;
    let session = |sender: &str, i: u64| InboundGroupSessionRecord {
        sender_user: Some(uid(sender)),
        ..inbound("!r:x", &format!("{sender}-{i}"))
    };
    save(
        s,
        Changes {
            crypto: CryptoChanges {
                inbound_group_sessions: vec![session("@a:x", 0)],
                ..Default::default()
            },
            client: ClientChanges {
                rooms: vec![room("!r:x")],
                members: vec![
                    member("!r:x", "@flood:x", "join"),
                    member("!r:x", "@a:x", "join"),
                ],
                ..Default::default()
            },
            ..Default::default()
        },
    );
    save_many(s, MAX + 3, |i, c| {
        c.crypto.inbound_group_sessions.push(session("@flood:x", i))
    });
    assert_eq!(s.counts().unwrap().inbound_group_sessions, MAX + 1);
    assert_eq!(
        s.inbound_group_session(&rid("!r:x"), "@flood:x-2").unwrap(),
        None
    );
    assert!(
        s.inbound_group_session(&rid("!r:x"), "@flood:x-3")
            .unwrap()
            .is_some()
    );
    assert!(
        s.inbound_group_session(&rid("!r:x"), "@a:x-0")
            .unwrap()
            .is_some()
    );
}

pub(crate) fn sessions_we_asked_for_are_not_counted_as_strangers<S: Store>(s: &S) {
    use super::super::quota::MAX_SESSIONS_FROM_NON_MEMBERS as MAX;
    // A forwarded key of unknown origin that we asked for (no sender recorded).
    let asked = InboundGroupSessionRecord {
        sender_user: None,
        sender_device: None,
        ..inbound("!r:x", "asked")
    };
    save(
        s,
        Changes::from(CryptoChanges {
            key_requests: vec![key_request("!r:x", "asked")],
            inbound_group_sessions: vec![asked.clone()],
            ..Default::default()
        }),
    );
    save_many(s, MAX + 5, |i, c| {
        c.crypto
            .inbound_group_sessions
            .push(inbound(&format!("!made-up{i}:x"), "s"))
    });
    assert_eq!(s.counts().unwrap().inbound_sessions_from_non_members, MAX);
    assert_eq!(
        s.inbound_group_session(&rid("!r:x"), "asked").unwrap(),
        Some(asked)
    );
}

/// Sessions the user imported (a key file, the backup) are theirs, not a stranger's: no
/// quota forgets them, and they make no room for others.
pub(crate) fn imported_sessions_are_outside_the_quotas<S: Store>(s: &S) {
    use super::super::quota::MAX_SESSIONS_FROM_NON_MEMBERS as NON_MEMBERS;
    use super::super::quota::MAX_SESSIONS_PER_SENDER_PER_ROOM as PER_SENDER;
    let imported = |room: String, id: String, sender: Option<&str>| {
        let mut session = inbound(&room, &id);
        session.sender_user = sender.map(uid);
        session.imported = true;
        session
    };
    save_many(s, NON_MEMBERS + 10, |i, c| {
        let session = imported(format!("!old{i}:x"), "s".into(), None);
        c.crypto.inbound_group_sessions.push(session);
    });
    save_many(s, PER_SENDER + 10, |i, c| {
        let session = imported("!big:x".into(), format!("s{i}"), Some("@bob:x"));
        c.crypto.inbound_group_sessions.push(session);
    });
    // A stranger's sessions in the same room, from the same sender: only theirs are bounded.
    save_many(s, 3, |i, c| {
        let mut session = inbound("!big:x", &format!("new{i}"));
        session.sender_user = Some(uid("@bob:x"));
        c.crypto.inbound_group_sessions.push(session);
    });
    let all = NON_MEMBERS + 10 + PER_SENDER + 10 + 3;
    let counts = s.counts().unwrap();
    assert_eq!(counts.inbound_group_sessions, all);
    assert_eq!(counts.inbound_sessions_from_non_members, 3);
    assert!(
        s.inbound_group_session(&rid("!old0:x"), "s")
            .unwrap()
            .is_some()
    );
    assert!(
        s.inbound_group_session(&rid("!big:x"), "s0")
            .unwrap()
            .is_some()
    );
}
