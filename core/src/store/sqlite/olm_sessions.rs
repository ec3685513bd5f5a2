//! The `olm_sessions` table: Olm sessions by the other device's Curve25519 key, bounded
//! per key and for keys of no known device.

use std::collections::HashMap;

use rusqlite::{Connection, Transaction, params};

use super::super::cipher::StoreCipher;
use super::super::{CryptoChanges, OlmSessionRecord, SecretBlob, StoreError, quota};
use super::sql::{col, db, each, json_list, limit, query_all, u64_from_sql, u64_to_sql};

/// All sessions with these keys, grouped by key.
pub(super) fn read(
    conn: &Connection,
    c: &StoreCipher,
    sender_keys: &[&str],
) -> Result<HashMap<String, Vec<OlmSessionRecord>>, StoreError> {
    let mut out = HashMap::new();
    if sender_keys.is_empty() {
        return Ok(out);
    }
    let sessions = query_all(
        conn,
        "SELECT sender_key, session_id, pickle, created_ms, last_used_ms FROM olm_sessions
         WHERE sender_key IN (SELECT value FROM json_each(?1))
         ORDER BY sender_key, session_id",
        [json_list(sender_keys)?],
        |r| {
            let sender_key: String = col(r, 0)?;
            let session_id: String = col(r, 1)?;
            let blob: Vec<u8> = col(r, 2)?;
            let pickle = c.decrypt(&aad(&sender_key, &session_id), &blob)?;
            Ok(OlmSessionRecord {
                sender_key,
                session_id,
                pickle: SecretBlob(pickle),
                created_ms: u64_from_sql(col(r, 3)?),
                last_used_ms: u64_from_sql(col(r, 4)?),
            })
        },
    )?;
    for s in sessions {
        out.entry(s.sender_key.clone())
            .or_insert_with(Vec::new)
            .push(s);
    }
    Ok(out)
}

pub(super) fn write(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &CryptoChanges,
) -> Result<(), StoreError> {
    each(
        tx,
        "INSERT OR REPLACE INTO olm_sessions
            (sender_key, session_id, pickle, created_ms, last_used_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        &changes.olm_sessions,
        |s| {
            let pickle = c.encrypt(&aad(&s.sender_key, &s.session_id), s.pickle.as_bytes())?;
            Ok((
                s.sender_key.clone(),
                s.session_id.clone(),
                pickle,
                u64_to_sql(s.created_ms),
                u64_to_sql(s.last_used_ms),
            ))
        },
    )
}

/// The Olm session limits, for the keys this batch wrote sessions of.
pub(super) fn bound(tx: &Transaction<'_>, changes: &CryptoChanges) -> Result<(), StoreError> {
    let keys: Vec<&str> = changes
        .olm_sessions
        .iter()
        .map(|s| s.sender_key.as_str())
        .collect();
    let keys = json_list(&keys)?;
    // One query finds the keys over the limit (usually none: a share updates sessions).
    let max = limit(quota::MAX_OLM_SESSIONS_PER_KEY);
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
    bound_unknown_devices(tx, &keys)
}

/// At most [`quota::MAX_OLM_SESSIONS_OF_UNKNOWN_DEVICES`] sessions with keys of no known
/// device; `keys` (a JSON list) are those the batch wrote sessions of.
fn bound_unknown_devices(tx: &Transaction<'_>, keys: &str) -> Result<(), StoreError> {
    // Only a session with a key of no known device makes their number grow.
    let unknown_keys: i64 = tx
        .prepare_cached(
            "SELECT count(*) FROM json_each(?1)
             WHERE value NOT IN (SELECT curve25519 FROM devices WHERE deleted = 0)",
        )
        .and_then(|mut st| st.query_row([keys], |r| r.get(0)))
        .map_err(db)?;
    if unknown_keys == 0 {
        return Ok(());
    }
    let max = limit(quota::MAX_OLM_SESSIONS_OF_UNKNOWN_DEVICES);
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

/// Binds the pickle to the device key and session id.
fn aad<'a>(sender_key: &'a str, session_id: &'a str) -> [&'a [u8]; 3] {
    [b"olm_session", sender_key.as_bytes(), session_id.as_bytes()]
}
