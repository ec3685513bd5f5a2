//! The data part of schema migration 5: values a local attacker could edit to loosen a check
//! are bound to their rows (issue 8, finding 10).

use rusqlite::{Transaction, params};

use super::super::DeviceRecord;
use super::super::StoreError;
use super::super::cipher::StoreCipher;
use super::devices::{device_from_row, device_tag_parts};
use super::megolm::aad_outbound;
use super::sql::{col, db, query_all, query_opt, u64_from_sql};
use super::values::aad_secret_value;

/// Key of the "share room keys with verified devices only" setting; version 4 kept it in
/// clear in `plain_values`, version 5 as a secret value (encrypted and bound to its key).
pub(crate) const VERIFIED_ONLY_KEY: &str = "setting|share_with_verified_only";

/// Tag every device row (its keys, trust decision and deletion flag).
pub(super) fn tag_devices(tx: &Transaction<'_>, cipher: &StoreCipher) -> Result<(), StoreError> {
    let devices: Vec<DeviceRecord> = query_all(
        tx,
        "SELECT user_id, device_id, curve25519, ed25519, algorithms, display_name,
            keys_json, local_trust, deleted, NULL FROM devices",
        [],
        |r| device_from_row(r, None),
    )?;
    let mut st = tx
        .prepare("UPDATE devices SET trust_tag = ?3 WHERE user_id = ?1 AND device_id = ?2")
        .map_err(db)?;
    for d in &devices {
        let tag = cipher.tag(&device_tag_parts(d))?;
        st.execute(params![d.user_id.as_str(), d.device_id.as_str(), tag])
            .map_err(db)?;
    }
    Ok(())
}

/// Re-encrypt each outbound session's pickle with its creation time, message count and
/// recipient journal in the associated data.
pub(super) fn rebind_outbound_sessions(
    tx: &Transaction<'_>,
    cipher: &StoreCipher,
) -> Result<(), StoreError> {
    type Row = (String, String, Vec<u8>, i64, i64, String);
    let rows: Vec<Row> = query_all(
        tx,
        "SELECT room_id, session_id, pickle, created_ms, message_count, shared_with
         FROM outbound_group_sessions",
        [],
        |r| {
            Ok((
                col(r, 0)?,
                col(r, 1)?,
                col(r, 2)?,
                col(r, 3)?,
                col(r, 4)?,
                col(r, 5)?,
            ))
        },
    )?;
    let mut st = tx
        .prepare("UPDATE outbound_group_sessions SET pickle = ?2 WHERE room_id = ?1")
        .map_err(db)?;
    for (room_id, session_id, blob, created, count, shared_with) in rows {
        let old_aad: [&[u8]; 3] = [
            b"outbound_group_session",
            room_id.as_bytes(),
            session_id.as_bytes(),
        ];
        // A row that does not authenticate stays as it is: reading it fails as before.
        let Ok(pickle) = cipher.decrypt(&old_aad, &blob) else {
            continue;
        };
        let created = u64_from_sql(created).to_be_bytes();
        let count = u64_from_sql(count).to_be_bytes();
        let aad = aad_outbound(&room_id, &session_id, &created, &count, &shared_with);
        let blob = cipher.encrypt(&aad, &pickle)?;
        st.execute(params![room_id, blob]).map_err(db)?;
    }
    Ok(())
}

/// Move the verified-only sharing setting from the clear values to the secret ones.
pub(super) fn protect_sharing_setting(
    tx: &Transaction<'_>,
    cipher: &StoreCipher,
) -> Result<(), StoreError> {
    let value: Option<String> = query_opt(
        tx,
        "SELECT value FROM plain_values WHERE key = ?1",
        [VERIFIED_ONLY_KEY],
        |r| col(r, 0),
    )?;
    let Some(value) = value else {
        return Ok(());
    };
    let blob = cipher.encrypt(&aad_secret_value(VERIFIED_ONLY_KEY), value.as_bytes())?;
    tx.execute(
        "INSERT OR REPLACE INTO secret_values (key, value) VALUES (?1, ?2)",
        params![VERIFIED_ONLY_KEY, blob],
    )
    .map_err(db)?;
    tx.execute(
        "DELETE FROM plain_values WHERE key = ?1",
        [VERIFIED_ONLY_KEY],
    )
    .map_err(db)?;
    Ok(())
}
