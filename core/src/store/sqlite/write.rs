//! Writing one [`Changes`] batch inside an open transaction: each table module writes its
//! records, then the [`quota`](crate::store::quota) limits are enforced and the generation
//! bumped.

use rusqlite::Transaction;

use super::super::cipher::StoreCipher;
use super::super::{Changes, StoreError};
use super::schema::meta;
use super::sql::{db, u64_from_sql};
use super::{
    account, devices, megolm, no_olm_keys, notices, olm_sessions, queues, quotas, rooms, unwedge,
    values,
};

/// Write every record of `changes`, enforce the quotas and bump the generation, all inside
/// `tx`. On error the caller drops `tx`, which rolls everything back.
pub(super) fn write_changes(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &Changes,
) -> Result<u64, StoreError> {
    if let Some(a) = &changes.account {
        account::write(tx, c, a)?;
    }
    olm_sessions::write(tx, c, changes)?;
    megolm::write(tx, c, changes)?;
    // After the outbound sessions: a replaced or discarded one takes its kept keys along.
    no_olm_keys::write(tx, c, changes)?;
    unwedge::write(tx, changes)?;
    devices::write(tx, c, changes)?;
    rooms::write(tx, changes)?;
    queues::write(tx, c, changes)?;
    notices::write(tx, changes)?;
    values::write(tx, c, changes)?;
    if let Some(token) = &changes.sync_token {
        values::write_sync_token(tx, token)?;
    }
    quotas::enforce(tx, changes)?;
    let generation: i64 = tx
        .prepare_cached("UPDATE meta SET value = value + 1 WHERE key = ?1 RETURNING value")
        .and_then(|mut st| st.query_row([meta::GENERATION], |row| row.get(0)))
        .map_err(db)?;
    Ok(u64_from_sql(generation))
}
