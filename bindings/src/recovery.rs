//! Recovery: key export files (the spec's format, which Element reads and writes).

use std::sync::Arc;

use newt_core::client as core;
use tracing::warn;
use zeroize::Zeroizing;

use crate::client::{NewtClient, run};
use crate::error::NewtError;
use crate::ids;

/// Progress of a key export or import.
#[uniffi::export(with_foreign)]
pub trait KeyTransferListener: Send + Sync {
    /// `done` of `total`: sessions for an export; bytes for an import (the file is read
    /// twice: checked whole first, then imported).
    fn on_progress(&self, done: u64, total: u64) -> Result<(), NewtError>;
}

/// What an import did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Record)]
pub struct KeyImportSummary {
    /// Entries in the file.
    pub total: u64,
    /// Sessions stored: new ones, and known ones the file completed.
    pub imported: u64,
    /// Known already from the same message or an earlier one: left as they were.
    pub already_known: u64,
    /// Entries that are not usable room keys (left out).
    pub refused: u64,
}

impl From<core::KeyImportSummary> for KeyImportSummary {
    fn from(s: core::KeyImportSummary) -> Self {
        Self {
            total: s.total,
            imported: s.imported,
            already_known: s.already_known,
            refused: s.refused,
        }
    }
}

/// The core's progress callback, reporting to the app's listener (a failing listener is
/// logged, the transfer goes on).
fn progress_to(
    listener: Option<Arc<dyn KeyTransferListener>>,
) -> impl FnMut(core::KeyTransferProgress) + Send + 'static {
    move |p| {
        if let Some(listener) = &listener
            && let Err(e) = listener.on_progress(p.done, p.total)
        {
            warn!(error = %e, "the key transfer listener failed");
        }
    }
}

#[uniffi::export]
impl NewtClient {
    /// Write the room keys of `roomIds` (all rooms if null) to the file at `path`,
    /// encrypted with `passphrase`, in the format Element reads; returns the number of
    /// sessions. The file is complete or not there.
    pub async fn export_room_keys(
        &self,
        path: String,
        passphrase: String,
        room_ids: Option<Vec<String>>,
        listener: Option<Arc<dyn KeyTransferListener>>,
    ) -> Result<u64, NewtError> {
        let client = self.client()?;
        let passphrase = Zeroizing::new(passphrase);
        let rooms = match room_ids {
            Some(ids) => Some(
                ids.iter()
                    .map(|id| ids::room_id(id))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        run(async move {
            Ok(client
                .export_room_keys(path, &passphrase, rooms, progress_to(listener))
                .await?)
        })
        .await
    }

    /// Import a key export file (Newt's or Element's). A wrong passphrase or a file that
    /// was cut short or changed is refused (`KeyFileRefused`) before anything is stored;
    /// messages that could not be decrypted before arrive again decrypted, as updates.
    pub async fn import_room_keys(
        &self,
        path: String,
        passphrase: String,
        listener: Option<Arc<dyn KeyTransferListener>>,
    ) -> Result<KeyImportSummary, NewtError> {
        let client = self.client()?;
        let passphrase = Zeroizing::new(passphrase);
        run(async move {
            let summary = client
                .import_room_keys(path, &passphrase, progress_to(listener))
                .await?;
            Ok(summary.into())
        })
        .await
    }
}
