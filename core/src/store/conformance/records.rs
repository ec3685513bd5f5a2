//! Conformance checks, one per kind of record.

use std::collections::BTreeMap;

use ruma::events::room::member::MembershipState;
use ruma::{OwnedDeviceId, OwnedUserId, UserId};

use super::super::*;
use super::fixtures::*;
use crate::test_ids::{did, eid, rid, uid};

pub(crate) fn empty_store<S: Store>(s: &S) {
    assert_eq!(s.generation().unwrap(), 0);
    assert_eq!(s.account().unwrap(), None);
    assert!(s.olm_sessions(&["a", "b"]).unwrap().is_empty());
    assert!(s.olm_sessions(&[]).unwrap().is_empty());
    assert_eq!(s.inbound_group_session(&rid("!r"), "s").unwrap(), None);
    assert_eq!(s.inbound_group_session_count().unwrap(), 0);
    assert_eq!(s.outbound_group_session(&rid("!r")).unwrap(), None);
    assert!(s.devices(&[&uid("@a:x")]).unwrap().is_empty());
    assert!(s.devices(&[]).unwrap().is_empty());
    assert_eq!(s.device_by_curve25519(&uid("@u:x"), "c").unwrap(), None);
    assert!(s.devices_with_curve25519(&["c"]).unwrap().is_empty());
    assert!(s.tracked_users().unwrap().is_empty());
    assert_eq!(s.megolm_index("sk", "s", 0).unwrap(), None);
    assert_eq!(s.room(&rid("!r")).unwrap(), None);
    assert!(s.rooms().unwrap().is_empty());
    assert!(s.members(&rid("!r")).unwrap().is_empty());
    assert!(s.pending_to_device().unwrap().is_empty());
    assert_eq!(s.value("k").unwrap(), None);
    assert_eq!(s.secret_value("k").unwrap(), None);
    assert_eq!(s.no_olm_room_key(&rid("!r"), "s", 0).unwrap(), None);
    assert_eq!(s.unwedge_record("c").unwrap(), None);
    assert_eq!(s.sync_token().unwrap(), None);
    save(s, Changes::default());
    assert_eq!(s.generation().unwrap(), 0, "an empty save is not a write");
}

pub(crate) fn account_insert_replace<S: Store>(s: &S) {
    let a = account("@me:x", "DEV1", b"pickle one");
    save(
        s,
        Changes::from(CryptoChanges {
            account: Some(a.clone()),
            ..Default::default()
        }),
    );
    assert_eq!(s.account().unwrap(), Some(a));
    let mut b = account("@me:x", "DEV1", b"pickle two, longer");
    b.device_keys_uploaded = false;
    b.server_one_time_key_count = u64::MAX; // full u64 range round-trips
    b.fallback_key_created_ms = 0;
    save(
        s,
        Changes::from(CryptoChanges {
            account: Some(b.clone()),
            ..Default::default()
        }),
    );
    assert_eq!(s.account().unwrap(), Some(b));
    assert_eq!(s.generation().unwrap(), 2);
}

pub(crate) fn olm_sessions_grouped_and_replaced<S: Store>(s: &S) {
    let olm_sessions = vec![
        olm("keyA", "s2", b"a2"),
        olm("keyA", "s1", b"a1"),
        olm("keyB", "s1", b"b1"),
        olm("keyA", "s3", b"a3"),
    ];
    save(
        s,
        Changes::from(CryptoChanges {
            olm_sessions,
            ..Default::default()
        }),
    );
    let got = s.olm_sessions(&["keyA", "keyB", "keyC", "keyA"]).unwrap();
    assert_eq!(got.len(), 2, "unknown keys are absent: {:?}", got.keys());
    let ids = |k: &str| {
        got[k]
            .iter()
            .map(|o| o.session_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("keyA"), ["s1", "s2", "s3"]);
    assert_eq!(got["keyB"], vec![olm("keyB", "s1", b"b1")]);
    assert_eq!(got["keyA"][1], olm("keyA", "s2", b"a2"));
    // Replace one; the others stay, order is stable.
    let mut newer = olm("keyA", "s2", b"a2 advanced ratchet");
    newer.last_used_ms = 5000;
    save(
        s,
        Changes::from(CryptoChanges {
            olm_sessions: vec![newer.clone()],
            ..Default::default()
        }),
    );
    let got = s.olm_sessions(&["keyA"]).unwrap();
    assert_eq!(
        got["keyA"],
        vec![olm("keyA", "s1", b"a1"), newer, olm("keyA", "s3", b"a3")]
    );
    assert_eq!(s.olm_sessions(&["keyA"]).unwrap(), got);
    assert!(
        s.olm_sessions(&["keya", "KEYA"]).unwrap().is_empty(),
        "exact match"
    );
}

pub(crate) fn olm_sessions_many_keys<S: Store>(s: &S) {
    let keys: Vec<String> = (0..600).map(|i| format!("curve{i:04}")).collect();
    let mut c = Changes::default();
    for (i, k) in keys.iter().enumerate() {
        c.crypto.olm_sessions.push(olm(k, "first", k.as_bytes()));
        if i % 2 == 0 {
            c.crypto.olm_sessions.push(olm(k, "second", b"2"));
        }
    }
    save(s, c);
    let mut query: Vec<&str> = keys.iter().map(String::as_str).collect();
    query.push("unknown1");
    query.push("unknown2");
    let got = s.olm_sessions(&query).unwrap();
    assert_eq!(got.len(), 600);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(got[k].len(), if i % 2 == 0 { 2 } else { 1 }, "{k}");
        assert_eq!(got[k][0].pickle.as_bytes(), k.as_bytes());
    }
    let some = s.olm_sessions(&[&keys[7], &keys[599]]).unwrap();
    assert_eq!(some.len(), 2);
    assert_eq!(some[&keys[7]].len(), 1);
}

pub(crate) fn inbound_group_sessions<S: Store>(s: &S) {
    let a = inbound("!r1", "sA");
    let b = inbound("!r1", "sB");
    let c = inbound("!r2", "sA");
    save(
        s,
        Changes::from(CryptoChanges {
            inbound_group_sessions: vec![a.clone(), b.clone(), c.clone()],
            ..Default::default()
        }),
    );
    assert_eq!(s.inbound_group_session_count().unwrap(), 3);
    assert_eq!(s.inbound_group_session(&rid("!r1"), "sA").unwrap(), Some(a));
    assert_eq!(
        s.inbound_group_session(&rid("!r1"), "sB").unwrap(),
        Some(b.clone())
    );
    assert_eq!(s.inbound_group_session(&rid("!r2"), "sA").unwrap(), Some(c));
    assert_eq!(s.inbound_group_session(&rid("!r1"), "!r1").unwrap(), None);
    assert_eq!(s.inbound_group_session(&rid("!r2"), "sB").unwrap(), None);
    let mut a2 = inbound("!r1", "sA");
    a2.first_known_index = 0;
    a2.pickle = blob(b"better session from backup");
    a2.sender_user = Some(uid("@alice2:example.org"));
    save(
        s,
        Changes::from(CryptoChanges {
            inbound_group_sessions: vec![a2.clone()],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.inbound_group_session(&rid("!r1"), "sA").unwrap(),
        Some(a2)
    );
    assert_eq!(s.inbound_group_session(&rid("!r1"), "sB").unwrap(), Some(b));
    assert_eq!(s.inbound_group_session_count().unwrap(), 3);
}

pub(crate) fn outbound_sessions_replace_and_discard<S: Store>(s: &S) {
    save(
        s,
        Changes::from(CryptoChanges {
            outbound_group_sessions: vec![outbound("!a", "s1"), outbound("!b", "s1")],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.outbound_group_session(&rid("!a")).unwrap(),
        Some(outbound("!a", "s1"))
    );
    let mut next = outbound("!a", "s2");
    next.shared_with.clear();
    next.message_count = 0;
    save(
        s,
        Changes::from(CryptoChanges {
            outbound_group_sessions: vec![next.clone()],
            ..Default::default()
        }),
    );
    assert_eq!(s.outbound_group_session(&rid("!a")).unwrap(), Some(next));
    save(
        s,
        Changes::from(CryptoChanges {
            discarded_outbound_sessions: vec![rid("!a"), rid("!never-existed")],
            ..Default::default()
        }),
    );
    assert_eq!(s.outbound_group_session(&rid("!a")).unwrap(), None);
    assert_eq!(
        s.outbound_group_session(&rid("!b")).unwrap(),
        Some(outbound("!b", "s1"))
    );
    // A batch that both writes and discards a room's session discards it (fail closed).
    save(
        s,
        Changes::from(CryptoChanges {
            outbound_group_sessions: vec![outbound("!c", "s1")],
            discarded_outbound_sessions: vec![rid("!c")],
            ..Default::default()
        }),
    );
    assert_eq!(s.outbound_group_session(&rid("!c")).unwrap(), None);
    assert_eq!(s.generation().unwrap(), 4);
}

pub(crate) fn devices_batch_and_deleted<S: Store>(s: &S) {
    let users: Vec<String> = (0..500)
        .map(|i| format!("@user{i:03}:example.org"))
        .collect();
    let mut c = Changes::default();
    for (i, u) in users.iter().enumerate() {
        for d in ["DEV_B", "DEV_A", "DEV_C"] {
            let mut rec = device(u, d, &format!("curve-{i}-{d}"));
            rec.deleted = d == "DEV_C";
            rec.local_trust = match i % 4 {
                0 => LocalTrust::Unset,
                1 => LocalTrust::Verified,
                2 => LocalTrust::Blacklisted,
                _ => LocalTrust::Ignored,
            };
            rec.display_name = (i % 3 != 0).then(|| format!("name {i}"));
            c.crypto.devices.push(rec);
        }
    }
    let expected: BTreeMap<(OwnedUserId, OwnedDeviceId), DeviceRecord> = c
        .crypto
        .devices
        .iter()
        .map(|d| ((d.user_id.clone(), d.device_id.clone()), d.clone()))
        .collect();
    save(s, c);
    let users: Vec<OwnedUserId> = users.iter().map(|u| uid(u)).collect();
    let nobody = uid("@nobody:example.org");
    let mut query: Vec<&UserId> = users.iter().map(|u| &**u).collect();
    query.push(&nobody);
    query.push(&users[0]);
    let got = s.devices(&query).unwrap();
    assert_eq!(got.len(), 1500, "deleted devices are returned too");
    assert_eq!(
        got,
        expected.values().cloned().collect::<Vec<_>>(),
        "sorted by user, device"
    );
    assert_eq!(got.iter().filter(|d| d.deleted).count(), 500);

    let some = s.devices(&[&users[42], &users[7]]).unwrap();
    let ids: Vec<_> = some
        .iter()
        .map(|d| (d.user_id.as_str(), d.device_id.as_str()))
        .collect();
    assert_eq!(ids.len(), 6);
    assert!(ids.iter().all(|(u, _)| *u == users[7] || *u == users[42]));

    let found = s
        .device_by_curve25519(&users[42], "curve-42-DEV_A")
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.user_id.as_str(), found.device_id.as_str()),
        (users[42].as_str(), "DEV_A")
    );
    assert_eq!(
        s.device_by_curve25519(&users[41], "curve-42-DEV_A")
            .unwrap(),
        None,
        "the key and its owner together"
    );
    let deleted = s
        .device_by_curve25519(&users[3], "curve-3-DEV_C")
        .unwrap()
        .unwrap();
    assert!(deleted.deleted);
    assert_eq!(
        s.device_by_curve25519(&users[42], "curve-42").unwrap(),
        None
    );
    let several = s
        .devices_with_curve25519(&["curve-3-DEV_C", "curve-42-DEV_A", "nothing"])
        .unwrap();
    assert_eq!(
        several,
        vec![deleted.clone(), found.clone()],
        "sorted by owner"
    );

    // Replacing a device with a new key: the old key no longer finds it.
    let mut moved = expected[&(users[5].clone(), did("DEV_A"))].clone();
    moved.curve25519 = "rotated".into();
    moved.local_trust = LocalTrust::Blacklisted;
    save(
        s,
        Changes::from(CryptoChanges {
            devices: vec![moved.clone()],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.device_by_curve25519(&users[5], "curve-5-DEV_A").unwrap(),
        None
    );
    assert_eq!(
        s.device_by_curve25519(&users[5], "rotated").unwrap(),
        Some(moved)
    );
    assert_eq!(s.devices(&[&users[5]]).unwrap().len(), 3);

    // Two devices of one user claiming one key (an older store): the live one wins.
    let mut dead = device("@a:x", "OLD", "shared-key");
    dead.deleted = true;
    let live = device("@a:x", "NEW", "shared-key");
    let other = device("@z:x", "Z", "shared-key");
    save(
        s,
        Changes::from(CryptoChanges {
            devices: vec![dead.clone(), live.clone(), other.clone()],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.device_by_curve25519(&uid("@a:x"), "shared-key").unwrap(),
        Some(live.clone())
    );
    assert_eq!(
        s.devices_with_curve25519(&["shared-key"]).unwrap(),
        vec![live, dead, other]
    );
}

pub(crate) fn tracked_users<S: Store>(s: &S) {
    use TrackingState::*;
    let users = vec![
        tracked("@c:x", PendingDownload, 1),
        tracked("@a:x", UpToDate, 0),
        tracked("@b:x", Downloading, 9),
        tracked("@d:x", NotTracked, 3),
    ];
    save(
        s,
        Changes::from(CryptoChanges {
            tracked_users: users,
            ..Default::default()
        }),
    );
    assert_eq!(
        s.tracked_users().unwrap(),
        vec![
            tracked("@a:x", UpToDate, 0),
            tracked("@b:x", Downloading, 9),
            tracked("@c:x", PendingDownload, 1),
            tracked("@d:x", NotTracked, 3),
        ]
    );
    save(
        s,
        Changes::from(CryptoChanges {
            tracked_users: vec![tracked("@c:x", UpToDate, u64::MAX)],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.tracked_users().unwrap()[2],
        tracked("@c:x", UpToDate, u64::MAX)
    );
    assert_eq!(s.tracked_users().unwrap().len(), 4);
}

pub(crate) fn megolm_indices_first_event_wins<S: Store>(s: &S) {
    save(
        s,
        Changes::from(CryptoChanges {
            megolm_indices: vec![
                megolm("sk", "sess", 5, "$first"),
                megolm("sk", "sess", u32::MAX, "$max"),
            ],
            ..Default::default()
        }),
    );
    save(
        s,
        Changes::from(CryptoChanges {
            megolm_indices: vec![megolm("sk", "sess", 5, "$replayed")],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.megolm_index("sk", "sess", 5).unwrap(),
        Some(megolm("sk", "sess", 5, "$first"))
    );
    assert_eq!(
        s.megolm_index("sk", "sess", u32::MAX).unwrap(),
        Some(megolm("sk", "sess", u32::MAX, "$max"))
    );
    assert_eq!(s.megolm_index("sk", "sess", 6).unwrap(), None);
    assert_eq!(s.megolm_index("sk", "other", 5).unwrap(), None);
    assert_eq!(s.megolm_index("other", "sess", 5).unwrap(), None);
}

pub(crate) fn rooms_and_members<S: Store>(s: &S) {
    let bare = RoomRecord::new(rid("!b:x"));
    save(
        s,
        Changes::from(ClientChanges {
            rooms: vec![room("!c:x"), bare.clone(), room("!a:x")],
            members: vec![
                member("!a:x", "@u3:x", "join"),
                member("!a:x", "@u1:x", "invite"),
                member("!a:x", "@u2:x", "join"),
                member("!c:x", "@u1:x", "join"),
            ],
            ..Default::default()
        }),
    );
    assert_eq!(s.room(&rid("!b:x")).unwrap(), Some(bare));
    assert_eq!(
        s.rooms()
            .unwrap()
            .iter()
            .map(|r| r.room_id.as_str())
            .collect::<Vec<_>>(),
        ["!a:x", "!b:x", "!c:x"]
    );
    assert_eq!(
        s.members(&rid("!a:x")).unwrap(),
        vec![
            member("!a:x", "@u1:x", "invite"),
            member("!a:x", "@u2:x", "join"),
            member("!a:x", "@u3:x", "join")
        ]
    );
    let mut left = room("!a:x");
    left.own_membership = Some(MembershipState::Leave);
    left.encryption = None;
    save(
        s,
        Changes::from(ClientChanges {
            rooms: vec![left.clone()],
            members: vec![member("!a:x", "@u1:x", "leave")],
            ..Default::default()
        }),
    );
    assert_eq!(s.room(&rid("!a:x")).unwrap(), Some(left));
    assert_eq!(s.rooms().unwrap().len(), 3);
    assert_eq!(
        s.members(&rid("!a:x")).unwrap()[0],
        member("!a:x", "@u1:x", "leave")
    );
    assert_eq!(s.members(&rid("!a:x")).unwrap().len(), 3);
    assert_eq!(
        s.members(&rid("!c:x")).unwrap(),
        vec![member("!c:x", "@u1:x", "join")]
    );
    assert!(s.members(&rid("!unknown:x")).unwrap().is_empty());
}

pub(crate) fn encrypted_rooms_of_users<S: Store>(s: &S) {
    let plain = RoomRecord::new(rid("!plain:x"));
    save(
        s,
        Changes::from(ClientChanges {
            rooms: vec![room("!b:x"), room("!a:x"), plain, room("!c:x")],
            members: vec![
                member("!a:x", "@u1:x", "join"),
                member("!a:x", "@u2:x", "invite"),
                member("!b:x", "@u1:x", "leave"),
                member("!b:x", "@u2:x", "ban"),
                member("!c:x", "@u2:x", "join"),
                member("!c:x", "@u3:x", "join"),
                member("!plain:x", "@u1:x", "join"),
            ],
            ..Default::default()
        }),
    );
    let rooms = |users: &[&str]| {
        let users: Vec<OwnedUserId> = users.iter().map(|u| uid(u)).collect();
        let users: Vec<&UserId> = users.iter().map(|u| &**u).collect();
        s.encrypted_rooms_with(&users).unwrap()
    };
    assert_eq!(rooms(&["@u1:x"]), ["!a:x"]);
    assert_eq!(rooms(&["@u2:x"]), ["!a:x", "!c:x"]);
    assert_eq!(rooms(&["@u1:x", "@u3:x", "@u2:x"]), ["!a:x", "!c:x"]);
    assert!(rooms(&["@nobody:x"]).is_empty());
    assert!(rooms(&[]).is_empty());
    // Leaving a room takes it out of the answer.
    save(
        s,
        Changes::from(ClientChanges {
            members: vec![member("!c:x", "@u3:x", "leave")],
            ..Default::default()
        }),
    );
    assert!(rooms(&["@u3:x"]).is_empty());
}

pub(crate) fn pending_to_device_queue<S: Store>(s: &S) {
    save(
        s,
        Changes::from(CryptoChanges {
            pending_to_device: vec![pending("t3", "{\"n\":3}"), pending("t1", "{\"n\":1}")],
            ..Default::default()
        }),
    );
    save(
        s,
        Changes::from(CryptoChanges {
            pending_to_device: vec![pending("t2", "{\"n\":2}")],
            ..Default::default()
        }),
    );
    let txns = |s: &S| {
        s.pending_to_device()
            .unwrap()
            .into_iter()
            .map(|p| p.txn_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(txns(s), ["t3", "t1", "t2"], "insertion order, not sorted");
    // Re-queueing keeps the request's place but updates its content.
    save(
        s,
        Changes::from(CryptoChanges {
            pending_to_device: vec![pending("t1", "{\"n\":11}")],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.pending_to_device().unwrap()[1],
        pending("t1", "{\"n\":11}")
    );
    assert_eq!(txns(s), ["t3", "t1", "t2"]);
    save(
        s,
        Changes::from(CryptoChanges {
            sent_to_device: vec!["t3".into(), "never-queued".into()],
            ..Default::default()
        }),
    );
    assert_eq!(txns(s), ["t1", "t2"]);
    // Queued and confirmed in one batch: gone.
    save(
        s,
        Changes::from(CryptoChanges {
            pending_to_device: vec![pending("t4", "{}")],
            sent_to_device: vec!["t4".into()],
            ..Default::default()
        }),
    );
    assert_eq!(txns(s), ["t1", "t2"]);
    save(
        s,
        Changes::from(CryptoChanges {
            pending_to_device: vec![pending("t0", "{}")],
            ..Default::default()
        }),
    );
    assert_eq!(txns(s), ["t1", "t2", "t0"]);
    save(
        s,
        Changes::from(CryptoChanges {
            sent_to_device: vec!["t1".into(), "t2".into(), "t0".into()],
            ..Default::default()
        }),
    );
    assert!(s.pending_to_device().unwrap().is_empty());
}

pub(crate) fn values_and_secret_values<S: Store>(s: &S) {
    let mut c = Changes::default();
    c.client.values.insert("a".into(), "1".into());
    c.client.values.insert("shared".into(), "plain".into());
    c.client
        .secret_values
        .insert("access_token".into(), blob(b"syt_secret"));
    c.client
        .secret_values
        .insert("shared".into(), blob(&[0, 255, 1]));
    save(s, c);
    assert_eq!(s.value("a").unwrap().as_deref(), Some("1"));
    assert_eq!(s.value("shared").unwrap().as_deref(), Some("plain"));
    assert_eq!(
        s.value("access_token").unwrap(),
        None,
        "separate namespaces"
    );
    assert_eq!(
        s.secret_value("access_token").unwrap(),
        Some(blob(b"syt_secret"))
    );
    assert_eq!(s.secret_value("shared").unwrap(), Some(blob(&[0, 255, 1])));
    assert_eq!(s.secret_value("a").unwrap(), None);
    let mut c = Changes::default();
    c.client.values.insert("a".into(), String::new());
    c.client
        .secret_values
        .insert("access_token".into(), blob(b""));
    save(s, c);
    assert_eq!(s.value("a").unwrap().as_deref(), Some(""));
    assert_eq!(s.secret_value("access_token").unwrap(), Some(blob(b"")));
    assert_eq!(s.value("shared").unwrap().as_deref(), Some("plain"));
}

pub(crate) fn sync_token<S: Store>(s: &S) {
    save(
        s,
        Changes {
            sync_token: Some("s1".into()),
            ..Default::default()
        },
    );
    assert_eq!(s.sync_token().unwrap().as_deref(), Some("s1"));
    save(
        s,
        Changes::from(ClientChanges {
            rooms: vec![room("!r")],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.sync_token().unwrap().as_deref(),
        Some("s1"),
        "kept when not given"
    );
    save(
        s,
        Changes {
            sync_token: Some("s2_with'quote".into()),
            ..Default::default()
        },
    );
    assert_eq!(s.sync_token().unwrap().as_deref(), Some("s2_with'quote"));
}

pub(crate) fn undecryptable_events_by_session<S: Store>(s: &S) {
    let event = |room: &str, session: &str, id: &str| UndecryptableEvent {
        room_id: rid(room),
        session_id: session.into(),
        event_id: eid(id),
        event_json: format!("{{\"event_id\":\"{id}\"}}"),
    };
    save(
        s,
        Changes::from(ClientChanges {
            undecryptable_events: vec![
                event("!r:x", "s1", "$b"),
                event("!r:x", "s2", "$c"),
                event("!r:x", "s1", "$a"),
                event("!other:x", "s1", "$d"),
            ],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.undecryptable_events(&rid("!r:x"), "s1").unwrap(),
        vec![event("!r:x", "s1", "$b"), event("!r:x", "s1", "$a")],
        "in the order first stored"
    );
    assert_eq!(s.undecryptable_event_count().unwrap(), 4);
    assert_eq!(s.counts().unwrap().undecryptable_events, 4);
    assert_eq!(
        s.undecryptable_sessions().unwrap(),
        vec![
            (rid("!other:x"), "s1".into()),
            (rid("!r:x"), "s1".into()),
            (rid("!r:x"), "s2".into())
        ]
    );
    // Stored again (e.g. a later key still did not fit): same place, new content.
    let mut again = event("!r:x", "s1", "$b");
    again.event_json = "{\"retried\":true}".into();
    save(
        s,
        Changes::from(ClientChanges {
            undecryptable_events: vec![again.clone()],
            resolved_events: vec![(rid("!r:x"), eid("$a")), (rid("!r:x"), eid("$none"))],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.undecryptable_events(&rid("!r:x"), "s1").unwrap(),
        vec![again]
    );
    assert_eq!(s.undecryptable_event_count().unwrap(), 3);
    assert!(
        s.undecryptable_events(&rid("!r:x"), "s9")
            .unwrap()
            .is_empty()
    );
    // Resolved in the same save as stored: gone.
    save(
        s,
        Changes::from(ClientChanges {
            undecryptable_events: vec![event("!r:x", "s3", "$e")],
            resolved_events: vec![(rid("!r:x"), eid("$e"))],
            ..Default::default()
        }),
    );
    assert!(
        s.undecryptable_events(&rid("!r:x"), "s3")
            .unwrap()
            .is_empty()
    );
}
