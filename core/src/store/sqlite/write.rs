//! Writing one [`Changes`] batch inside an open transaction, one function per table, then
//! the [`quota`](crate::store::quota) limits.

use rusqlite::{Transaction, params};

use super::super::cipher::StoreCipher;
use super::super::quota;
use super::super::{
    AccountRecord, Changes, DeviceRecord, InboundGroupSessionRecord, OutboundGroupSessionRecord,
    StoreError,
};
use super::{
    FROM_NON_MEMBER, aad_account, aad_inbound, aad_olm, aad_outbound, aad_queued_send,
    aad_secret_value, db, device_tag_parts, meta, set_meta, u64_from_sql, u64_to_sql,
};

/// Write every record of `changes`, enforce the quotas and bump the generation, all inside
/// `tx`. On error the caller drops `tx`, which rolls everything back.
pub(super) fn write_changes(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &Changes,
) -> Result<u64, StoreError> {
    if let Some(a) = &changes.account {
        write_account(tx, c, a)?;
    }
    write_sessions(tx, c, changes)?;
    for d in &changes.devices {
        write_device(tx, c, d)?;
    }
    write_tracking(tx, changes)?;
    write_rooms(tx, changes)?;
    write_queues(tx, c, changes)?;
    write_notices(tx, changes)?;
    write_values(tx, c, changes)?;
    if let Some(token) = &changes.sync_token {
        set_meta(tx, meta::SYNC_TOKEN, token)?;
    }
    enforce_quotas(tx, changes)?;
    let generation: i64 = tx
        .prepare_cached("UPDATE meta SET value = value + 1 WHERE key = ?1 RETURNING value")
        .and_then(|mut st| st.query_row([meta::GENERATION], |row| row.get(0)))
        .map_err(db)?;
    Ok(u64_from_sql(generation))
}

/// Run `sql` once per item, with the parameters `f` gives.
fn each<T, P: rusqlite::Params>(
    tx: &Transaction<'_>,
    sql: &str,
    items: &[T],
    mut f: impl FnMut(&T) -> Result<P, StoreError>,
) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    let mut st = tx.prepare_cached(sql).map_err(db)?;
    for item in items {
        st.execute(f(item)?).map_err(db)?;
    }
    Ok(())
}

fn write_account(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    a: &AccountRecord,
) -> Result<(), StoreError> {
    let pickle = c.encrypt(&aad_account(&a.user_id, &a.device_id), a.pickle.as_bytes())?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO account (id, user_id, device_id, pickle,
            device_keys_uploaded, server_one_time_key_count, fallback_key_created_ms)
         VALUES (0, ?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut st| {
        st.execute(params![
            a.user_id,
            a.device_id,
            pickle,
            a.device_keys_uploaded,
            u64_to_sql(a.server_one_time_key_count),
            u64_to_sql(a.fallback_key_created_ms),
        ])
    })
    .map_err(db)?;
    Ok(())
}

fn write_sessions(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &Changes,
) -> Result<(), StoreError> {
    each(
        tx,
        "INSERT OR REPLACE INTO olm_sessions
            (sender_key, session_id, pickle, created_ms, last_used_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        &changes.olm_sessions,
        |s| {
            let pickle = c.encrypt(&aad_olm(&s.sender_key, &s.session_id), s.pickle.as_bytes())?;
            Ok((
                s.sender_key.clone(),
                s.session_id.clone(),
                pickle,
                u64_to_sql(s.created_ms),
                u64_to_sql(s.last_used_ms),
            ))
        },
    )?;
    for s in &changes.inbound_group_sessions {
        write_inbound(tx, c, s)?;
    }
    for s in &changes.outbound_group_sessions {
        write_outbound(tx, c, s)?;
    }
    // After the upserts of the same batch: when in doubt, discard (fail closed).
    each(
        tx,
        "DELETE FROM outbound_group_sessions WHERE room_id = ?1",
        &changes.discarded_outbound_sessions,
        |room_id| Ok([room_id.clone()]),
    )?;
    // The first event seen at an index is kept (replay detection).
    each(
        tx,
        "INSERT OR IGNORE INTO megolm_indices
            (sender_key, session_id, message_index, event_id, origin_ts)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        &changes.megolm_indices,
        |i| {
            Ok((
                i.sender_key.clone(),
                i.session_id.clone(),
                i.index,
                i.event_id.clone(),
                u64_to_sql(i.origin_ts),
            ))
        },
    )
}

fn write_inbound(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    s: &InboundGroupSessionRecord,
) -> Result<(), StoreError> {
    let index = s.first_known_index.to_be_bytes();
    let pickle = c.encrypt(&aad_inbound(s, &index), s.pickle.as_bytes())?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO inbound_group_sessions (room_id, session_id,
            sender_key, signing_key, sender_user, sender_device, pickle, first_known_index)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut st| {
        st.execute(params![
            s.room_id,
            s.session_id,
            s.sender_key,
            s.signing_key,
            s.sender_user.as_deref().unwrap_or_default(),
            s.sender_device.as_deref().unwrap_or_default(),
            pickle,
            s.first_known_index,
        ])
    })
    .map_err(db)?;
    Ok(())
}

fn write_outbound(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    s: &OutboundGroupSessionRecord,
) -> Result<(), StoreError> {
    let shared_with = serde_json::to_string(&s.shared_with)
        .map_err(|e| StoreError::Decode(format!("shared_with: {e}")))?;
    let (created, count) = (s.created_ms.to_be_bytes(), s.message_count.to_be_bytes());
    let aad = aad_outbound(&s.room_id, &s.session_id, &created, &count, &shared_with);
    let pickle = c.encrypt(&aad, s.pickle.as_bytes())?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO outbound_group_sessions
            (room_id, session_id, pickle, created_ms, message_count, shared_with)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut st| {
        st.execute(params![
            s.room_id,
            s.session_id,
            pickle,
            u64_to_sql(s.created_ms),
            u64_to_sql(s.message_count),
            shared_with,
        ])
    })
    .map_err(db)?;
    Ok(())
}

/// One device; its trust decision and keys are bound to the row by a tag.
pub(super) fn write_device(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    d: &DeviceRecord,
) -> Result<(), StoreError> {
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
            d.user_id,
            d.device_id,
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

fn write_tracking(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    each(
        tx,
        "INSERT OR REPLACE INTO tracked_users (user_id, state, sequence) VALUES (?1, ?2, ?3)",
        &changes.tracked_users,
        |u| Ok((u.user_id.clone(), u.state.as_str(), u64_to_sql(u.sequence))),
    )
}

fn write_rooms(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    each(
        tx,
        "INSERT OR REPLACE INTO rooms (room_id, encryption, history_visibility,
            members_synced, own_membership)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        &changes.rooms,
        |r| {
            Ok((
                r.room_id.clone(),
                r.encryption.clone(),
                r.history_visibility.clone(),
                r.members_synced,
                r.own_membership.clone(),
            ))
        },
    )?;
    each(
        tx,
        "DELETE FROM members WHERE room_id = ?1",
        &changes.replaced_member_lists,
        |room_id| Ok([room_id.clone()]),
    )?;
    each(
        tx,
        "INSERT OR REPLACE INTO members (room_id, user_id, membership) VALUES (?1, ?2, ?3)",
        &changes.members,
        |m| Ok([m.room_id.clone(), m.user_id.clone(), m.membership.clone()]),
    )
}

fn write_queues(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &Changes,
) -> Result<(), StoreError> {
    // Upserts (not REPLACE) keep `seq`, i.e. each item's place in its queue.
    each(
        tx,
        "INSERT INTO pending_to_device (txn_id, event_type, messages_json, room_id, session_id)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (txn_id) DO UPDATE SET
            event_type = excluded.event_type, messages_json = excluded.messages_json,
            room_id = excluded.room_id, session_id = excluded.session_id",
        &changes.pending_to_device,
        |p| {
            let (room, session) = p.room_key.clone().unzip();
            Ok((
                p.txn_id.clone(),
                p.event_type.clone(),
                p.messages_json.clone(),
                room,
                session,
            ))
        },
    )?;
    each(
        tx,
        "DELETE FROM pending_to_device WHERE txn_id = ?1",
        &changes.sent_to_device,
        |txn_id| Ok([txn_id.clone()]),
    )?;
    each(
        tx,
        "INSERT INTO send_queue (txn_id, room_id, content) VALUES (?1, ?2, ?3)
         ON CONFLICT (txn_id) DO UPDATE SET
            room_id = excluded.room_id, content = excluded.content",
        &changes.queued_sends,
        |q| {
            let aad = aad_queued_send(&q.txn_id, &q.room_id);
            let blob = c.encrypt(&aad, q.content.as_bytes())?;
            Ok((q.txn_id.clone(), q.room_id.clone(), blob))
        },
    )?;
    each(
        tx,
        "DELETE FROM send_queue WHERE txn_id = ?1",
        &changes.finished_sends,
        |txn_id| Ok([txn_id.clone()]),
    )?;
    each(
        tx,
        "INSERT INTO undecryptable_events (room_id, event_id, session_id, event_json)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (room_id, event_id) DO UPDATE SET
            session_id = excluded.session_id, event_json = excluded.event_json",
        &changes.undecryptable_events,
        |e| {
            Ok([
                e.room_id.clone(),
                e.event_id.clone(),
                e.session_id.clone(),
                e.event_json.clone(),
            ])
        },
    )?;
    each(
        tx,
        "DELETE FROM undecryptable_events WHERE room_id = ?1 AND event_id = ?2",
        &changes.resolved_events,
        |(room_id, event_id)| Ok([room_id.clone(), event_id.clone()]),
    )
}

fn write_notices(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    // A newer notice of the same sender replaces the older one and counts as the newest.
    each(
        tx,
        "INSERT OR REPLACE INTO withheld_notices
            (room_id, session_id, sender, sender_key, code, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        &changes.withheld_notices,
        |w| {
            Ok((
                w.room_id.clone(),
                w.session_id.clone(),
                w.sender.clone(),
                w.sender_key.clone(),
                w.code.clone(),
                w.reason.clone(),
            ))
        },
    )?;
    // One request per session: the first one stays.
    each(
        tx,
        "INSERT OR IGNORE INTO key_requests (room_id, session_id, request_id)
         VALUES (?1, ?2, ?3)",
        &changes.key_requests,
        |r| {
            Ok([
                r.room_id.clone(),
                r.session_id.clone(),
                r.request_id.clone(),
            ])
        },
    )
}

fn write_values(
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
        .and_then(|mut st| st.execute([i64::try_from(max).unwrap_or(i64::MAX)]))
        .map_err(db)?;
    Ok(())
}

/// Keep at most `max` rows of `table` (ordered by `seq`), forgetting the oldest rows of the
/// biggest `group` first, down to the size of the next biggest.
fn keep_fair(tx: &Transaction<'_>, table: &str, group: &str, max: u64) -> Result<(), StoreError> {
    let max = i64::try_from(max).unwrap_or(i64::MAX);
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

/// Whether this batch stores an inbound session whose sender is not a member of its room
/// (the only way their number grows, besides replaced member lists).
fn adds_sessions_of_non_members(
    tx: &Transaction<'_>,
    changes: &Changes,
) -> Result<bool, StoreError> {
    let mut st = tx
        .prepare_cached("SELECT 1 FROM members WHERE room_id = ?1 AND user_id = ?2")
        .map_err(db)?;
    for s in &changes.inbound_group_sessions {
        let sender = s.sender_user.as_deref().unwrap_or_default();
        if !st.exists([&s.room_id, sender]).map_err(db)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// At most [`quota::MAX_SESSIONS_PER_SENDER_PER_ROOM`] inbound sessions per sender and
/// room, for the senders this batch wrote sessions of.
fn bound_sessions_per_sender(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    let mut senders: Vec<(&str, &str)> = changes
        .inbound_group_sessions
        .iter()
        .map(|s| {
            (
                s.room_id.as_str(),
                s.sender_user.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    senders.sort_unstable();
    senders.dedup();
    let mut st = tx
        .prepare_cached(
            "DELETE FROM inbound_group_sessions WHERE rowid IN (
                SELECT rowid FROM inbound_group_sessions WHERE room_id = ?1 AND sender_user = ?2
                ORDER BY rowid DESC LIMIT -1 OFFSET ?3)",
        )
        .map_err(db)?;
    let max = i64::try_from(quota::MAX_SESSIONS_PER_SENDER_PER_ROOM).unwrap_or(i64::MAX);
    for (room, sender) in senders {
        st.execute(params![room, sender, max]).map_err(db)?;
    }
    Ok(())
}

/// The Olm session limits, for the keys this batch wrote sessions of.
fn bound_olm_sessions(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    let keys: Vec<&str> = changes
        .olm_sessions
        .iter()
        .map(|s| s.sender_key.as_str())
        .collect();
    let keys = super::json_list(&keys)?;
    // One query finds the keys over the limit (usually none: a share updates sessions).
    let max = i64::try_from(quota::MAX_OLM_SESSIONS_PER_KEY).unwrap_or(i64::MAX);
    let crowded: Vec<String> = tx
        .prepare_cached(
            "SELECT sender_key FROM olm_sessions
             WHERE sender_key IN (SELECT value FROM json_each(?1))
             GROUP BY sender_key HAVING count(*) > ?2",
        )
        .and_then(|mut st| {
            st.query_map(params![keys, max], |r| r.get(0))?
                .collect::<Result<_, _>>()
        })
        .map_err(db)?;
    let mut per_key = tx
        .prepare_cached(
            "DELETE FROM olm_sessions WHERE sender_key = ?1 AND session_id IN (
                SELECT session_id FROM olm_sessions WHERE sender_key = ?1
                ORDER BY last_used_ms DESC, session_id LIMIT -1 OFFSET ?2)",
        )
        .map_err(db)?;
    for key in crowded {
        per_key.execute(params![key, max]).map_err(db)?;
    }
    // Only a session with a key of no known device makes their number grow.
    let unknown_keys: i64 = tx
        .prepare_cached(
            "SELECT count(*) FROM json_each(?1)
             WHERE value NOT IN (SELECT curve25519 FROM devices WHERE deleted = 0)",
        )
        .and_then(|mut st| st.query_row([&keys], |r| r.get(0)))
        .map_err(db)?;
    if unknown_keys == 0 {
        return Ok(());
    }
    let max = i64::try_from(quota::MAX_OLM_SESSIONS_OF_UNKNOWN_DEVICES).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "DELETE FROM olm_sessions WHERE (sender_key, session_id) IN (
            SELECT sender_key, session_id FROM olm_sessions
            WHERE sender_key NOT IN (SELECT curve25519 FROM devices WHERE deleted = 0)
            ORDER BY last_used_ms DESC, sender_key, session_id LIMIT -1 OFFSET ?1)",
    )
    .and_then(|mut st| st.execute([max]))
    .map_err(db)?;
    Ok(())
}

/// The [`quota`] limits, checked only for the tables this batch wrote to.
fn enforce_quotas(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    if !changes.olm_sessions.is_empty() {
        bound_olm_sessions(tx, changes)?;
    }
    if !changes.rooms.is_empty() {
        // Rooms joined once keep their records (their first encryption setting stays).
        let invites = "own_membership = 'invite' AND encryption IS NULL";
        keep_newest(tx, "rooms", "rowid", invites, quota::MAX_INVITES)?;
    }
    bound_sessions_per_sender(tx, changes)?;
    if adds_sessions_of_non_members(tx, changes)? || !changes.replaced_member_lists.is_empty() {
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
    if !changes.undecryptable_events.is_empty() {
        let max = quota::MAX_UNDECRYPTABLE_EVENTS;
        keep_fair(tx, "undecryptable_events", "room_id", max)?;
    }
    if !changes.withheld_notices.is_empty() {
        keep_fair(
            tx,
            "withheld_notices",
            "sender",
            quota::MAX_WITHHELD_NOTICES,
        )?;
    }
    if !changes.key_requests.is_empty() {
        keep_fair(tx, "key_requests", "room_id", quota::MAX_KEY_REQUESTS)?;
    }
    Ok(())
}
