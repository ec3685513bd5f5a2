//! `pending_to_device`: the to-device requests the machine must (re)send with the same
//! transaction id until the server has them. Upserts keep each one's place (`seq`).

use ruma::OwnedRoomId;
use rusqlite::{Connection, Transaction};

use super::super::{CryptoChanges, PendingToDevice, StoreError};
use super::sql::{col, each, parsed, parsed_opt, query_all};

/// To-device requests, oldest first.
pub(super) fn pending_to_device(conn: &Connection) -> Result<Vec<PendingToDevice>, StoreError> {
    query_all(
        conn,
        "SELECT txn_id, event_type, messages_json, room_id, session_id
         FROM pending_to_device ORDER BY seq",
        [],
        |r| {
            let room: Option<OwnedRoomId> = parsed_opt(r, 3)?;
            let session: Option<String> = col(r, 4)?;
            Ok(PendingToDevice {
                txn_id: col(r, 0)?,
                event_type: parsed(r, 1)?,
                messages_json: col(r, 2)?,
                room_key: room.zip(session),
            })
        },
    )
}

/// Inserts, then the requests sent.
pub(super) fn write(tx: &Transaction<'_>, changes: &CryptoChanges) -> Result<(), StoreError> {
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
            let (room, session) = p
                .room_key
                .as_ref()
                .map(|(room, session)| (room.as_str(), session.as_str()))
                .unzip();
            Ok((
                p.txn_id.as_str(),
                p.event_type.to_string(),
                p.messages_json.as_str(),
                room,
                session,
            ))
        },
    )?;
    each(
        tx,
        "DELETE FROM pending_to_device WHERE txn_id = ?1",
        &changes.sent_to_device,
        |txn_id| Ok([txn_id.as_str()]),
    )
}
