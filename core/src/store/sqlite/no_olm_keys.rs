//! `no_olm_room_keys`: the session key of our outbound Megolm session at an index where a
//! device was sent `m.no_olm` instead, for when it gets an Olm session (encrypted, bound to
//! its row). Kept only while that session is the room's outbound session.

use ruma::{OwnedRoomId, RoomId};
use rusqlite::{Connection, Transaction, params};

use super::super::cipher::StoreCipher;
use super::super::{CryptoChanges, NoOlmRoomKey, SecretBlob, StoreError};
use super::sql::{col, count, each, query_opt};

pub(super) fn read(
    conn: &Connection,
    c: &StoreCipher,
    room_id: &RoomId,
    session_id: &str,
    index: u32,
) -> Result<Option<NoOlmRoomKey>, StoreError> {
    query_opt(
        conn,
        "SELECT session_key FROM no_olm_room_keys
         WHERE room_id = ?1 AND session_id = ?2 AND message_index = ?3",
        params![room_id.as_str(), session_id, index],
        |r| {
            let blob: Vec<u8> = col(r, 0)?;
            let index_bytes = index.to_be_bytes();
            let aad = aad(room_id.as_str(), session_id, &index_bytes);
            Ok(NoOlmRoomKey {
                room_id: room_id.to_owned(),
                session_id: session_id.to_owned(),
                index,
                session_key: SecretBlob(c.decrypt(&aad, &blob)?),
            })
        },
    )
}

pub(super) fn count_all(conn: &Connection) -> Result<u64, StoreError> {
    count(conn, "SELECT count(*) FROM no_olm_room_keys", [])
}

/// The keys of this batch; then, for every room whose outbound session the batch wrote or
/// discarded (already applied), the keys of any other session are dropped.
pub(super) fn write(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &CryptoChanges,
) -> Result<(), StoreError> {
    each(
        tx,
        "INSERT OR REPLACE INTO no_olm_room_keys
            (room_id, session_id, message_index, session_key)
         VALUES (?1, ?2, ?3, ?4)",
        &changes.no_olm_room_keys,
        |k| {
            let index = k.index.to_be_bytes();
            let aad = aad(k.room_id.as_str(), &k.session_id, &index);
            let blob = c.encrypt(&aad, k.session_key.as_bytes())?;
            Ok((k.room_id.as_str(), k.session_id.as_str(), k.index, blob))
        },
    )?;
    let rooms: Vec<&OwnedRoomId> = changes
        .outbound_group_sessions
        .iter()
        .map(|s| &s.room_id)
        .chain(&changes.discarded_outbound_sessions)
        .collect();
    each(
        tx,
        "DELETE FROM no_olm_room_keys WHERE room_id = ?1 AND session_id NOT IN (
            SELECT session_id FROM outbound_group_sessions WHERE room_id = ?1)",
        &rooms,
        |room_id| Ok([room_id.as_str()]),
    )
}

/// Binds the key to its room, session and index.
pub(super) fn aad<'a>(room_id: &'a str, session_id: &'a str, index: &'a [u8; 4]) -> [&'a [u8]; 4] {
    [
        b"no_olm_room_key",
        room_id.as_bytes(),
        session_id.as_bytes(),
        index,
    ]
}
