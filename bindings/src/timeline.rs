//! Timeline subscriptions: a room's recent items and the local echoes of its queued
//! messages first, then new items, changed items, new echoes and their send states, and the
//! remote event that replaces an echo (matched by transaction id).

use std::sync::{Arc, Mutex};

use newt_core::client::{SendUpdate, TimelineEvent};
use newt_core::ruma::OwnedRoomId;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::AbortHandle;
use tracing::warn;

use crate::callbacks::TimelineListener;
use crate::client::{NewtClient, runtime};
use crate::error::NewtError;
use crate::ids;
use crate::sending::LocalEcho;
use crate::types::{TimelineItem, TimelineUpdate};

#[uniffi::export]
impl NewtClient {
    /// Subscribe to a room's timeline until the subscription is closed or dropped. The
    /// listener gets `Initial` (recent items and the local echoes of queued messages)
    /// first, then `Appended` per new item, `Updated` when an item changed (a late room key
    /// decrypted it), `LocalEcho` when a message is queued or edited, `SendStateChanged`
    /// as it is sent, and `EchoReplaced` when its remote event arrives.
    pub fn subscribe_timeline(
        &self,
        room_id: String,
        listener: Arc<dyn TimelineListener>,
    ) -> Result<Arc<TimelineSubscription>, NewtError> {
        let client = self.client()?;
        let room_id = ids::room_id(&room_id)?;
        // Before the echoes are read: an echo queued meanwhile comes twice (same id), never
        // not at all.
        let sends = client.subscribe_sends();
        let (snapshot, events) = client.subscribe_room(&room_id);
        let weak = Arc::downgrade(&client);
        drop(client);
        let task = runtime()?.spawn(async move {
            let echoes = match weak.upgrade() {
                Some(client) => client.local_echoes(&room_id).await.unwrap_or_else(|e| {
                    warn!(error = %e, "could not read the queued messages");
                    Vec::new()
                }),
                None => return,
            };
            let initial = TimelineUpdate::Initial {
                items: snapshot.into_iter().map(TimelineItem::from).collect(),
                echoes: echoes.into_iter().map(LocalEcho::from).collect(),
            };
            if listener.on_update(initial).is_ok() {
                // Ends when the client closes.
                let _ = forward(&room_id, events, sends, listener.as_ref()).await;
            }
        });
        Ok(Arc::new(TimelineSubscription {
            task: Mutex::new(Some(self.track(task.abort_handle()))),
        }))
    }
}

/// Hand the room's updates to the listener until the client closes (`None` then).
async fn forward(
    room_id: &OwnedRoomId,
    mut events: Receiver<TimelineEvent>,
    mut sends: Receiver<SendUpdate>,
    listener: &dyn TimelineListener,
) -> Option<()> {
    loop {
        let update = tokio::select! {
            event = events.recv() => match event {
                Ok(item) if &item.room_id == room_id => Some(item_update(item)),
                other => lost_or_closed(other.map(drop))?,
            },
            send = sends.recv() => match send {
                Ok(u) if &u.room_id == room_id => Some(send_update(u)),
                other => lost_or_closed(other.map(drop))?,
            },
        };
        if let Some(update) = update
            && let Err(e) = listener.on_update(update)
        {
            warn!(error = %e, "timeline listener failed");
        }
    }
}

/// `None` once the channel is closed (ends the loop); `Some(None)` to go on.
fn lost_or_closed(result: Result<(), RecvError>) -> Option<Option<TimelineUpdate>> {
    match result {
        Err(RecvError::Closed) => None,
        Err(RecvError::Lagged(n)) => {
            warn!(skipped = n, "timeline listener too slow");
            Some(None)
        }
        Ok(()) => Some(None),
    }
}

fn item_update(item: TimelineEvent) -> TimelineUpdate {
    if item.is_update {
        return TimelineUpdate::Updated { item: item.into() };
    }
    match item.transaction_id.clone() {
        Some(transaction_id) => TimelineUpdate::EchoReplaced {
            transaction_id,
            item: item.into(),
        },
        None => TimelineUpdate::Appended { item: item.into() },
    }
}

fn send_update(u: SendUpdate) -> TimelineUpdate {
    match u.echo {
        Some(echo) => TimelineUpdate::LocalEcho { echo: echo.into() },
        None => TimelineUpdate::SendStateChanged {
            transaction_id: u.txn_id,
            state: u.state.into(),
        },
    }
}

/// A live timeline subscription; closing or dropping it stops the updates.
#[derive(uniffi::Object)]
pub struct TimelineSubscription {
    task: Mutex<Option<AbortHandle>>,
}

#[uniffi::export]
impl TimelineSubscription {
    /// Stop the updates (idempotent).
    pub fn close(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl Drop for TimelineSubscription {
    fn drop(&mut self) {
        self.close();
    }
}
