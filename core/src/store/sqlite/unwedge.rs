//! `unwedged_devices`: when we last replaced a wedged Olm session with a device (by its
//! Curve25519 key). Records that can no longer hold back an unwedging are forgotten, and
//! their number is bounded (oldest first).

use rusqlite::{Connection, Transaction};

use super::super::{CryptoChanges, StoreError, UnwedgeRecord, quota};
use super::sql::{col, count, db, each, limit, query_opt, u64_from_sql, u64_to_sql};

pub(super) fn read(
    conn: &Connection,
    curve25519: &str,
) -> Result<Option<UnwedgeRecord>, StoreError> {
    query_opt(
        conn,
        "SELECT curve25519, unwedged_ms FROM unwedged_devices WHERE curve25519 = ?1",
        [curve25519],
        |r| {
            Ok(UnwedgeRecord {
                curve25519: col(r, 0)?,
                unwedged_ms: u64_from_sql(col(r, 1)?),
            })
        },
    )
}

pub(super) fn count_all(conn: &Connection) -> Result<u64, StoreError> {
    count(conn, "SELECT count(*) FROM unwedged_devices", [])
}

/// The records of this batch (later ones replace earlier ones of the same key).
pub(super) fn write(tx: &Transaction<'_>, changes: &CryptoChanges) -> Result<(), StoreError> {
    each(
        tx,
        "INSERT OR REPLACE INTO unwedged_devices (curve25519, unwedged_ms) VALUES (?1, ?2)",
        &changes.unwedge_records,
        |u| Ok((u.curve25519.clone(), u64_to_sql(u.unwedged_ms))),
    )
}

/// When the batch wrote records: forget those more than
/// [`quota::UNWEDGE_RECORD_LIFETIME_MS`] older than the newest it wrote, then all but the
/// newest [`quota::MAX_UNWEDGE_RECORDS`].
pub(super) fn bound(tx: &Transaction<'_>, changes: &CryptoChanges) -> Result<(), StoreError> {
    let Some(newest) = changes.unwedge_records.iter().map(|u| u.unwedged_ms).max() else {
        return Ok(());
    };
    if let Some(cutoff) = newest.checked_sub(quota::UNWEDGE_RECORD_LIFETIME_MS) {
        tx.prepare_cached("DELETE FROM unwedged_devices WHERE unwedged_ms < ?1")
            .and_then(|mut st| st.execute([u64_to_sql(cutoff)]))
            .map_err(db)?;
    }
    tx.prepare_cached(
        "DELETE FROM unwedged_devices WHERE curve25519 IN (
            SELECT curve25519 FROM unwedged_devices
            ORDER BY unwedged_ms DESC, curve25519 DESC LIMIT -1 OFFSET ?1)",
    )
    .and_then(|mut st| st.execute([limit(quota::MAX_UNWEDGE_RECORDS)]))
    .map_err(db)?;
    Ok(())
}
