//! Recovery: key export files (the spec's format, which Element reads and writes) and the
//! server-side key backup with its recovery key.

use std::sync::Arc;

use newt_core::client as core;
use tracing::warn;
use zeroize::Zeroizing;

use crate::client::{NewtClient, run};
use crate::error::NewtError;
use crate::ids;
use crate::listening::Listening;

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

/// The key backup as this device sees it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
#[non_exhaustive]
pub enum BackupState {
    /// No backup on this device: none set up here, no recovery key entered.
    Disabled,
    /// New sessions go to backup `version`; `pending` are still to upload.
    Enabled {
        /// The server's backup version.
        version: String,
        /// Sessions not uploaded yet.
        pending: u64,
    },
    /// The server's backup is no longer the one this device uploads to (deleted or
    /// replaced elsewhere): nothing is uploaded until a new backup is set up here or the
    /// new one's recovery key is entered.
    VersionChanged {
        /// The version this device uploaded to.
        ours: String,
        /// The server's current version, if any.
        server: Option<String>,
    },
}

impl From<core::BackupState> for BackupState {
    fn from(s: core::BackupState) -> Self {
        match s {
            core::BackupState::Enabled { version, pending } => Self::Enabled { version, pending },
            core::BackupState::VersionChanged { ours, server } => {
                Self::VersionChanged { ours, server }
            }
            // `Disabled`, and what the core may add later.
            _ => Self::Disabled,
        }
    }
}

/// The server's current backup.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct BackupInfo {
    /// Its version.
    pub version: String,
    /// Its algorithm.
    pub algorithm: String,
    /// Sessions in it.
    pub count: u64,
    /// Signed by this device or an own device the user verified.
    pub trusted: bool,
    /// This device uploads to it.
    pub ours: bool,
}

impl From<core::BackupInfo> for BackupInfo {
    fn from(i: core::BackupInfo) -> Self {
        Self {
            version: i.version,
            algorithm: i.algorithm,
            count: i.count,
            trusted: i.trusted,
            ours: i.ours,
        }
    }
}

#[uniffi::export]
impl NewtClient {
    /// Set up a new key backup without secret storage and return the backup's own
    /// recovery key, for the user to keep (`setUpRecovery` is what apps normally use).
    /// Sessions are uploaded in the background.
    pub async fn enable_backup(&self) -> Result<String, NewtError> {
        let client = self.client()?;
        run(async move { Ok(client.enable_backup().await?.to_string()) }).await
    }

    /// Set up recovery (a secret storage key, a new key backup whose key it keeps in the
    /// account data) and show the recovery key through the prompt handler
    /// (`Prompt.NewRecoveryKey`). Called again (the key was lost), it resets recovery: a
    /// new key and a new backup.
    pub async fn set_up_recovery(&self) -> Result<(), NewtError> {
        let client = self.client()?;
        run(async move { Ok(client.set_up_recovery().await?) }).await
    }

    /// Restore every key of the backup with the recovery key the user types, asked through
    /// the prompt handler (`Prompt.RecoveryKey`, again after a typo or another backup's
    /// key, at most three times). Messages that could not be decrypted come again
    /// decrypted, as timeline updates.
    pub async fn recover(&self) -> Result<KeyImportSummary, NewtError> {
        let client = self.client()?;
        run(async move { Ok(client.recover().await?.into()) }).await
    }

    /// Restore the backup's keys (all, or one room's) with `recoveryKey`.
    pub async fn restore_backup(
        &self,
        recovery_key: String,
        room_id: Option<String>,
        listener: Option<Arc<dyn KeyTransferListener>>,
    ) -> Result<KeyImportSummary, NewtError> {
        let client = self.client()?;
        let recovery_key = Zeroizing::new(recovery_key);
        let room = room_id.as_deref().map(ids::room_id).transpose()?;
        run(async move {
            let summary = client
                .restore_backup(&recovery_key, room.as_deref(), progress_to(listener))
                .await?;
            Ok(summary.into())
        })
        .await
    }

    /// The recovery key this device knows (the secret storage's, or the backup's own), to
    /// show the user again.
    pub async fn recovery_key(&self) -> Result<Option<String>, NewtError> {
        let client = self.client()?;
        run(async move {
            let key = client.recovery_key().await?;
            Ok(key.map(|k| k.expose().to_owned()))
        })
        .await
    }

    /// The key backup's state now.
    pub async fn backup_state(&self) -> Result<BackupState, NewtError> {
        let client = self.client()?;
        run(async move { Ok(client.backup_state().await?.into()) }).await
    }

    /// The server's current backup, if any.
    pub async fn backup_info(&self) -> Result<Option<BackupInfo>, NewtError> {
        let client = self.client()?;
        run(async move { Ok(client.backup_info().await?.map(BackupInfo::from)) }).await
    }

    /// Upload the sessions not in the backup yet (also done in the background after each
    /// sync and by `runDueWork`); returns how many.
    pub async fn upload_backup(&self) -> Result<u64, NewtError> {
        let client = self.client()?;
        run(async move { Ok(client.upload_backup().await?) }).await
    }
}

/// Receives the key backup's state as it changes.
#[uniffi::export(with_foreign)]
pub trait BackupStateListener: Send + Sync {
    /// The state now: first the current one, then after each change (the pending count
    /// goes down as uploads go through).
    fn on_state(&self, state: BackupState) -> Result<(), NewtError>;
}

/// A live backup state subscription; closing or dropping it stops the updates.
#[derive(uniffi::Object)]
pub struct BackupSubscription {
    task: Listening,
}

#[uniffi::export]
impl BackupSubscription {
    /// Stop the updates (idempotent).
    pub fn close(&self) {
        self.task.stop();
    }
}

#[uniffi::export]
impl NewtClient {
    /// Observe the key backup's state (`BackupStateListener`), until the subscription is
    /// closed or the client shuts down.
    pub fn subscribe_backup(
        &self,
        listener: Arc<dyn BackupStateListener>,
    ) -> Result<Arc<BackupSubscription>, NewtError> {
        let client = self.client()?;
        let mut changes = client.subscribe_backup();
        let weak = Arc::downgrade(&client);
        drop(client);
        let task = crate::client::runtime()?.spawn(async move {
            // The current state, read from the store (the watch may not have it yet).
            let Some(client) = weak.upgrade() else {
                return;
            };
            let current = client.backup_state().await;
            drop(client);
            changes.mark_unchanged();
            if let Ok(state) = current
                && listener.on_state(state.into()).is_err()
            {
                return;
            }
            while changes.changed().await.is_ok() {
                let state = changes.borrow_and_update().clone();
                if let Err(e) = listener.on_state(state.into()) {
                    warn!(error = %e, "the backup state listener failed; unsubscribed");
                    return;
                }
            }
        });
        Ok(Arc::new(BackupSubscription {
            task: Listening::new(self.track(task.abort_handle())),
        }))
    }
}
