//! `send_queue`: the app's messages not sent yet, with how far each got. The content is
//! encrypted and bound to its row: transaction id, room, stage and event type (so that a
//! plaintext cannot be passed off as a ready ciphertext). Upserts keep each message's place
//! (`seq`).

use ruma::OwnedRoomId;
use rusqlite::{Connection, Transaction, params};

use super::super::cipher::StoreCipher;
use super::super::{ClientChanges, QueuedSend, SecretBlob, SendStage, StoreError};
use super::sql::{col, db, each, parsed, query_all};

/// The send queue, oldest first.
pub(super) fn queued_sends(
    conn: &Connection,
    c: &StoreCipher,
) -> Result<Vec<QueuedSend>, StoreError> {
    query_all(
        conn,
        "SELECT txn_id, room_id, stage, event_type, content FROM send_queue ORDER BY seq",
        [],
        |r| {
            let txn_id: String = col(r, 0)?;
            let room_id: OwnedRoomId = parsed(r, 1)?;
            let stage: String = col(r, 2)?;
            let event_type: String = col(r, 3)?;
            let blob: Vec<u8> = col(r, 4)?;
            let aad = aad_queued_send(&txn_id, room_id.as_str(), &stage, &event_type);
            let content = SecretBlob(c.decrypt(&aad, &blob)?);
            let stage = SendStage::parse(&stage)
                .ok_or_else(|| StoreError::Decode(format!("send stage {stage:?}")))?;
            Ok(QueuedSend {
                txn_id,
                room_id,
                stage,
                event_type,
                content,
            })
        },
    )
}

/// Inserts, stage changes (only of messages still queued), then the messages done with.
pub(super) fn write(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &ClientChanges,
) -> Result<(), StoreError> {
    each(
        tx,
        "INSERT INTO send_queue (txn_id, room_id, stage, event_type, content)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (txn_id) DO UPDATE SET room_id = excluded.room_id,
            stage = excluded.stage, event_type = excluded.event_type,
            content = excluded.content",
        &changes.queued_sends,
        |q| row(c, q),
    )?;
    for q in &changes.advanced_sends {
        let (txn_id, room_id, stage, event_type, blob) = row(c, q)?;
        let updated = tx
            .execute(
                "UPDATE send_queue SET room_id = ?2, stage = ?3, event_type = ?4, content = ?5
                 WHERE txn_id = ?1",
                params![txn_id, room_id, stage, event_type, blob],
            )
            .map_err(db)?;
        if updated == 0 {
            return Err(StoreError::NotQueued(q.txn_id.clone()));
        }
    }
    each(
        tx,
        "DELETE FROM send_queue WHERE txn_id = ?1",
        &changes.finished_sends,
        |txn_id| Ok([txn_id.as_str()]),
    )
}

type Row<'a> = (&'a str, &'a str, &'static str, &'a str, Vec<u8>);

fn row<'a>(c: &StoreCipher, q: &'a QueuedSend) -> Result<Row<'a>, StoreError> {
    let stage = q.stage.as_str();
    let aad = aad_queued_send(&q.txn_id, q.room_id.as_str(), stage, &q.event_type);
    let blob = c.encrypt(&aad, q.content.as_bytes())?;
    Ok((
        q.txn_id.as_str(),
        q.room_id.as_str(),
        stage,
        &q.event_type,
        blob,
    ))
}

fn aad_queued_send<'a>(
    txn_id: &'a str,
    room_id: &'a str,
    stage: &'a str,
    event_type: &'a str,
) -> [&'a [u8]; 5] {
    [
        b"queued_send.v2",
        txn_id.as_bytes(),
        room_id.as_bytes(),
        stage.as_bytes(),
        event_type.as_bytes(),
    ]
}

/// Migration 10: the rows queued before (plaintext `m.room.message` contents, bound to
/// their transaction id and room only) are bound to their stage and type too.
pub(super) fn bind_stages(tx: &Transaction<'_>, c: &StoreCipher) -> Result<(), StoreError> {
    let rows: Vec<(String, String, Vec<u8>)> = query_all(
        tx,
        "SELECT txn_id, room_id, content FROM send_queue",
        [],
        |r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?)),
    )?;
    for (txn_id, room_id, blob) in rows {
        let old_aad = [
            b"queued_send".as_slice(),
            txn_id.as_bytes(),
            room_id.as_bytes(),
        ];
        let content = c.decrypt(&old_aad, &blob)?;
        let (stage, event_type) = (SendStage::Queued.as_str(), "m.room.message");
        let aad = aad_queued_send(&txn_id, &room_id, stage, event_type);
        tx.execute(
            "UPDATE send_queue SET stage = ?2, event_type = ?3, content = ?4 WHERE txn_id = ?1",
            params![txn_id, stage, event_type, c.encrypt(&aad, &content)?],
        )
        .map_err(db)?;
    }
    Ok(())
}

/// Undo [`bind_stages`] (tests of migrations from older versions): rows bound as before.
#[cfg(test)]
pub(super) fn unbind_stages(conn: &Connection, c: &StoreCipher) {
    for q in queued_sends(conn, c).unwrap() {
        let old_aad = [
            b"queued_send".as_slice(),
            q.txn_id.as_bytes(),
            q.room_id.as_bytes(),
        ];
        let blob = c.encrypt(&old_aad, q.content.as_bytes()).unwrap();
        conn.execute(
            "UPDATE send_queue SET content = ?2 WHERE txn_id = ?1",
            params![q.txn_id, blob],
        )
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{open, raw};
    use super::*;
    use crate::store::conformance::queued;
    use crate::store::{Changes, ClientStore, Store};

    /// A plaintext cannot be passed off as a ready ciphertext by editing the row.
    #[test]
    fn an_edited_stage_or_type_is_refused() {
        for edit in [
            "UPDATE send_queue SET stage = 'ready'",
            "UPDATE send_queue SET event_type = 'm.room.encrypted'",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let s = open(dir.path());
            s.save_changes(Changes::from(ClientChanges {
                queued_sends: vec![queued("t1", "!r:x", b"{\"body\":\"secret\"}")],
                ..Default::default()
            }))
            .unwrap();
            raw(dir.path()).execute_batch(edit).unwrap();
            let outcome = s.queued_sends();
            assert!(
                matches!(outcome, Err(StoreError::Corrupted(_))),
                "{edit}: {outcome:?}"
            );
        }
    }
}
