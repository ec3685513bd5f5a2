//! Cold single-event decryption, as a push notification does it: a fresh process opens a
//! SQLite store holding 10,000 inbound Megolm sessions, decrypts one event it has not seen
//! and exits. Each measured iteration is one such process (this binary, started again in
//! child mode); the figure includes process start-up. Two ways:
//! - `app`: the app's path (`SqliteStore::open`, `OlmMachine::open`, `decrypt_room_event`,
//!   which writes the event's replay record);
//! - `notification`: the notification extension's path (the store's low-memory mode, the
//!   machine in notification mode, `decrypt_for_notification`, which writes nothing), what
//!   `NotificationDecryptor` does when the key is in the store (minus the HTTP client).
//!
//! The children's peak resident memory (`VmHWM`, Linux) is printed after each run.

// A benchmark may stop at the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use newt_core::crypto::{OlmMachine, RotationSettings};
use newt_core::store::{
    Changes, CryptoChanges, InboundGroupSessionRecord, SecretBlob, SenderData, SqliteStore, Store,
    StoreKey,
};
use ruma::{
    DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId, device_id, room_id, user_id,
};
use serde_json::{Value, json};
use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig};

fn user() -> &'static UserId {
    user_id!("@alice:example.org")
}

fn device() -> &'static DeviceId {
    device_id!("JLAFKJWSCS")
}

fn room() -> &'static RoomId {
    room_id!("!push:example.org")
}
const SESSIONS: usize = 10_000;
/// Distinct events: each process decrypts one not decrypted before.
const EVENTS: usize = 2_000;
const KEY: [u8; 32] = [7; 32];
const CHILD_ENV: &str = "NEWT_COLD_DECRYPT_CHILD";

/// Inbound sessions of other rooms and senders, as a long-used account has them.
fn other_sessions(count: usize) -> Vec<InboundGroupSessionRecord> {
    (0..count)
        .map(|i| {
            let outbound = GroupSession::new(SessionConfig::version_1());
            let inbound =
                InboundGroupSession::new(&outbound.session_key(), SessionConfig::version_1());
            let pickle = serde_json::to_vec(&inbound.pickle()).unwrap();
            InboundGroupSessionRecord {
                room_id: OwnedRoomId::try_from(format!("!room{}:example.org", i % 500)).unwrap(),
                session_id: outbound.session_id(),
                sender_key: format!("sender-curve-{}", i % 50),
                signing_key: format!("sender-ed-{}", i % 50),
                sender_user: Some(
                    OwnedUserId::try_from(format!("@user{}:example.org", i % 50)).unwrap(),
                ),
                sender_device: Some(OwnedDeviceId::from(format!("device(){}", i % 50))),
                pickle: SecretBlob::new(pickle),
                first_known_index: 0,
                sender_data: SenderData::unknown(false),
            }
        })
        .collect()
}

/// The store and the events to decrypt, written once.
fn prepare(dir: &Path) -> Vec<PathBuf> {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir, &StoreKey::from_bytes(KEY)).unwrap());
    for chunk in other_sessions(SESSIONS - 1).chunks(1_000) {
        store
            .save_changes(Changes::from(CryptoChanges {
                inbound_group_sessions: chunk.to_vec(),
                ..Default::default()
            }))
            .unwrap();
    }
    let machine = OlmMachine::open(user(), device(), Arc::clone(&store)).unwrap();
    let never = RotationSettings {
        period_ms: u64::MAX,
        messages: u64::MAX,
    };
    // Our own inbound copy of the room key is the 10,000th session.
    machine
        .share_room_key(room(), &[user().to_owned()], never)
        .unwrap();
    let content = json!({"msgtype": "m.text", "body": "You have a new message"});
    (0..EVENTS)
        .map(|i| {
            let encrypted = machine
                .encrypt_room_event(room(), "m.room.message", &content)
                .unwrap();
            let event = json!({"type": "m.room.encrypted", "sender": user(),
                "event_id": format!("$push{i}"), "origin_server_ts": 1, "content": encrypted});
            let path = dir.join(format!("event{i}.json"));
            std::fs::write(&path, serde_json::to_vec(&event).unwrap()).unwrap();
            path
        })
        .collect()
}

/// Child mode: open, decrypt one event, close; print the peak resident memory.
fn child(dir: &Path, event: &Path, notification: bool) {
    let event: Value = serde_json::from_slice(&std::fs::read(event).unwrap()).unwrap();
    let key = StoreKey::from_bytes(KEY);
    let decrypted = if notification {
        let store = SqliteStore::open_for_notifications(dir, &key).unwrap();
        let machine = OlmMachine::open_for_notifications(user(), device(), Arc::new(store));
        machine.unwrap().decrypt_for_notification(room(), &event)
    } else {
        let store = SqliteStore::open(dir, &key).unwrap();
        let machine = OlmMachine::open(user(), device(), Arc::new(store)).unwrap();
        machine.decrypt_room_event(room(), &event)
    };
    assert_eq!(decrypted.unwrap().content["body"], "You have a new message");
    println!("{}", peak_rss_kib().unwrap_or(0));
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cold_decrypt(c: &mut Criterion) {
    for mode in ["app", "notification"] {
        cold_decrypt_as(c, mode);
    }
}

fn cold_decrypt_as(c: &mut Criterion, mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let events = prepare(dir.path());
    let exe = std::env::current_exe().unwrap();
    let mut next = 0;
    let mut peak_kib = 0;
    c.bench_function(&format!("cold_decrypt/{mode}/sqlite_10000_sessions"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Past the prepared events, an event is re-delivered (no write): avoid it.
                assert!(
                    next < events.len(),
                    "raise EVENTS: every process needs a new event"
                );
                let start = Instant::now();
                let out = Command::new(&exe)
                    .env(CHILD_ENV, dir.path())
                    .arg(&events[next])
                    .arg(mode)
                    .output()
                    .unwrap();
                total += start.elapsed();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let kib: u64 = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0);
                peak_kib = peak_kib.max(kib);
                next += 1;
            }
            total
        })
    });
    println!("cold_decrypt/{mode}: {next} processes, peak resident memory {peak_kib} KiB");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    targets = cold_decrypt
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let event = std::env::args_os().nth(1).expect("event file");
        let notification = std::env::args().nth(2).as_deref() == Some("notification");
        child(Path::new(&dir), Path::new(&event), notification);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
