//! What the machine keeps about sessions it has no key for: `withheld_notices` (why a sender
//! did not give us a key) and `key_requests` (one per session). Both bounded, a flooding
//! sender or room first.

use ruma::{RoomId, UserId};
use rusqlite::{Connection, Transaction};

use super::super::{CryptoChanges, KeyRequestRecord, StoreError, WithheldNotice};
use super::sql::{col, each, parsed, query_opt};

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

/// Withheld notices and key requests.
pub(super) fn write(tx: &Transaction<'_>, changes: &CryptoChanges) -> Result<(), StoreError> {
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
