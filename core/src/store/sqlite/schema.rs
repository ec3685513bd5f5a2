//! Opening connections, schema migrations and the store key check.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::super::StoreError;
use super::super::cipher::{KdfParams, StoreCipher, StoreKey};
use super::aad_canary;
use super::sql::{db, get_meta, set_meta};

/// How long a connection waits for a lock held by another connection or process.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Plaintext of the key-check value saved at creation.
const CANARY: &[u8] = b"newt store key check v1";

/// Schema migrations; entry `i` brings the schema from version `i` to `i + 1`. Each one runs
/// in its own transaction together with the `user_version` bump. Never edit an entry that was
/// released; append a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE meta (
        key TEXT PRIMARY KEY NOT NULL,
        value
    ) WITHOUT ROWID;
    CREATE TABLE account (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        pickle BLOB NOT NULL,
        device_keys_uploaded INTEGER NOT NULL,
        server_one_time_key_count INTEGER NOT NULL,
        fallback_key_created_ms INTEGER NOT NULL
    );
    CREATE TABLE olm_sessions (
        sender_key TEXT NOT NULL,
        session_id TEXT NOT NULL,
        pickle BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        last_used_ms INTEGER NOT NULL,
        PRIMARY KEY (sender_key, session_id)
    ) WITHOUT ROWID;
    CREATE TABLE inbound_group_sessions (
        room_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        sender_key TEXT NOT NULL,
        signing_key TEXT NOT NULL,
        sender_user TEXT NOT NULL,
        sender_device TEXT NOT NULL,
        pickle BLOB NOT NULL,
        first_known_index INTEGER NOT NULL,
        PRIMARY KEY (room_id, session_id)
    );
    CREATE TABLE outbound_group_sessions (
        room_id TEXT PRIMARY KEY NOT NULL,
        session_id TEXT NOT NULL,
        pickle BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        message_count INTEGER NOT NULL,
        shared_with TEXT NOT NULL
    );
    CREATE TABLE devices (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        curve25519 TEXT NOT NULL,
        ed25519 TEXT NOT NULL,
        algorithms TEXT NOT NULL,
        display_name TEXT,
        keys_json TEXT NOT NULL,
        local_trust TEXT NOT NULL,
        deleted INTEGER NOT NULL,
        PRIMARY KEY (user_id, device_id)
    );
    CREATE INDEX devices_by_curve25519 ON devices (curve25519);
    CREATE TABLE tracked_users (
        user_id TEXT PRIMARY KEY NOT NULL,
        outdated INTEGER NOT NULL,
        sequence INTEGER NOT NULL
    );
    CREATE TABLE megolm_indices (
        sender_key TEXT NOT NULL,
        session_id TEXT NOT NULL,
        message_index INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        origin_ts INTEGER NOT NULL,
        PRIMARY KEY (sender_key, session_id, message_index)
    ) WITHOUT ROWID;
    CREATE TABLE rooms (
        room_id TEXT PRIMARY KEY NOT NULL,
        encryption TEXT,
        history_visibility TEXT,
        members_synced INTEGER NOT NULL,
        own_membership TEXT
    );
    CREATE TABLE members (
        room_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        membership TEXT NOT NULL,
        PRIMARY KEY (room_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_user ON members (user_id, room_id);
    CREATE TABLE pending_to_device (
        seq INTEGER PRIMARY KEY,
        txn_id TEXT NOT NULL UNIQUE,
        event_type TEXT NOT NULL,
        messages_json TEXT NOT NULL
    );
    CREATE TABLE plain_values (
        key TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    );
    CREATE TABLE secret_values (
        key TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL
    );",
    // 2: four tracking states instead of an `outdated` flag. Version 1 stored users
    // who left as not outdated too, so every user is queried once again.
    "ALTER TABLE tracked_users ADD COLUMN state TEXT NOT NULL DEFAULT 'pending';
    ALTER TABLE tracked_users DROP COLUMN outdated;",
    // 3: undecryptable events kept for late keys across restarts.
    "CREATE TABLE undecryptable_events (
        seq INTEGER PRIMARY KEY,
        room_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        event_json TEXT NOT NULL,
        UNIQUE (room_id, event_id)
    );
    CREATE INDEX undecryptable_by_session ON undecryptable_events (room_id, session_id);",
    // 4: the send queue (content encrypted with the store key).
    "CREATE TABLE send_queue (
        seq INTEGER PRIMARY KEY,
        txn_id TEXT NOT NULL UNIQUE,
        room_id TEXT NOT NULL,
        content BLOB NOT NULL
    );",
    // 5: withheld notices and key requests get tables of their own (bounded, oldest
    // first); a device's trust decision is bound to its row by a tag (filled in by
    // `migrate_data`, which also re-binds outbound sessions and moves the sharing setting).
    "CREATE TABLE withheld_notices (
        seq INTEGER PRIMARY KEY,
        room_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        sender_key TEXT NOT NULL,
        code TEXT NOT NULL,
        reason TEXT,
        UNIQUE (room_id, session_id, sender)
    );
    CREATE TABLE key_requests (
        seq INTEGER PRIMARY KEY,
        room_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        UNIQUE (room_id, session_id)
    );
    CREATE TEMP TABLE split_keys AS
        SELECT key, value, substr(key, instr(key, '|') + 1) AS rest FROM plain_values
        WHERE key LIKE 'withheld|%|%' OR key LIKE 'keyreq|%|%';
    CREATE TEMP TABLE split_ids AS
        SELECT key, value, substr(head, 1, length(head) - 1) AS room_id,
            substr(rest, length(head) + 1) AS session_id
        FROM (SELECT key, value, rest, rtrim(rest, replace(rest, '|', '')) AS head
              FROM split_keys);
    INSERT OR IGNORE INTO withheld_notices (room_id, session_id, sender, sender_key, code, reason)
        SELECT room_id, session_id, coalesce(json_extract(value, '$.sender'), ''), '',
            coalesce(json_extract(value, '$.code'), ''), json_extract(value, '$.reason')
        FROM split_ids WHERE key LIKE 'withheld|%' AND json_valid(value)
            AND room_id != '' AND session_id != '';
    INSERT OR IGNORE INTO key_requests (room_id, session_id, request_id)
        SELECT room_id, session_id, value FROM split_ids
        WHERE key LIKE 'keyreq|%' AND room_id != '' AND session_id != '';
    DELETE FROM plain_values WHERE key IN (SELECT key FROM split_keys);
    DROP TABLE split_ids;
    DROP TABLE split_keys;
    ALTER TABLE devices ADD COLUMN trust_tag BLOB;
    ALTER TABLE pending_to_device ADD COLUMN room_id TEXT;
    ALTER TABLE pending_to_device ADD COLUMN session_id TEXT;",
    // 6: the keys kept for devices sent `m.no_olm` (moved out of `secret_values` by
    // `migrate_data`: they must be re-encrypted for their rows) and the unwedge times (out
    // of `plain_values`, those that parse) get tables of their own.
    "CREATE TABLE no_olm_room_keys (
        room_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        message_index INTEGER NOT NULL,
        session_key BLOB NOT NULL,
        PRIMARY KEY (room_id, session_id, message_index)
    ) WITHOUT ROWID;
    CREATE TABLE unwedged_devices (
        curve25519 TEXT PRIMARY KEY NOT NULL,
        unwedged_ms INTEGER NOT NULL
    );
    CREATE INDEX unwedged_by_time ON unwedged_devices (unwedged_ms);
    INSERT OR IGNORE INTO unwedged_devices (curve25519, unwedged_ms)
        SELECT substr(key, 9), CAST(value AS INTEGER) FROM plain_values
        WHERE key GLOB 'unwedge|?*' AND length(value) BETWEEN 1 AND 18
            AND value NOT GLOB '*[^0-9]*';
    DELETE FROM plain_values
        WHERE key IN (SELECT 'unwedge|' || curve25519 FROM unwedged_devices);",
    // 6 -> 7: data only (`migrate_7`: rows holding ids that do not parse are removed).
    "",
    // 8: sender data of inbound sessions (rows stored before read as legacy with an unknown
    // device, retried at once by the background retry), and users' cross-signing
    // identities.
    "ALTER TABLE inbound_group_sessions ADD COLUMN sender_trust TEXT NOT NULL
        DEFAULT 'unknown_device';
    ALTER TABLE inbound_group_sessions ADD COLUMN sender_data TEXT;
    ALTER TABLE inbound_group_sessions ADD COLUMN sender_data_tag BLOB;
    ALTER TABLE inbound_group_sessions ADD COLUMN sender_retry_ms INTEGER;
    UPDATE inbound_group_sessions SET sender_retry_ms = 0 WHERE sender_user != '';
    CREATE INDEX inbound_by_sender_trust ON inbound_group_sessions (sender_user, sender_trust);
    CREATE INDEX inbound_by_sender_retry ON inbound_group_sessions (sender_retry_ms)
        WHERE sender_retry_ms IS NOT NULL;
    CREATE TABLE user_identities (
        user_id TEXT PRIMARY KEY NOT NULL,
        identity TEXT NOT NULL,
        tag BLOB NOT NULL
    );",
    // 9: the cross-process lease on the crypto state (one row), and what a notification
    // extension hands over to the app (digests of the to-device events it decrypted, the
    // events it left for the app).
    "CREATE TABLE crypto_lease (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        holder TEXT NOT NULL,
        token INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    CREATE TABLE consumed_to_device (digest TEXT PRIMARY KEY NOT NULL);
    CREATE TABLE deferred_to_device (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event TEXT NOT NULL
    );",
    // 10: the send queue stores each message's stage and the type of what it holds, bound
    // to the content (`migrate_10` re-encrypts the rows queued before).
    "ALTER TABLE send_queue ADD COLUMN stage TEXT NOT NULL DEFAULT 'queued';
    ALTER TABLE send_queue ADD COLUMN event_type TEXT NOT NULL DEFAULT 'm.room.message';",
    // 11: a queued message can be stuck (with a reason) until the app retries it, and a
    // ready ciphertext keeps the app's content for the local echo (encrypted, bound to the
    // row).
    "ALTER TABLE send_queue ADD COLUMN stuck TEXT;
    ALTER TABLE send_queue ADD COLUMN echo BLOB;
    CREATE TABLE sent_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        txn_id TEXT NOT NULL UNIQUE,
        event_id TEXT NOT NULL
    );",
    // 12: inbound sessions the user imported (key export, backup) are outside the quotas;
    // which sessions are in the server-side backup.
    "ALTER TABLE inbound_group_sessions ADD COLUMN imported INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inbound_group_sessions ADD COLUMN backed_up INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX inbound_to_back_up ON inbound_group_sessions (room_id, session_id)
        WHERE backed_up = 0;",
];

/// Keys of the `meta` table.
pub(super) mod meta {
    pub(in super::super) const GENERATION: &str = "generation";
    pub(in super::super) const SYNC_TOKEN: &str = "sync_token";
    pub(in super::super) const KDF_SALT: &str = "kdf_salt";
    pub(in super::super) const KDF_ROUNDS: &str = "kdf_rounds";
    pub(in super::super) const CANARY: &str = "key_check";
}

/// Open one connection with the store's settings.
pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "foreign_keys", true).map_err(db)?;
    // A no-op (no write) when the file is already in WAL mode.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(db)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Database(format!(
            "could not enable WAL mode (journal mode is {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db)?;
    Ok(conn)
}

/// The connection the lease is taken and given back on: its commits are not fsynced (a
/// lease lost with the power only expires; the writes it guards are fsynced as always).
pub(super) fn open_lease_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = open_connection(path)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(db)?;
    Ok(conn)
}

/// `PRAGMA user_version`, refusing versions newer than this build knows.
pub(super) fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db)?;
    let supported = MIGRATIONS.len() as i64;
    if found > supported || found < 0 {
        return Err(StoreError::UnsupportedSchema { found, supported });
    }
    Ok(found)
}

/// Apply all pending migrations, each in its own transaction. `cipher` is the store's cipher
/// when the store exists already (checked against the key); migrations that rewrite secrets
/// need it. Returns the cipher if this call created the store (migration 1 also saves the
/// key-derivation parameters and key check).
pub(super) fn migrate(
    conn: &mut Connection,
    key: &StoreKey,
    cipher: Option<&StoreCipher>,
) -> Result<Option<StoreCipher>, StoreError> {
    let mut created: Option<StoreCipher> = None;
    let mut loaded: Option<StoreCipher> = None;
    while schema_version(conn)? < MIGRATIONS.len() as i64 {
        // Stretching the passphrase happens before taking the write lock.
        let fresh = if schema_version(conn)? == 0 {
            let kdf = KdfParams::generate();
            let cipher = StoreCipher::new(key, &kdf)?;
            Some((kdf, cipher))
        } else {
            None
        };
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        // Re-read under the write lock: another process may have migrated meanwhile.
        let version = schema_version(&tx)?;
        let Some(sql) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            break;
        };
        tx.execute_batch(sql).map_err(db)?;
        if version == 0 {
            let Some((kdf, cipher)) = fresh else {
                // Another process reset the file under us; start over.
                continue;
            };
            let canary = cipher.encrypt(&aad_canary(), CANARY)?;
            set_meta(&tx, meta::KDF_SALT, &kdf.salt)?;
            set_meta(&tx, meta::KDF_ROUNDS, i64::from(kdf.rounds))?;
            set_meta(&tx, meta::CANARY, &canary)?;
            set_meta(&tx, meta::GENERATION, 0i64)?;
            created = Some(cipher);
        }
        let cipher = match (cipher, created.as_ref()) {
            (Some(c), _) | (None, Some(c)) => c,
            // Another process created the store between our version check and now.
            (None, None) => loaded.insert(load_cipher(&tx, key)?),
        };
        migrate_data(&tx, version + 1, cipher)?;
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(db)?;
        tx.commit().map_err(db)?;
    }
    Ok(created)
}

/// The part of migration `to` that needs the cipher (rows re-encrypted or tagged).
fn migrate_data(
    tx: &rusqlite::Transaction<'_>,
    to: i64,
    cipher: &StoreCipher,
) -> Result<(), StoreError> {
    match to {
        5 => {
            // Tagging reads every device: one with an invalid user id would stop it.
            super::migrate_7::drop_rows_with_invalid_ids(tx)?;
            super::migrate_5::tag_devices(tx, cipher)?;
            super::migrate_5::rebind_outbound_sessions(tx, cipher)?;
            super::migrate_5::protect_sharing_setting(tx, cipher)
        }
        6 => super::migrate_6::move_no_olm_keys(tx, cipher),
        7 => super::migrate_7::drop_rows_with_invalid_ids(tx),
        10 => super::send_queue::bind_stages(tx, cipher),
        _ => Ok(()),
    }
}

/// Derive the cipher from the saved parameters and check it against the saved key check.
/// Only reads.
pub(super) fn load_cipher(conn: &Connection, key: &StoreKey) -> Result<StoreCipher, StoreError> {
    let missing = |what: &str| StoreError::Corrupted(format!("store key {what} missing"));
    let salt: Vec<u8> = get_meta(conn, meta::KDF_SALT)?.ok_or_else(|| missing("salt"))?;
    let rounds: i64 = get_meta(conn, meta::KDF_ROUNDS)?.ok_or_else(|| missing("parameters"))?;
    let canary: Vec<u8> = get_meta(conn, meta::CANARY)?.ok_or_else(|| missing("check"))?;
    let rounds = u32::try_from(rounds)
        .map_err(|_| StoreError::Corrupted("key stretching round count out of range".into()))?;
    let cipher = StoreCipher::new(key, &KdfParams { salt, rounds })?;
    match cipher.decrypt(&aad_canary(), &canary) {
        Ok(plain) if plain.as_slice() == CANARY => Ok(cipher),
        _ => Err(StoreError::WrongKey),
    }
}
