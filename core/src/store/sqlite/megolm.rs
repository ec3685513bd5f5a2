//! The Megolm tables: `inbound_group_sessions` (bounded per sender and for senders who are
//! not members), `outbound_group_sessions` (one per room, with its recipient journal) and
//! `megolm_indices` (replay detection).

use ruma::{OwnedRoomId, RoomId};
use rusqlite::{Connection, Transaction, params};

use super::super::cipher::StoreCipher;
use super::super::{
    CryptoChanges, InboundGroupSessionRecord, MegolmIndexRecord, OutboundGroupSessionRecord,
    SecretBlob, ShareRecipient, StoreError, quota,
};
use super::sql::{
    col, count, db, each, limit, or_empty, parsed, parsed_non_empty, query_all, query_opt,
    u64_from_sql, u64_to_sql,
};
use super::trust::{sender_columns, sender_data_from_row};

/// An inbound session (`s`) whose sender is not known as a member of its room (and that we
/// did not ask for: a forwarded key of unknown origin from an own device counts as ours; nor
/// imported by the user).
pub(super) const FROM_NON_MEMBER: &str = "s.imported = 0 AND NOT EXISTS (SELECT 1 FROM members m \
    WHERE m.room_id = s.room_id AND m.user_id = s.sender_user) \
    AND NOT EXISTS (SELECT 1 FROM key_requests k \
    WHERE k.room_id = s.room_id AND k.session_id = s.session_id)";

/// The columns [`inbound_from_row`] reads.
const INBOUND_COLUMNS: &str = "room_id, session_id, sender_key, signing_key, sender_user,
    sender_device, pickle, first_known_index, sender_data, sender_data_tag, sender_retry_ms,
    imported, backed_up";

pub(super) fn inbound(
    conn: &Connection,
    c: &StoreCipher,
    room_id: &RoomId,
    session_id: &str,
) -> Result<Option<InboundGroupSessionRecord>, StoreError> {
    query_opt(
        conn,
        &format!(
            "SELECT {INBOUND_COLUMNS} FROM inbound_group_sessions
             WHERE room_id = ?1 AND session_id = ?2"
        ),
        [room_id.as_str(), session_id],
        |r| inbound_from_row(r, c),
    )
}

/// A page of inbound sessions in (room id, session id) order, after `after`.
pub(super) fn inbound_page(
    conn: &Connection,
    c: &StoreCipher,
    room: Option<&RoomId>,
    after: Option<(&RoomId, &str)>,
    max: u32,
) -> Result<Vec<InboundGroupSessionRecord>, StoreError> {
    let (after_room, after_session) = after.map_or(("", ""), |(r, s)| (r.as_str(), s));
    query_all(
        conn,
        &format!(
            "SELECT {INBOUND_COLUMNS} FROM inbound_group_sessions
             WHERE (?1 IS NULL OR room_id = ?1) AND (room_id, session_id) > (?2, ?3)
             ORDER BY room_id, session_id LIMIT ?4"
        ),
        params![room.map(RoomId::as_str), after_room, after_session, max],
        |r| inbound_from_row(r, c),
    )
}

fn inbound_from_row(
    r: &rusqlite::Row<'_>,
    c: &StoreCipher,
) -> Result<InboundGroupSessionRecord, StoreError> {
    let room_id: OwnedRoomId = parsed(r, 0)?;
    let session_id: String = col(r, 1)?;
    let sender_data = sender_data_from_row(r, 8, c, &room_id, &session_id)?;
    let mut s = InboundGroupSessionRecord {
        room_id,
        session_id,
        sender_key: col(r, 2)?,
        signing_key: col(r, 3)?,
        sender_user: parsed_non_empty(r, 4)?,
        sender_device: parsed_non_empty(r, 5)?,
        pickle: SecretBlob::new(Vec::new()),
        first_known_index: col(r, 7)?,
        sender_data,
        imported: col::<bool>(r, 11)?,
        backed_up: col::<bool>(r, 12)?,
    };
    let blob: Vec<u8> = col(r, 6)?;
    let index = s.first_known_index.to_be_bytes();
    s.pickle = SecretBlob(c.decrypt(&aad_inbound(&s, &index), &blob)?);
    Ok(s)
}

/// Inbound sessions not in the backup yet, in (room id, session id) order.
pub(super) fn inbound_to_back_up(
    conn: &Connection,
    c: &StoreCipher,
    max: u32,
) -> Result<Vec<InboundGroupSessionRecord>, StoreError> {
    query_all(
        conn,
        &format!(
            "SELECT {INBOUND_COLUMNS} FROM inbound_group_sessions WHERE backed_up = 0
             ORDER BY room_id, session_id LIMIT ?1"
        ),
        [max],
        |r| inbound_from_row(r, c),
    )
}

pub(super) fn inbound_to_back_up_count(conn: &Connection) -> Result<u64, StoreError> {
    count(
        conn,
        "SELECT count(*) FROM inbound_group_sessions WHERE backed_up = 0",
        [],
    )
}

pub(super) fn inbound_count(conn: &Connection, room: Option<&RoomId>) -> Result<u64, StoreError> {
    count(
        conn,
        "SELECT count(*) FROM inbound_group_sessions WHERE ?1 IS NULL OR room_id = ?1",
        [room.map(RoomId::as_str)],
    )
}

pub(super) fn outbound(
    conn: &Connection,
    c: &StoreCipher,
    room_id: &RoomId,
) -> Result<Option<OutboundGroupSessionRecord>, StoreError> {
    query_opt(
        conn,
        "SELECT room_id, session_id, pickle, created_ms, message_count, shared_with
         FROM outbound_group_sessions WHERE room_id = ?1",
        [room_id.as_str()],
        |r| {
            let room_id: OwnedRoomId = parsed(r, 0)?;
            let session_id: String = col(r, 1)?;
            let blob: Vec<u8> = col(r, 2)?;
            let created_ms = u64_from_sql(col(r, 3)?);
            let message_count = u64_from_sql(col(r, 4)?);
            let json: String = col(r, 5)?;
            let (created, count) = (created_ms.to_be_bytes(), message_count.to_be_bytes());
            let aad = aad_outbound(room_id.as_str(), &session_id, &created, &count, &json);
            let pickle = c.decrypt(&aad, &blob)?;
            let shared_with: Vec<ShareRecipient> = serde_json::from_str(&json)
                .map_err(|e| StoreError::Decode(format!("shared_with: {e}")))?;
            Ok(OutboundGroupSessionRecord {
                room_id,
                session_id,
                pickle: SecretBlob(pickle),
                created_ms,
                message_count,
                shared_with,
            })
        },
    )
}

pub(super) fn index(
    conn: &Connection,
    sender_key: &str,
    session_id: &str,
    index: u32,
) -> Result<Option<MegolmIndexRecord>, StoreError> {
    query_opt(
        conn,
        "SELECT sender_key, session_id, message_index, event_id, origin_ts
         FROM megolm_indices
         WHERE sender_key = ?1 AND session_id = ?2 AND message_index = ?3",
        params![sender_key, session_id, index],
        |r| {
            Ok(MegolmIndexRecord {
                sender_key: col(r, 0)?,
                session_id: col(r, 1)?,
                index: col(r, 2)?,
                event_id: parsed(r, 3)?,
                origin_ts: u64_from_sql(col(r, 4)?),
            })
        },
    )
}

/// Inbound and outbound sessions (discards after the upserts) and Megolm indices.
pub(super) fn write(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &CryptoChanges,
) -> Result<(), StoreError> {
    if changes.backup_reset {
        tx.execute("UPDATE inbound_group_sessions SET backed_up = 0", [])
            .map_err(db)?;
    }
    for s in &changes.inbound_group_sessions {
        write_inbound(tx, c, s)?;
    }
    each(
        tx,
        "UPDATE inbound_group_sessions SET backed_up = 1
         WHERE room_id = ?1 AND session_id = ?2 AND first_known_index = ?3",
        &changes.backed_up_sessions,
        |(room_id, session_id, index)| Ok((room_id.as_str(), session_id.as_str(), index)),
    )?;
    for s in &changes.outbound_group_sessions {
        write_outbound(tx, c, s)?;
    }
    // After the upserts of the same batch: when in doubt, discard (fail closed).
    each(
        tx,
        "DELETE FROM outbound_group_sessions WHERE room_id = ?1",
        &changes.discarded_outbound_sessions,
        |room_id| Ok([room_id.as_str()]),
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
                i.sender_key.as_str(),
                i.session_id.as_str(),
                i.index,
                i.event_id.as_str(),
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
    let sender = sender_columns(c, &s.room_id, &s.session_id, &s.sender_data)?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO inbound_group_sessions (room_id, session_id,
            sender_key, signing_key, sender_user, sender_device, pickle, first_known_index,
            sender_trust, sender_data, sender_data_tag, sender_retry_ms, imported, backed_up)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )
    .and_then(|mut st| {
        st.execute(params![
            s.room_id.as_str(),
            s.session_id,
            s.sender_key,
            s.signing_key,
            or_empty(&s.sender_user),
            or_empty(&s.sender_device),
            pickle,
            s.first_known_index,
            sender.trust,
            sender.json,
            sender.tag,
            sender.retry_ms,
            s.imported,
            s.backed_up,
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
    let aad = aad_outbound(
        s.room_id.as_str(),
        &s.session_id,
        &created,
        &count,
        &shared_with,
    );
    let pickle = c.encrypt(&aad, s.pickle.as_bytes())?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO outbound_group_sessions
            (room_id, session_id, pickle, created_ms, message_count, shared_with)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut st| {
        st.execute(params![
            s.room_id.as_str(),
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

/// Whether this batch stores an inbound session whose sender is not a member of its room
/// (the only way their number grows, besides replaced member lists).
pub(super) fn adds_sessions_of_non_members(
    tx: &Transaction<'_>,
    changes: &CryptoChanges,
) -> Result<bool, StoreError> {
    let mut st = tx
        .prepare_cached("SELECT 1 FROM members WHERE room_id = ?1 AND user_id = ?2")
        .map_err(db)?;
    for s in changes
        .inbound_group_sessions
        .iter()
        .filter(|s| !s.imported)
    {
        if !st
            .exists([s.room_id.as_str(), or_empty(&s.sender_user)])
            .map_err(db)?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// At most [`quota::MAX_SESSIONS_PER_SENDER_PER_ROOM`] inbound sessions per sender and
/// room, for the senders this batch wrote sessions of (imported ones are not counted).
pub(super) fn bound_sessions_per_sender(
    tx: &Transaction<'_>,
    changes: &CryptoChanges,
) -> Result<(), StoreError> {
    let mut senders: Vec<(&str, &str)> = changes
        .inbound_group_sessions
        .iter()
        .filter(|s| !s.imported)
        .map(|s| (s.room_id.as_str(), or_empty(&s.sender_user)))
        .collect();
    senders.sort_unstable();
    senders.dedup();
    let mut st = tx
        .prepare_cached(
            "DELETE FROM inbound_group_sessions WHERE rowid IN (
                SELECT rowid FROM inbound_group_sessions
                WHERE room_id = ?1 AND sender_user = ?2 AND imported = 0
                ORDER BY rowid DESC LIMIT -1 OFFSET ?3)",
        )
        .map_err(db)?;
    let max = limit(quota::MAX_SESSIONS_PER_SENDER_PER_ROOM);
    for (room, sender) in senders {
        st.execute(params![room, sender, max]).map_err(db)?;
    }
    Ok(())
}

/// Binds also who sent the session: editing the sender columns invalidates the pickle.
fn aad_inbound<'a>(s: &'a InboundGroupSessionRecord, index: &'a [u8; 4]) -> [&'a [u8]; 8] {
    [
        b"inbound_group_session",
        s.room_id.as_bytes(),
        s.session_id.as_bytes(),
        s.sender_key.as_bytes(),
        s.signing_key.as_bytes(),
        or_empty(&s.sender_user).as_bytes(),
        or_empty(&s.sender_device).as_bytes(),
        index,
    ]
}

/// Binds also the rotation state (creation time, message count) and the recipient journal:
/// editing them would keep a session in use longer or hide who has it.
pub(super) fn aad_outbound<'a>(
    room_id: &'a str,
    session_id: &'a str,
    created_ms: &'a [u8; 8],
    message_count: &'a [u8; 8],
    shared_with_json: &'a str,
) -> [&'a [u8]; 6] {
    [
        b"outbound_group_session",
        room_id.as_bytes(),
        session_id.as_bytes(),
        created_ms,
        message_count,
        shared_with_json.as_bytes(),
    ]
}
