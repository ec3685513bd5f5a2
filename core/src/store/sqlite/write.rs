//! Writing one [`Changes`] batch inside an open transaction: each table module writes its
//! records, then the [`quota`](crate::store::quota) limits are enforced and the generation
//! bumped.

use rusqlite::Transaction;

use super::super::cipher::StoreCipher;
use super::super::{Changes, StoreError};
use super::schema::meta;
use super::sql::{db, u64_from_sql};
use super::{
    account, devices, handoff, kept_events, megolm, no_olm_keys, notices, olm_sessions, quotas,
    rooms, send_queue, to_device, trust, unwedge, values,
};

/// Write every record of `changes`, enforce the quotas and bump the generation, all inside
/// `tx`. On error the caller drops `tx`, which rolls everything back.
pub(super) fn write_changes(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &Changes,
) -> Result<u64, StoreError> {
    if let Some(a) = &changes.crypto.account {
        account::write(tx, c, a)?;
    }
    let (crypto, client) = (&changes.crypto, &changes.client);
    olm_sessions::write(tx, c, crypto)?;
    megolm::write(tx, c, crypto)?;
    trust::write(tx, c, crypto)?;
    // After the outbound sessions: a replaced or discarded one takes its kept keys along.
    no_olm_keys::write(tx, c, crypto)?;
    unwedge::write(tx, crypto)?;
    devices::write(tx, c, crypto)?;
    to_device::write(tx, crypto)?;
    handoff::write(tx, crypto)?;
    notices::write(tx, crypto)?;
    rooms::write(tx, client)?;
    send_queue::write(tx, c, client)?;
    kept_events::write(tx, client)?;
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
