//! The client's lifecycle: store and crypto work on blocking threads, the background tasks
//! the client runs, and closing.
//!
//! The store (SQLite, an fsync per commit) and the crypto machine are synchronous. Async
//! methods hand that work to tokio's blocking threads ([`Client::blocking`]), so the
//! runtime's workers never wait on the disk. Every piece of such work, and every background
//! task (the sync loop, prompts about key requests), holds a [`Tracked`] token:
//! [`Client::close`] refuses new work, stops the tasks, waits until every token is gone and
//! only then releases the store, so that nothing is half-written when it closes.

use std::sync::Mutex;

use tokio::sync::{Mutex as AsyncMutex, mpsc, watch};
use tokio::task::AbortHandle;
use tracing::info;

use super::{Client, ClientError};
use crate::store::Changes;

/// What closing needs to know about the work in flight.
pub(super) struct Lifecycle {
    /// Cloned into every [`Tracked`]; `None` once closing started (no new work).
    token: Mutex<Option<mpsc::Sender<()>>>,
    /// Yields `None` once the token and all its clones are dropped. Closing holds it until
    /// the store is released, so that a second `close` returns only after the first.
    all_done: AsyncMutex<mpsc::Receiver<()>>,
    /// Set when closing starts; loops watch it and end.
    closing: watch::Sender<bool>,
    /// Tasks that wait for the user (prompts): aborted on close, as they may never end.
    abortable: Mutex<Vec<AbortHandle>>,
}

/// Held by tracked work; [`Client::close`] waits until every one is dropped.
pub(crate) struct Tracked {
    _token: mpsc::Sender<()>,
}

impl Lifecycle {
    pub(super) fn new() -> Self {
        // Nothing is ever sent: the channel only counts its senders.
        let (token, all_done) = mpsc::channel(1);
        Self {
            token: Mutex::new(Some(token)),
            all_done: AsyncMutex::new(all_done),
            closing: watch::channel(false).0,
            abortable: Mutex::new(Vec::new()),
        }
    }

    /// A token for new work; [`ClientError::Closed`] once closing started.
    pub(super) fn track(&self) -> Result<Tracked, ClientError> {
        self.token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .map(|token| Tracked { _token: token })
            .ok_or(ClientError::Closed)
    }

    /// Whether closing started.
    pub(super) fn is_closed(&self) -> bool {
        *self.closing.borrow()
    }

    /// Changes to `true` when closing starts.
    pub(super) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }
}

impl Client {
    /// Run store or crypto work on a blocking thread, with a handle on this client. Once
    /// started it runs to its end even if the caller is dropped (a sync being stopped, say),
    /// so a transaction and what follows it (publishing its timeline items) are never cut
    /// apart; closing waits for it.
    pub(crate) async fn blocking<T, F>(&self, work: F) -> Result<T, ClientError>
    where
        T: Send + 'static,
        F: FnOnce(&Client) -> Result<T, ClientError> + Send + 'static,
    {
        let tracked = self.inner.lifecycle.track()?;
        let client = self.handle();
        let joined = tokio::task::spawn_blocking(move || {
            // Dropped last: what the work holds (the machine, say) is released before
            // closing goes on.
            let _tracked = tracked;
            let (client, work) = (client, work);
            work(&client)
        })
        .await;
        match joined {
            Ok(result) => result,
            // The work panicked: the panic goes on in the caller, as when it ran inline.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Save `changes` in one transaction, on a blocking thread.
    pub(crate) async fn save_changes(&self, changes: Changes) -> Result<(), ClientError> {
        self.blocking(move |c| {
            c.store()?.save_changes(changes)?;
            Ok(())
        })
        .await
    }

    /// A token for a background task; [`ClientError::Closed`] once closing started.
    pub(crate) fn track(&self) -> Result<Tracked, ClientError> {
        self.inner.lifecycle.track()
    }

    /// Changes to `true` when the client starts closing.
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.inner.lifecycle.closing()
    }

    /// Run `task` in the background until it ends or the client closes (it is aborted
    /// then: it may be waiting for the user). Nothing is started once closing started.
    pub(crate) fn spawn_abortable<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let Ok(tracked) = self.track() else {
            return;
        };
        let handle = tokio::spawn(async move {
            // Dropped after the task (and what it holds) when it ends.
            let _tracked = tracked;
            let task = task;
            task.await;
        });
        let mut abortable = self
            .inner
            .lifecycle
            .abortable
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        abortable.retain(|t| !t.is_finished());
        abortable.push(handle.abort_handle());
        // Closing may have drained the list between `track` and here.
        if self.inner.lifecycle.is_closed() {
            for task in abortable.drain(..) {
                task.abort();
            }
        }
    }

    /// Close the client: stop the sync loop and the other background tasks, wait until
    /// they and all store work in flight ended, then release the store and the crypto
    /// machine (the SQLite connections close with the last reference; a caller's own
    /// [`Client::store`] handle keeps them open). Later calls fail with
    /// [`ClientError::Closed`]; a [`super::SyncHandle`] of this client has nothing left to
    /// stop. Idempotent: a second call returns once the first has finished.
    ///
    /// A prompt about a key request that the user did not answer yet is dropped; its
    /// answer is not recorded.
    pub async fn close(&self) {
        let lifecycle = &self.inner.lifecycle;
        // No new work from here on; loops stop.
        let token = lifecycle
            .token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        lifecycle.closing.send_replace(true);
        for task in lifecycle
            .abortable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        drop(token);
        let mut all_done = lifecycle.all_done.lock().await;
        while all_done.recv().await.is_some() {}
        // Lock order as in `open_machine`: machine, then store.
        let released = {
            let mut machine = self
                .inner
                .machine
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let mut store = self.inner.store.write().unwrap_or_else(|e| e.into_inner());
            (machine.take(), store.take())
        };
        if released.1.is_some() {
            info!("client closed");
        }
        // The last references (unless the app holds one): the connections close here.
        drop(released);
        drop(all_done);
    }
}
