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

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Params, Row, params};

use super::cipher::{StoreCipher, StoreKey};
use super::{
    AccountRecord, Changes, DeviceRecord, InboundGroupSessionRecord, KeyRequestRecord, LocalTrust,
    MegolmIndexRecord, MemberRecord, OlmSessionRecord, OutboundGroupSessionRecord, PendingToDevice,
    QueuedSend, RoomRecord, SecretBlob, ShareRecipient, Store, StoreCounts, StoreError,
    TrackedUser, TrackingState, UndecryptableEvent, WithheldNotice,
};

mod migrate_5;
mod schema;
#[cfg(test)]
mod tests;
mod write;

pub(crate) use migrate_5::VERIFIED_ONLY_KEY;
#[cfg(test)]
use schema::{BUSY_TIMEOUT, MIGRATIONS};
use schema::{load_cipher, meta, migrate, open_connection, schema_version};

/// Name of the database file inside the store directory.
pub(super) const DB_FILE_NAME: &str = "newt.sqlite3";

/// The SQLite-backed [`Store`]. Thread-safe; several instances (also in several processes)
/// may open the same directory.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
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
        Ok(Self {
            path,
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            cipher,
            #[cfg(test)]
            fail_before_commit: std::sync::atomic::AtomicBool::new(false),
        })
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

    fn account(&self) -> Result<Option<AccountRecord>, StoreError> {
        query_opt(
            &self.reader(),
            "SELECT user_id, device_id, pickle, device_keys_uploaded,
                server_one_time_key_count, fallback_key_created_ms
             FROM account WHERE id = 0",
            [],
            |r| {
                let user_id: String = col(r, 0)?;
                let device_id: String = col(r, 1)?;
                let blob: Vec<u8> = col(r, 2)?;
                let pickle = self
                    .cipher
                    .decrypt(&aad_account(&user_id, &device_id), &blob)?;
                Ok(AccountRecord {
                    user_id,
                    device_id,
                    pickle: SecretBlob(pickle),
                    device_keys_uploaded: col(r, 3)?,
                    server_one_time_key_count: u64_from_sql(col(r, 4)?),
                    fallback_key_created_ms: u64_from_sql(col(r, 5)?),
                })
            },
        )
    }

    fn olm_sessions(
        &self,
        sender_keys: &[&str],
    ) -> Result<std::collections::HashMap<String, Vec<OlmSessionRecord>>, StoreError> {
        let mut out = std::collections::HashMap::new();
        if sender_keys.is_empty() {
            return Ok(out);
        }
        let sessions = query_all(
            &self.reader(),
            "SELECT sender_key, session_id, pickle, created_ms, last_used_ms FROM olm_sessions
             WHERE sender_key IN (SELECT value FROM json_each(?1))
             ORDER BY sender_key, session_id",
            [json_list(sender_keys)?],
            |r| {
                let sender_key: String = col(r, 0)?;
                let session_id: String = col(r, 1)?;
                let blob: Vec<u8> = col(r, 2)?;
                let pickle = self
                    .cipher
                    .decrypt(&aad_olm(&sender_key, &session_id), &blob)?;
                Ok(OlmSessionRecord {
                    sender_key,
                    session_id,
                    pickle: SecretBlob(pickle),
                    created_ms: u64_from_sql(col(r, 3)?),
                    last_used_ms: u64_from_sql(col(r, 4)?),
                })
            },
        )?;
        for s in sessions {
            out.entry(s.sender_key.clone())
                .or_insert_with(Vec::new)
                .push(s);
        }
        Ok(out)
    }

    fn inbound_group_session(
        &self,
        room_id: &str,
        session_id: &str,
    ) -> Result<Option<InboundGroupSessionRecord>, StoreError> {
        query_opt(
            &self.reader(),
            "SELECT room_id, session_id, sender_key, signing_key, sender_user, sender_device,
                pickle, first_known_index
             FROM inbound_group_sessions WHERE room_id = ?1 AND session_id = ?2",
            [room_id, session_id],
            |r| {
                let mut s = InboundGroupSessionRecord {
                    room_id: col(r, 0)?,
                    session_id: col(r, 1)?,
                    sender_key: col(r, 2)?,
                    signing_key: col(r, 3)?,
                    sender_user: non_empty(col(r, 4)?),
                    sender_device: non_empty(col(r, 5)?),
                    pickle: SecretBlob::new(Vec::new()),
                    first_known_index: col(r, 7)?,
                };
                let blob: Vec<u8> = col(r, 6)?;
                let index = s.first_known_index.to_be_bytes();
                s.pickle = SecretBlob(self.cipher.decrypt(&aad_inbound(&s, &index), &blob)?);
                Ok(s)
            },
        )
    }

    fn inbound_group_session_count(&self) -> Result<u64, StoreError> {
        let count: i64 = self
            .reader()
            .prepare_cached("SELECT count(*) FROM inbound_group_sessions")
            .and_then(|mut st| st.query_row([], |r| r.get(0)))
            .map_err(db)?;
        Ok(u64_from_sql(count))
    }

    fn outbound_group_session(
        &self,
        room_id: &str,
    ) -> Result<Option<OutboundGroupSessionRecord>, StoreError> {
        query_opt(
            &self.reader(),
            "SELECT room_id, session_id, pickle, created_ms, message_count, shared_with
             FROM outbound_group_sessions WHERE room_id = ?1",
            [room_id],
            |r| {
                let room_id: String = col(r, 0)?;
                let session_id: String = col(r, 1)?;
                let blob: Vec<u8> = col(r, 2)?;
                let created_ms = u64_from_sql(col(r, 3)?);
                let message_count = u64_from_sql(col(r, 4)?);
                let json: String = col(r, 5)?;
                let (created, count) = (created_ms.to_be_bytes(), message_count.to_be_bytes());
                let aad = aad_outbound(&room_id, &session_id, &created, &count, &json);
                let pickle = self.cipher.decrypt(&aad, &blob)?;
                let shared_with: Vec<ShareRecipient> = serde_json::from_str(&json)
                    .map_err(|e| StoreError::Decode(format!("shared_with: {e}")))?;
                Ok(OutboundGroupSessionRecord {
                    room_id,
                    session_id,
                    pickle: SecretBlob(pickle),
                    created_ms,
                    message_count,
                    shared_with,
                })
            },
        )
    }

    fn devices(&self, user_ids: &[&str]) -> Result<Vec<DeviceRecord>, StoreError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        query_all(
            &self.reader(),
            &format!(
                "SELECT {DEVICE_COLUMNS} FROM devices
                 WHERE user_id IN (SELECT value FROM json_each(?1)) ORDER BY user_id, device_id"
            ),
            [json_list(user_ids)?],
            |r| device_from_row(r, Some(&self.cipher)),
        )
    }

    fn device_by_curve25519(
        &self,
        user_id: &str,
        curve25519: &str,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        // One device per key is kept; older stores may hold more: a live one first.
        query_opt(
            &self.reader(),
            &format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE curve25519 = ?2 AND user_id = ?1
                 ORDER BY deleted, device_id LIMIT 1"
            ),
            [user_id, curve25519],
            |r| device_from_row(r, Some(&self.cipher)),
        )
    }

    fn devices_with_curve25519(&self, keys: &[&str]) -> Result<Vec<DeviceRecord>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        query_all(
            &self.reader(),
            &format!(
                "SELECT {DEVICE_COLUMNS} FROM devices
                 WHERE curve25519 IN (SELECT value FROM json_each(?1)) ORDER BY user_id, device_id"
            ),
            [json_list(keys)?],
            |r| device_from_row(r, Some(&self.cipher)),
        )
    }

    fn tracked_users(&self) -> Result<Vec<TrackedUser>, StoreError> {
        query_all(
            &self.reader(),
            "SELECT user_id, state, sequence FROM tracked_users ORDER BY user_id",
            [],
            |r| {
                let state: String = col(r, 1)?;
                Ok(TrackedUser {
                    user_id: col(r, 0)?,
                    state: TrackingState::parse(&state)
                        .ok_or_else(|| StoreError::Decode("unknown tracking state".into()))?,
                    sequence: u64_from_sql(col(r, 2)?),
                })
            },
        )
    }

    fn megolm_index(
        &self,
        sender_key: &str,
        session_id: &str,
        index: u32,
    ) -> Result<Option<MegolmIndexRecord>, StoreError> {
        query_opt(
            &self.reader(),
            "SELECT sender_key, session_id, message_index, event_id, origin_ts
             FROM megolm_indices
             WHERE sender_key = ?1 AND session_id = ?2 AND message_index = ?3",
            params![sender_key, session_id, index],
            |r| {
                Ok(MegolmIndexRecord {
                    sender_key: col(r, 0)?,
                    session_id: col(r, 1)?,
                    index: col(r, 2)?,
                    event_id: col(r, 3)?,
                    origin_ts: u64_from_sql(col(r, 4)?),
                })
            },
        )
    }

    fn room(&self, room_id: &str) -> Result<Option<RoomRecord>, StoreError> {
        query_opt(
            &self.reader(),
            "SELECT room_id, encryption, history_visibility, members_synced, own_membership
             FROM rooms WHERE room_id = ?1",
            [room_id],
            room_from_row,
        )
    }

    fn rooms(&self) -> Result<Vec<RoomRecord>, StoreError> {
        query_all(
            &self.reader(),
            "SELECT room_id, encryption, history_visibility, members_synced, own_membership
             FROM rooms ORDER BY room_id",
            [],
            room_from_row,
        )
    }

    fn undecryptable_events(
        &self,
        room_id: &str,
        session_id: &str,
    ) -> Result<Vec<UndecryptableEvent>, StoreError> {
        query_all(
            &self.reader(),
            "SELECT room_id, session_id, event_id, event_json FROM undecryptable_events
             WHERE room_id = ?1 AND session_id = ?2 ORDER BY seq",
            [room_id, session_id],
            |r| {
                Ok(UndecryptableEvent {
                    room_id: col(r, 0)?,
                    session_id: col(r, 1)?,
                    event_id: col(r, 2)?,
                    event_json: col(r, 3)?,
                })
            },
        )
    }

    fn queued_sends(&self) -> Result<Vec<QueuedSend>, StoreError> {
        query_all(
            &self.reader(),
            "SELECT txn_id, room_id, content FROM send_queue ORDER BY seq",
            [],
            |r| {
                let txn_id: String = col(r, 0)?;
                let room_id: String = col(r, 1)?;
                let blob: Vec<u8> = col(r, 2)?;
                let content = SecretBlob(
                    self.cipher
                        .decrypt(&aad_queued_send(&txn_id, &room_id), &blob)?,
                );
                Ok(QueuedSend {
                    txn_id,
                    room_id,
                    content,
                })
            },
        )
    }

    fn undecryptable_sessions(&self) -> Result<Vec<(String, String)>, StoreError> {
        query_all(
            &self.reader(),
            "SELECT DISTINCT room_id, session_id FROM undecryptable_events
             ORDER BY room_id, session_id",
            [],
            |r| Ok((col(r, 0)?, col(r, 1)?)),
        )
    }

    fn undecryptable_event_count(&self) -> Result<u64, StoreError> {
        let count: i64 = query_opt(
            &self.reader(),
            "SELECT COUNT(*) FROM undecryptable_events",
            [],
            |r| col(r, 0),
        )?
        .unwrap_or(0);
        Ok(u64_from_sql(count))
    }

    fn encrypted_rooms_with(&self, user_ids: &[&str]) -> Result<Vec<String>, StoreError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        // members_by_user (user_id, room_id) answers the lookup; rooms by primary key.
        query_all(
            &self.reader(),
            "SELECT DISTINCT m.room_id FROM members m JOIN rooms r ON r.room_id = m.room_id
             WHERE m.user_id IN (SELECT value FROM json_each(?1))
               AND m.membership IN ('join', 'invite') AND r.encryption IS NOT NULL
             ORDER BY m.room_id",
            [json_list(user_ids)?],
            |r| col(r, 0),
        )
    }

    fn members(&self, room_id: &str) -> Result<Vec<MemberRecord>, StoreError> {
        query_all(
            &self.reader(),
            "SELECT room_id, user_id, membership FROM members WHERE room_id = ?1
             ORDER BY user_id",
            [room_id],
            |r| {
                Ok(MemberRecord {
                    room_id: col(r, 0)?,
                    user_id: col(r, 1)?,
                    membership: col(r, 2)?,
                })
            },
        )
    }

    fn member(&self, room_id: &str, user_id: &str) -> Result<Option<MemberRecord>, StoreError> {
        query_opt(
            &self.reader(),
            "SELECT room_id, user_id, membership FROM members WHERE room_id = ?1 AND user_id = ?2",
            [room_id, user_id],
            |r| {
                Ok(MemberRecord {
                    room_id: col(r, 0)?,
                    user_id: col(r, 1)?,
                    membership: col(r, 2)?,
                })
            },
        )
    }

    fn pending_to_device(&self) -> Result<Vec<PendingToDevice>, StoreError> {
        query_all(
            &self.reader(),
            "SELECT txn_id, event_type, messages_json, room_id, session_id
             FROM pending_to_device ORDER BY seq",
            [],
            |r| {
                let room: Option<String> = col(r, 3)?;
                let session: Option<String> = col(r, 4)?;
                Ok(PendingToDevice {
                    txn_id: col(r, 0)?,
                    event_type: col(r, 1)?,
                    messages_json: col(r, 2)?,
                    room_key: room.zip(session),
                })
            },
        )
    }

    fn withheld_notice(
        &self,
        room_id: &str,
        session_id: &str,
        sender: &str,
    ) -> Result<Option<WithheldNotice>, StoreError> {
        query_opt(
            &self.reader(),
            "SELECT room_id, session_id, sender, sender_key, code, reason FROM withheld_notices
             WHERE room_id = ?1 AND session_id = ?2 AND sender = ?3",
            [room_id, session_id, sender],
            |r| {
                Ok(WithheldNotice {
                    room_id: col(r, 0)?,
                    session_id: col(r, 1)?,
                    sender: col(r, 2)?,
                    sender_key: col(r, 3)?,
                    code: col(r, 4)?,
                    reason: col(r, 5)?,
                })
            },
        )
    }

    fn key_request(
        &self,
        room_id: &str,
        session_id: &str,
    ) -> Result<Option<KeyRequestRecord>, StoreError> {
        query_opt(
            &self.reader(),
            "SELECT room_id, session_id, request_id FROM key_requests
             WHERE room_id = ?1 AND session_id = ?2",
            [room_id, session_id],
            |r| {
                Ok(KeyRequestRecord {
                    room_id: col(r, 0)?,
                    session_id: col(r, 1)?,
                    request_id: col(r, 2)?,
                })
            },
        )
    }

    fn counts(&self) -> Result<StoreCounts, StoreError> {
        let conn = self.reader();
        let count = |sql: &str| -> Result<u64, StoreError> {
            let n: i64 = query_opt(&conn, sql, [], |r| col(r, 0))?.unwrap_or(0);
            Ok(u64_from_sql(n))
        };
        Ok(StoreCounts {
            olm_sessions: count("SELECT count(*) FROM olm_sessions")?,
            olm_sessions_of_unknown_devices: count(
                "SELECT count(*) FROM olm_sessions
                 WHERE sender_key NOT IN (SELECT curve25519 FROM devices WHERE deleted = 0)",
            )?,
            inbound_group_sessions: count("SELECT count(*) FROM inbound_group_sessions")?,
            inbound_sessions_from_non_members: count(&format!(
                "SELECT count(*) FROM inbound_group_sessions s WHERE {FROM_NON_MEMBER}"
            ))?,
            invites: count(
                "SELECT count(*) FROM rooms WHERE own_membership = 'invite' AND encryption IS NULL",
            )?,
            withheld_notices: count("SELECT count(*) FROM withheld_notices")?,
            key_requests: count("SELECT count(*) FROM key_requests")?,
            undecryptable_events: count("SELECT count(*) FROM undecryptable_events")?,
        })
    }

    fn value(&self, key: &str) -> Result<Option<String>, StoreError> {
        query_opt(
            &self.reader(),
            "SELECT value FROM plain_values WHERE key = ?1",
            [key],
            |r| col(r, 0),
        )
    }

    fn secret_value(&self, key: &str) -> Result<Option<SecretBlob>, StoreError> {
        query_opt(
            &self.reader(),
            "SELECT value FROM secret_values WHERE key = ?1",
            [key],
            |r| {
                let blob: Vec<u8> = col(r, 0)?;
                Ok(SecretBlob(
                    self.cipher.decrypt(&aad_secret_value(key), &blob)?,
                ))
            },
        )
    }

    fn sync_token(&self) -> Result<Option<String>, StoreError> {
        get_meta(&self.reader(), meta::SYNC_TOKEN)
    }
}

// ---- helpers ----

/// Map a rusqlite error. Messages name tables and columns, never values.
fn db(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Decode(e.to_string()),
        _ => StoreError::Database(e.to_string()),
    }
}

/// Read one column.
fn col<T: rusqlite::types::FromSql>(row: &Row<'_>, idx: usize) -> Result<T, StoreError> {
    row.get(idx).map_err(db)
}

/// u64 values are stored bit-for-bit as SQLite's i64 (lossless round trip).
fn u64_to_sql(v: u64) -> i64 {
    v as i64
}

/// Inverse of [`u64_to_sql`].
pub(super) fn u64_from_sql(v: i64) -> u64 {
    v as u64
}

/// A list of keys as one JSON array, for `IN (SELECT value FROM json_each(?))`.
fn json_list(keys: &[&str]) -> Result<String, StoreError> {
    serde_json::to_string(keys).map_err(|e| StoreError::Decode(e.to_string()))
}

fn get_meta<T: rusqlite::types::FromSql>(
    conn: &Connection,
    key: &str,
) -> Result<Option<T>, StoreError> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut st| st.query_row([key], |r| r.get(0)).optional())
        .map_err(db)
}

fn set_meta<T: rusqlite::ToSql>(conn: &Connection, key: &str, value: T) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
        .and_then(|mut st| st.execute(params![key, value]))
        .map_err(db)?;
    Ok(())
}

/// All rows of a query, each decoded by `f`.
fn query_all<T, P: Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    mut f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut st = conn.prepare_cached(sql).map_err(db)?;
    let mut rows = st.query(params).map_err(db)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db)? {
        out.push(f(row)?);
    }
    Ok(out)
}

/// The first row of a query, decoded by `f`.
fn query_opt<T, P: Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut st = conn.prepare_cached(sql).map_err(db)?;
    let mut rows = st.query(params).map_err(db)?;
    match rows.next().map_err(db)? {
        Some(row) => f(row).map(Some),
        None => Ok(None),
    }
}

/// An inbound session (`s`) whose sender is not known as a member of its room (and that we
/// did not ask for: a forwarded key of unknown origin from an own device counts as ours).
const FROM_NON_MEMBER: &str = "NOT EXISTS (SELECT 1 FROM members m \
    WHERE m.room_id = s.room_id AND m.user_id = s.sender_user) \
    AND NOT EXISTS (SELECT 1 FROM key_requests k \
    WHERE k.room_id = s.room_id AND k.session_id = s.session_id)";

/// The columns [`device_from_row`] reads, in order.
const DEVICE_COLUMNS: &str = "user_id, device_id, curve25519, ed25519, algorithms, \
    display_name, keys_json, local_trust, deleted, trust_tag";

/// A device row ([`DEVICE_COLUMNS`]); with `cipher`, its tag is checked.
fn device_from_row(r: &Row<'_>, cipher: Option<&StoreCipher>) -> Result<DeviceRecord, StoreError> {
    let algorithms: String = col(r, 4)?;
    let local_trust: String = col(r, 7)?;
    let device = DeviceRecord {
        user_id: col(r, 0)?,
        device_id: col(r, 1)?,
        curve25519: col(r, 2)?,
        ed25519: col(r, 3)?,
        algorithms: serde_json::from_str(&algorithms)
            .map_err(|e| StoreError::Decode(format!("device algorithms: {e}")))?,
        display_name: col(r, 5)?,
        keys_json: col(r, 6)?,
        local_trust: LocalTrust::parse(&local_trust)
            .ok_or_else(|| StoreError::Decode("unknown device local_trust value".into()))?,
        deleted: col(r, 8)?,
    };
    if let Some(cipher) = cipher {
        let tag: Option<Vec<u8>> = col(r, 9)?;
        let tag = tag.ok_or_else(|| StoreError::Corrupted("device row without a tag".into()))?;
        cipher.verify_tag(&device_tag_parts(&device), &tag)?;
    }
    Ok(device)
}

/// What a device's tag covers: who it is, its keys, the user's decision and whether it was
/// removed (editing any of them in the file must not go unnoticed).
fn device_tag_parts(d: &DeviceRecord) -> [&[u8]; 7] {
    [
        b"device",
        d.user_id.as_bytes(),
        d.device_id.as_bytes(),
        d.curve25519.as_bytes(),
        d.ed25519.as_bytes(),
        d.local_trust.as_str().as_bytes(),
        if d.deleted { b"deleted" } else { b"live" },
    ]
}

/// `""` (how SQLite keeps an unknown value in a `NOT NULL` column) as `None`.
fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn room_from_row(r: &Row<'_>) -> Result<RoomRecord, StoreError> {
    Ok(RoomRecord {
        room_id: col(r, 0)?,
        encryption: col(r, 1)?,
        history_visibility: col(r, 2)?,
        members_synced: col(r, 3)?,
        own_membership: col(r, 4)?,
    })
}

// ---- associated data binding each ciphertext to its row ----

fn aad_canary() -> [&'static [u8]; 1] {
    [b"key_check"]
}

fn aad_account<'a>(user_id: &'a str, device_id: &'a str) -> [&'a [u8]; 3] {
    [b"account", user_id.as_bytes(), device_id.as_bytes()]
}

fn aad_olm<'a>(sender_key: &'a str, session_id: &'a str) -> [&'a [u8]; 3] {
    [b"olm_session", sender_key.as_bytes(), session_id.as_bytes()]
}

/// Binds also who sent the session: editing the sender columns invalidates the pickle.
fn aad_inbound<'a>(s: &'a InboundGroupSessionRecord, index: &'a [u8; 4]) -> [&'a [u8]; 8] {
    [
        b"inbound_group_session",
        s.room_id.as_bytes(),
        s.session_id.as_bytes(),
        s.sender_key.as_bytes(),
        s.signing_key.as_bytes(),
        s.sender_user.as_deref().unwrap_or_default().as_bytes(),
        s.sender_device.as_deref().unwrap_or_default().as_bytes(),
        index,
    ]
}

/// Binds also the rotation state (creation time, message count) and the recipient journal:
/// editing them would keep a session in use longer or hide who has it.
fn aad_outbound<'a>(
    room_id: &'a str,
    session_id: &'a str,
    created_ms: &'a [u8; 8],
    message_count: &'a [u8; 8],
    shared_with_json: &'a str,
) -> [&'a [u8]; 6] {
    [
        b"outbound_group_session",
        room_id.as_bytes(),
        session_id.as_bytes(),
        created_ms,
        message_count,
        shared_with_json.as_bytes(),
    ]
}

fn aad_queued_send<'a>(txn_id: &'a str, room_id: &'a str) -> [&'a [u8]; 3] {
    [b"queued_send", txn_id.as_bytes(), room_id.as_bytes()]
}

fn aad_secret_value(key: &str) -> [&[u8]; 2] {
    [b"secret_value", key.as_bytes()]
}
