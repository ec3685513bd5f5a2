//! The store's low-memory mode for a notification extension.

use super::tests::{key, open};
use super::*;
use crate::store::ClientChanges;

fn value(name: &str, value: &str) -> Changes {
    let mut changes = ClientChanges::default();
    changes.values.insert(name.into(), value.into());
    changes.into()
}

/// The extension's own writes (room keys it took) are durable and seen by the app.
#[test]
fn the_extensions_writes_reach_the_app() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let push = SqliteStore::open_for_notifications(dir.path(), &key()).unwrap();
    push.save_changes(value("written", "by the extension"))
        .unwrap();
    drop(push);
    let app = open(dir.path());
    let seen = app.value("written").unwrap();
    assert_eq!(seen.as_deref(), Some("by the extension"));
}

/// Frames in the store's write-ahead log, counted by a connection of the test's own.
fn wal_frames(dir: &Path) -> i64 {
    let conn = super::tests::raw(dir);
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
        .unwrap()
}

/// Pushes while the app never runs: the extension's writes do not grow the log past
/// [`NOTIFICATION_WAL_PAGES`] and one write.
#[test]
fn the_extensions_log_stays_bounded_without_the_app() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let push = SqliteStore::open_for_notifications(dir.path(), &key()).unwrap();
    // Five writes of about 1,000 pages each.
    let big = "x".repeat(4 * 1024 * 1024);
    for i in 0..5 {
        push.save_changes(value(&format!("big {i}"), &big)).unwrap();
    }
    let frames = wal_frames(dir.path());
    let bound = i64::from(NOTIFICATION_WAL_PAGES);
    assert!(frames < bound, "{frames} frames in the log");
    drop(push);
    let app = open(dir.path());
    assert_eq!(
        app.value("big 4").unwrap().map(|v| v.len()),
        Some(big.len())
    );
}
