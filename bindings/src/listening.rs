//! The background task behind a subscription object: stopped by `close()` or when the
//! object is dropped.

use std::sync::Mutex;

use tokio::task::AbortHandle;

/// A subscription's task; aborted once, on `stop` or drop.
pub(crate) struct Listening(Mutex<Option<AbortHandle>>);

impl Listening {
    pub(crate) fn new(task: AbortHandle) -> Self {
        Self(Mutex::new(Some(task)))
    }

    /// Abort the task (idempotent).
    pub(crate) fn stop(&self) {
        if let Some(task) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop();
    }
}
