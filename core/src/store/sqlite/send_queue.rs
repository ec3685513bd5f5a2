//! `send_queue`: the app's messages not sent yet, with how far each got. The content is
//! encrypted and bound to its row: transaction id, room, stage and event type (so that a
//! plaintext cannot be passed off as a ready ciphertext). Upserts keep each message's place
//! (`seq`).

use ruma::{OwnedEventId, OwnedRoomId};
use rusqlite::{Connection, Transaction, params};

use super::super::cipher::StoreCipher;
use super::super::quota;
use super::super::{ClientChanges, QueuedSend, SecretBlob, SendStage, StoreError, StuckReason};
use super::sql::{col, db, each, limit, parsed, query_all};

/// The send queue, oldest first.
pub(super) fn queued_sends(
    conn: &Connection,
    c: &StoreCipher,
) -> Result<Vec<QueuedSend>, StoreError> {
    query_all(
        conn,
        "SELECT txn_id, room_id, stage, event_type, content, echo, stuck FROM send_queue
         ORDER BY seq",
        [],
        |r| {
            let txn_id: String = col(r, 0)?;
            let room_id: OwnedRoomId = parsed(r, 1)?;
            let stage: String = col(r, 2)?;
            let event_type: String = col(r, 3)?;
            let blob: Vec<u8> = col(r, 4)?;
            let aad = aad_queued_send(&txn_id, room_id.as_str(), &stage, &event_type);
            let content = SecretBlob(c.decrypt(&aad, &blob)?);
            let echo = col::<Option<Vec<u8>>>(r, 5)?
                .map(|b| c.decrypt(&aad_echo(&txn_id, room_id.as_str()), &b))
                .transpose()?
                .map(SecretBlob);
            let stage = SendStage::parse(&stage)
                .ok_or_else(|| StoreError::Decode(format!("send stage {stage:?}")))?;
            let stuck = col::<Option<String>>(r, 6)?
                .map(|s| {
                    StuckReason::parse(&s)
                        .ok_or_else(|| StoreError::Decode(format!("stuck reason {s:?}")))
                })
                .transpose()?;
            Ok(QueuedSend {
                txn_id,
                room_id,
                stage,
                event_type,
                content,
                echo,
                stuck,
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
        "INSERT INTO send_queue (txn_id, room_id, stage, event_type, content, echo, stuck)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (txn_id) DO UPDATE SET room_id = excluded.room_id,
            stage = excluded.stage, event_type = excluded.event_type,
            content = excluded.content, echo = excluded.echo, stuck = excluded.stuck",
        &changes.queued_sends,
        |q| row(c, q),
    )?;
    for q in &changes.advanced_sends {
        let updated = tx
            .execute(
                "UPDATE send_queue SET room_id = ?2, stage = ?3, event_type = ?4, content = ?5,
                    echo = ?6, stuck = ?7
                 WHERE txn_id = ?1",
                row(c, q)?,
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
    )?;
    write_sent_events(tx, &changes.sent_events)
}

/// Event ids of sent messages, newest kept.
fn write_sent_events(
    tx: &Transaction<'_>,
    sent: &[(String, OwnedEventId)],
) -> Result<(), StoreError> {
    if sent.is_empty() {
        return Ok(());
    }
    each(
        tx,
        "INSERT OR REPLACE INTO sent_events (txn_id, event_id) VALUES (?1, ?2)",
        sent,
        |(txn_id, event_id)| Ok([txn_id.as_str(), event_id.as_str()]),
    )?;
    tx.execute(
        "DELETE FROM sent_events WHERE seq IN (
            SELECT seq FROM sent_events ORDER BY seq DESC LIMIT -1 OFFSET ?1)",
        [limit(quota::MAX_SENT_EVENTS)],
    )
    .map_err(db)?;
    Ok(())
}

/// The event id of the message sent with `txn_id`, if kept.
pub(super) fn sent_event(
    conn: &Connection,
    txn_id: &str,
) -> Result<Option<OwnedEventId>, StoreError> {
    let found: Vec<OwnedEventId> = query_all(
        conn,
        "SELECT event_id FROM sent_events WHERE txn_id = ?1",
        [txn_id],
        |r| parsed(r, 0),
    )?;
    Ok(found.into_iter().next())
}

type Row<'a> = (
    &'a str,
    &'a str,
    &'static str,
    &'a str,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<&'static str>,
);

fn row<'a>(c: &StoreCipher, q: &'a QueuedSend) -> Result<Row<'a>, StoreError> {
    let stage = q.stage.as_str();
    let aad = aad_queued_send(&q.txn_id, q.room_id.as_str(), stage, &q.event_type);
    let blob = c.encrypt(&aad, q.content.as_bytes())?;
    let echo = q
        .echo
        .as_ref()
        .map(|e| c.encrypt(&aad_echo(&q.txn_id, q.room_id.as_str()), e.as_bytes()))
        .transpose()?;
    Ok((
        q.txn_id.as_str(),
        q.room_id.as_str(),
        stage,
        &q.event_type,
        blob,
        echo,
        q.stuck.map(StuckReason::as_str),
    ))
}

fn aad_echo<'a>(txn_id: &'a str, room_id: &'a str) -> [&'a [u8]; 3] {
    [b"queued_echo.v1", txn_id.as_bytes(), room_id.as_bytes()]
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

    /// The app's content kept for the echo of one message cannot be moved to another, and
    /// an unknown stuck reason is an error, not a message sent.
    #[test]
    fn a_moved_echo_or_unknown_reason_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let with_echo = |txn: &str| QueuedSend {
            echo: Some(SecretBlob::new(b"{\"body\":\"secret\"}".to_vec())),
            ..queued(txn, "!r:x", b"{}")
        };
        s.save_changes(Changes::from(ClientChanges {
            queued_sends: vec![with_echo("t1"), with_echo("t2")],
            ..Default::default()
        }))
        .unwrap();
        let conn = raw(dir.path());
        conn.execute_batch(
            "UPDATE send_queue SET echo = (SELECT echo FROM send_queue WHERE txn_id = 't1')
             WHERE txn_id = 't2'",
        )
        .unwrap();
        assert!(matches!(s.queued_sends(), Err(StoreError::Corrupted(_))));
        conn.execute_batch(
            "DELETE FROM send_queue WHERE txn_id = 't2';
             UPDATE send_queue SET stuck = 'bored'",
        )
        .unwrap();
        assert!(matches!(s.queued_sends(), Err(StoreError::Decode(_))));
    }
}
