//! `crypto_lease`: the one row of the cross-process lease on the crypto state (see
//! `store/lease.rs`). Taken and given back on a connection of its own that does not fsync
//! (a lease lost in a power cut only expires); checked and renewed inside the transaction
//! of each fenced write.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::sql::{db, u64_from_sql, u64_to_sql};
use crate::store::{LeaseAttempt, LeaseFence, LeaseRow, StoreError};

fn read(conn: &Connection) -> Result<LeaseRow, StoreError> {
    let row = conn
        .prepare_cached("SELECT holder, token, expires_ms FROM crypto_lease WHERE id = 0")
        .and_then(|mut st| {
            st.query_row([], |r| {
                Ok(LeaseRow {
                    holder: r.get(0)?,
                    token: u64_from_sql(r.get(1)?),
                    expires_ms: u64_from_sql(r.get(2)?),
                })
            })
            .optional()
        })
        .map_err(db)?;
    Ok(row.unwrap_or_default())
}

fn write(conn: &Connection, row: &LeaseRow) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO crypto_lease (id, holder, token, expires_ms)
         VALUES (0, ?1, ?2, ?3)",
    )
    .and_then(|mut st| {
        st.execute(params![
            row.holder,
            u64_to_sql(row.token),
            u64_to_sql(row.expires_ms)
        ])
    })
    .map_err(db)?;
    Ok(())
}

/// Take (or keep) the lease for `holder`, in a transaction of its own.
pub(super) fn acquire(
    conn: &mut Connection,
    holder: &str,
    now_ms: u64,
    until_ms: u64,
) -> Result<LeaseAttempt, StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)?;
    let attempt = match read(&tx)?.acquire(holder, now_ms, until_ms) {
        Ok(row) => {
            write(&tx, &row)?;
            LeaseAttempt::Acquired { token: row.token }
        }
        Err(held) => held,
    };
    tx.commit().map_err(db)?;
    Ok(attempt)
}

/// Give the lease back if `holder` has it.
pub(super) fn release(conn: &mut Connection, holder: &str) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)?;
    let row = read(&tx)?;
    if row.holder == holder {
        write(&tx, &row.released(holder))?;
    }
    tx.commit().map_err(db)
}

/// Inside a write's transaction: refuse it unless the lease is still `fence`'s; renew it.
pub(super) fn check(tx: &Transaction<'_>, fence: &LeaseFence) -> Result<(), StoreError> {
    let row = read(tx)?.fenced(fence).ok_or(StoreError::LeaseLost)?;
    write(tx, &row)
}
