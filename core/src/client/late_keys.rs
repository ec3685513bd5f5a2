//! Late keys: events that could not be decrypted are kept (in the sync's own transaction),
//! and decrypted again when a key for their session arrives, also across restarts.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use ruma::{OwnedEventId, OwnedRoomId, RoomId};
use serde_json::Value;
use tracing::debug;

use super::timeline::TimelineEvent;
use super::{Client, ClientError};
use crate::crypto::{OlmMachine, SyncOutcome};
use crate::store::{Changes, ClientChanges, UndecryptableEvent};

/// Which kept events to decrypt again.
pub(crate) struct Retry {
    /// `(room id, session id)` of the sessions to retry.
    pub sessions: Vec<(OwnedRoomId, String)>,
    /// Deliver again only the events that now decrypt and are shown (a check, not news
    /// about a key).
    pub only_if_decrypted: bool,
}

impl Client {
    /// A record of an event whose key is missing, to store so that it is decrypted when the
    /// key arrives (also after a restart). `None` if it names no session.
    pub(crate) fn undecryptable_record(
        room_id: &RoomId,
        event: &Value,
    ) -> Option<UndecryptableEvent> {
        let session_id = event["content"]["session_id"].as_str()?;
        Some(UndecryptableEvent {
            room_id: room_id.to_owned(),
            session_id: Some(session_id).filter(|s| !s.is_empty())?.to_owned(),
            event_id: OwnedEventId::try_from(event["event_id"].as_str()?).ok()?,
            event_json: event.to_string(),
        })
    }

    /// After a sync committed: kept events of the sessions whose keys it brought, and at the
    /// first sync of a process the kept events whose key is already stored (it arrived just
    /// before an earlier process died). Events of this very sync (`fresh`) are skipped:
    /// they were decrypted with the batch's keys already. Store and crypto I/O: runs on a
    /// blocking thread, as all of this module.
    pub(crate) fn retry_late_keys(
        &self,
        machine: &OlmMachine,
        outcome: &SyncOutcome,
        fresh: &HashSet<OwnedEventId>,
    ) -> Result<(), ClientError> {
        let arrived = outcome
            .room_keys
            .iter()
            .map(|k| (k.room_id.clone(), k.session_id.clone()))
            .collect();
        self.retry_kept_events(
            machine,
            Retry {
                sessions: arrived,
                only_if_decrypted: false,
            },
            fresh,
        )?;
        if !self
            .inner
            .stored_events_checked
            .swap(true, Ordering::SeqCst)
        {
            let store = self.store()?;
            let mut stored = Vec::new();
            for (room_id, session_id) in store.undecryptable_sessions()? {
                if store
                    .inbound_group_session(&room_id, &session_id)?
                    .is_some()
                {
                    stored.push((room_id, session_id));
                }
            }
            let retry = Retry {
                sessions: stored,
                only_if_decrypted: true,
            };
            self.retry_kept_events(machine, retry, fresh)?;
        }
        Ok(())
    }

    /// After new devices were learned: kept events of sessions whose sending device was
    /// unknown (forwarded keys of unknown origin) may be attributable now.
    pub(crate) fn retry_unconfirmed_senders(
        &self,
        machine: &OlmMachine,
    ) -> Result<(), ClientError> {
        let store = self.store()?;
        let mut sessions = Vec::new();
        for (room_id, session_id) in store.undecryptable_sessions()? {
            let record = store.inbound_group_session(&room_id, &session_id)?;
            if record.is_some_and(|r| r.sender_user.is_none()) {
                sessions.push((room_id, session_id));
            }
        }
        let retry = Retry {
            sessions,
            only_if_decrypted: true,
        };
        self.retry_kept_events(machine, retry, &HashSet::new())
    }

    /// Decrypt the kept events of `retry.sessions` again and deliver them as updates
    /// (decrypted, or with the new reason); forget those no key can change any more. Their
    /// replay records and the forgetting are one transaction, committed before any is shown.
    pub(crate) fn retry_kept_events(
        &self,
        machine: &OlmMachine,
        retry: Retry,
        fresh: &HashSet<OwnedEventId>,
    ) -> Result<(), ClientError> {
        let store = self.store()?;
        let mut batch = machine.begin_decrypt();
        let mut resolved = Vec::new();
        let mut updates = Vec::new();
        for (room_id, session_id) in &retry.sessions {
            let policy = self.policy_of(room_id);
            for waiting in store.undecryptable_events(room_id, session_id)? {
                if fresh.contains(&waiting.event_id) {
                    continue;
                }
                let event = serde_json::from_str::<Value>(&waiting.event_json).ok();
                let item = match &event {
                    Some(event) => TimelineEvent::from_sync(&mut batch, room_id, event, policy)?,
                    None => None,
                };
                let Some(mut item) = item else {
                    resolved.push((waiting.room_id, waiting.event_id));
                    continue;
                };
                if retry.only_if_decrypted && !item.is_shown() {
                    continue;
                }
                item.is_update = true;
                if !item.may_change() {
                    resolved.push((waiting.room_id.clone(), waiting.event_id.clone()));
                }
                updates.push(item);
            }
        }
        if !resolved.is_empty() {
            debug!(events = resolved.len(), "kept events resolved by late keys");
        }
        batch.commit(Changes::from(ClientChanges {
            resolved_events: resolved,
            ..Default::default()
        }))?;
        for item in updates {
            self.publish(item);
        }
        Ok(())
    }
}
