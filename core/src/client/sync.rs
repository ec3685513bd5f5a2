//! The sync loop: `/sync` answers into the crypto machine, the store and the timeline.
//!
//! [`Client::sync_once`] reads as its steps: send what is pending, fetch the answer (parsed
//! leniently, [`super::sync_response`]), fill timeline gaps, apply it in one transaction
//! ([`Client::apply_sync`]), then the network follow-ups ([`Client::after_sync`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ruma::api::client::filter::{Filter, FilterDefinition, LazyLoadOptions, RoomEventFilter};
use ruma::api::client::message::get_message_events;
use ruma::api::client::sync::sync_events;
use ruma::{OwnedEventId, OwnedRoomId, UInt};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::room_state::room_changes;
use super::rooms::recipients;
use super::sync_response::{JoinedRoom, SyncResponse, event_within_limits};
use super::sync_stream::{self, MAX_KEPT_BYTES};
use super::timeline::TimelineEvent;
use super::{Client, ClientError, TrustPolicy};
use crate::crypto::{OlmMachine, SyncBatch, SyncChanges};
use crate::http::{HttpError, with_retry};
use crate::store::{Changes, ClientChanges, MemberRecord, Store};

/// Timeline events per room per sync; older ones are fetched with `/messages`.
const TIMELINE_LIMIT: u32 = 50;
/// Timeline limit after an answer was too large to read (gaps are filled page by page).
const SMALL_TIMELINE_LIMIT: u32 = 1;
/// At most this many `/messages` pages (of 100) to fill one gap.
const MAX_BACKFILL_PAGES: usize = 20;
/// At most this many bytes of events back-filled for one sync (all rooms).
const MAX_BACKFILL_BYTES: usize = 16 * 1024 * 1024;

/// Bytes of a `/sync` answer read at most (never held whole: see `sync_stream`).
const MAX_SYNC_READ_BYTES: usize = 256 * 1024 * 1024;

/// The sync filter: lazy-loaded members, `limit` timeline events per room, and nothing of
/// what Newt does not use (presence, account data, ephemeral events).
fn sync_filter(limit: u32) -> FilterDefinition {
    let mut filter = FilterDefinition::default();
    filter.room.state.lazy_load_options = LazyLoadOptions::Enabled {
        include_redundant_members: false,
    };
    filter.room.timeline.limit = Some(UInt::from(limit));
    filter.presence = Filter::ignore_all();
    filter.account_data = Filter::ignore_all();
    filter.room.ephemeral = RoomEventFilter::ignore_all();
    filter.room.account_data = RoomEventFilter::ignore_all();
    filter
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

/// What decrypting the timelines of one answer produced.
#[derive(Default)]
struct Timelines {
    /// Items to publish once the answer is committed.
    items: Vec<TimelineEvent>,
    /// Their event ids (late-key retries skip them).
    event_ids: HashSet<OwnedEventId>,
}

impl Client {
    /// Run one `/sync` (long-polling up to `timeout`) and process it completely.
    pub async fn sync_once(&self, timeout: Duration) -> Result<(), ClientError> {
        let guard = Arc::clone(&self.inner.sync_lock).lock_owned().await;
        let machine = self.machine()?;
        if let Err(e) = self.send_outgoing().await {
            warn!(error = %e, "sending pending crypto requests failed; will retry");
        }
        let since = self.blocking(|c| Ok(c.store()?.sync_token()?)).await?;
        let mut sync = self.fetch_sync(since.clone(), timeout).await?;
        if let Some(since) = &since {
            self.fill_gaps(&mut sync, since).await;
        }
        // The whole answer in one blocking job: the batch holds the machine's lock. The
        // job holds the sync lock too: if this call is dropped meanwhile, the next sync
        // starts only after the answer is committed (with its token).
        let m = Arc::clone(&machine);
        let _guard = self
            .blocking(move |c| c.apply_sync(&m, sync).map(|()| guard))
            .await?;
        self.after_sync(&machine).await
    }

    /// Fetch one answer. After an answer too large to read, the next asks for a smaller
    /// timeline (the gaps are filled page by page), so that sync moves on.
    async fn fetch_sync(
        &self,
        since: Option<String>,
        timeout: Duration,
    ) -> Result<SyncResponse, ClientError> {
        let shrink = self.inner.sync_answer_too_large.load(Ordering::SeqCst);
        let limit = if shrink {
            SMALL_TIMELINE_LIMIT
        } else {
            TIMELINE_LIMIT
        };
        let mut request = sync_events::v3::Request::new();
        request.since = since;
        request.timeout = Some(timeout);
        request.filter = Some(sync_events::v3::Filter::FilterDefinition(sync_filter(
            limit,
        )));
        // Read as a stream: only what Newt keeps is held (`sync_stream`).
        let read = |body: &mut dyn std::io::Read| sync_stream::read(body, MAX_KEPT_BYTES);
        let sync = match self
            .inner
            .http
            .send_streaming(request, MAX_SYNC_READ_BYTES, None, read)
            .await
        {
            Err(e @ HttpError::TooLarge { .. }) => {
                self.inner
                    .sync_answer_too_large
                    .store(true, Ordering::SeqCst);
                return Err(e.into());
            }
            other => other??,
        };
        self.inner
            .sync_answer_too_large
            .store(false, Ordering::SeqCst);
        Ok(sync)
    }

    /// Apply an answer body without the network (tests; what a background decryptor feeds).
    #[cfg(test)]
    pub(crate) fn receive_sync_response(&self, body: &[u8]) -> Result<(), ClientError> {
        let machine = self.machine()?;
        self.apply_sync(&machine, SyncResponse::parse(body)?)
    }

    /// Everything the answer carries, stored in one transaction with its sync token: to-device
    /// events, device lists, room state, tracking of the encrypted rooms' members, replay
    /// records, key requests and the undecryptable events kept for late keys. Then the
    /// timeline items are published and kept events whose keys arrived are retried.
    ///
    /// Store and crypto I/O: runs on a blocking thread ([`Client::blocking`]).
    fn apply_sync(&self, machine: &Arc<OlmMachine>, sync: SyncResponse) -> Result<(), ClientError> {
        let store = self.store()?;
        let rooms = room_changes(&*store, &sync, machine.user_id())?;
        let (extra, encrypted_rooms) = (rooms.changes, rooms.encrypted);
        // The app's callback runs before the machine is locked (it may call back into us).
        let policies: HashMap<OwnedRoomId, TrustPolicy> = sync
            .joined
            .iter()
            .map(|r| (r.room_id.clone(), self.policy_of(&r.room_id)))
            .collect();
        let changes = SyncChanges {
            to_device_events: sync.to_device,
            changed_users: sync.changed_users,
            left_users: sync.left_users,
            one_time_key_counts: sync.one_time_key_counts,
            unused_fallback_key_types: sync.unused_fallback_key_types,
            next_batch: Some(sync.next_batch),
            extra,
        };
        let mut batch = machine.begin_sync(changes)?;
        track_members(&*store, &mut batch, &encrypted_rooms)?;
        let timelines = self.decrypt_timelines(&mut batch, &sync.joined, &policies)?;
        let mut outcome = batch.commit()?;
        crash_point();
        self.report_verifications(std::mem::take(&mut outcome.verifications));
        for item in timelines.items {
            self.publish(item);
        }
        for (room_id, txn_id, event_id) in rooms.echoed {
            // Its answer was lost, but the server has it.
            let state = super::send_state::SendState::Sent {
                event_id: Some(event_id),
            };
            self.publish_send(&room_id, &txn_id, state, None);
        }
        self.retry_late_keys(machine, &outcome, &timelines.event_ids)
    }

    /// Decrypt the timelines with the batch's keys. Events that may still get a key are
    /// kept (with the batch) and their key is asked for.
    fn decrypt_timelines(
        &self,
        batch: &mut SyncBatch<'_>,
        joined: &[JoinedRoom],
        policies: &HashMap<OwnedRoomId, TrustPolicy>,
    ) -> Result<Timelines, ClientError> {
        let mut out = Timelines::default();
        let mut kept = Vec::new();
        for room in joined {
            let room_id = &room.room_id;
            let policy = policies.get(room_id).copied().unwrap_or_default();
            for event in &room.timeline {
                let Some(item) = TimelineEvent::from_sync(batch, room_id, event, policy)? else {
                    continue;
                };
                if item.may_change() {
                    kept.extend(Self::undecryptable_record(room_id, event));
                }
                if item.waiting_for_key {
                    request_key(batch, &room.room_id, &item, event)?;
                }
                out.event_ids.insert(item.event_id.clone());
                out.items.push(item);
            }
        }
        batch.keep(Changes::from(ClientChanges {
            undecryptable_events: kept,
            ..Default::default()
        }));
        Ok(out)
    }

    /// The network follow-ups of a committed answer: prompts about key requests, repair of
    /// broken Olm channels, pending requests, keys for new devices, the send queue.
    async fn after_sync(&self, machine: &Arc<OlmMachine>) -> Result<(), ClientError> {
        let m = Arc::clone(machine);
        let repair = self
            .blocking(move |c| {
                // Taken and handed to their tasks in one job: none is lost on the way.
                c.ask_about_key_share_requests(&m)?;
                Ok(m.session_repair_request()?)
            })
            .await?;
        // Olm channels that broke are repaired (new session + m.dummy), and own devices we
        // answer key requests of get a session.
        if let Some(claim) = repair
            && let Err(e) = self.send_request(machine, claim).await
        {
            warn!(error = %e, "unwedging failed; will retry");
        }
        if let Err(e) = self.send_outgoing().await {
            warn!(error = %e, "sending crypto requests failed; will retry");
            self.schedule_retry(&e, "pending encryption requests");
        }
        if self.inner.new_devices_learned.swap(false, Ordering::SeqCst) {
            let m = Arc::clone(machine);
            self.blocking(move |c| c.retry_unconfirmed_senders(&m))
                .await?;
        }
        self.share_with_new_devices().await;
        self.spawn_backup_work();
        // Sender data the server could not give before (cheap when nothing is due).
        if let Err(e) = self.retry_sender_data(false).await {
            warn!(error = %e, "retrying sender data failed; will retry");
        }
        // Messages a previous process could not send (it died, or the network was gone).
        // In the background: the sync loop never waits for sends or uploads.
        if !self.inner.send_queue_resumed.swap(true, Ordering::SeqCst) {
            self.spawn_drain();
        } else if self.retries().network_is_back() && self.retries().any_due() {
            // This sync got through: messages that failed on the network go now.
            self.spawn_drain();
        }
        Ok(())
    }

    /// Fill the gaps of limited timelines with `/messages`, so that no message is skipped
    /// and order is kept. A room whose gap cannot be filled keeps its gap (logged): one room
    /// never holds up the sync.
    async fn fill_gaps(&self, sync: &mut SyncResponse, since: &str) {
        // What back-filling may add to one sync, in bytes of events, across all rooms.
        let mut budget = MAX_BACKFILL_BYTES;
        for room in &mut sync.joined {
            let Some(prev_batch) = room.prev_batch.clone().filter(|_| room.limited) else {
                continue;
            };
            if budget == 0 {
                warn!(room_id = %room.room_id, "timeline gap left: back-fill budget used up");
                continue;
            }
            match self
                .backfill(&room.room_id, &prev_batch, since, &mut budget)
                .await
            {
                Ok(mut gap) => {
                    gap.append(&mut room.timeline);
                    room.timeline = gap;
                }
                Err(e) => {
                    warn!(room_id = %room.room_id, error = %e, "could not fill a timeline gap")
                }
            }
        }
    }

    /// Events of `room` between the sync token `since` and `prev_batch`, oldest first.
    async fn backfill(
        &self,
        room: &OwnedRoomId,
        prev_batch: &str,
        since: &str,
        budget: &mut usize,
    ) -> Result<Vec<Value>, ClientError> {
        let mut from = prev_batch.to_owned();
        let mut newest_first = Vec::new();
        for _ in 0..MAX_BACKFILL_PAGES {
            if *budget == 0 {
                break;
            }
            let mut request = get_message_events::v3::Request::backward(room.clone());
            request.from = Some(from.clone());
            request.to = Some(since.to_owned());
            request.limit = UInt::from(100u32);
            let response = with_retry(|| self.inner.http.send(request.clone())).await?;
            if response.chunk.is_empty() {
                break;
            }
            for raw in &response.chunk {
                let json = raw.json().get();
                *budget = budget.saturating_sub(json.len());
                newest_first.extend(event_within_limits(json, "messages"));
            }
            match response.end {
                Some(end) if end != from => from = end,
                _ => break,
            }
        }
        debug!(room_id = %room, events = newest_first.len(), "filled a timeline gap");
        newest_first.reverse();
        Ok(newest_first)
    }

    /// Sync in the background until the handle is stopped or dropped, or the client is
    /// closed (after which nothing is started). Failures are retried with backoff (1 s
    /// doubling to 30 s).
    pub fn start_sync(self: &Arc<Self>) -> SyncHandle {
        let (stop, stopped) = watch::channel(false);
        let Ok(tracked) = self.track() else {
            return SyncHandle { stop, task: None };
        };
        let closing = self.closing();
        let client = Arc::clone(self);
        let task = tokio::spawn(async move {
            // Dropped last: closing waits for it, and the client's other references go first.
            let _tracked = tracked;
            let (client, mut stopped, mut closing) = (client, stopped, closing);
            let mut backoff = Duration::from_secs(1);
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = closed(&mut closing) => break,
                    result = client.sync_once(Duration::from_secs(30)) => match result {
                        Ok(()) => backoff = Duration::from_secs(1),
                        Err(ClientError::Closed) => break,
                        Err(e) => {
                            warn!(error = %e, "sync failed");
                            tokio::select! {
                                _ = stopped.changed() => break,
                                _ = closed(&mut closing) => break,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    },
                }
                if *stopped.borrow() || *closing.borrow() {
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

/// Ends when the client starts closing.
async fn closed(closing: &mut watch::Receiver<bool>) {
    // (An error means the client is gone: closed too.)
    let _ = closing.wait_for(|closing| *closing).await;
}

/// Track the recipients of every encrypted room of the answer (with its own member changes).
fn track_members(
    store: &dyn Store,
    batch: &mut SyncBatch<'_>,
    rooms: &[OwnedRoomId],
) -> Result<(), ClientError> {
    for room_id in rooms {
        let pending = batch.pending();
        let Some(room) = pending
            .client
            .rooms
            .iter()
            .rev()
            .find(|r| &r.room_id == room_id)
        else {
            continue;
        };
        let mut members: Vec<MemberRecord> = store.members(room_id)?;
        for m in pending
            .client
            .members
            .iter()
            .filter(|m| &m.room_id == room_id)
        {
            members.retain(|old| old.user_id != m.user_id);
            members.push(m.clone());
        }
        let users = recipients(room, &members);
        batch.track_users(&users)?;
    }
    Ok(())
}

/// Ask our other devices (and the sending device) for the key of an event we keep.
fn request_key(
    batch: &mut SyncBatch<'_>,
    room_id: &OwnedRoomId,
    item: &TimelineEvent,
    event: &Value,
) -> Result<(), ClientError> {
    let content = &event["content"];
    let (Some(session_id), Some(sender_key)) = (
        content["session_id"].as_str().filter(|s| !s.is_empty()),
        content["sender_key"].as_str(),
    ) else {
        return Ok(());
    };
    let sender = ruma::UserId::parse(&item.sender).ok();
    let device = content["device_id"].as_str().map(ruma::OwnedDeviceId::from);
    let target = sender.as_deref().zip(device.as_deref());
    batch.request_room_key(room_id, session_id, sender_key, target)?;
    Ok(())
}

/// Test hook: a child process of the store crash tests dies right after a sync committed.
fn crash_point() {
    #[cfg(test)]
    if std::env::var_os("NEWT_TEST_ABORT_AFTER_SYNC_COMMIT").is_some() {
        std::process::abort();
    }
}
