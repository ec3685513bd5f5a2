//! `send_queue`: the app's messages not sent yet, content encrypted and bound to its row.
//! Upserts keep each message's place (`seq`).

use ruma::OwnedRoomId;
use rusqlite::{Connection, Transaction};

use super::super::cipher::StoreCipher;
use super::super::{ClientChanges, QueuedSend, SecretBlob, StoreError};
use super::sql::{col, each, parsed, query_all};

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

/// Inserts, then the messages done with.
pub(super) fn write(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &ClientChanges,
) -> Result<(), StoreError> {
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
