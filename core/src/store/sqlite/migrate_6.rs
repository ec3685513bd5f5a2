//! The data part of schema migration 6: the keys kept for devices sent `m.no_olm` move from
//! `secret_values` (bound to their key string) to `no_olm_room_keys` (bound to their row).

use std::collections::HashMap;

use rusqlite::{Transaction, params};

use super::super::StoreError;
use super::super::cipher::StoreCipher;
use super::sql::{col, db, query_all};
use super::values::aad_secret_value;

/// Prefix of the secret values version 5 kept these keys under:
/// `no_olm_key|{room id}|{session id}|{index}`.
const PREFIX: &str = "no_olm_key|";

/// Move the kept keys of the rooms' current outbound sessions; drop those of other sessions
/// (never read again: a new session is shared anew). A key that does not parse or does not
/// authenticate stays where it was (reading it failed before; nothing reads it now).
pub(super) fn move_no_olm_keys(
    tx: &Transaction<'_>,
    cipher: &StoreCipher,
) -> Result<(), StoreError> {
    let current: HashMap<String, String> = query_all(
        tx,
        "SELECT room_id, session_id FROM outbound_group_sessions",
        [],
        |r| Ok((col(r, 0)?, col(r, 1)?)),
    )?
    .into_iter()
    .collect();
    let rows: Vec<(String, Vec<u8>)> = query_all(
        tx,
        "SELECT key, value FROM secret_values WHERE key GLOB 'no_olm_key|*'",
        [],
        |r| Ok((col(r, 0)?, col(r, 1)?)),
    )?;
    let mut insert = tx
        .prepare(
            "INSERT OR REPLACE INTO no_olm_room_keys
                (room_id, session_id, message_index, session_key) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(db)?;
    let mut delete = tx
        .prepare("DELETE FROM secret_values WHERE key = ?1")
        .map_err(db)?;
    for (key, blob) in rows {
        let Some((room_id, session_id, index)) = parse_key(&key) else {
            continue;
        };
        if current.get(room_id).map(String::as_str) == Some(session_id) {
            let Ok(session_key) = cipher.decrypt(&aad_secret_value(&key), &blob) else {
                continue;
            };
            let index_bytes = index.to_be_bytes();
            let aad = super::no_olm_keys::aad(room_id, session_id, &index_bytes);
            let blob = cipher.encrypt(&aad, &session_key)?;
            insert
                .execute(params![room_id, session_id, index, blob])
                .map_err(db)?;
        }
        delete.execute([&key]).map_err(db)?;
    }
    Ok(())
}

/// `(room id, session id, index)` of a key; a room id may contain `|`, a session id
/// (base64) and an index never do.
fn parse_key(key: &str) -> Option<(&str, &str, u32)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (rest, index) = rest.rsplit_once('|')?;
    let (room_id, session_id) = rest.rsplit_once('|')?;
    let index = index.parse().ok()?;
    (!room_id.is_empty() && !session_id.is_empty()).then_some((room_id, session_id, index))
}
