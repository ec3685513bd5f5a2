//! `undecryptable_events`: events the client keeps until the key of their Megolm session
//! arrives (retried then, also after a restart). Bounded, a flooding room first.

use ruma::{OwnedRoomId, RoomId};
use rusqlite::{Connection, Transaction};

use super::super::{ClientChanges, StoreError, UndecryptableEvent};
use super::sql::{col, count, each, parsed, query_all};

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

pub(super) fn undecryptable_sessions_without_key(
    conn: &Connection,
) -> Result<Vec<(OwnedRoomId, String)>, StoreError> {
    query_all(
        conn,
        "SELECT DISTINCT u.room_id, u.session_id FROM undecryptable_events u
         WHERE NOT EXISTS (SELECT 1 FROM inbound_group_sessions i
                           WHERE i.room_id = u.room_id AND i.session_id = u.session_id)
         ORDER BY u.room_id, u.session_id",
        [],
        |r| Ok((parsed(r, 0)?, col(r, 1)?)),
    )
}

pub(super) fn undecryptable_count(conn: &Connection) -> Result<u64, StoreError> {
    count(conn, "SELECT COUNT(*) FROM undecryptable_events", [])
}

/// Kept events: inserts, then the resolved ones.
pub(super) fn write(tx: &Transaction<'_>, changes: &ClientChanges) -> Result<(), StoreError> {
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
    )
}
