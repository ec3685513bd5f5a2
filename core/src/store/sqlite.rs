//! [`SqliteStore`]: the persistent [`Store`], one SQLite file per account.
//!
//! * WAL mode, so readers never block the writer and several processes (the app and a
//!   push-notification extension) can share the file; `busy_timeout` makes a second writer
//!   wait instead of failing.
//! * `synchronous=FULL`: every commit is fsynced. A `save_changes` usually records state that
//!   was already shown to the outside world (one-time keys uploaded, a to-device message
//!   encrypted with an advanced Olm ratchet, a sync token acknowledged). Losing such a commit
//!   on power loss (possible with `NORMAL` in WAL mode) desynchronizes us from the server and
//!   our peers. Writes are batched, so the cost is one fsync per batch.
//! * Secrets ([`SecretBlob`] fields) are encrypted with `StoreCipher`, bound to the row they
//!   belong to. Public data is stored in clear.
//! * The schema is versioned with `PRAGMA user_version` and numbered migrations (`schema::MIGRATIONS`).
//! * One writer connection and one reader connection, each behind a mutex.
//!
//! One module per table (or family of tables) holds its reads, its writes and its limits;
//! `write` runs them for a batch, `quotas` enforces the limits. The [`Store`] methods here
//! only pick the connection and delegate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use std::collections::HashMap;

use ruma::{OwnedEventId, OwnedRoomId, RoomId, UserId};
use rusqlite::Connection;

use super::cipher::{StoreCipher, StoreKey};
use super::{
    AccountRecord, Changes, ClientStore, CryptoStore, DeviceRecord, InboundGroupSessionRecord,
    KeyRequestRecord, LeaseAttempt, MegolmIndexRecord, MemberRecord, NoOlmRoomKey,
    OlmSessionRecord, OutboundGroupSessionRecord, PendingToDevice, QueuedSend, RoomRecord,
    SecretBlob, SessionSender, SharingPolicy, Store, StoreCounts, StoreError, TrackedUser,
    UndecryptableEvent, UnwedgeRecord, UserIdentityRecord, WithheldNotice,
};

mod account;
mod devices;
mod handoff;
mod kept_events;
mod lease;
mod megolm;
mod migrate_5;
mod migrate_6;
mod migrate_7;
#[cfg(test)]
mod migration_tests;
mod no_olm_keys;
mod notices;
#[cfg(test)]
mod notification_tests;
mod olm_sessions;
mod quotas;
mod rooms;
mod schema;
mod send_queue;
mod sql;
#[cfg(test)]
mod tests;
mod to_device;
mod trust;
#[cfg(test)]
mod trust_tests;
mod unwedge;
mod values;
mod write;

pub(crate) use migrate_5::VERIFIED_ONLY_KEY;
use schema::{load_cipher, meta, migrate, open_connection, open_lease_connection, schema_version};
use sql::{db, get_meta, u64_from_sql};
#[cfg(test)]
use {
    super::{LocalTrust, TrackingState},
    schema::{BUSY_TIMEOUT, MIGRATIONS},
};

/// Name of the database file inside the store directory.
pub(super) const DB_FILE_NAME: &str = "newt.sqlite3";

/// The SQLite-backed [`Store`]. Thread-safe; several instances (also in several processes)
/// may open the same directory.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// Takes and gives back the cross-process lease (`sqlite/lease.rs`).
    lease: Mutex<Connection>,
    cipher: StoreCipher,
    /// Test hook: fail every `save_changes` after all writes, right before the commit.
    #[cfg(test)]
    fail_before_commit: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The longest write-ahead log (in pages of 4 KiB) a notification extension leaves
/// unchecked: pushes arriving while the app never runs do not grow it without bound.
pub const NOTIFICATION_WAL_PAGES: u32 = 4_000;

impl SqliteStore {
    /// Open (or create) the store in `dir`, which is created if missing; the database is the
    /// file [`DB_FILE_NAME`] in it.
    ///
    /// Fails with [`StoreError::WrongKey`] if the store was created with another key (the
    /// file is not modified then), with [`StoreError::UnsupportedSchema`] if a newer build
    /// wrote it. Pending schema migrations are applied.
    pub fn open(dir: &Path, key: &StoreKey) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(e.to_string()))?;
        let path = dir.join(DB_FILE_NAME);
        let mut writer = open_connection(&path)?;

        // Check the key before anything is written: a wrong key must leave the file alone.
        let mut cipher = match schema_version(&writer)? {
            0 => None,
            _ => Some(load_cipher(&writer, key)?),
        };
        if let Some(created) = migrate(&mut writer, key, cipher.as_ref())? {
            cipher = Some(created);
        }
        let cipher = match cipher {
            Some(cipher) => cipher,
            // Another process created the store between our version check and migration.
            None => load_cipher(&writer, key)?,
        };
        let reader = open_connection(&path)?;
        let lease = open_lease_connection(&path)?;
        Ok(Self {
            path,
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            lease: Mutex::new(lease),
            cipher,
            #[cfg(test)]
            fail_before_commit: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Open the store for a push-notification extension, beside the app: like
    /// [`SqliteStore::open`], with a small page cache (256 KiB per connection) and no
    /// automatic WAL checkpoints while the log is short (the app's connections run them), so
    /// that writing stays cheap within an extension's memory and time limits. Only a log
    /// grown past [`NOTIFICATION_WAL_PAGES`] (an extension killed before it closed, many
    /// times over) is checkpointed. An extension closing the store last checkpoints what
    /// is left (SQLite's default): the app is not running then, and a log left behind
    /// would have to be read again by every later extension (measured in `cold_decrypt`:
    /// 27–31 ms per push with the log left, 21–26 ms with it checkpointed).
    pub fn open_for_notifications(dir: &Path, key: &StoreKey) -> Result<Self, StoreError> {
        let store = Self::open(dir, key)?;
        for conn in [&store.writer, &store.reader, &store.lease] {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            conn.pragma_update(None, "cache_size", -256).map_err(db)?;
            conn.pragma_update(None, "wal_autocheckpoint", NOTIFICATION_WAL_PAGES)
                .map_err(db)?;
        }
        Ok(store)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Test hook: make every following `save_changes` fail right before its commit.
    #[cfg(test)]
    pub(crate) fn set_fail_before_commit(&self, fail: bool) {
        self.fail_before_commit
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held dropped (rolled back) any open transaction, so the
        // connection is still usable.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for SqliteStore {
    fn save_changes(&self, changes: Changes) -> Result<u64, StoreError> {
        changes.validate()?;
        if changes.is_empty() {
            return self.generation();
        }
        let mut conn = self.writer();
        // IMMEDIATE: take the write lock up front (waiting up to the busy timeout for another
        // process) instead of failing when a read transaction would have to be upgraded.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        if let Some(fence) = &changes.lease {
            lease::check(&tx, fence)?;
        }
        let generation = write::write_changes(&tx, &self.cipher, &changes)?;
        #[cfg(test)]
        if self
            .fail_before_commit
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Database(
                "injected failure before commit".into(),
            ));
        }
        // Dropping `tx` on any error above rolls everything back.
        tx.commit().map_err(db)?;
        Ok(generation)
    }

    fn generation(&self) -> Result<u64, StoreError> {
        let conn = self.reader();
        let value: Option<i64> = get_meta(&conn, meta::GENERATION)?;
        value
            .map(u64_from_sql)
            .ok_or_else(|| StoreError::Corrupted("generation counter missing".into()))
    }

    fn counts(&self) -> Result<StoreCounts, StoreError> {
        quotas::counts(&self.reader())
    }

    fn acquire_lease(
        &self,
        holder: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<LeaseAttempt, StoreError> {
        let mut conn = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        lease::acquire(&mut conn, holder, now_ms, until_ms)
    }

    fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        let mut conn = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        lease::release(&mut conn, holder)
    }
}

impl CryptoStore for SqliteStore {
    fn account(&self) -> Result<Option<AccountRecord>, StoreError> {
        account::read(&self.reader(), &self.cipher)
    }

    fn olm_sessions(
        &self,
        sender_keys: &[&str],
    ) -> Result<HashMap<String, Vec<OlmSessionRecord>>, StoreError> {
        olm_sessions::read(&self.reader(), &self.cipher, sender_keys)
    }

    fn inbound_group_session(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Option<InboundGroupSessionRecord>, StoreError> {
        megolm::inbound(&self.reader(), &self.cipher, room_id, session_id)
    }

    fn inbound_group_session_count(&self) -> Result<u64, StoreError> {
        megolm::inbound_count(&self.reader(), None)
    }

    fn room_inbound_group_session_count(&self, room_id: &RoomId) -> Result<u64, StoreError> {
        megolm::inbound_count(&self.reader(), Some(room_id))
    }

    fn inbound_group_sessions_to_back_up(
        &self,
        limit: u32,
    ) -> Result<Vec<InboundGroupSessionRecord>, StoreError> {
        megolm::inbound_to_back_up(&self.reader(), &self.cipher, limit)
    }

    fn inbound_group_sessions_to_back_up_count(&self) -> Result<u64, StoreError> {
        megolm::inbound_to_back_up_count(&self.reader())
    }

    fn inbound_group_sessions_page(
        &self,
        room: Option<&RoomId>,
        after: Option<(&RoomId, &str)>,
        limit: u32,
    ) -> Result<Vec<InboundGroupSessionRecord>, StoreError> {
        megolm::inbound_page(&self.reader(), &self.cipher, room, after, limit)
    }

    fn outbound_group_session(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<OutboundGroupSessionRecord>, StoreError> {
        megolm::outbound(&self.reader(), &self.cipher, room_id)
    }

    fn devices(&self, user_ids: &[&UserId]) -> Result<Vec<DeviceRecord>, StoreError> {
        devices::of_users(&self.reader(), &self.cipher, user_ids)
    }

    fn device_by_curve25519(
        &self,
        user_id: &UserId,
        curve25519: &str,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        devices::by_curve25519(&self.reader(), &self.cipher, user_id, curve25519)
    }

    fn devices_with_curve25519(&self, keys: &[&str]) -> Result<Vec<DeviceRecord>, StoreError> {
        devices::with_curve25519(&self.reader(), &self.cipher, keys)
    }

    fn tracked_users(&self) -> Result<Vec<TrackedUser>, StoreError> {
        devices::tracked_users(&self.reader())
    }

    fn megolm_index(
        &self,
        sender_key: &str,
        session_id: &str,
        index: u32,
    ) -> Result<Option<MegolmIndexRecord>, StoreError> {
        megolm::index(&self.reader(), sender_key, session_id, index)
    }

    fn member(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<MemberRecord>, StoreError> {
        rooms::member(&self.reader(), room_id, user_id)
    }

    fn encrypted_rooms_with(&self, user_ids: &[&UserId]) -> Result<Vec<OwnedRoomId>, StoreError> {
        rooms::encrypted_with(&self.reader(), user_ids)
    }

    fn consumed_to_device(&self, digests: &[&str]) -> Result<Vec<String>, StoreError> {
        handoff::consumed(&self.reader(), digests)
    }

    fn deferred_to_device(&self) -> Result<Vec<String>, StoreError> {
        handoff::deferred(&self.reader())
    }

    fn pending_to_device(&self) -> Result<Vec<PendingToDevice>, StoreError> {
        to_device::pending_to_device(&self.reader())
    }

    fn withheld_notice(
        &self,
        room_id: &RoomId,
        session_id: &str,
        sender: &UserId,
    ) -> Result<Option<WithheldNotice>, StoreError> {
        notices::withheld_notice(&self.reader(), room_id, session_id, sender)
    }

    fn key_request(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Option<KeyRequestRecord>, StoreError> {
        notices::key_request(&self.reader(), room_id, session_id)
    }

    fn no_olm_room_key(
        &self,
        room_id: &RoomId,
        session_id: &str,
        index: u32,
    ) -> Result<Option<NoOlmRoomKey>, StoreError> {
        no_olm_keys::read(&self.reader(), &self.cipher, room_id, session_id, index)
    }

    fn unwedge_record(&self, curve25519: &str) -> Result<Option<UnwedgeRecord>, StoreError> {
        unwedge::read(&self.reader(), curve25519)
    }

    fn sharing_policy(&self) -> Result<SharingPolicy, StoreError> {
        values::sharing_policy(&self.reader(), &self.cipher)
    }

    fn room_sharing_policy(&self, room_id: &RoomId) -> Result<Option<SharingPolicy>, StoreError> {
        values::room_sharing_policy(&self.reader(), &self.cipher, room_id)
    }

    fn user_identities(&self, user_ids: &[&UserId]) -> Result<Vec<UserIdentityRecord>, StoreError> {
        trust::identities(&self.reader(), &self.cipher, user_ids)
    }

    fn cross_signing_keys(&self) -> Result<Option<SecretBlob>, StoreError> {
        trust::cross_signing_keys(&self.reader(), &self.cipher)
    }

    fn sessions_to_reevaluate(
        &self,
        senders: &[&UserId],
    ) -> Result<Vec<SessionSender>, StoreError> {
        trust::sessions_to_reevaluate(&self.reader(), &self.cipher, senders)
    }

    fn sender_data_retries_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<SessionSender>, StoreError> {
        trust::retries_due(&self.reader(), &self.cipher, now_ms, limit)
    }

    fn next_sender_data_retry(&self) -> Result<Option<u64>, StoreError> {
        trust::next_retry(&self.reader())
    }
}

impl ClientStore for SqliteStore {
    fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>, StoreError> {
        rooms::room(&self.reader(), room_id)
    }

    fn rooms(&self) -> Result<Vec<RoomRecord>, StoreError> {
        rooms::all(&self.reader())
    }

    fn members(&self, room_id: &RoomId) -> Result<Vec<MemberRecord>, StoreError> {
        rooms::members(&self.reader(), room_id)
    }

    fn undecryptable_events(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Vec<UndecryptableEvent>, StoreError> {
        kept_events::undecryptable_events(&self.reader(), room_id, session_id)
    }

    fn queued_sends(&self) -> Result<Vec<QueuedSend>, StoreError> {
        send_queue::queued_sends(&self.reader(), &self.cipher)
    }

    fn sent_event(&self, txn_id: &str) -> Result<Option<OwnedEventId>, StoreError> {
        send_queue::sent_event(&self.reader(), txn_id)
    }

    fn undecryptable_sessions(&self) -> Result<Vec<(OwnedRoomId, String)>, StoreError> {
        kept_events::undecryptable_sessions(&self.reader())
    }

    fn undecryptable_sessions_without_key(&self) -> Result<Vec<(OwnedRoomId, String)>, StoreError> {
        kept_events::undecryptable_sessions_without_key(&self.reader())
    }

    fn undecryptable_event_count(&self) -> Result<u64, StoreError> {
        kept_events::undecryptable_count(&self.reader())
    }

    fn value(&self, key: &str) -> Result<Option<String>, StoreError> {
        values::plain(&self.reader(), key)
    }

    fn secret_value(&self, key: &str) -> Result<Option<SecretBlob>, StoreError> {
        values::secret(&self.reader(), &self.cipher, key)
    }

    fn sync_token(&self) -> Result<Option<String>, StoreError> {
        values::sync_token(&self.reader())
    }
}

/// Binds the key check to its purpose.
fn aad_canary() -> [&'static [u8]; 1] {
    [b"key_check"]
}
