//! Small values by key: `plain_values` (in clear), `secret_values` (encrypted, bound to
//! their key) and the sync token (in `meta`).

use ruma::RoomId;
use rusqlite::{Connection, Transaction};

use super::super::cipher::StoreCipher;
use super::super::{
    Changes, SecretBlob, SharingPolicy, StoreError, room_sharing_key, sharing_policy_of,
    sharing_policy_value,
};
use super::migrate_5::VERIFIED_ONLY_KEY;
use super::schema::meta;
use super::sql::{col, each, get_meta, query_opt, set_meta};

pub(super) fn plain(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    query_opt(
        conn,
        "SELECT value FROM plain_values WHERE key = ?1",
        [key],
        |r| col(r, 0),
    )
}

pub(super) fn secret(
    conn: &Connection,
    c: &StoreCipher,
    key: &str,
) -> Result<Option<SecretBlob>, StoreError> {
    query_opt(
        conn,
        "SELECT value FROM secret_values WHERE key = ?1",
        [key],
        |r| {
            let blob: Vec<u8> = col(r, 0)?;
            Ok(SecretBlob(c.decrypt(&aad_secret_value(key), &blob)?))
        },
    )
}

pub(super) fn sync_token(conn: &Connection) -> Result<Option<String>, StoreError> {
    get_meta(conn, meta::SYNC_TOKEN)
}

/// The global sharing policy: a secret value (encrypted and bound to its key, so that it
/// cannot be edited in the file), the default until set.
pub(super) fn sharing_policy(
    conn: &Connection,
    c: &StoreCipher,
) -> Result<SharingPolicy, StoreError> {
    let value = secret(conn, c, VERIFIED_ONLY_KEY)?;
    Ok(sharing_policy_of(value.as_ref()).unwrap_or_default())
}

/// A room's own sharing policy (a secret value too).
pub(super) fn room_sharing_policy(
    conn: &Connection,
    c: &StoreCipher,
    room_id: &RoomId,
) -> Result<Option<SharingPolicy>, StoreError> {
    let value = secret(conn, c, &room_sharing_key(room_id))?;
    Ok(sharing_policy_of(value.as_ref()))
}

/// One secret value, encrypted and bound to its key.
fn write_secret(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    key: &str,
    value: &SecretBlob,
) -> Result<(), StoreError> {
    let blob = c.encrypt(&aad_secret_value(key), value.as_bytes())?;
    tx.prepare_cached("INSERT OR REPLACE INTO secret_values (key, value) VALUES (?1, ?2)")
        .and_then(|mut st| st.execute(rusqlite::params![key, blob]))
        .map_err(super::sql::db)?;
    Ok(())
}

/// Plain and secret values, and the machine's sharing setting (not the sync token: it is
/// written last).
pub(super) fn write(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &Changes,
) -> Result<(), StoreError> {
    if let Some(policy) = changes.crypto.sharing_policy {
        write_secret(tx, c, VERIFIED_ONLY_KEY, &sharing_policy_value(policy))?;
    }
    for (room_id, policy) in &changes.crypto.room_sharing_policies {
        let key = room_sharing_key(room_id);
        match policy {
            Some(policy) => write_secret(tx, c, &key, &sharing_policy_value(*policy))?,
            None => {
                tx.prepare_cached("DELETE FROM secret_values WHERE key = ?1")
                    .and_then(|mut st| st.execute([&key]))
                    .map_err(super::sql::db)?;
            }
        }
    }
    let values: Vec<_> = changes.client.values.iter().collect();
    each(
        tx,
        "INSERT OR REPLACE INTO plain_values (key, value) VALUES (?1, ?2)",
        &values,
        |(k, v)| Ok([(*k).clone(), (*v).clone()]),
    )?;
    let secrets: Vec<_> = changes.client.secret_values.iter().collect();
    each(
        tx,
        "INSERT OR REPLACE INTO secret_values (key, value) VALUES (?1, ?2)",
        &secrets,
        |(k, v)| {
            let blob = c.encrypt(&aad_secret_value(k), v.as_bytes())?;
            Ok(((*k).clone(), blob))
        },
    )
}

pub(super) fn write_sync_token(tx: &Transaction<'_>, token: &str) -> Result<(), StoreError> {
    set_meta(tx, meta::SYNC_TOKEN, token)
}

/// Binds a secret value to its key.
pub(super) fn aad_secret_value(key: &str) -> [&[u8]; 2] {
    [b"secret_value", key.as_bytes()]
}
