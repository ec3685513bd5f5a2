//! The [`quota`] limits, enforced in the writing transaction, and the counts of the bounded
//! records.

use rusqlite::{Connection, Transaction, params};

use super::super::{Changes, StoreCounts, StoreError, quota};
use super::megolm::{self, FROM_NON_MEMBER};
use super::sql::{count, db, limit};
use super::{no_olm_keys, olm_sessions, rooms, unwedge};

/// The [`quota`] limits, checked only for the tables this batch wrote to.
pub(super) fn enforce(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    if !changes.crypto.olm_sessions.is_empty() {
        olm_sessions::bound(tx, &changes.crypto)?;
    }
    if !changes.client.rooms.is_empty() {
        // Rooms joined once keep their records (their first encryption setting stays).
        keep_newest(tx, "rooms", "rowid", rooms::INVITE, quota::MAX_INVITES)?;
    }
    megolm::bound_sessions_per_sender(tx, &changes.crypto)?;
    if megolm::adds_sessions_of_non_members(tx, &changes.crypto)?
        || !changes.client.replaced_member_lists.is_empty()
    {
        let max = quota::MAX_SESSIONS_FROM_NON_MEMBERS;
        keep_newest(
            tx,
            "inbound_group_sessions s",
            "rowid",
            FROM_NON_MEMBER,
            max,
        )?;
    }
    // One room (or sender) filling these tables evicts its own records first.
    if !changes.client.undecryptable_events.is_empty() {
        let max = quota::MAX_UNDECRYPTABLE_EVENTS;
        keep_fair(tx, "undecryptable_events", "room_id", max)?;
    }
    if !changes.crypto.withheld_notices.is_empty() {
        keep_fair(
            tx,
            "withheld_notices",
            "sender",
            quota::MAX_WITHHELD_NOTICES,
        )?;
    }
    if !changes.crypto.key_requests.is_empty() {
        keep_fair(tx, "key_requests", "room_id", quota::MAX_KEY_REQUESTS)?;
    }
    unwedge::bound(tx, &changes.crypto)
}

/// How many records of each bounded kind are kept.
pub(super) fn counts(conn: &Connection) -> Result<StoreCounts, StoreError> {
    let n = |sql: &str| count(conn, sql, []);
    Ok(StoreCounts {
        olm_sessions: n("SELECT count(*) FROM olm_sessions")?,
        olm_sessions_of_unknown_devices: n("SELECT count(*) FROM olm_sessions
             WHERE sender_key NOT IN (SELECT curve25519 FROM devices WHERE deleted = 0)")?,
        inbound_group_sessions: n("SELECT count(*) FROM inbound_group_sessions")?,
        inbound_sessions_from_non_members: n(&format!(
            "SELECT count(*) FROM inbound_group_sessions s WHERE {FROM_NON_MEMBER}"
        ))?,
        invites: n(&format!(
            "SELECT count(*) FROM rooms WHERE {}",
            rooms::INVITE
        ))?,
        withheld_notices: n("SELECT count(*) FROM withheld_notices")?,
        key_requests: n("SELECT count(*) FROM key_requests")?,
        undecryptable_events: n("SELECT count(*) FROM undecryptable_events")?,
        unwedge_records: unwedge::count_all(conn)?,
        no_olm_room_keys: no_olm_keys::count_all(conn)?,
    })
}

/// Keep the newest `max` rows of `table` that match `filter`, ordered by `order`.
fn keep_newest(
    tx: &Transaction<'_>,
    table: &str,
    order: &str,
    filter: &str,
    max: u64,
) -> Result<(), StoreError> {
    // `table` may carry an alias (`inbound_group_sessions s`) that `filter` uses.
    let name = table.split(' ').next().unwrap_or(table);
    let sql = format!(
        "DELETE FROM {name} WHERE {order} IN (
            SELECT {order} FROM {table} WHERE {filter} ORDER BY {order} DESC LIMIT -1 OFFSET ?1)"
    );
    tx.prepare_cached(&sql)
        .and_then(|mut st| st.execute([limit(max)]))
        .map_err(db)?;
    Ok(())
}

/// Keep at most `max` rows of `table` (ordered by `seq`), forgetting the oldest rows of the
/// biggest `group` first, down to the size of the next biggest.
fn keep_fair(tx: &Transaction<'_>, table: &str, group: &str, max: u64) -> Result<(), StoreError> {
    let max = limit(max);
    let count_sql = format!("SELECT count(*) FROM {table}");
    let groups_sql = format!(
        "SELECT {group}, count(*) AS n FROM {table} GROUP BY {group} ORDER BY n DESC, {group} LIMIT 2"
    );
    let delete_sql = format!(
        "DELETE FROM {table} WHERE seq IN (
            SELECT seq FROM {table} WHERE {group} = ?1 ORDER BY seq LIMIT ?2)"
    );
    loop {
        let total: i64 = tx
            .prepare_cached(&count_sql)
            .and_then(|mut st| st.query_row([], |r| r.get(0)))
            .map_err(db)?;
        let excess = total - max;
        if excess <= 0 {
            return Ok(());
        }
        let biggest: Vec<(String, i64)> = tx
            .prepare_cached(&groups_sql)
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()
            })
            .map_err(db)?;
        let Some((name, n)) = biggest.first() else {
            return Ok(());
        };
        let next = biggest.get(1).map_or(0, |(_, m)| *m);
        let k = excess.min((n - next).max(1));
        tx.prepare_cached(&delete_sql)
            .and_then(|mut st| st.execute(params![name, k]))
            .map_err(db)?;
    }
}
