//! What we keep about sessions we cannot decrypt yet: `undecryptable_events` (retried when
//! the key arrives), `withheld_notices` (why a sender did not give us a key) and
//! `key_requests` (one per session). All bounded, a flooding room or sender first.

use ruma::{OwnedRoomId, RoomId, UserId};
use rusqlite::{Connection, Transaction};

use super::super::{Changes, KeyRequestRecord, StoreError, UndecryptableEvent, WithheldNotice};
use super::sql::{col, count, each, parsed, query_all, query_opt};

/// The events waiting for one session, in the order first stored.
pub(super) fn undecryptable_events(
    conn: &Connection,
    room_id: &RoomId,
    session_id: &str,
) -> Result<Vec<UndecryptableEvent>, StoreError> {
    query_all(
        conn,
        "SELECT room_id, session_id, event_id, event_json FROM undecryptable_events
         WHERE room_id = ?1 AND session_id = ?2 ORDER BY seq",
        [room_id.as_str(), session_id],
        |r| {
            Ok(UndecryptableEvent {
                room_id: parsed(r, 0)?,
                session_id: col(r, 1)?,
                event_id: parsed(r, 2)?,
                event_json: col(r, 3)?,
            })
        },
    )
}

/// The distinct sessions undecryptable events wait for, sorted.
pub(super) fn undecryptable_sessions(
    conn: &Connection,
) -> Result<Vec<(OwnedRoomId, String)>, StoreError> {
    query_all(
        conn,
        "SELECT DISTINCT room_id, session_id FROM undecryptable_events
         ORDER BY room_id, session_id",
        [],
        |r| Ok((parsed(r, 0)?, col(r, 1)?)),
    )
}

pub(super) fn undecryptable_count(conn: &Connection) -> Result<u64, StoreError> {
    count(conn, "SELECT COUNT(*) FROM undecryptable_events", [])
}

pub(super) fn withheld_notice(
    conn: &Connection,
    room_id: &RoomId,
    session_id: &str,
    sender: &UserId,
) -> Result<Option<WithheldNotice>, StoreError> {
    query_opt(
        conn,
        "SELECT room_id, session_id, sender, sender_key, code, reason FROM withheld_notices
         WHERE room_id = ?1 AND session_id = ?2 AND sender = ?3",
        [room_id.as_str(), session_id, sender.as_str()],
        |r| {
            Ok(WithheldNotice {
                room_id: parsed(r, 0)?,
                session_id: col(r, 1)?,
                sender: parsed(r, 2)?,
                sender_key: col(r, 3)?,
                code: parsed(r, 4)?,
                reason: col(r, 5)?,
            })
        },
    )
}

pub(super) fn key_request(
    conn: &Connection,
    room_id: &RoomId,
    session_id: &str,
) -> Result<Option<KeyRequestRecord>, StoreError> {
    query_opt(
        conn,
        "SELECT room_id, session_id, request_id FROM key_requests
         WHERE room_id = ?1 AND session_id = ?2",
        [room_id.as_str(), session_id],
        |r| {
            Ok(KeyRequestRecord {
                room_id: parsed(r, 0)?,
                session_id: col(r, 1)?,
                request_id: col(r, 2)?,
            })
        },
    )
}

/// Undecryptable events (inserts, then the resolved ones), withheld notices, key requests.
pub(super) fn write(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    each(
        tx,
        "INSERT INTO undecryptable_events (room_id, event_id, session_id, event_json)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (room_id, event_id) DO UPDATE SET
            session_id = excluded.session_id, event_json = excluded.event_json",
        &changes.undecryptable_events,
        |e| {
            Ok([
                e.room_id.as_str(),
                e.event_id.as_str(),
                e.session_id.as_str(),
                e.event_json.as_str(),
            ])
        },
    )?;
    each(
        tx,
        "DELETE FROM undecryptable_events WHERE room_id = ?1 AND event_id = ?2",
        &changes.resolved_events,
        |(room_id, event_id)| Ok([room_id.as_str(), event_id.as_str()]),
    )?;
    // A newer notice of the same sender replaces the older one and counts as the newest.
    each(
        tx,
        "INSERT OR REPLACE INTO withheld_notices
            (room_id, session_id, sender, sender_key, code, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        &changes.withheld_notices,
        |w| {
            Ok((
                w.room_id.as_str(),
                w.session_id.as_str(),
                w.sender.as_str(),
                w.sender_key.as_str(),
                w.code.as_str(),
                w.reason.as_deref(),
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
                r.room_id.as_str(),
                r.session_id.as_str(),
                r.request_id.as_str(),
            ])
        },
    )
}
