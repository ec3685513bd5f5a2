//! The `account` table: the own Olm account (one row).

use ruma::{OwnedDeviceId, OwnedUserId};
use rusqlite::{Connection, Transaction, params};

use super::super::cipher::StoreCipher;
use super::super::{AccountRecord, SecretBlob, StoreError};
use super::sql::{col, db, parsed, query_opt, u64_from_sql, u64_to_sql};

pub(super) fn read(
    conn: &Connection,
    c: &StoreCipher,
) -> Result<Option<AccountRecord>, StoreError> {
    query_opt(
        conn,
        "SELECT user_id, device_id, pickle, device_keys_uploaded,
            server_one_time_key_count, fallback_key_created_ms
         FROM account WHERE id = 0",
        [],
        |r| {
            let user_id: OwnedUserId = parsed(r, 0)?;
            let device_id: OwnedDeviceId = parsed(r, 1)?;
            let blob: Vec<u8> = col(r, 2)?;
            let pickle = c.decrypt(&aad(user_id.as_str(), device_id.as_str()), &blob)?;
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

pub(super) fn write(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    a: &AccountRecord,
) -> Result<(), StoreError> {
    let pickle = c.encrypt(
        &aad(a.user_id.as_str(), a.device_id.as_str()),
        a.pickle.as_bytes(),
    )?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO account (id, user_id, device_id, pickle,
            device_keys_uploaded, server_one_time_key_count, fallback_key_created_ms)
         VALUES (0, ?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut st| {
        st.execute(params![
            a.user_id.as_str(),
            a.device_id.as_str(),
            pickle,
            a.device_keys_uploaded,
            u64_to_sql(a.server_one_time_key_count),
            u64_to_sql(a.fallback_key_created_ms),
        ])
    })
    .map_err(db)?;
    Ok(())
}

/// Binds the pickle to the account it belongs to.
fn aad<'a>(user_id: &'a str, device_id: &'a str) -> [&'a [u8]; 3] {
    [b"account", user_id.as_bytes(), device_id.as_bytes()]
}
