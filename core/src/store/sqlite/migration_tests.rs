//! Schema migrations of the SQLite store: from an empty file, from each older version with
//! what that version stored, and refusing a newer one.

use super::super::conformance::*;
use super::super::{
    ClientChanges, CryptoChanges, QueuedSend, SendStage, SenderData, SenderDataRetry,
    SenderDataUpdate, SharingPolicy, StuckReason,
};
use super::tests::{key, open, raw};
use super::*;
use crate::test_ids::{rid, uid};

/// Undo migration 8 (sender data and identities).
fn back_to_version_7(conn: &Connection) {
    back_to_version_8(conn);
    conn.execute_batch(
        "DROP INDEX inbound_by_sender_trust;
         DROP INDEX inbound_by_sender_retry;
         ALTER TABLE inbound_group_sessions DROP COLUMN sender_trust;
         ALTER TABLE inbound_group_sessions DROP COLUMN sender_data;
         ALTER TABLE inbound_group_sessions DROP COLUMN sender_data_tag;
         ALTER TABLE inbound_group_sessions DROP COLUMN sender_retry_ms;
         DROP TABLE user_identities;
         PRAGMA user_version = 7;",
    )
    .unwrap();
}

/// Take a store back to schema version 11: no imported sessions.
fn back_to_version_11(conn: &Connection) {
    conn.execute_batch(
        "DROP INDEX inbound_to_back_up;
         ALTER TABLE inbound_group_sessions DROP COLUMN imported;
         ALTER TABLE inbound_group_sessions DROP COLUMN backed_up;
         PRAGMA user_version = 11;",
    )
    .unwrap();
}

/// Take a store back to schema version 10: no stuck reasons or kept echoes.
fn back_to_version_10(conn: &Connection) {
    back_to_version_11(conn);
    conn.execute_batch(
        "ALTER TABLE send_queue DROP COLUMN stuck;
         ALTER TABLE send_queue DROP COLUMN echo;
         DROP TABLE sent_events;
         PRAGMA user_version = 10;",
    )
    .unwrap();
}

/// Take a store back to schema version 9: the send queue's rows are bound as before and
/// its stage columns dropped.
fn back_to_version_9(conn: &Connection) {
    let cipher = schema::load_cipher(conn, &key()).unwrap();
    send_queue::unbind_stages(conn, &cipher);
    back_to_version_10(conn);
    conn.execute_batch(
        "ALTER TABLE send_queue DROP COLUMN stage;
         ALTER TABLE send_queue DROP COLUMN event_type;
         PRAGMA user_version = 9;",
    )
    .unwrap();
}

/// Take a store back to schema version 8: the lease table is dropped.
fn back_to_version_8(conn: &Connection) {
    back_to_version_9(conn);
    conn.execute_batch(
        "DROP TABLE crypto_lease; DROP TABLE consumed_to_device; DROP TABLE deferred_to_device;
         PRAGMA user_version = 8;",
    )
    .unwrap();
}

/// Take a store back to schema version 4: the tables and columns later versions added are
/// dropped (what version 4 stored is then inserted by each test).
fn back_to_version_4(conn: &Connection) {
    back_to_version_7(conn);
    conn.execute_batch(
        "DROP TABLE withheld_notices;
         DROP TABLE key_requests;
         DROP TABLE no_olm_room_keys;
         DROP TABLE unwedged_devices;
         ALTER TABLE devices DROP COLUMN trust_tag;
         ALTER TABLE pending_to_device DROP COLUMN room_id;
         ALTER TABLE pending_to_device DROP COLUMN session_id;
         PRAGMA user_version = 4;",
    )
    .unwrap();
}

/// Write back the sender data of [`full_changes`]'s sessions (dropped by
/// [`back_to_version_7`]), through the update path.
fn restore_sender_data(s: &SqliteStore, tag: &str) {
    let updates = full_changes(tag)
        .crypto
        .inbound_group_sessions
        .into_iter()
        .map(|r| SenderDataUpdate {
            room_id: r.room_id,
            session_id: r.session_id,
            sender_data: r.sender_data,
        })
        .collect();
    s.save_changes(Changes::from(CryptoChanges {
        sender_data: updates,
        ..Default::default()
    }))
    .unwrap();
}

#[test]
fn migration_8_reads_older_sessions_as_legacy_and_retries_them_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = open(d);
    let mut known = inbound("!r:x", "S1");
    let mut unknown_origin = inbound("!r:x", "S2");
    unknown_origin.sender_user = None;
    unknown_origin.sender_device = None;
    s.save_changes(Changes::from(CryptoChanges {
        inbound_group_sessions: vec![known.clone(), unknown_origin.clone()],
        ..Default::default()
    }))
    .unwrap();
    drop(s);
    back_to_version_7(&raw(d));

    let s = open(d);
    known.sender_data = SenderData {
        retry: Some(SenderDataRetry {
            attempts: 0,
            next_ms: 0,
        }),
        ..SenderData::before_sender_data()
    };
    unknown_origin.sender_data = SenderData::before_sender_data();
    let read = |id| s.inbound_group_session(&rid("!r:x"), id).unwrap().unwrap();
    assert_eq!(read("S1"), known);
    assert_eq!(read("S2"), unknown_origin);
    // Only the session whose sender is known is retried (a retry looks the sender up).
    let due = s.sender_data_retries_due(0, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].session_id, "S1");
    assert_eq!(s.next_sender_data_retry().unwrap(), Some(0));
    assert_eq!(
        s.sessions_to_reevaluate(&[&uid("@alice:example.org")])
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn migration_from_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE_NAME), b"").unwrap();
    let s = open(dir.path());
    let conn = raw(dir.path());
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(s.generation().unwrap(), 0);
    s.save_changes(full_changes("m")).unwrap();
    assert_full_present(&s, "m");
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    raw(dir.path())
        .pragma_update(None, "user_version", 99)
        .unwrap();
    match SqliteStore::open(dir.path(), &key()) {
        Err(StoreError::UnsupportedSchema {
            found: 99,
            supported,
        }) => {
            assert_eq!(supported, MIGRATIONS.len() as i64)
        }
        other => panic!("expected UnsupportedSchema, got {other:?}"),
    }
}

#[test]
fn migrations_from_version_1_keep_tracked_users_and_query_them_again() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    // Put the file back into the shape schema version 1 left it in, with two users.
    back_to_version_7(&raw(dir.path()));
    raw(dir.path())
        .execute_batch(
            "DROP TABLE tracked_users;
             DROP TABLE undecryptable_events;
             DROP TABLE send_queue;
             DROP TABLE withheld_notices;
             DROP TABLE key_requests;
             DROP TABLE no_olm_room_keys;
             DROP TABLE unwedged_devices;
             ALTER TABLE devices DROP COLUMN trust_tag;
             ALTER TABLE pending_to_device DROP COLUMN room_id;
             ALTER TABLE pending_to_device DROP COLUMN session_id;
             CREATE TABLE tracked_users (
                 user_id TEXT PRIMARY KEY NOT NULL,
                 outdated INTEGER NOT NULL,
                 sequence INTEGER NOT NULL
             );
             INSERT INTO tracked_users VALUES ('@stale:x', 1, 7), ('@fresh:x', 0, 3);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    let s = open(dir.path());
    assert_eq!(
        s.tracked_users().unwrap(),
        vec![
            TrackedUser {
                user_id: uid("@fresh:x"),
                state: TrackingState::PendingDownload,
                sequence: 3,
            },
            TrackedUser {
                user_id: uid("@stale:x"),
                state: TrackingState::PendingDownload,
                sequence: 7,
            },
        ]
    );
    let version: i64 = raw(dir.path())
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
}

#[test]
fn migration_5_moves_notices_and_requests_and_binds_trust_and_rotation_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = open(d);
    // A room id may contain the old separator; session ids (base64) never do.
    let (room, session) = ("!r|oom:x", "sess+ion/0");
    let pickle = b"outbound pickle";
    let old_aad: [&[u8]; 3] = [b"outbound_group_session", b"!r:x", b"S1"];
    let old_blob = s.cipher.encrypt(&old_aad, pickle).unwrap();
    drop(s);
    // Back to schema version 4, with what version 4 stored.
    let conn = raw(d);
    back_to_version_4(&conn);
    conn.execute_batch(
        "INSERT INTO devices VALUES ('@a:x', 'DEV', 'curve', 'ed', '[]', NULL, '{}', 'verified', 0);
         INSERT INTO plain_values VALUES ('setting|share_with_verified_only', 'true');",
    )
    .unwrap();
    let withheld = serde_json::json!({"code": "m.no_olm", "reason": "r", "sender": "@a:x"});
    conn.execute(
        "INSERT INTO plain_values VALUES (?1, ?2), (?3, 'req-1'), ('keyreq|broken', 'x')",
        [
            format!("withheld|{room}|{session}"),
            withheld.to_string(),
            format!("keyreq|{room}|{session}"),
        ],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO outbound_group_sessions VALUES ('!r:x', 'S1', ?1, 5, 3, '[]')",
        [old_blob],
    )
    .unwrap();
    drop(conn);

    let s = open(d);
    let notice = s
        .withheld_notice(&rid(room), session, &uid("@a:x"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (notice.code.as_str(), notice.reason.as_deref()),
        ("m.no_olm", Some("r"))
    );
    assert_eq!(
        s.key_request(&rid(room), session)
            .unwrap()
            .map(|r| r.request_id),
        Some("req-1".to_owned())
    );
    let device = &s.devices(&[&uid("@a:x")]).unwrap()[0];
    assert_eq!(device.local_trust, LocalTrust::Verified);
    let outbound = s.outbound_group_session(&rid("!r:x")).unwrap().unwrap();
    assert_eq!(outbound.pickle.as_bytes(), pickle);
    assert_eq!((outbound.created_ms, outbound.message_count), (5, 3));
    assert_eq!(
        s.secret_value(VERIFIED_ONLY_KEY).unwrap(),
        Some(blob(b"true"))
    );
    assert_eq!(s.sharing_policy().unwrap(), SharingPolicy::VerifiedOnly);
    let left: Vec<String> = raw(d)
        .prepare("SELECT key FROM plain_values ORDER BY key")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        left,
        ["keyreq|broken"],
        "only what could not be parsed stays"
    );
}

#[test]
fn migration_6_moves_no_olm_keys_and_unwedge_times() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = open(d);
    // The room's outbound session is s1 (s0 was rotated away); a room id may contain `|`.
    let room = "!r|oom:x";
    s.save_changes(Changes::from(CryptoChanges {
        outbound_group_sessions: vec![outbound(room, "s1")],
        ..Default::default()
    }))
    .unwrap();
    let old = |key: &str, plain: &[u8]| {
        s.cipher
            .encrypt(&values::aad_secret_value(key), plain)
            .unwrap()
    };
    let current = format!("no_olm_key|{room}|s1|3");
    let rotated = format!("no_olm_key|{room}|s0|0");
    let no_session = "no_olm_key|!gone:x|g1|0".to_owned();
    let copied = format!("no_olm_key|{room}|s1|4");
    let rows = [
        (current.clone(), old(&current, b"key at 3")),
        (rotated.clone(), old(&rotated, b"key of s0")),
        (no_session.clone(), old(&no_session, b"key of g1")),
        (copied.clone(), old(&current, b"bound to another key")),
        (
            "no_olm_key|broken".to_owned(),
            old("no_olm_key|broken", b"x"),
        ),
        ("access_token".to_owned(), old("access_token", b"token")),
    ];
    drop(s);
    // Back to schema version 5, with what version 5 stored.
    let conn = raw(d);
    back_to_version_7(&conn);
    conn.execute_batch(
        "DROP TABLE no_olm_room_keys;
         DROP TABLE unwedged_devices;
         PRAGMA user_version = 5;
         INSERT INTO plain_values VALUES ('unwedge|curve-a', '1700000000000'),
             ('unwedge|curve-b', 'soon'), ('unwedge|', '5'), ('user_id', '@me:x');",
    )
    .unwrap();
    for (key, value) in &rows {
        conn.execute(
            "INSERT INTO secret_values (key, value) VALUES (?1, ?2)",
            rusqlite::params![key, value],
        )
        .unwrap();
    }
    drop(conn);

    let s = open(d);
    let kept = s.no_olm_room_key(&rid(room), "s1", 3).unwrap();
    assert_eq!(kept.map(|k| k.session_key), Some(blob(b"key at 3")));
    // Keys of sessions that are no longer a room's outbound session are never read again.
    assert_eq!(s.no_olm_room_key(&rid(room), "s0", 0).unwrap(), None);
    assert_eq!(s.no_olm_room_key(&rid("!gone:x"), "g1", 0).unwrap(), None);
    assert_eq!(s.no_olm_room_key(&rid(room), "s1", 4).unwrap(), None);
    assert_eq!(
        s.unwedge_record("curve-a").unwrap(),
        Some(UnwedgeRecord {
            curve25519: "curve-a".into(),
            unwedged_ms: 1_700_000_000_000,
        })
    );
    assert_eq!(s.unwedge_record("curve-b").unwrap(), None);
    assert_eq!(
        s.secret_value("access_token").unwrap(),
        Some(blob(b"token"))
    );
    let keys = |table: &str| -> Vec<String> {
        raw(d)
            .prepare(&format!("SELECT key FROM {table} ORDER BY key"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let mut unreadable = vec![
        "access_token".to_owned(),
        copied,
        "no_olm_key|broken".into(),
    ];
    unreadable.sort();
    assert_eq!(
        keys("secret_values"),
        unreadable,
        "moved or dropped; only what cannot be parsed or read stays"
    );
    assert_eq!(
        keys("plain_values"),
        ["unwedge|", "unwedge|curve-b", "user_id"]
    );
}

#[test]
fn migration_7_removes_rows_holding_invalid_ids_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = open(d);
    s.save_changes(full_changes("ok")).unwrap();
    drop(s);
    // Back to schema version 6, with rows an earlier version could have stored: ids that
    // were never checked (a stripped invite's member, a rewritten sender, ...).
    let conn = raw(d);
    back_to_version_7(&conn);
    conn.execute_batch(
        "PRAGMA user_version = 6;
         INSERT INTO tracked_users VALUES ('mallory', 'up_to_date', 1);
         INSERT INTO rooms VALUES ('not-a-room', NULL, NULL, 0, 'join');
         INSERT INTO members VALUES ('!room-ok', 'mallory', 'join');
         INSERT INTO members VALUES ('room', '@a:x', 'join');
         INSERT INTO megolm_indices VALUES ('curve', 'sess', 1, 'no-event', 1);
         INSERT INTO undecryptable_events (room_id, event_id, session_id, event_json)
             VALUES ('!room-ok', 'not-an-event', 's', '{}');
         INSERT INTO key_requests (room_id, session_id, request_id) VALUES ('lobby', 'sess', 'req');
         INSERT INTO pending_to_device (txn_id, event_type, messages_json, room_id, session_id)
             VALUES ('t-bad', 'm.room.encrypted', '{}', 'nowhere', 's');",
    )
    .unwrap();
    drop(conn);

    let s = open(d);
    // Everything that was valid is still there and reads as before (once the sender data
    // that undoing migration 8 dropped is written back).
    restore_sender_data(&s, "ok");
    assert_full_present(&s, "ok");
    let tracked: Vec<String> = s
        .tracked_users()
        .unwrap()
        .iter()
        .map(|t| t.user_id.to_string())
        .collect();
    assert!(!tracked.contains(&"mallory".to_owned()), "{tracked:?}");
    assert!(s.rooms().unwrap().iter().all(|r| r.room_id != "not-a-room"));
    let members = s.members(&rid("!room-ok")).unwrap();
    assert!(
        members.iter().all(|m| m.user_id != "mallory"),
        "{members:?}"
    );
    assert!(s.encrypted_rooms_with(&[&uid("@a:x")]).is_ok());
    assert_eq!(s.megolm_index("curve", "sess", 1).unwrap(), None);
    assert!(s.undecryptable_sessions().is_ok());
    // The pending to-device message is kept; only the invalid room it named is gone.
    let pending = s.pending_to_device().unwrap();
    let bad = pending.iter().find(|p| p.txn_id == "t-bad").expect("kept");
    assert_eq!(bad.room_key, None);
    let conn = raw(d);
    let left: i64 = conn
        .query_row(
            "SELECT (SELECT count(*) FROM members WHERE room_id = 'room')
                  + (SELECT count(*) FROM key_requests WHERE room_id = 'lobby')
                  + (SELECT count(*) FROM undecryptable_events WHERE event_id = 'not-an-event')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "rows of invalid rooms and events are gone");
}

#[test]
fn a_version_4_store_with_a_device_of_an_invalid_user_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    drop(open(d));
    // Back to schema version 4 (as in the migration 5 test), with one device a version
    // that did not check user ids stored: migration 5 reads every device to tag it.
    let conn = raw(d);
    back_to_version_4(&conn);
    conn.execute_batch(
        "INSERT INTO devices VALUES ('@a:x', 'DEV', 'curve', 'ed', '[]', NULL, '{}', 'verified', 0);
         INSERT INTO devices VALUES ('mallory', 'EVIL', 'curve-m', 'ed-m', '[]', NULL, '{}', 'unset', 0);",
    )
    .unwrap();
    drop(conn);

    let s = open(d);
    let devices = s.devices_with_curve25519(&["curve", "curve-m"]).unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0].user_id, "@a:x");
    assert_eq!(devices[0].local_trust, LocalTrust::Verified);
}

#[test]
fn migration_9_adds_the_crypto_lease() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    open(d).save_changes(full_changes("a")).unwrap();
    let conn = raw(d);
    back_to_version_8(&conn);
    drop(conn);
    let s = open(d);
    assert!(matches!(
        s.acquire_lease("app", 0, 10).unwrap(),
        crate::store::LeaseAttempt::Acquired { .. }
    ));
    assert_eq!(
        s.acquire_lease("extension", 5, 20).unwrap(),
        crate::store::LeaseAttempt::HeldByOther { until_ms: 10 }
    );
    assert_eq!(s.account().unwrap(), full_changes("a").crypto.account);
}

/// Migration 10: a message queued by version 9 comes back queued, as an `m.room.message`
/// with its content, and can be moved on.
#[test]
fn migration_10_binds_queued_messages_to_their_stage() {
    let dir = tempfile::tempdir().unwrap();
    let q = queued("t1", "!r:x", b"{\"body\":\"from version 9\"}");
    {
        let s = open(dir.path());
        s.save_changes(Changes::from(ClientChanges {
            queued_sends: vec![q.clone()],
            ..Default::default()
        }))
        .unwrap();
    }
    back_to_version_9(&raw(dir.path()));
    let s = open(dir.path());
    assert_eq!(s.queued_sends().unwrap(), std::slice::from_ref(&q));
    let ready = QueuedSend {
        stage: SendStage::Ready,
        ..q
    };
    s.save_changes(Changes::from(ClientChanges {
        advanced_sends: vec![ready.clone()],
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(s.queued_sends().unwrap(), [ready]);
}

/// Migration 11: a message queued by version 10 comes back as it was, not stuck, and can be
/// marked stuck.
#[test]
fn migration_11_keeps_queued_messages_unstuck() {
    let dir = tempfile::tempdir().unwrap();
    let q = queued("t1", "!r:x", b"{\"body\":\"from version 10\"}");
    {
        let s = open(dir.path());
        s.save_changes(Changes::from(ClientChanges {
            queued_sends: vec![q.clone()],
            ..Default::default()
        }))
        .unwrap();
    }
    back_to_version_10(&raw(dir.path()));
    let s = open(dir.path());
    assert_eq!(s.queued_sends().unwrap(), std::slice::from_ref(&q));
    let stuck = QueuedSend {
        stuck: Some(StuckReason::Forbidden),
        ..q
    };
    s.save_changes(Changes::from(ClientChanges {
        advanced_sends: vec![stuck.clone()],
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(s.queued_sends().unwrap(), [stuck]);
}

/// Migration 12: sessions stored before are not imported ones (the quotas apply to them as
/// before) and not backed up yet, and read back unchanged.
#[test]
fn migration_12_reads_stored_sessions_as_not_imported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut imported = inbound("!r:x", "s1");
    imported.imported = true;
    open(d)
        .save_changes(Changes::from(CryptoChanges {
            inbound_group_sessions: vec![inbound("!r:x", "s0"), imported],
            ..Default::default()
        }))
        .unwrap();
    back_to_version_11(&raw(d));
    let s = open(d);
    let s1 = s
        .inbound_group_session(&rid("!r:x"), "s1")
        .unwrap()
        .unwrap();
    assert!(!s1.imported && !s1.backed_up);
    assert_eq!(s.inbound_group_sessions_to_back_up_count().unwrap(), 2);
    assert_eq!(
        s.inbound_group_session(&rid("!r:x"), "s0").unwrap(),
        Some(inbound("!r:x", "s0"))
    );
}
