//! What a notification extension hands over to the app: `consumed_to_device` (digests of
//! the Olm-encrypted to-device events it decrypted, which the app skips when its sync
//! brings them again) and `deferred_to_device` (events it left for the app).

use rusqlite::{Connection, Transaction};

use super::super::{CryptoChanges, StoreError, quota};
use super::sql::{col, db, each, json_list, limit, query_all};

/// Which of `digests` are recorded.
pub(super) fn consumed(conn: &Connection, digests: &[&str]) -> Result<Vec<String>, StoreError> {
    if digests.is_empty() {
        return Ok(Vec::new());
    }
    query_all(
        conn,
        "SELECT digest FROM consumed_to_device WHERE digest IN (SELECT value FROM json_each(?1))",
        [json_list(digests)?],
        |r| col(r, 0),
    )
}

/// The deferred events, oldest first.
pub(super) fn deferred(conn: &Connection) -> Result<Vec<String>, StoreError> {
    query_all(
        conn,
        "SELECT event FROM deferred_to_device ORDER BY seq",
        [],
        |r| col(r, 0),
    )
}

pub(super) fn write(tx: &Transaction<'_>, changes: &CryptoChanges) -> Result<(), StoreError> {
    if changes.take_deferred_to_device {
        tx.execute("DELETE FROM deferred_to_device", [])
            .map_err(db)?;
    }
    each(
        tx,
        "INSERT OR IGNORE INTO consumed_to_device (digest) VALUES (?1)",
        &changes.consumed_to_device,
        |d| Ok([d.as_str()]),
    )?;
    each(
        tx,
        "DELETE FROM consumed_to_device WHERE digest = ?1",
        &changes.forgotten_to_device,
        |d| Ok([d.as_str()]),
    )?;
    each(
        tx,
        "INSERT INTO deferred_to_device (event) VALUES (?1)",
        &changes.deferred_to_device,
        |e| Ok([e.as_str()]),
    )?;
    bound(tx, changes)
}

/// The quotas: the oldest records go first.
fn bound(tx: &Transaction<'_>, changes: &CryptoChanges) -> Result<(), StoreError> {
    if !changes.consumed_to_device.is_empty() {
        tx.execute(
            "DELETE FROM consumed_to_device WHERE rowid IN (
                SELECT rowid FROM consumed_to_device ORDER BY rowid DESC LIMIT -1 OFFSET ?1)",
            [limit(quota::MAX_CONSUMED_TO_DEVICE)],
        )
        .map_err(db)?;
    }
    if !changes.deferred_to_device.is_empty() {
        tx.execute(
            "DELETE FROM deferred_to_device WHERE seq IN (
                SELECT seq FROM deferred_to_device ORDER BY seq DESC LIMIT -1 OFFSET ?1)",
            [limit(quota::MAX_DEFERRED_TO_DEVICE)],
        )
        .map_err(db)?;
    }
    Ok(())
}
