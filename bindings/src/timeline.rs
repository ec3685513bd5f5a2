//! Timeline subscriptions: a room's recent items and the local echoes of its queued
//! messages first, then new items, changed items, new echoes and their send states, and the
//! remote event that replaces an echo (matched by transaction id).

use std::sync::{Arc, Weak};

use newt_core::client::{Client, SendUpdate, TimelineEvent};
use newt_core::ruma::OwnedRoomId;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tracing::warn;

use crate::callbacks::TimelineListener;
use crate::client::{NewtClient, runtime};
use crate::error::NewtError;
use crate::ids;
use crate::listening::Listening;
use crate::sending::LocalEcho;
use crate::types::{TimelineItem, TimelineUpdate};

#[uniffi::export]
impl NewtClient {
    /// Subscribe to a room's timeline until the subscription is closed or dropped. The
    /// listener gets `Initial` (recent items and the local echoes of queued messages)
    /// first, then `Appended` per new item, `Updated` when an item changed (a late room key
    /// decrypted it), `LocalEcho` when a message is queued or edited, `SendStateChanged`
    /// as it is sent, and `EchoReplaced` when its remote event arrives. A listener so slow
    /// that updates were dropped gets `Initial` again, with the current state.
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
            let Some(initial) = initial(&weak, &room_id, Some(snapshot)).await else {
                return;
            };
            if listener.on_update(initial).is_ok() {
                // Ends when the client closes.
                let _ = forward(&weak, &room_id, events, sends, listener.as_ref()).await;
            }
        });
        Ok(Arc::new(TimelineSubscription {
            task: Listening::new(self.track(task.abort_handle())),
        }))
    }
}

/// `Initial`: the room's recent items (`snapshot`, or read now) and its queued messages'
/// echoes; `None` once the client is gone.
async fn initial(
    client: &Weak<Client>,
    room_id: &OwnedRoomId,
    snapshot: Option<Vec<TimelineEvent>>,
) -> Option<TimelineUpdate> {
    let client = client.upgrade()?;
    let items = snapshot.unwrap_or_else(|| client.subscribe_room(room_id).0);
    let echoes = client.local_echoes(room_id).await.unwrap_or_else(|e| {
        warn!(error = %e, "could not read the queued messages");
        Vec::new()
    });
    Some(TimelineUpdate::Initial {
        items: items.into_iter().map(TimelineItem::from).collect(),
        echoes: echoes.into_iter().map(LocalEcho::from).collect(),
    })
}

/// What one receive brought.
enum Next {
    Update(Box<TimelineUpdate>),
    /// Updates were dropped: the listener fell behind.
    Lagged,
    /// Another room's.
    Skip,
}

/// Hand the room's updates to the listener until the client closes (`None` then). A
/// listener that fell behind (updates were dropped) gets a new `Initial` with the current
/// state, so that no echo is left in a state it has left.
async fn forward(
    client: &Weak<Client>,
    room_id: &OwnedRoomId,
    mut events: Receiver<TimelineEvent>,
    mut sends: Receiver<SendUpdate>,
    listener: &dyn TimelineListener,
) -> Option<()> {
    loop {
        let next = tokio::select! {
            event = events.recv() => match event {
                Ok(item) if &item.room_id == room_id => Next::Update(Box::new(item_update(item))),
                other => lost_or_closed(other.map(drop))?,
            },
            send = sends.recv() => match send {
                Ok(u) if &u.room_id == room_id => Next::Update(Box::new(send_update(u))),
                other => lost_or_closed(other.map(drop))?,
            },
        };
        let update = match next {
            Next::Update(u) => Some(*u),
            Next::Lagged => initial(client, room_id, None).await,
            Next::Skip => None,
        };
        if let Some(update) = update
            && let Err(e) = listener.on_update(update)
        {
            warn!(error = %e, "timeline listener failed");
        }
    }
}

/// `None` once the channel is closed (ends the loop).
fn lost_or_closed(result: Result<(), RecvError>) -> Option<Next> {
    match result {
        Err(RecvError::Closed) => None,
        Err(RecvError::Lagged(n)) => {
            warn!(
                skipped = n,
                "timeline listener too slow: sending the current state"
            );
            Some(Next::Lagged)
        }
        Ok(()) => Some(Next::Skip),
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
    task: Listening,
}

#[uniffi::export]
impl TimelineSubscription {
    /// Stop the updates (idempotent).
    pub fn close(&self) {
        self.task.stop();
    }
}
