//! The queues: to-device requests to (re)send with the same transaction id
//! (`pending_to_device`) and the app's messages not yet sent (`send_queue`, content
//! encrypted). Upserts keep each item's place (`seq`).

use ruma::OwnedRoomId;
use rusqlite::{Connection, Transaction};

use super::super::cipher::StoreCipher;
use super::super::{Changes, PendingToDevice, QueuedSend, SecretBlob, StoreError};
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

/// The send queue, oldest first.
pub(super) fn queued_sends(
    conn: &Connection,
    c: &StoreCipher,
) -> Result<Vec<QueuedSend>, StoreError> {
    query_all(
        conn,
        "SELECT txn_id, room_id, content FROM send_queue ORDER BY seq",
        [],
        |r| {
            let txn_id: String = col(r, 0)?;
            let room_id: OwnedRoomId = parsed(r, 1)?;
            let blob: Vec<u8> = col(r, 2)?;
            let aad = aad_queued_send(&txn_id, room_id.as_str());
            let content = SecretBlob(c.decrypt(&aad, &blob)?);
            Ok(QueuedSend {
                txn_id,
                room_id,
                content,
            })
        },
    )
}

/// Both queues: inserts, then removals.
pub(super) fn write(
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
    )?;
    each(
        tx,
        "INSERT INTO send_queue (txn_id, room_id, content) VALUES (?1, ?2, ?3)
         ON CONFLICT (txn_id) DO UPDATE SET
            room_id = excluded.room_id, content = excluded.content",
        &changes.queued_sends,
        |q| {
            let aad = aad_queued_send(&q.txn_id, q.room_id.as_str());
            let blob = c.encrypt(&aad, q.content.as_bytes())?;
            Ok((q.txn_id.as_str(), q.room_id.as_str(), blob))
        },
    )?;
    each(
        tx,
        "DELETE FROM send_queue WHERE txn_id = ?1",
        &changes.finished_sends,
        |txn_id| Ok([txn_id.as_str()]),
    )
}

fn aad_queued_send<'a>(txn_id: &'a str, room_id: &'a str) -> [&'a [u8]; 3] {
    [b"queued_send", txn_id.as_bytes(), room_id.as_bytes()]
}
