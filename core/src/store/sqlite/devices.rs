//! The `devices` table (each row's keys and trust decision bound to it by a tag) and the
//! device-list tracking state of users (`tracked_users`).

use ruma::UserId;
use rusqlite::{Connection, Row, Transaction, params};

use super::super::cipher::StoreCipher;
use super::super::{
    CryptoChanges, DeviceRecord, LocalTrust, StoreError, TrackedUser, TrackingState,
};
use super::sql::{
    col, db, each, json_list, parsed, query_all, query_opt, u64_from_sql, u64_to_sql,
};

/// The columns [`device_from_row`] reads, in order.
const DEVICE_COLUMNS: &str = "user_id, device_id, curve25519, ed25519, algorithms, \
    display_name, keys_json, local_trust, deleted, trust_tag";

/// All devices of these users, sorted by user and device id.
pub(super) fn of_users(
    conn: &Connection,
    c: &StoreCipher,
    user_ids: &[&UserId],
) -> Result<Vec<DeviceRecord>, StoreError> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    query_all(
        conn,
        &format!(
            "SELECT {DEVICE_COLUMNS} FROM devices
             WHERE user_id IN (SELECT value FROM json_each(?1)) ORDER BY user_id, device_id"
        ),
        [json_list(user_ids)?],
        |r| device_from_row(r, Some(c)),
    )
}

/// The device of `user_id` with this key.
pub(super) fn by_curve25519(
    conn: &Connection,
    c: &StoreCipher,
    user_id: &UserId,
    curve25519: &str,
) -> Result<Option<DeviceRecord>, StoreError> {
    // One device per key is kept; older stores may hold more: a live one first.
    query_opt(
        conn,
        &format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE curve25519 = ?2 AND user_id = ?1
             ORDER BY deleted, device_id LIMIT 1"
        ),
        [user_id.as_str(), curve25519],
        |r| device_from_row(r, Some(c)),
    )
}

/// Every device with one of these keys, sorted by user and device id.
pub(super) fn with_curve25519(
    conn: &Connection,
    c: &StoreCipher,
    keys: &[&str],
) -> Result<Vec<DeviceRecord>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    query_all(
        conn,
        &format!(
            "SELECT {DEVICE_COLUMNS} FROM devices
             WHERE curve25519 IN (SELECT value FROM json_each(?1)) ORDER BY user_id, device_id"
        ),
        [json_list(keys)?],
        |r| device_from_row(r, Some(c)),
    )
}

pub(super) fn tracked_users(conn: &Connection) -> Result<Vec<TrackedUser>, StoreError> {
    query_all(
        conn,
        "SELECT user_id, state, sequence FROM tracked_users ORDER BY user_id",
        [],
        |r| {
            let state: String = col(r, 1)?;
            Ok(TrackedUser {
                user_id: parsed(r, 0)?,
                state: TrackingState::parse(&state)
                    .ok_or_else(|| StoreError::Decode("unknown tracking state".into()))?,
                sequence: u64_from_sql(col(r, 2)?),
            })
        },
    )
}

/// Devices, then tracking states.
pub(super) fn write(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &CryptoChanges,
) -> Result<(), StoreError> {
    for d in &changes.devices {
        write_device(tx, c, d)?;
    }
    each(
        tx,
        "INSERT OR REPLACE INTO tracked_users (user_id, state, sequence) VALUES (?1, ?2, ?3)",
        &changes.tracked_users,
        |u| Ok((u.user_id.as_str(), u.state.as_str(), u64_to_sql(u.sequence))),
    )
}

/// One device; its trust decision and keys are bound to the row by a tag.
fn write_device(tx: &Transaction<'_>, c: &StoreCipher, d: &DeviceRecord) -> Result<(), StoreError> {
    let algorithms = serde_json::to_string(&d.algorithms)
        .map_err(|e| StoreError::Decode(format!("algorithms: {e}")))?;
    let tag = c.tag(&device_tag_parts(d))?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO devices (user_id, device_id, curve25519, ed25519,
            algorithms, display_name, keys_json, local_trust, deleted, trust_tag)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .and_then(|mut st| {
        st.execute(params![
            d.user_id.as_str(),
            d.device_id.as_str(),
            d.curve25519,
            d.ed25519,
            algorithms,
            d.display_name,
            d.keys_json,
            d.local_trust.as_str(),
            d.deleted,
            tag,
        ])
    })
    .map_err(db)?;
    Ok(())
}

/// A device row ([`DEVICE_COLUMNS`]); with `cipher`, its tag is checked.
pub(super) fn device_from_row(
    r: &Row<'_>,
    cipher: Option<&StoreCipher>,
) -> Result<DeviceRecord, StoreError> {
    let algorithms: String = col(r, 4)?;
    let local_trust: String = col(r, 7)?;
    let device = DeviceRecord {
        user_id: parsed(r, 0)?,
        device_id: parsed(r, 1)?,
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
pub(super) fn device_tag_parts(d: &DeviceRecord) -> [&[u8]; 7] {
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
