//! Small values by key: `plain_values` (in clear), `secret_values` (encrypted, bound to
//! their key) and the sync token (in `meta`).

use rusqlite::{Connection, Transaction};

use super::super::cipher::StoreCipher;
use super::super::{Changes, SecretBlob, StoreError};
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

/// Plain and secret values (not the sync token: it is written last).
pub(super) fn write(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &Changes,
) -> Result<(), StoreError> {
    let values: Vec<_> = changes.values.iter().collect();
    each(
        tx,
        "INSERT OR REPLACE INTO plain_values (key, value) VALUES (?1, ?2)",
        &values,
        |(k, v)| Ok([(*k).clone(), (*v).clone()]),
    )?;
    let secrets: Vec<_> = changes.secret_values.iter().collect();
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
