//! Writing one [`Changes`] batch inside an open transaction.

use rusqlite::{Transaction, params};

use super::super::cipher::StoreCipher;
use super::super::{Changes, StoreError};
use super::{
    aad_account, aad_inbound, aad_olm, aad_outbound, aad_queued_send, aad_secret_value, db, meta,
    set_meta, u64_to_sql,
};

/// Write every record of `changes` and bump the generation, all inside `tx`. On error the
/// caller drops `tx`, which rolls everything back.
pub(super) fn write_changes(
    tx: &Transaction<'_>,
    c: &StoreCipher,
    changes: &Changes,
) -> Result<(), StoreError> {
    if let Some(a) = &changes.account {
        let pickle = c.encrypt(&aad_account(&a.user_id, &a.device_id), a.pickle.as_bytes())?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO account (id, user_id, device_id, pickle,
                device_keys_uploaded, server_one_time_key_count, fallback_key_created_ms)
             VALUES (0, ?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut st| {
            st.execute(params![
                a.user_id,
                a.device_id,
                pickle,
                a.device_keys_uploaded,
                u64_to_sql(a.server_one_time_key_count),
                u64_to_sql(a.fallback_key_created_ms),
            ])
        })
        .map_err(db)?;
    }
    if !changes.olm_sessions.is_empty() {
        let mut st = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO olm_sessions
                    (sender_key, session_id, pickle, created_ms, last_used_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(db)?;
        for s in &changes.olm_sessions {
            let pickle = c.encrypt(&aad_olm(&s.sender_key, &s.session_id), s.pickle.as_bytes())?;
            st.execute(params![
                s.sender_key,
                s.session_id,
                pickle,
                u64_to_sql(s.created_ms),
                u64_to_sql(s.last_used_ms),
            ])
            .map_err(db)?;
        }
    }
    if !changes.inbound_group_sessions.is_empty() {
        let mut st = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO inbound_group_sessions (room_id, session_id,
                    sender_key, signing_key, sender_user, sender_device, pickle,
                    first_known_index)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(db)?;
        for s in &changes.inbound_group_sessions {
            let index = s.first_known_index.to_be_bytes();
            let pickle = c.encrypt(&aad_inbound(s, &index), s.pickle.as_bytes())?;
            st.execute(params![
                s.room_id,
                s.session_id,
                s.sender_key,
                s.signing_key,
                s.sender_user,
                s.sender_device,
                pickle,
                s.first_known_index,
            ])
            .map_err(db)?;
        }
    }
    if !changes.outbound_group_sessions.is_empty() {
        let mut st = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO outbound_group_sessions
                    (room_id, session_id, pickle, created_ms, message_count, shared_with)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db)?;
        for s in &changes.outbound_group_sessions {
            let pickle = c.encrypt(
                &aad_outbound(&s.room_id, &s.session_id),
                s.pickle.as_bytes(),
            )?;
            let shared_with = serde_json::to_string(&s.shared_with)
                .map_err(|e| StoreError::Decode(format!("shared_with: {e}")))?;
            st.execute(params![
                s.room_id,
                s.session_id,
                pickle,
                u64_to_sql(s.created_ms),
                u64_to_sql(s.message_count),
                shared_with,
            ])
            .map_err(db)?;
        }
    }
    // After the upserts of the same batch: when in doubt, discard (fail closed).
    if !changes.discarded_outbound_sessions.is_empty() {
        let mut st = tx
            .prepare_cached("DELETE FROM outbound_group_sessions WHERE room_id = ?1")
            .map_err(db)?;
        for room_id in &changes.discarded_outbound_sessions {
            st.execute([room_id]).map_err(db)?;
        }
    }
    if !changes.devices.is_empty() {
        let mut st = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO devices (user_id, device_id, curve25519, ed25519,
                    algorithms, display_name, keys_json, local_trust, deleted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(db)?;
        for d in &changes.devices {
            let algorithms = serde_json::to_string(&d.algorithms)
                .map_err(|e| StoreError::Decode(format!("algorithms: {e}")))?;
            st.execute(params![
                d.user_id,
                d.device_id,
                d.curve25519,
                d.ed25519,
                algorithms,
                d.display_name,
                d.keys_json,
                d.local_trust.as_str(),
                d.deleted,
            ])
            .map_err(db)?;
        }
    }
    if !changes.tracked_users.is_empty() {
        let mut st = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO tracked_users (user_id, state, sequence)
                 VALUES (?1, ?2, ?3)",
            )
            .map_err(db)?;
        for u in &changes.tracked_users {
            st.execute(params![u.user_id, u.state.as_str(), u64_to_sql(u.sequence)])
                .map_err(db)?;
        }
    }
    if !changes.megolm_indices.is_empty() {
        // The first event seen at an index is kept (replay detection).
        let mut st = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO megolm_indices
                    (sender_key, session_id, message_index, event_id, origin_ts)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(db)?;
        for i in &changes.megolm_indices {
            st.execute(params![
                i.sender_key,
                i.session_id,
                i.index,
                i.event_id,
                u64_to_sql(i.origin_ts),
            ])
            .map_err(db)?;
        }
    }
    if !changes.rooms.is_empty() {
        let mut st = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO rooms (room_id, encryption, history_visibility,
                    members_synced, own_membership)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(db)?;
        for r in &changes.rooms {
            st.execute(params![
                r.room_id,
                r.encryption,
                r.history_visibility,
                r.members_synced,
                r.own_membership,
            ])
            .map_err(db)?;
        }
    }
    if !changes.members.is_empty() {
        let mut st = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO members (room_id, user_id, membership)
                 VALUES (?1, ?2, ?3)",
            )
            .map_err(db)?;
        for m in &changes.members {
            st.execute(params![m.room_id, m.user_id, m.membership])
                .map_err(db)?;
        }
    }
    if !changes.pending_to_device.is_empty() {
        // An upsert (not REPLACE) keeps `seq`, i.e. the request's place in the queue.
        let mut st = tx
            .prepare_cached(
                "INSERT INTO pending_to_device (txn_id, event_type, messages_json)
                 VALUES (?1, ?2, ?3)
                 ON CONFLICT (txn_id) DO UPDATE SET
                    event_type = excluded.event_type,
                    messages_json = excluded.messages_json",
            )
            .map_err(db)?;
        for p in &changes.pending_to_device {
            st.execute(params![p.txn_id, p.event_type, p.messages_json])
                .map_err(db)?;
        }
    }
    if !changes.sent_to_device.is_empty() {
        let mut st = tx
            .prepare_cached("DELETE FROM pending_to_device WHERE txn_id = ?1")
            .map_err(db)?;
        for txn_id in &changes.sent_to_device {
            st.execute([txn_id]).map_err(db)?;
        }
    }
    if !changes.queued_sends.is_empty() {
        // An upsert keeps `seq`, i.e. the message's place in the queue.
        let mut st = tx
            .prepare_cached(
                "INSERT INTO send_queue (txn_id, room_id, content) VALUES (?1, ?2, ?3)
                 ON CONFLICT (txn_id) DO UPDATE SET
                    room_id = excluded.room_id,
                    content = excluded.content",
            )
            .map_err(db)?;
        for q in &changes.queued_sends {
            let blob = c.encrypt(
                &aad_queued_send(&q.txn_id, &q.room_id),
                q.content.as_bytes(),
            )?;
            st.execute(params![q.txn_id, q.room_id, blob]).map_err(db)?;
        }
    }
    if !changes.finished_sends.is_empty() {
        let mut st = tx
            .prepare_cached("DELETE FROM send_queue WHERE txn_id = ?1")
            .map_err(db)?;
        for txn_id in &changes.finished_sends {
            st.execute([txn_id]).map_err(db)?;
        }
    }
    if !changes.undecryptable_events.is_empty() {
        // An upsert keeps `seq`, i.e. the event's place in the order.
        let mut st = tx
            .prepare_cached(
                "INSERT INTO undecryptable_events (room_id, event_id, session_id, event_json)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (room_id, event_id) DO UPDATE SET
                    session_id = excluded.session_id,
                    event_json = excluded.event_json",
            )
            .map_err(db)?;
        for e in &changes.undecryptable_events {
            st.execute(params![e.room_id, e.event_id, e.session_id, e.event_json])
                .map_err(db)?;
        }
    }
    if !changes.resolved_events.is_empty() {
        let mut st = tx
            .prepare_cached("DELETE FROM undecryptable_events WHERE room_id = ?1 AND event_id = ?2")
            .map_err(db)?;
        for (room_id, event_id) in &changes.resolved_events {
            st.execute([room_id, event_id]).map_err(db)?;
        }
    }
    if !changes.values.is_empty() {
        let mut st = tx
            .prepare_cached("INSERT OR REPLACE INTO plain_values (key, value) VALUES (?1, ?2)")
            .map_err(db)?;
        for (k, v) in &changes.values {
            st.execute([k, v]).map_err(db)?;
        }
    }
    if !changes.secret_values.is_empty() {
        let mut st = tx
            .prepare_cached("INSERT OR REPLACE INTO secret_values (key, value) VALUES (?1, ?2)")
            .map_err(db)?;
        for (k, v) in &changes.secret_values {
            let blob = c.encrypt(&aad_secret_value(k), v.as_bytes())?;
            st.execute(params![k, blob]).map_err(db)?;
        }
    }
    if let Some(token) = &changes.sync_token {
        set_meta(tx, meta::SYNC_TOKEN, token)?;
    }
    tx.prepare_cached("UPDATE meta SET value = value + 1 WHERE key = ?1")
        .and_then(|mut st| st.execute([meta::GENERATION]))
        .map_err(db)?;
    Ok(())
}
