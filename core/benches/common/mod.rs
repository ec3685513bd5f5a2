//! Shared by the benchmarks: the reference fixtures and store factories.

use std::path::PathBuf;
use std::sync::Arc;

use newt_core::store::{SqliteStore, Store, StoreKey};
use ruma::{DeviceId, RoomId, UserId, device_id, room_id, user_id};

/// The folder of the reference implementation's benchmark inputs
/// (`../shared/bench-fixtures`, or `NEWT_BENCH_FIXTURES`).
pub(crate) fn fixtures() -> PathBuf {
    std::env::var_os("NEWT_BENCH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench-fixtures")
        })
}

/// One fixture file.
pub(crate) fn read(name: &str) -> Vec<u8> {
    let path = fixtures().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A fresh SQLite store in a temporary folder (kept alive by the returned guard).
pub(crate) fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), &StoreKey::from_bytes([7; 32])).unwrap();
    (Arc::new(store), dir)
}

/// The benchmarks' own user (the reference's fixtures are queried and claimed by it).
pub(crate) fn user() -> &'static UserId {
    user_id!("@alice:example.org")
}

/// The benchmarks' own device.
pub(crate) fn device() -> &'static DeviceId {
    device_id!("JLAFKJWSCS")
}

/// The room the benchmarks share keys in.
pub(crate) fn room() -> &'static RoomId {
    room_id!("!bench:example.org")
}
