//! Cold single-event decryption, as a push notification does it: a fresh process opens a
//! SQLite store of a long-used account (10,000 inbound Megolm sessions, 1,000 devices, 200
//! rooms: `store.rs`), decrypts one event it has not seen and exits. Each measured
//! iteration is one such process (this binary, started again in child mode); the figure
//! includes process start-up. Three ways:
//! - `app`: the app's path (`SqliteStore::open`, `OlmMachine::open`, `decrypt_room_event`,
//!   which writes the event's replay record), the key in the store;
//! - `notification`: the notification extension's path with the key in the store (the
//!   store's low-memory mode, the machine in notification mode, `decrypt_for_notification`,
//!   which writes nothing), the event given;
//! - `decryptor`: the whole `NotificationDecryptor` (HTTP client included) for an event it
//!   fetches (pushes usually carry only the event id) from a stand-in on loopback
//!   (`responder.rs`), the key in the store;
//! - `catch_up`: the same for an event whose room key arrives with one to-device catch-up
//!   `/sync` from the stand-in; it stores that key and the Olm step.
//!
//! The children's peak resident memory (`VmHWM`, Linux) and their anonymous memory at exit
//! (`RssAnon`) are printed after each run, and those of a child that does nothing.

// A benchmark may stop at the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod responder;
mod store;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use newt_core::crypto::OlmMachine;
use newt_core::notification::NotificationDecryptor;
use newt_core::store::{SqliteStore, StoreKey};
use ruma::OwnedEventId;
use serde_json::Value;

use responder::Responder;
use store::{KEY, Prepared, device, prepare, room, user};

/// Distinct events of each kind: each process decrypts one not decrypted before.
const EVENTS: usize = 2_000;
const CHILD_ENV: &str = "NEWT_COLD_DECRYPT_CHILD";
const BODY: &str = "You have a new message";

/// The reference's `/keys/query` fixture with 2,002 users.
pub(crate) fn read_fixture() -> Vec<u8> {
    let dir = std::env::var_os("NEWT_BENCH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench-fixtures")
        });
    let path = dir.join("keys_query_2000_members.json");
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Child mode: open, decrypt one event, close; print the peak resident memory.
fn child(dir: &Path, mode: &str, what: &str) {
    let key = StoreKey::from_bytes(KEY);
    let content = match mode {
        "bare" => {
            println!("{}", memory_kib());
            return;
        }
        "decryptor" | "catch_up" => {
            let (url, event_id) = what.split_once(' ').unwrap();
            let event_id = OwnedEventId::try_from(event_id).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let decryptor = NotificationDecryptor::open(url, dir, &key).unwrap();
            let decrypt = decryptor.decrypt(room(), &event_id, None, Duration::from_secs(10));
            runtime.block_on(decrypt).unwrap().content
        }
        "notification" => {
            let store = SqliteStore::open_for_notifications(dir, &key).unwrap();
            let machine = OlmMachine::open_for_notifications(user(), device(), Arc::new(store));
            let machine = machine.unwrap();
            machine
                .decrypt_for_notification(room(), &read_event(what))
                .unwrap()
                .content
        }
        _ => {
            let store = SqliteStore::open(dir, &key).unwrap();
            let machine = OlmMachine::open(user(), device(), Arc::new(store)).unwrap();
            machine
                .decrypt_room_event(room(), &read_event(what))
                .unwrap()
                .content
        }
    };
    assert_eq!(content["body"], BODY);
    println!("{}", memory_kib());
}

fn read_event(path: &str) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `PEAK ANON`: the peak resident memory (`VmHWM`, code pages of this binary included) and
/// the anonymous memory resident at the end (`RssAnon`: heap and stacks, what a phone
/// counts against an extension's limit; clean code pages it does not), in KiB.
fn memory_kib() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name));
        line.and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("0")
            .to_owned()
    };
    format!("{} {}", field("VmHWM:"), field("RssAnon:"))
}

/// The largest of each of two figures.
fn max_pair((a, b): (u64, u64), line: &str) -> (u64, u64) {
    let mut figures = line.split_whitespace().map(|f| f.parse().unwrap_or(0));
    let (x, y) = (figures.next().unwrap_or(0), figures.next().unwrap_or(0));
    (a.max(x), b.max(y))
}

fn cold_decrypt(c: &mut Criterion) {
    // What this binary costs before it does anything, for reading the figures below.
    let exe = std::env::current_exe().unwrap();
    let bare = Command::new(&exe)
        .env(CHILD_ENV, ".")
        .args(["bare", ""])
        .output()
        .unwrap();
    let (peak, anon) = max_pair((0, 0), &String::from_utf8_lossy(&bare.stdout));
    println!("cold_decrypt: a bare child process: peak {peak} KiB, anonymous {anon} KiB");
    // A filter on the command line (criterion's): the other modes' stores are not built.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    for mode in ["app", "notification", "decryptor", "catch_up"] {
        let name = format!("cold_decrypt/{mode}/");
        if filter
            .as_deref()
            .is_none_or(|f| name.contains(f) || f.contains(&name))
        {
            cold_decrypt_as(c, mode);
        }
    }
}

fn cold_decrypt_as(c: &mut Criterion, mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let prepared = prepare(dir.path(), EVENTS);
    let responder = Responder::start();
    let exe = std::env::current_exe().unwrap();
    let mut next = 0;
    let mut peak_kib = (0, 0);
    let name = format!("cold_decrypt/{mode}/sqlite_10000_sessions_1000_devices_200_rooms");
    c.bench_function(&name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Past the prepared events, an event is re-delivered (no write): avoid it.
                assert!(
                    next < EVENTS,
                    "raise EVENTS: every process needs a new event"
                );
                let what = match mode {
                    "decryptor" | "catch_up" => serve(&responder, &prepared, mode, next),
                    _ => prepared.local[next].to_string_lossy().into_owned(),
                };
                let start = Instant::now();
                let out = Command::new(&exe)
                    .env(CHILD_ENV, dir.path())
                    .args([mode, &what])
                    .output()
                    .unwrap();
                total += start.elapsed();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "{stderr}");
                peak_kib = max_pair(peak_kib, &String::from_utf8_lossy(&out.stdout));
                next += 1;
            }
            total
        })
    });
    let (peak, anon) = peak_kib;
    println!(
        "cold_decrypt/{mode}: {next} processes, peak resident memory {peak} KiB, \
         anonymous memory at exit {anon} KiB"
    );
}

/// Has the stand-in answer for event `n` of the mode; returns the child's argument.
fn serve(responder: &Responder, prepared: &Prepared, mode: &str, n: usize) -> String {
    let (event, to_device) = if mode == "catch_up" {
        let pushed = &prepared.pushed[n];
        (pushed.event.clone(), Some(&pushed.to_device))
    } else {
        (read_event(&prepared.local[n].to_string_lossy()), None)
    };
    responder.serve(&event, to_device, n);
    format!("{} {}", responder.url, event["event_id"].as_str().unwrap())
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
        let mode = std::env::args().nth(1).expect("mode");
        let what = std::env::args().nth(2).expect("event");
        child(Path::new(&dir), &mode, &what);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
