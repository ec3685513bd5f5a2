//! The sync loop: `/sync` responses into the crypto machine, the store and the timeline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ruma::api::client::filter::{FilterDefinition, LazyLoadOptions};
use ruma::api::client::message::get_message_events;
use ruma::api::client::sync::sync_events;
use ruma::serde::Raw;
use ruma::{OwnedRoomId, UInt};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::rooms::recipients;
use super::timeline::TimelineEvent;
use super::{Client, ClientError};
use crate::crypto::SyncChanges;
use crate::store::{Changes, MemberRecord, RoomRecord};

/// Timeline events per room per sync; older ones are fetched with `/messages`.
const TIMELINE_LIMIT: u32 = 50;
/// At most this many `/messages` pages (of 100) to fill one gap.
const MAX_BACKFILL_PAGES: usize = 20;

fn json<T>(raw: &Raw<T>) -> Option<Value> {
    serde_json::from_str(raw.json().get()).ok()
}

/// Apply one state event to the room and member records being built.
fn apply_state(
    room: &mut RoomRecord,
    members: &mut Vec<MemberRecord>,
    event: &Value,
    own_user: &str,
) {
    let event_type = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(state_key) = event.get("state_key").and_then(Value::as_str) else {
        return;
    };
    let content = event.get("content").cloned().unwrap_or(Value::Null);
    match event_type {
        // Encryption can never be turned off; the first setting stays.
        "m.room.encryption" if room.encryption.is_none() && content.get("algorithm").is_some() => {
            room.encryption = Some(content.to_string());
        }
        "m.room.history_visibility" => {
            room.history_visibility = content
                .get("history_visibility")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        "m.room.member" => {
            if let Some(membership) = content.get("membership").and_then(Value::as_str) {
                if state_key == own_user {
                    room.own_membership = Some(membership.to_owned());
                }
                members.retain(|m| m.user_id != state_key);
                members.push(MemberRecord {
                    room_id: room.room_id.clone(),
                    user_id: state_key.to_owned(),
                    membership: membership.to_owned(),
                });
            }
        }
        _ => {}
    }
}

/// Stops the background sync loop when dropped or stopped.
pub struct SyncHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SyncHandle {
    /// Stop the loop and wait until it has ended. Idempotent.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Client {
    /// Run one `/sync` (long-polling up to `timeout`) and process it completely.
    pub async fn sync_once(&self, timeout: Duration) -> Result<(), ClientError> {
        let _guard = self.sync_lock.lock().await;
        let machine = self.machine()?;
        if let Err(e) = self.send_outgoing().await {
            warn!(error = %e, "sending pending crypto requests failed; will retry");
        }
        let since = self.store.sync_token()?;
        let mut request = sync_events::v3::Request::new();
        request.since = since.clone();
        request.timeout = Some(timeout);
        let mut filter = FilterDefinition::default();
        filter.room.state.lazy_load_options = LazyLoadOptions::Enabled {
            include_redundant_members: false,
        };
        filter.room.timeline.limit = Some(UInt::from(TIMELINE_LIMIT));
        request.filter = Some(sync_events::v3::Filter::FilterDefinition(filter));
        let response = self.http.send(request).await?;

        let own_user = machine.user_id().to_owned();
        let mut extra = Changes::default();
        let mut timelines: Vec<(String, Vec<Value>)> = Vec::new();
        let mut encrypted_rooms = Vec::new();
        for (room_id, joined) in &response.rooms.join {
            let room_id = room_id.to_string();
            let mut room = self.store.room(&room_id)?.unwrap_or_else(|| RoomRecord {
                room_id: room_id.clone(),
                ..Default::default()
            });
            room.own_membership = Some("join".into());
            let mut members = Vec::new();
            let state_events = match &joined.state {
                sync_events::v3::State::Before(s) | sync_events::v3::State::After(s) => &s.events,
                _ => &Vec::new(),
            };
            for event in state_events.iter().filter_map(json) {
                apply_state(&mut room, &mut members, &event, &own_user);
            }
            let mut events: Vec<Value> = joined.timeline.events.iter().filter_map(json).collect();
            if let (true, Some(since), Some(prev_batch)) =
                (joined.timeline.limited, &since, &joined.timeline.prev_batch)
            {
                // The server skipped events since our last sync: fetch the gap so that no
                // message is lost and order is kept.
                let mut gap = self.backfill(&room_id, prev_batch, since).await?;
                gap.append(&mut events);
                events = gap;
            }
            for event in events.iter().filter(|e| e.get("state_key").is_some()) {
                apply_state(&mut room, &mut members, event, &own_user);
            }
            if room.encryption.is_some() {
                encrypted_rooms.push(room_id.clone());
            }
            extra.members.extend(members);
            extra.rooms.push(room);
            timelines.push((room_id, events));
        }
        for (room_id, invited) in &response.rooms.invite {
            let room_id = room_id.to_string();
            let mut room = self.store.room(&room_id)?.unwrap_or_else(|| RoomRecord {
                room_id: room_id.clone(),
                ..Default::default()
            });
            let mut members = Vec::new();
            for event in invited.invite_state.events.iter().filter_map(json) {
                apply_state(&mut room, &mut members, &event, &own_user);
            }
            room.own_membership = Some("invite".into());
            extra.members.extend(members);
            extra.rooms.push(room);
        }
        for room_id in response.rooms.leave.keys() {
            if let Some(mut room) = self.store.room(room_id.as_str())? {
                room.own_membership = Some("leave".into());
                extra.rooms.push(room);
            }
        }

        let changes = SyncChanges {
            to_device_events: response.to_device.events.iter().filter_map(json).collect(),
            changed_users: response
                .device_lists
                .changed
                .iter()
                .map(|u| u.to_string())
                .collect(),
            left_users: response
                .device_lists
                .left
                .iter()
                .map(|u| u.to_string())
                .collect(),
            one_time_key_counts: Some(
                response
                    .device_one_time_keys_count
                    .iter()
                    .map(|(k, v)| (k.to_string(), u64::from(*v)))
                    .collect::<BTreeMap<_, _>>(),
            ),
            unused_fallback_key_types: response
                .device_unused_fallback_key_types
                .as_ref()
                .map(|types| types.iter().map(|t| t.to_string()).collect()),
            next_batch: Some(response.next_batch.clone()),
            extra,
        };
        let outcome = machine.receive_sync_changes(changes)?;
        self.ask_about_key_share_requests(&machine)?;
        debug!(
            to_device = outcome.to_device.len(),
            room_keys = outcome.room_keys.len(),
            "sync processed"
        );
        let provider = self.hooks().trust_policy;
        let policy_of = |room_id: &str| {
            provider
                .as_ref()
                .map(|p| p.policy_for_room(room_id))
                .unwrap_or_default()
        };
        // Late keys: events that could not be decrypted before (stored, so also those of an
        // earlier run) are retried now. The first sync of a process also retries stored
        // events whose key is already there (it arrived just before the process died),
        // re-delivering only those that now decrypt.
        let mut retry: Vec<(String, String, bool)> = outcome
            .room_keys
            .iter()
            .map(|k| (k.room_id.clone(), k.session_id.clone(), false))
            .collect();
        if !self
            .stored_events_checked
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            for (room_id, session_id) in self.store.undecryptable_sessions()? {
                if self
                    .store
                    .inbound_group_session(&room_id, &session_id)?
                    .is_some()
                {
                    retry.push((room_id, session_id, true));
                }
            }
        }
        let mut resolved = Vec::new();
        for (room_id, session_id, only_if_decrypted) in &retry {
            for waiting in self.store.undecryptable_events(room_id, session_id)? {
                let Ok(event) = serde_json::from_str::<Value>(&waiting.event_json) else {
                    resolved.push((waiting.room_id, waiting.event_id));
                    continue;
                };
                let item = TimelineEvent::from_sync(&machine, room_id, &event, policy_of(room_id))?;
                let Some(mut item) = item else {
                    resolved.push((waiting.room_id, waiting.event_id));
                    continue;
                };
                if *only_if_decrypted && !item.decrypted {
                    continue;
                }
                // Delivered again either way: decrypted, or with the new reason (e.g. the
                // key arrived but starts after this message). Kept while a better key may
                // still come.
                item.is_update = true;
                if !item.waiting_for_key {
                    resolved.push((waiting.room_id.clone(), waiting.event_id.clone()));
                }
                self.publish(item);
            }
        }
        if !resolved.is_empty() {
            self.store.save_changes(Changes {
                resolved_events: resolved,
                ..Default::default()
            })?;
        }
        // Olm channels that broke are repaired (new session + m.dummy), and own devices we
        // answer key requests of get a session.
        if let Some(claim) = machine.session_repair_request()?
            && let Err(e) = self.send_request(&machine, claim).await
        {
            warn!(error = %e, "unwedging failed; will retry");
        }

        for room_id in &encrypted_rooms {
            if let Some(room) = self.store.room(room_id)? {
                let users = recipients(&room, &self.store.members(room_id)?);
                machine.update_tracked_users(&users)?;
            }
        }
        let mut undecryptable = Vec::new();
        for (room_id, events) in timelines {
            if events.is_empty() {
                continue;
            }
            let policy = policy_of(&room_id);
            for event in &events {
                if let Some(item) = TimelineEvent::from_sync(&machine, &room_id, event, policy)? {
                    if item.waiting_for_key {
                        undecryptable.extend(Self::undecryptable_record(&room_id, event));
                        // Our other devices may have the key (seed 004: key sharing).
                        let content = &event["content"];
                        if let (Some(session_id), Some(sender_key)) = (
                            content["session_id"].as_str(),
                            content["sender_key"].as_str(),
                        ) {
                            let sender =
                                event["sender"].as_str().zip(content["device_id"].as_str());
                            machine.request_room_key(&room_id, session_id, sender_key, sender)?;
                        }
                    }
                    self.publish(item);
                }
            }
        }
        self.keep_undecryptable(undecryptable)?;
        if let Err(e) = self.send_outgoing().await {
            warn!(error = %e, "sending crypto requests failed; will retry");
            self.schedule_retry(&e, "pending encryption requests");
        }
        self.share_with_new_devices().await;
        // Messages a previous process could not send (it died, or the network was gone).
        if !self
            .send_queue_resumed
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            match self.send_queued().await {
                Ok((_, _, Some(e))) => self.schedule_retry(&e, "message send failed"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "resuming the send queue failed"),
            }
        }
        Ok(())
    }

    /// Events of `room_id` between the sync token `since` and `prev_batch`, oldest first.
    async fn backfill(
        &self,
        room_id: &str,
        prev_batch: &str,
        since: &str,
    ) -> Result<Vec<Value>, ClientError> {
        let room =
            OwnedRoomId::try_from(room_id).map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        let mut from = prev_batch.to_owned();
        let mut newest_first = Vec::new();
        for _ in 0..MAX_BACKFILL_PAGES {
            let mut request = get_message_events::v3::Request::backward(room.clone());
            request.from = Some(from.clone());
            request.to = Some(since.to_owned());
            request.limit = UInt::from(100u32);
            let response = super::rooms::with_retry(|| self.http.send(request.clone())).await?;
            if response.chunk.is_empty() {
                break;
            }
            newest_first.extend(response.chunk.iter().filter_map(json));
            match response.end {
                Some(end) if end != from => from = end,
                _ => break,
            }
        }
        debug!(
            room_id,
            events = newest_first.len(),
            "filled a timeline gap"
        );
        newest_first.reverse();
        Ok(newest_first)
    }

    /// Sync in the background until the handle is stopped or dropped. Failures are retried
    /// with backoff (1 s doubling to 30 s).
    pub fn start_sync(self: &Arc<Self>) -> SyncHandle {
        let (stop, mut stopped) = watch::channel(false);
        let client = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    result = client.sync_once(Duration::from_secs(30)) => match result {
                        Ok(()) => backoff = Duration::from_secs(1),
                        Err(e) => {
                            warn!(error = %e, "sync failed");
                            tokio::select! {
                                _ = stopped.changed() => break,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    },
                }
                if *stopped.borrow() {
                    break;
                }
            }
        });
        SyncHandle {
            stop,
            task: Some(task),
        }
    }
}
