//! Sender trust in SQLite: the sender data columns of `inbound_group_sessions` (bound to
//! their session by a tag), the `user_identities` table and the own cross-signing keys.

use ruma::{RoomId, UserId};
use rusqlite::{Connection, Row, Transaction, params};

use super::super::cipher::StoreCipher;
use super::super::{
    CROSS_SIGNING_KEY, CryptoChanges, SecretBlob, SenderData, SenderDataRetry, SenderTrust,
    SessionSender, StoreError, UserIdentityRecord,
};
use super::sql::{col, db, each, json_list, parsed, query_all, u64_from_sql, u64_to_sql};
use super::values::{aad_secret_value, secret};

/// The sender data columns of a session row, as written.
pub(super) struct SenderColumns {
    pub trust: &'static str,
    pub json: String,
    pub tag: Vec<u8>,
    pub retry_ms: Option<i64>,
}

/// Encode `data` for the session `(room_id, session_id)`.
pub(super) fn sender_columns(
    c: &StoreCipher,
    room_id: &RoomId,
    session_id: &str,
    data: &SenderData,
) -> Result<SenderColumns, StoreError> {
    let json =
        serde_json::to_string(data).map_err(|e| StoreError::Decode(format!("sender data: {e}")))?;
    let tag = c.tag(&sender_tag_parts(room_id.as_str(), session_id, &json))?;
    Ok(SenderColumns {
        trust: data.trust.as_str(),
        json,
        tag,
        retry_ms: data.retry.map(|r| u64_to_sql(r.next_ms)),
    })
}

/// Read the sender data of a session row: `json` at `idx`, its tag at `idx + 1`, the
/// retry time at `idx + 2`. A row written before sender data existed reads as
/// [`SenderData::before_sender_data`], due for a retry when migration 8 scheduled one.
pub(super) fn sender_data_from_row(
    r: &Row<'_>,
    idx: usize,
    c: &StoreCipher,
    room_id: &RoomId,
    session_id: &str,
) -> Result<SenderData, StoreError> {
    let json: Option<String> = col(r, idx)?;
    let retry_ms: Option<i64> = col(r, idx + 2)?;
    let Some(json) = json else {
        return Ok(SenderData {
            retry: retry_ms.map(|ms| SenderDataRetry {
                attempts: 0,
                next_ms: u64_from_sql(ms),
            }),
            ..SenderData::before_sender_data()
        });
    };
    let tag: Option<Vec<u8>> = col(r, idx + 1)?;
    let tag = tag.ok_or_else(|| StoreError::Corrupted("sender data without a tag".into()))?;
    c.verify_tag(&sender_tag_parts(room_id.as_str(), session_id, &json), &tag)?;
    serde_json::from_str(&json).map_err(|e| StoreError::Decode(format!("sender data: {e}")))
}

/// Binds sender data to its session: copying a better level onto another row is noticed.
fn sender_tag_parts<'a>(room_id: &'a str, session_id: &'a str, json: &'a str) -> [&'a [u8]; 4] {
    [
        b"sender_data",
        room_id.as_bytes(),
        session_id.as_bytes(),
        json.as_bytes(),
    ]
}

/// The columns [`session_sender`] reads.
const SESSION_SENDER_COLUMNS: &str = "room_id, session_id, sender_key, signing_key, sender_user, sender_data, sender_data_tag, \
     sender_retry_ms";

fn session_sender(r: &Row<'_>, c: &StoreCipher) -> Result<SessionSender, StoreError> {
    let room_id: ruma::OwnedRoomId = parsed(r, 0)?;
    let session_id: String = col(r, 1)?;
    let sender_data = sender_data_from_row(r, 5, c, &room_id, &session_id)?;
    Ok(SessionSender {
        sender_key: col(r, 2)?,
        signing_key: col(r, 3)?,
        sender_user: parsed(r, 4)?,
        room_id,
        session_id,
        sender_data,
    })
}

pub(super) fn sessions_to_reevaluate(
    conn: &Connection,
    c: &StoreCipher,
    senders: &[&UserId],
) -> Result<Vec<SessionSender>, StoreError> {
    if senders.is_empty() {
        return Ok(Vec::new());
    }
    let levels: Vec<&str> = SenderTrust::ALL
        .iter()
        .filter(|t| t.may_improve())
        .map(|t| t.as_str())
        .collect();
    query_all(
        conn,
        &format!(
            "SELECT {SESSION_SENDER_COLUMNS} FROM inbound_group_sessions
             WHERE sender_user IN (SELECT value FROM json_each(?1))
               AND sender_trust IN (SELECT value FROM json_each(?2))
             ORDER BY room_id, session_id"
        ),
        [json_list(senders)?, json_list(&levels)?],
        |r| session_sender(r, c),
    )
}

pub(super) fn retries_due(
    conn: &Connection,
    c: &StoreCipher,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<SessionSender>, StoreError> {
    query_all(
        conn,
        &format!(
            "SELECT {SESSION_SENDER_COLUMNS} FROM inbound_group_sessions
             WHERE sender_retry_ms IS NOT NULL AND sender_retry_ms <= ?1 AND sender_user != ''
             ORDER BY sender_retry_ms, rowid LIMIT ?2"
        ),
        params![u64_to_sql(now_ms), i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| session_sender(r, c),
    )
}

pub(super) fn next_retry(conn: &Connection) -> Result<Option<u64>, StoreError> {
    let next: Option<i64> = conn
        .query_row(
            "SELECT min(sender_retry_ms) FROM inbound_group_sessions
             WHERE sender_retry_ms IS NOT NULL AND sender_user != ''",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    Ok(next.map(u64_from_sql))
}

pub(super) fn identities(
    conn: &Connection,
    c: &StoreCipher,
    user_ids: &[&UserId],
) -> Result<Vec<UserIdentityRecord>, StoreError> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    query_all(
        conn,
        "SELECT user_id, identity, tag FROM user_identities
         WHERE user_id IN (SELECT value FROM json_each(?1)) ORDER BY user_id",
        [json_list(user_ids)?],
        |r| {
            let user_id: String = col(r, 0)?;
            let json: String = col(r, 1)?;
            let tag: Vec<u8> = col(r, 2)?;
            c.verify_tag(&identity_tag_parts(&user_id, &json), &tag)?;
            let record: UserIdentityRecord = serde_json::from_str(&json)
                .map_err(|e| StoreError::Decode(format!("user identity: {e}")))?;
            if record.user_id.as_str() != user_id {
                return Err(StoreError::Corrupted(
                    "identity stored under another user".into(),
                ));
            }
            Ok(record)
        },
    )
}

fn identity_tag_parts<'a>(user_id: &'a str, json: &'a str) -> [&'a [u8]; 3] {
    [b"user_identity", user_id.as_bytes(), json.as_bytes()]
}

pub(super) fn cross_signing_keys(
    conn: &Connection,
    c: &StoreCipher,
) -> Result<Option<SecretBlob>, StoreError> {
    secret(conn, c, CROSS_SIGNING_KEY)
}

/// Identities, sender data updates (after the session inserts) and the own keys.
pub(super) fn write(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &CryptoChanges,
) -> Result<(), StoreError> {
    each(
        tx,
        "INSERT OR REPLACE INTO user_identities (user_id, identity, tag) VALUES (?1, ?2, ?3)",
        &changes.user_identities,
        |i| {
            let json = serde_json::to_string(i)
                .map_err(|e| StoreError::Decode(format!("user identity: {e}")))?;
            let tag = c.tag(&identity_tag_parts(i.user_id.as_str(), &json))?;
            Ok((i.user_id.to_string(), json, tag))
        },
    )?;
    each(
        tx,
        "UPDATE inbound_group_sessions
         SET sender_trust = ?3, sender_data = ?4, sender_data_tag = ?5, sender_retry_ms = ?6
         WHERE room_id = ?1 AND session_id = ?2",
        &changes.sender_data,
        |u| {
            let cols = sender_columns(c, &u.room_id, &u.session_id, &u.sender_data)?;
            Ok((
                u.room_id.to_string(),
                u.session_id.clone(),
                cols.trust,
                cols.json,
                cols.tag,
                cols.retry_ms,
            ))
        },
    )?;
    if let Some(keys) = &changes.cross_signing_keys {
        let blob = c.encrypt(&aad_secret_value(CROSS_SIGNING_KEY), keys.as_bytes())?;
        tx.prepare_cached("INSERT OR REPLACE INTO secret_values (key, value) VALUES (?1, ?2)")
            .and_then(|mut st| st.execute(params![CROSS_SIGNING_KEY, blob]))
            .map_err(db)?;
    }
    Ok(())
}
