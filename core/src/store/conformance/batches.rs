//! Conformance checks about whole batches: generation counter, hostile ids, atomicity,
//! concurrency.

use std::collections::HashMap;

use ruma::{OwnedUserId, UserId};

use super::super::*;
use super::fixtures::*;
use crate::test_ids::{did, rid, uid};

pub(crate) fn generation_counts_nonempty_saves<S: Store>(s: &S) {
    assert_eq!(s.generation().unwrap(), 0);
    let singles = [
        Changes::from(CryptoChanges {
            account: Some(account("@me:x", "D", b"p")),
            ..Default::default()
        }),
        Changes::from(CryptoChanges {
            sent_to_device: vec!["nothing-to-remove".into()],
            ..Default::default()
        }),
        Changes::from(CryptoChanges {
            discarded_outbound_sessions: vec![rid("!none")],
            ..Default::default()
        }),
        Changes {
            sync_token: Some("t".into()),
            ..Default::default()
        },
        full_changes("g"),
    ];
    for (i, c) in singles.into_iter().enumerate() {
        let written = s.save_changes(c).unwrap();
        assert_eq!(
            written,
            i as u64 + 1,
            "save_changes returns the generation it wrote"
        );
        assert_eq!(s.generation().unwrap(), written);
    }
    assert_eq!(
        s.save_changes(Changes::default()).unwrap(),
        5,
        "nothing written: the current one"
    );
    assert_eq!(s.generation().unwrap(), 5);
    // (A room id can no longer be empty; an empty device id still makes a record invalid.)
    let bad = Changes::from(CryptoChanges {
        devices: vec![device("@u:x", "", "c")],
        ..Default::default()
    });
    assert!(s.save_changes(bad).is_err());
    assert_eq!(s.generation().unwrap(), 5, "a failed save is not counted");
}

/// Ids that break naive SQL: quotes, LIKE wildcards, injection attempts, unicode. Used as
/// they are where any string is an id (device ids, keys, session and transaction ids,
/// value keys), and inside a user, room or event id ([`tricky_user`], [`tricky_room`],
/// [`tricky_event`]).
const TRICKY: &[&str] = &[
    "@o'brien:x",
    "a\"b",
    "100%",
    "%",
    "_",
    "a_c",
    "abc",
    "a%",
    "a",
    "\\",
    "[a-z]*",
    "ünïcødé 🔑 日本",
    "'; DROP TABLE devices; --",
    "x' OR '1'='1",
    "\"); DELETE FROM rooms; --",
];

/// A tricky string as a user id: itself if it is one, else as the localpart.
fn tricky_user(id: &str) -> String {
    match UserId::parse(id) {
        Ok(user) => user.to_string(),
        Err(_) => format!("@{id}:x"),
    }
}

/// A tricky string as a room id.
fn tricky_room(id: &str) -> String {
    format!("!{id}")
}

/// A tricky string as an event id.
fn tricky_event(id: &str) -> String {
    format!("${id}")
}

pub(crate) fn tricky_ids_stored_exactly<S: Store>(s: &S) {
    let mut c = Changes::default();
    for (i, &id) in TRICKY.iter().enumerate() {
        let (user, room_id) = (tricky_user(id), tricky_room(id));
        c.crypto
            .devices
            .push(device(&user, id, &format!("curve {id}")));
        c.crypto.olm_sessions.push(olm(id, id, id.as_bytes()));
        c.crypto.inbound_group_sessions.push(inbound(&room_id, id));
        c.crypto
            .outbound_group_sessions
            .push(outbound(&room_id, id));
        c.crypto
            .tracked_users
            .push(tracked(&user, TrackingState::UpToDate, i as u64));
        c.crypto
            .megolm_indices
            .push(megolm(id, id, 0, &tricky_event(id)));
        c.client.rooms.push(room(&room_id));
        c.client.members.push(member(&room_id, &user, "join"));
        c.crypto.pending_to_device.push(pending(id, id));
        c.client.values.insert(id.to_owned(), id.to_owned());
        c.client
            .secret_values
            .insert(id.to_owned(), blob(id.as_bytes()));
    }
    save(s, c);
    for &id in TRICKY {
        let (user, room_id) = (uid(&tricky_user(id)), rid(&tricky_room(id)));
        let devices = s.devices(&[&user]).unwrap();
        assert_eq!(
            devices,
            vec![device(user.as_str(), id, &format!("curve {id}"))],
            "devices of {id:?}"
        );
        assert_eq!(
            s.device_by_curve25519(&user, &format!("curve {id}"))
                .unwrap()
                .map(|d| (d.user_id, d.device_id)),
            Some((user.clone(), did(id)))
        );
        let olms = s.olm_sessions(&[id]).unwrap();
        assert_eq!(olms.len(), 1, "{id:?}");
        assert_eq!(olms[id], vec![olm(id, id, id.as_bytes())]);
        assert_eq!(
            s.inbound_group_session(&room_id, id).unwrap(),
            Some(inbound(room_id.as_str(), id))
        );
        assert_eq!(
            s.outbound_group_session(&room_id).unwrap(),
            Some(outbound(room_id.as_str(), id))
        );
        assert_eq!(
            s.megolm_index(id, id, 0).unwrap(),
            Some(megolm(id, id, 0, &tricky_event(id)))
        );
        assert_eq!(s.room(&room_id).unwrap(), Some(room(room_id.as_str())));
        assert_eq!(
            s.members(&room_id).unwrap(),
            vec![member(room_id.as_str(), user.as_str(), "join")],
            "members of {id:?}"
        );
        assert_eq!(s.value(id).unwrap().as_deref(), Some(id));
        assert_eq!(s.secret_value(id).unwrap(), Some(blob(id.as_bytes())));
    }
    // A LIKE-style wildcard matches only itself.
    let user = |id: &str| uid(&tricky_user(id));
    assert_eq!(s.devices(&[&user("a%")]).unwrap().len(), 1);
    assert_eq!(
        s.devices(&[&user("%")]).unwrap()[0].user_id,
        tricky_user("%")
    );
    assert!(s.devices(&[&user("a_")]).unwrap().is_empty());
    assert!(s.devices(&[&user("ab%")]).unwrap().is_empty());
    assert!(s.olm_sessions(&["a%c"]).unwrap().is_empty());
    assert_eq!(s.value("a_").unwrap(), None);
    let wildcard_room = rid(&tricky_room("a%"));
    assert!(
        s.members(&wildcard_room)
            .unwrap()
            .iter()
            .all(|m| m.room_id == wildcard_room)
    );
    assert!(s.room(&rid(&tricky_room("%c"))).unwrap().is_none());
    // Everything survived the injection attempts.
    assert_eq!(s.rooms().unwrap().len(), TRICKY.len());
    assert_eq!(s.tracked_users().unwrap().len(), TRICKY.len());
    assert_eq!(s.pending_to_device().unwrap().len(), TRICKY.len());
    let all: Vec<&str> = TRICKY.to_vec();
    let users: Vec<OwnedUserId> = TRICKY.iter().map(|id| user(id)).collect();
    let users: Vec<&UserId> = users.iter().map(|u| &**u).collect();
    assert_eq!(s.devices(&users).unwrap().len(), TRICKY.len());
    assert_eq!(s.olm_sessions(&all).unwrap().len(), TRICKY.len());
    save(s, full_changes("after"));
    assert_full_present(s, "after");
}

/// A named way to break a batch.
pub(crate) type Invalidator = (&'static str, fn(&mut Changes));

/// Ways to make an otherwise valid batch invalid, one record at the end of a list. (User,
/// room and event ids are typed and cannot be empty: nothing to invalidate there; see the
/// SQLite test `invalid_ids_in_the_file_are_decode_errors` for what guards them in a file.)
pub(crate) fn invalidators() -> Vec<Invalidator> {
    vec![
        ("account device", |c| {
            c.crypto.account = Some(account("@me:x", "", b"p"))
        }),
        ("olm sender key", |c| {
            c.crypto.olm_sessions.push(olm("", "s", b"p"))
        }),
        ("olm session id", |c| {
            c.crypto.olm_sessions.push(olm("k", "", b"p"))
        }),
        ("inbound session", |c| {
            c.crypto.inbound_group_sessions.push(inbound("!r", ""))
        }),
        ("inbound sender device", |c| {
            c.crypto
                .inbound_group_sessions
                .push(InboundGroupSessionRecord {
                    sender_device: Some(did("")),
                    ..inbound("!r", "s")
                })
        }),
        ("outbound session", |c| {
            c.crypto.outbound_group_sessions.push(outbound("!r", ""))
        }),
        ("no_olm key session", |c| {
            c.crypto.no_olm_room_keys.push(no_olm_key("!r", "", 0))
        }),
        ("unwedge key", |c| {
            c.crypto.unwedge_records.push(unwedged("", 1))
        }),
        ("device id", |c| {
            c.crypto.devices.push(device("@u:x", "", "c"))
        }),
        ("megolm sender", |c| {
            c.crypto.megolm_indices.push(megolm("", "s", 0, "$e"))
        }),
        ("withheld session", |c| {
            c.crypto.withheld_notices.push(notice("!r", "", "@u:x"))
        }),
        ("key request session", |c| {
            c.crypto.key_requests.push(key_request("!r", ""))
        }),
        ("pending txn", |c| {
            c.crypto.pending_to_device.push(pending("", "{}"))
        }),
        ("sent txn", |c| c.crypto.sent_to_device.push(String::new())),
        ("value key", |c| {
            c.client.values.insert(String::new(), "v".into());
        }),
        ("secret key", |c| {
            c.client.secret_values.insert(String::new(), blob(b"v"));
        }),
    ]
}

pub(crate) fn failed_save_applies_nothing<S: Store>(s: &S) {
    save(s, full_changes("base"));
    let account_before = s.account().unwrap();
    for (what, invalidate) in invalidators() {
        let mut c = full_changes("bad");
        // Valid records before the invalid one, in several lists.
        c.crypto
            .devices
            .push(device("@u-bad2:x", "D2", "curve-bad2"));
        c.crypto.sent_to_device.push("txn-base".into());
        c.crypto.discarded_outbound_sessions.push(rid("!room-base"));
        invalidate(&mut c);
        match s.save_changes(c) {
            Err(StoreError::InvalidRecord(_)) => {}
            other => panic!("{what}: expected InvalidRecord, got {other:?}"),
        }
        assert_full_absent(s, "bad");
        assert!(
            s.devices(&[&uid("@u-bad2:x")]).unwrap().is_empty(),
            "{what}"
        );
        assert_full_present(s, "base");
        assert_eq!(s.account().unwrap(), account_before, "{what}");
        assert_eq!(
            s.sync_token().unwrap().as_deref(),
            Some("token-base"),
            "{what}"
        );
        assert_eq!(s.generation().unwrap(), 1, "{what}");
    }
}

pub(crate) fn everything_in_one_save<S: Store>(s: &S) {
    save(s, full_changes("one"));
    assert_eq!(s.generation().unwrap(), 1);
    assert_full_present(s, "one");
    assert_eq!(s.account().unwrap(), full_changes("one").crypto.account);
    assert_eq!(s.sync_token().unwrap().as_deref(), Some("token-one"));
    save(s, full_changes("two"));
    assert_full_present(s, "one");
    assert_full_present(s, "two");
    assert_eq!(s.account().unwrap(), full_changes("two").crypto.account);
    assert_eq!(s.sync_token().unwrap().as_deref(), Some("token-two"));
    assert_eq!(s.inbound_group_session_count().unwrap(), 2);
    assert_eq!(s.generation().unwrap(), 2);
}

pub(crate) fn concurrent_saves<S: Store>(s: &S) {
    std::thread::scope(|scope| {
        for t in 0..4 {
            scope.spawn(move || {
                for i in 0..15 {
                    let user = format!("@t{t}-{i}:x");
                    let c = Changes {
                        crypto: CryptoChanges {
                            devices: vec![device(&user, "D", &format!("c{t}-{i}"))],
                            ..Default::default()
                        },
                        client: ClientChanges {
                            members: vec![member("!shared", &user, "join")],
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    s.save_changes(c).unwrap();
                    // Reads interleave with other threads' writes.
                    assert_eq!(s.devices(&[&uid(&user)]).unwrap().len(), 1);
                }
            });
        }
    });
    assert_eq!(s.generation().unwrap(), 60);
    assert_eq!(s.members(&rid("!shared")).unwrap().len(), 60);
}

/// A store is usable through `&dyn Store` (object safety is part of the contract).
pub(crate) fn usable_as_dyn<S: Store>(s: &S) {
    let d: &dyn Store = s;
    d.save_changes(full_changes("dyn")).unwrap();
    assert_full_present(d, "dyn");
    let counts: HashMap<String, usize> = d
        .olm_sessions(&["sk-dyn"])
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.len()))
        .collect();
    assert_eq!(counts.get("sk-dyn"), Some(&1));
}
