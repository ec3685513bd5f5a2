//! A key export of 10,000 sessions is written and imported, and a key backup of 10,000
//! sessions restored from a server's answer, in bounded memory: the heap in use never
//! grows by more than a fixed amount over what it was, whatever the number of sessions (it
//! is counted by a global allocator of this test binary; SQLite's own memory is not Rust's
//! and is bounded by its cache).

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use newt_core::backup::{BackupKey, encrypt_session};
use newt_core::client::{Client, KEY_ACCESS_TOKEN, KEY_DEVICE_ID, KEY_USER_ID};
use newt_core::crypto::OlmMachine;
use newt_core::key_export::ExportedRoomKey;
use newt_core::ruma::{OwnedRoomId, device_id, user_id};
use newt_core::store::{ClientChanges, SecretBlob, SqliteStore, Store, StoreKey};
use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig};

struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SESSIONS: usize = 10_000;
/// The most the heap may grow during an export or an import of them.
const BOUND: usize = 2 * 1024 * 1024;

/// Run `work` and return how far the heap grew above where it started.
fn peak_growth<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let start = IN_USE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let out = work();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(start))
}

fn store(dir: &Path) -> Arc<dyn Store> {
    let store = SqliteStore::open(dir, &StoreKey::from_bytes([7; 32])).unwrap();
    let mut changes = ClientChanges::default();
    changes
        .values
        .insert(KEY_USER_ID.into(), "@alice:localhost".into());
    changes.values.insert(KEY_DEVICE_ID.into(), "PHONE".into());
    changes
        .secret_values
        .insert(KEY_ACCESS_TOKEN.into(), SecretBlob::new(b"token".to_vec()));
    store.save_changes(changes.into()).unwrap();
    Arc::new(store)
}

/// A logged-in client on `store`, offline (nothing here talks to a server).
fn client(store: Arc<dyn Store>) -> Client {
    client_of("http://127.0.0.1:9", store)
}

/// A logged-in client of `homeserver` on `store`.
fn client_of(homeserver: &str, store: Arc<dyn Store>) -> Client {
    let client = Client::with_store(homeserver, store).unwrap();
    assert!(client.restore_session().unwrap());
    client
}

/// A homeserver on 127.0.0.1 that knows one key backup (version `1`, `public_key`, `count`
/// entries) whose keys are `keys` (the body of `GET /room_keys/keys`); anything else is
/// not found. Its address.
fn backup_server(public_key: String, count: usize, keys: Vec<u8>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let keys = Arc::new(keys);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split(' ').nth(1).unwrap_or_default();
            let version = serde_json::json!({
                "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                "auth_data": {"public_key": public_key, "signatures": {}},
                "count": count, "etag": "1", "version": "1",
            });
            let version = version.to_string().into_bytes();
            // The keys are written from where they are (a copy would count as our growth).
            let (status, body): (&str, &[u8]) = if path.contains("/room_keys/version") {
                ("200 OK", &version)
            } else if path.contains("/room_keys/keys") && request.starts_with("GET") {
                ("200 OK", &keys)
            } else {
                ("404 Not Found", br#"{"errcode":"M_NOT_FOUND"}"#)
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
    });
    url
}

fn key(i: usize, account: &vodozemac::olm::Account) -> ExportedRoomKey {
    let outbound = GroupSession::new(SessionConfig::version_1());
    let inbound = InboundGroupSession::new(&outbound.session_key(), SessionConfig::version_1());
    ExportedRoomKey {
        algorithm: "m.megolm.v1.aes-sha2".into(),
        room_id: OwnedRoomId::try_from(format!("!room{}:localhost", i % 50)).unwrap(),
        sender_key: account.curve25519_key().to_base64(),
        session_id: outbound.session_id(),
        session_key: inbound.export_at_first_known_index().to_base64(),
        sender_claimed_keys: [("ed25519".into(), account.ed25519_key().to_base64())].into(),
        forwarding_curve25519_key_chain: Vec::new(),
    }
}

#[test]
fn ten_thousand_sessions_are_exported_and_imported_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("from"), dir.path().join("to"));
    std::fs::create_dir_all(&from).unwrap();
    std::fs::create_dir_all(&to).unwrap();
    let source = store(&from);
    {
        let machine = OlmMachine::open(
            user_id!("@alice:localhost"),
            device_id!("PHONE"),
            source.clone(),
        )
        .unwrap();
        let account = vodozemac::olm::Account::new();
        for start in (0..SESSIONS).step_by(500) {
            let keys: Vec<_> = (start..start + 500).map(|i| key(i, &account)).collect();
            assert_eq!(machine.import_room_keys(&keys).unwrap().imported.len(), 500);
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let file = dir.path().join("keys.txt");
    let exporter = client(source);
    let (written, export_growth) = peak_growth(|| {
        runtime.block_on(exporter.export_room_keys_with_rounds(&file, "pass", None, 1000, |_| {}))
    });
    assert_eq!(written.unwrap(), SESSIONS as u64);
    let size = std::fs::metadata(&file).unwrap().len() as usize;
    assert!(
        size > 3 * BOUND,
        "the file ({size} bytes) is much larger than the bound"
    );

    let importer = client(store(&to));
    let (summary, import_growth) =
        peak_growth(|| runtime.block_on(importer.import_room_keys(&file, "pass", |_| {})));
    let summary = summary.unwrap();
    assert_eq!(summary.imported, SESSIONS as u64);
    assert_eq!(summary.total, SESSIONS as u64);
    eprintln!("file {size} bytes; heap growth: export {export_growth}, import {import_growth}");
    assert!(
        export_growth < BOUND,
        "export grew the heap by {export_growth} bytes"
    );
    assert!(
        import_growth < BOUND,
        "import grew the heap by {import_growth} bytes"
    );
}

#[test]
fn a_backup_of_ten_thousand_sessions_is_restored_in_bounded_memory() {
    let backup = BackupKey::new();
    let account = vodozemac::olm::Account::new();
    let mut rooms: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
    for i in 0..SESSIONS {
        let key = key(i, &account);
        let data = encrypt_session(backup.public_key(), &key).unwrap();
        let entry = serde_json::json!({
            "first_message_index": 0, "forwarded_count": 0, "is_verified": false,
            "session_data": data,
        });
        let room = rooms
            .entry(key.room_id.to_string())
            .or_insert_with(|| serde_json::json!({"sessions": {}}));
        room["sessions"][&key.session_id] = entry;
    }
    let body = serde_json::to_vec(&serde_json::json!({ "rooms": rooms })).unwrap();
    drop(rooms);
    let size = body.len();
    assert!(
        size > 3 * BOUND,
        "the answer ({size} bytes) is much larger than the bound"
    );
    let url = backup_server(backup.public_key_base64(), SESSIONS, body);

    let dir = tempfile::tempdir().unwrap();
    let restorer = client_of(&url, store(dir.path()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let recovery_key = backup.to_recovery_key();
    let (summary, growth) =
        peak_growth(|| runtime.block_on(restorer.restore_backup(&recovery_key, None, |_| {})));
    let summary = summary.unwrap();
    assert_eq!(
        (summary.imported, summary.total),
        (SESSIONS as u64, SESSIONS as u64)
    );
    eprintln!("answer {size} bytes; heap growth: restore {growth}");
    assert!(growth < BOUND, "restore grew the heap by {growth} bytes");
}
