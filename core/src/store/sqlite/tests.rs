//! SQLite-specific tests: persistence, keys, crashes, several instances, tampering, schema.

use std::path::Path;
use std::process::Command;

use super::super::cipher::DEFAULT_PBKDF2_ROUNDS;
use super::super::conformance::*;
use super::super::{ClientChanges, CryptoChanges};
use super::*;
use crate::test_ids::{rid, uid};

pub(super) fn key() -> StoreKey {
    StoreKey::from_bytes([7; 32])
}

pub(super) fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(dir, &key()).unwrap()
}

/// A raw connection to the store's file, for inspecting and tampering.
pub(super) fn raw(dir: &Path) -> Connection {
    let conn = Connection::open(dir.join(DB_FILE_NAME)).unwrap();
    conn.busy_timeout(BUSY_TIMEOUT).unwrap();
    conn
}

/// Names and contents of all files in `dir`, sorted.
fn dir_snapshot(dir: &Path) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
                meta.modified().unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn reopen_after_clean_drop_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.save_changes(full_changes("a")).unwrap();
        s.save_changes(full_changes("b")).unwrap();
    }
    let s = open(dir.path());
    assert_full_present(&s, "a");
    assert_full_present(&s, "b");
    assert_eq!(s.account().unwrap(), full_changes("b").crypto.account);
    assert_eq!(s.sync_token().unwrap().as_deref(), Some("token-b"));
    assert_eq!(s.generation().unwrap(), 2);
    assert!(dir.path().join(DB_FILE_NAME).is_file());
}

#[test]
fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let s = open(&nested);
    assert_eq!(s.path(), nested.join(DB_FILE_NAME));
    s.save_changes(full_changes("x")).unwrap();
    assert_full_present(&s, "x");
}

#[test]
fn wrong_key_refused_and_store_untouched() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.save_changes(full_changes("kept")).unwrap();
    }
    let before = dir_snapshot(dir.path());
    assert_eq!(
        before.len(),
        1,
        "only the database file after a clean close"
    );
    for wrong in [
        StoreKey::from_bytes([8; 32]),
        StoreKey::from_passphrase("guess"),
    ] {
        match SqliteStore::open(dir.path(), &wrong) {
            Err(StoreError::WrongKey) => {}
            other => panic!("expected WrongKey, got {other:?}"),
        }
    }
    assert_eq!(
        dir_snapshot(dir.path()),
        before,
        "file bytes and mtime unchanged"
    );
    let s = open(dir.path());
    assert_full_present(&s, "kept");
    assert_eq!(s.generation().unwrap(), 1);
}

#[test]
fn wrong_key_while_another_instance_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.save_changes(full_changes("kept")).unwrap();
    assert!(matches!(
        SqliteStore::open(dir.path(), &StoreKey::from_bytes([9; 32])),
        Err(StoreError::WrongKey)
    ));
    assert_full_present(&s, "kept");
    s.save_changes(full_changes("later")).unwrap();
    assert_eq!(s.generation().unwrap(), 2);
}

#[test]
fn passphrase_store() {
    let dir = tempfile::tempdir().unwrap();
    let pass = StoreKey::from_passphrase("correct horse battery staple");
    {
        let s = SqliteStore::open(dir.path(), &pass).unwrap();
        s.save_changes(full_changes("p")).unwrap();
    }
    let conn = raw(dir.path());
    let rounds: i64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'kdf_rounds'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(rounds, i64::from(DEFAULT_PBKDF2_ROUNDS));
    let salt: Vec<u8> = conn
        .query_row("SELECT value FROM meta WHERE key = 'kdf_salt'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(salt.len(), 16);
    drop(conn);
    assert!(matches!(
        SqliteStore::open(
            dir.path(),
            &StoreKey::from_passphrase("correct horse battery stapl")
        ),
        Err(StoreError::WrongKey)
    ));
    assert!(matches!(
        SqliteStore::open(dir.path(), &key()),
        Err(StoreError::WrongKey)
    ));
    let s = SqliteStore::open(dir.path(), &pass).unwrap();
    assert_full_present(&s, "p");
}

const CRASH_ENV: &str = "NEWT_STORE_TEST_CRASH_DIR";
const CRASH_CHILD: &str = "store::sqlite::tests::crash_child_writes_then_aborts";

/// Child half of `killed_process_loses_nothing_committed`; does nothing in a normal run.
#[test]
fn crash_child_writes_then_aborts() {
    let Some(dir) = std::env::var_os(CRASH_ENV) else {
        return;
    };
    let s = open(Path::new(&dir));
    s.save_changes(full_changes("first")).unwrap();
    s.save_changes(full_changes("second")).unwrap();
    // An open, uncommitted write transaction at the moment of death.
    s.writer()
        .execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO plain_values (key, value) VALUES ('uncommitted', 'x');
             UPDATE meta SET value = value + 100 WHERE key = 'generation';",
        )
        .unwrap();
    std::process::abort();
}

#[test]
fn killed_process_loses_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CRASH_CHILD, "--nocapture", "--test-threads=1"])
        .env(CRASH_ENV, dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "child should have aborted: {stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(6), "SIGABRT expected: {stderr}");
    }
    // The commits are still in the WAL, never checkpointed: recovery is what is tested.
    let wal = dir.path().join(format!("{DB_FILE_NAME}-wal"));
    assert!(
        std::fs::metadata(&wal)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    );

    let s = open(dir.path());
    assert_full_present(&s, "first");
    assert_full_present(&s, "second");
    assert_eq!(s.account().unwrap(), full_changes("second").crypto.account);
    assert_eq!(s.generation().unwrap(), 2);
    assert_eq!(s.value("uncommitted").unwrap(), None);
    s.save_changes(full_changes("third")).unwrap();
    assert_eq!(s.generation().unwrap(), 3);
}

#[test]
fn two_instances_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let app = open(dir.path());
    let extension = open(dir.path());
    assert_eq!(
        (app.generation().unwrap(), extension.generation().unwrap()),
        (0, 0)
    );

    app.save_changes(full_changes("app")).unwrap();
    assert_eq!(extension.generation().unwrap(), 1);
    assert_full_present(&extension, "app");
    assert_eq!(
        extension.account().unwrap(),
        full_changes("app").crypto.account
    );

    extension.save_changes(full_changes("ext")).unwrap();
    assert_eq!(app.generation().unwrap(), 2);
    assert_eq!(extension.generation().unwrap(), 2);
    assert_full_present(&app, "ext");
    assert_eq!(app.sync_token().unwrap().as_deref(), Some("token-ext"));

    // Concurrent writers: busy_timeout serializes them, nothing is lost.
    std::thread::scope(|scope| {
        for (t, s) in [&app, &extension].into_iter().enumerate() {
            scope.spawn(move || {
                for i in 0..20 {
                    let c = Changes::from(ClientChanges {
                        members: vec![member("!r", &format!("@{t}-{i}:x"), "join")],
                        ..Default::default()
                    });
                    s.save_changes(c).unwrap();
                }
            });
        }
    });
    assert_eq!(app.generation().unwrap(), 42);
    assert_eq!(extension.generation().unwrap(), 42);
    assert_eq!(app.members(&rid("!r")).unwrap().len(), 40);
}

/// Apply `edit` to the raw file, then expect `check` to fail as `want` (and not panic).
pub(super) fn tamper<T: fmt::Debug>(
    dir: &Path,
    edit: impl FnOnce(&Connection),
    check: impl Fn() -> Result<T, StoreError>,
    want: fn(&StoreError) -> bool,
) {
    let before = check();
    assert!(before.is_ok(), "readable before tampering: {before:?}");
    edit(&raw(dir));
    match check() {
        Err(e) if want(&e) => {}
        other => panic!("unexpected after tampering: {other:?}"),
    }
}

/// Run one statement that must change exactly one row.
pub(super) fn sql(sql: &'static str) -> impl FnOnce(&Connection) {
    move |c| assert_eq!(c.execute(sql, []).unwrap(), 1, "{sql}")
}

/// Rewrite one blob cell (`table`/`column` are test constants, the value is bound).
fn edit_blob(
    table: &'static str,
    column: &'static str,
    filter: &'static str,
    f: impl FnOnce(&mut Vec<u8>),
) -> impl FnOnce(&Connection) {
    move |c| {
        let mut bytes: Vec<u8> = c
            .query_row(
                &format!("SELECT {column} FROM {table} WHERE {filter}"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        f(&mut bytes);
        let n = c
            .execute(
                &format!("UPDATE {table} SET {column} = ?1 WHERE {filter}"),
                [bytes],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
}

pub(super) fn corrupted(e: &StoreError) -> bool {
    matches!(e, StoreError::Corrupted(_))
}

fn decode(e: &StoreError) -> bool {
    matches!(e, StoreError::Decode(_))
}

#[test]
fn tampered_rows_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = open(d);
    let mut c = full_changes("t");
    c.crypto.olm_sessions = vec![
        olm("sk-flip", "s", b"pickle f"),
        olm("sk-a", "s", b"pickle a"),
        olm("sk-b", "s", b"pickle b"),
    ];
    c.crypto.devices.push(device("@u-t:x", "D2", "curve-t2"));
    c.crypto.devices.push(device("@u-t:x", "D3", "curve-t3"));
    c.crypto
        .outbound_group_sessions
        .push(outbound("!json", "j"));
    s.save_changes(c).unwrap();

    // A flipped ciphertext byte, in every part of the value.
    // (version byte, IV, ciphertext)
    for i in [0, 5, 19] {
        let dir2 = tempfile::tempdir().unwrap();
        let s2 = open(dir2.path());
        s2.save_changes(Changes::from(CryptoChanges {
            olm_sessions: vec![olm("k", "s", b"pickle")],
            ..Default::default()
        }))
        .unwrap();
        tamper(
            dir2.path(),
            edit_blob("olm_sessions", "pickle", "sender_key = 'k'", move |b| {
                b[i] ^= 1
            }),
            || s2.olm_sessions(&["k"]),
            corrupted,
        );
    }
    tamper(
        d,
        edit_blob("olm_sessions", "pickle", "sender_key = 'sk-flip'", |b| {
            let last = b.len() - 1;
            b[last] ^= 0x80;
        }),
        || s.olm_sessions(&["sk-flip"]),
        corrupted,
    );
    // A ciphertext copied from another row.
    tamper(
        d,
        sql("UPDATE olm_sessions SET pickle = (SELECT pickle FROM olm_sessions WHERE sender_key = 'sk-a')
             WHERE sender_key = 'sk-b'"),
        || s.olm_sessions(&["sk-b"]),
        corrupted,
    );
    assert_eq!(
        s.olm_sessions(&["sk-a"]).unwrap()["sk-a"][0].pickle,
        blob(b"pickle a")
    );
    // Security-relevant public columns are bound to the pickle.
    tamper(
        d,
        sql("UPDATE inbound_group_sessions SET sender_user = '@mallory:evil'"),
        || s.inbound_group_session(&rid("!room-t"), "igs1"),
        corrupted,
    );
    tamper(
        d,
        sql("UPDATE account SET pickle = substr(pickle, 1, 10)"),
        || s.account(),
        corrupted,
    );
    tamper(
        d,
        edit_blob("secret_values", "value", "key = 's-t'", |b| b[0] = 2),
        || s.secret_value("s-t"),
        corrupted,
    );
    tamper(
        d,
        sql("UPDATE outbound_group_sessions SET session_id = 'other' WHERE room_id = '!room-t'"),
        || s.outbound_group_session(&rid("!room-t")),
        corrupted,
    );
    // Bad enum strings, bad JSON, wrong column types.
    tamper(
        d,
        sql("UPDATE devices SET local_trust = 'trust-me' WHERE device_id = 'D1'"),
        || s.devices(&[&uid("@u-t:x")]),
        decode,
    );
    tamper(
        d,
        sql("UPDATE devices SET algorithms = 'not json' WHERE device_id = 'D2'"),
        || s.devices_with_curve25519(&["curve-t2"]),
        decode,
    );
    tamper(
        d,
        sql("UPDATE devices SET deleted = 'yes' WHERE device_id = 'D3'"),
        || s.devices_with_curve25519(&["curve-t3"]),
        decode,
    );
    tamper(
        d,
        sql("UPDATE megolm_indices SET origin_ts = 'late'"),
        || s.megolm_index("sk-t", "igs1", 1),
        decode,
    );
    tamper(
        d,
        sql("UPDATE rooms SET members_synced = X'00'"),
        || s.rooms(),
        decode,
    );
    // The recipient journal is bound to the pickle: any edit fails authentication.
    tamper(
        d,
        sql("UPDATE outbound_group_sessions SET shared_with = '{' WHERE room_id = '!json'"),
        || s.outbound_group_session(&rid("!json")),
        corrupted,
    );
    // The rest of the store is still usable.
    s.save_changes(full_changes("fine")).unwrap();
    assert_full_present(&s, "fine");
}

#[test]
fn secrets_are_not_stored_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut c = full_changes("c");
    let marker = b"SECRET-MARKER-0123456789";
    c.crypto.account = Some(account("@me:x", "D", marker));
    c.crypto.olm_sessions = vec![olm("k", "s", marker)];
    let mut igs = inbound("!r", "s");
    igs.pickle = blob(marker);
    c.crypto.inbound_group_sessions = vec![igs];
    let mut ogs = outbound("!r", "s");
    ogs.pickle = blob(marker);
    c.crypto.outbound_group_sessions = vec![ogs];
    c.client
        .secret_values
        .insert("access_token".into(), blob(marker));
    c.client.queued_sends = vec![queued("txn", "!r", marker)];
    c.client
        .values
        .insert("public".into(), "PUBLIC-MARKER-9876543210".into());
    s.save_changes(c).unwrap();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let all_bytes = || -> Vec<u8> {
        dir_snapshot(dir.path())
            .into_iter()
            .flat_map(|(_, bytes, _)| bytes)
            .collect()
    };
    let bytes = all_bytes();
    assert!(
        contains(&bytes, b"PUBLIC-MARKER-9876543210"),
        "the scan sees the data"
    );
    assert!(
        !contains(&bytes, marker),
        "a secret is in the file in clear"
    );
    drop(s);
    let bytes = all_bytes();
    assert!(contains(&bytes, b"PUBLIC-MARKER-9876543210"));
    assert!(!contains(&bytes, marker));
}

#[test]
fn failure_before_commit_rolls_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.save_changes(full_changes("base")).unwrap();
    s.set_fail_before_commit(true);
    let mut c = full_changes("lost");
    c.crypto.sent_to_device.push("txn-base".into());
    c.crypto.discarded_outbound_sessions.push(rid("!room-base"));
    assert!(matches!(s.save_changes(c), Err(StoreError::Database(_))));
    assert_full_absent(&s, "lost");
    assert_full_present(&s, "base");
    assert_eq!(s.account().unwrap(), full_changes("base").crypto.account);
    assert_eq!(s.sync_token().unwrap().as_deref(), Some("token-base"));
    assert_eq!(s.generation().unwrap(), 1);
    s.set_fail_before_commit(false);
    s.save_changes(full_changes("next")).unwrap();
    assert_eq!(s.generation().unwrap(), 2);
    drop(s);
    let s = open(dir.path());
    assert_full_absent(&s, "lost");
    assert_full_present(&s, "next");
}

#[test]
fn not_a_database_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE_NAME), vec![0x5a; 4096]).unwrap();
    assert!(matches!(
        SqliteStore::open(dir.path(), &key()),
        Err(StoreError::Database(_))
    ));
}

#[test]
fn lookups_use_indices() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let conn = raw(dir.path());
    let plan = |sql: &str| -> String {
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = st.query_map([], |r| r.get::<_, String>(3)).unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
    };
    let p = plan("SELECT * FROM devices WHERE curve25519 = 'x'");
    assert!(p.contains("devices_by_curve25519"), "{p}");
    let p = plan("SELECT * FROM undecryptable_events WHERE room_id = 'r' AND session_id = 's'");
    assert!(p.contains("undecryptable_by_session"), "{p}");
    let p = plan("SELECT room_id FROM members WHERE user_id = 'x'");
    assert!(p.contains("members_by_user"), "{p}");
    let p =
        plan("SELECT * FROM olm_sessions WHERE sender_key IN (SELECT value FROM json_each('[]'))");
    assert!(p.contains("PRIMARY KEY"), "{p}");
    let p = plan("SELECT * FROM devices WHERE user_id IN (SELECT value FROM json_each('[]'))");
    assert!(p.contains("INDEX") && !p.contains("SCAN devices"), "{p}");
    let p = plan(
        "SELECT r.room_id FROM members m JOIN rooms r ON r.room_id = m.room_id
         WHERE m.user_id = 'x' AND r.encryption IS NOT NULL",
    );
    assert!(
        p.contains("members_by_user") && !p.contains("SCAN r"),
        "{p}"
    );
}

#[test]
fn unknown_tracking_state_is_a_decode_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    raw(dir.path())
        .execute_batch(
            "INSERT INTO tracked_users (user_id, state, sequence) VALUES ('@u:x', 'sideways', 1)",
        )
        .unwrap();
    let e = open(dir.path()).tracked_users().unwrap_err();
    assert!(decode(&e), "{e:?}");
}

/// Run statements that must each change exactly one row.
fn sql_all(statements: Vec<String>) -> impl FnOnce(&Connection) {
    move |c| {
        for st in &statements {
            assert_eq!(c.execute(st, []).unwrap(), 1, "{st}");
        }
    }
}

/// A read that must fail once an id column holds something that is not an id.
type IdRead = fn(&SqliteStore) -> Result<(), StoreError>;

/// User, room and event ids are typed, so a batch can no longer hold an empty (or otherwise
/// malformed) one: what guards them now is reading. A row whose user id, room id or event
/// id column does not parse (empty, or without its sigil) is a decoding error, never a
/// panic and never a record with a wrong id; every read that can reach such a row is
/// checked. (Reads keyed by the id itself cannot reach it.)
#[test]
fn invalid_ids_in_the_file_are_decode_errors() {
    let cases: Vec<(&str, &[&str], IdRead)> = vec![
        (
            "account user",
            &["UPDATE account SET user_id = {bad}"],
            |s| s.account().map(drop),
        ),
        (
            "tracked user",
            &["UPDATE tracked_users SET user_id = {bad} WHERE user_id = '@u-i:x'"],
            |s| s.tracked_users().map(drop),
        ),
        (
            "device user",
            &["UPDATE devices SET user_id = {bad} WHERE device_id = 'D1'"],
            |s| s.devices_with_curve25519(&["curve-i"]).map(drop),
        ),
        (
            "megolm index event",
            &["UPDATE megolm_indices SET event_id = {bad}"],
            |s| s.megolm_index("sk-i", "igs1", 1).map(drop),
        ),
        (
            "room",
            &["UPDATE rooms SET room_id = {bad} WHERE room_id = '!room-i'"],
            |s| s.rooms().map(drop),
        ),
        (
            "member user",
            &["UPDATE members SET user_id = {bad} WHERE room_id = '!room-i'"],
            |s| s.members(&rid("!room-i")).map(drop),
        ),
        (
            "member and room of an encrypted room",
            &[
                "UPDATE members SET room_id = {bad} WHERE room_id = '!room-i'",
                "UPDATE rooms SET room_id = {bad} WHERE room_id = '!room-i'",
            ],
            |s| s.encrypted_rooms_with(&[&uid("@u-i:x")]).map(drop),
        ),
        (
            "undecryptable event room",
            &["UPDATE undecryptable_events SET room_id = {bad}"],
            |s| s.undecryptable_sessions().map(drop),
        ),
        (
            "undecryptable event id",
            &["UPDATE undecryptable_events SET event_id = {bad}"],
            |s| s.undecryptable_events(&rid("!room-i"), "u1").map(drop),
        ),
        (
            "pending to-device room",
            &["UPDATE pending_to_device SET room_id = {bad}"],
            |s| s.pending_to_device().map(drop),
        ),
        (
            "queued send room",
            &["UPDATE send_queue SET room_id = {bad}"],
            |s| s.queued_sends().map(drop),
        ),
    ];
    // Empty, and a value of the right kind without its sigil.
    for bad in ["''", "'not-an-id'"] {
        for (what, statements, read) in &cases {
            let dir = tempfile::tempdir().unwrap();
            let s = open(dir.path());
            let mut c = full_changes("i");
            c.client.undecryptable_events = vec![UndecryptableEvent {
                room_id: rid("!room-i"),
                session_id: "u1".into(),
                event_id: crate::test_ids::eid("$u1"),
                event_json: "{}".into(),
            }];
            s.save_changes(c).unwrap();
            let statements = statements
                .iter()
                .map(|st| st.replace("{bad}", bad))
                .collect();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tamper(dir.path(), sql_all(statements), || read(&s), decode)
            }));
            assert!(result.is_ok(), "{what} = {bad}: not a decoding error");
        }
    }
    // The sender of an inbound session (empty there means unknown, which the pickle's
    // binding refuses instead).
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.save_changes(full_changes("i")).unwrap();
    tamper(
        dir.path(),
        sql("UPDATE inbound_group_sessions SET sender_user = 'mallory'"),
        || s.inbound_group_session(&rid("!room-i"), "igs1"),
        decode,
    );
}

#[test]
fn trust_decisions_and_rotation_state_cannot_be_edited_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = open(d);
    let mut c = full_changes("t");
    c.crypto.devices.push(device("@u-t:x", "D2", "curve-t2"));
    s.save_changes(c).unwrap();
    let verified_only = |s: &SqliteStore| s.secret_value(VERIFIED_ONLY_KEY);
    s.save_changes(Changes::from(CryptoChanges {
        sharing_policy: Some(SharingPolicy::VerifiedOnly),
        ..Default::default()
    }))
    .unwrap();
    let edits = [
        "UPDATE devices SET local_trust = 'verified' WHERE device_id = 'D1'",
        "UPDATE devices SET deleted = 1 WHERE device_id = 'D2'",
    ];
    for edit in edits {
        tamper(d, sql(edit), || s.devices(&[&uid("@u-t:x")]), corrupted);
        s.save_changes(Changes::from(CryptoChanges {
            devices: vec![
                device("@u-t:x", "D1", "curve-t"),
                device("@u-t:x", "D2", "curve-t2"),
            ],
            ..Default::default()
        }))
        .unwrap();
    }
    tamper(
        d,
        sql("UPDATE devices SET curve25519 = 'other' WHERE device_id = 'D1'"),
        || s.devices(&[&uid("@u-t:x")]),
        corrupted,
    );
    let room = "!room-t";
    for edit in [
        "UPDATE outbound_group_sessions SET message_count = 0 WHERE room_id = '!room-t'",
        "UPDATE outbound_group_sessions SET created_ms = 9999999999999 WHERE room_id = '!room-t'",
        "UPDATE outbound_group_sessions SET shared_with = '[]' WHERE room_id = '!room-t'",
    ] {
        tamper(
            d,
            sql(edit),
            || s.outbound_group_session(&rid(room)),
            corrupted,
        );
        s.save_changes(Changes::from(CryptoChanges {
            outbound_group_sessions: vec![outbound(room, "ogs1")],
            ..Default::default()
        }))
        .unwrap();
    }
    // The sharing setting is a secret value: it cannot be read or edited in clear.
    assert_eq!(verified_only(&s).unwrap(), Some(blob(b"verified_only")));
    assert_eq!(s.sharing_policy().unwrap(), SharingPolicy::VerifiedOnly);
    let in_clear: i64 = raw(d)
        .query_row(
            "SELECT count(*) FROM plain_values WHERE key = ?1",
            [VERIFIED_ONLY_KEY],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(in_clear, 0);
}

#[test]
fn stored_counts_match_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.save_changes(full_changes("c")).unwrap();
    let counts = s.counts().unwrap();
    assert_eq!(counts.inbound_group_sessions, 1);
    assert_eq!(counts.withheld_notices, 1);
    assert_eq!(counts.key_requests, 1);
    // The full record's session sender is not a member of its room.
    assert_eq!(counts.inbound_sessions_from_non_members, 1);
}

#[test]
fn no_olm_room_keys_are_encrypted_and_bound_to_their_row() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = open(d);
    let marker = b"NO-OLM-SESSION-KEY-MARKER-42";
    s.save_changes(Changes::from(CryptoChanges {
        outbound_group_sessions: vec![outbound("!r:x", "s1")],
        no_olm_room_keys: vec![
            NoOlmRoomKey {
                session_key: blob(marker),
                ..no_olm_key("!r:x", "s1", 1)
            },
            no_olm_key("!r:x", "s1", 2),
        ],
        ..Default::default()
    }))
    .unwrap();
    let bytes: Vec<u8> = dir_snapshot(d)
        .into_iter()
        .flat_map(|(_, bytes, _)| bytes)
        .collect();
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker),
        "a kept room key is in the file in clear"
    );
    // A key moved to another index, or copied from another row, does not authenticate.
    tamper(
        d,
        sql("UPDATE no_olm_room_keys SET message_index = 7 WHERE message_index = 1"),
        || s.no_olm_room_key(&rid("!r:x"), "s1", 7),
        corrupted,
    );
    tamper(
        d,
        sql("UPDATE no_olm_room_keys SET session_key =
                (SELECT session_key FROM no_olm_room_keys WHERE message_index = 7)
             WHERE message_index = 2"),
        || s.no_olm_room_key(&rid("!r:x"), "s1", 2),
        corrupted,
    );
}
