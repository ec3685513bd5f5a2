//! The key backup's background work: uploads of the sessions not backed up yet, and the
//! lookup of undecryptable events' sessions in the backup.

use std::collections::BTreeMap;

use ruma::OwnedRoomId;
use ruma::api::client::backup::{RoomKeyBackup, add_backup_keys, get_backup_keys_for_session};
use tracing::{debug, info, warn};

use super::backup::{KEY_REPLACED, KEY_VERSION, LOOKUPS_PER_SYNC, MAX_LOOKUPS, UPLOAD_BATCH};
use super::{Client, ClientError};
use crate::backup::BackupError;
use crate::crypto::KeySource;
use crate::http::HttpError;
use crate::store::ClientChanges;

impl Client {
    /// Upload the sessions not in the backup yet; returns how many were uploaded. Does
    /// nothing without a backup on this device.
    pub async fn upload_backup(&self) -> Result<u64, ClientError> {
        let machine = self.machine()?;
        let m = machine.clone();
        let pending = self.blocking(move |_| Ok(m.sessions_to_back_up()?)).await?;
        if pending > 0 {
            // Subscribers see what is to do, then the count go down batch by batch.
            self.backup_state().await?;
        }
        let mut uploaded = 0;
        // Each batch marks what it sent: more passes than batches means marks are lost.
        for _ in 0..=pending.div_ceil(u64::from(UPLOAD_BATCH)) {
            // Taken per batch: a new backup set up meanwhile (`adopt`) waits for one batch
            // at most, and the next batch goes to it.
            let _one = self.inner.backup.uploading.lock().await;
            let Some(active) = self.blocking(|c| c.active()).await? else {
                break;
            };
            let public = active.key.public_key();
            let m = machine.clone();
            let batch = self
                .blocking(move |_| Ok(m.backup_batch(public, UPLOAD_BATCH)?))
                .await?;
            if batch.sessions.is_empty() {
                break;
            }
            let request = add_backup_keys::v3::Request::new(active.version.clone(), batch.rooms);
            if let Err(e) = self.inner.http.send(request).await {
                return Err(self.upload_failed(&active.version, e).await);
            }
            let n = batch.sessions.len() as u64;
            let (m, sessions) = (machine.clone(), batch.sessions);
            self.blocking(move |_| Ok(m.mark_backed_up(sessions)?))
                .await?;
            uploaded += n;
            self.backup_state().await?;
        }
        if uploaded > 0 {
            debug!(sessions = uploaded, "sessions backed up");
        }
        Ok(uploaded)
    }

    /// After a sync: sessions of undecryptable events looked up in the backup, then new
    /// sessions uploaded; in the background (the sync loop never waits for it).
    pub(crate) fn spawn_backup_work(&self) {
        use std::sync::atomic::Ordering;
        if self
            .inner
            .backup
            .work_requested
            .swap(true, Ordering::SeqCst)
        {
            return;
        }
        let client = self.handle();
        self.spawn_abortable(async move {
            client
                .inner
                .backup
                .work_requested
                .store(false, Ordering::SeqCst);
            if let Err(e) = client.resume_setups().await {
                warn!(error = %e, "checking an interrupted backup set-up failed");
            }
            if let Err(e) = client.restore_missing_sessions().await {
                warn!(error = %e, "looking up keys in the backup failed");
            }
            if let Err(e) = client.upload_backup().await {
                warn!(error = %e, "backing up keys failed; will retry");
                client.schedule_retry(&e, "key backup");
            }
        });
    }

    /// The sessions of kept undecryptable events that we have no key for, looked up in the
    /// backup (a few per sync, each once per process).
    async fn restore_missing_sessions(&self) -> Result<(), ClientError> {
        let _uploads = self.inner.backup.uploading.lock().await;
        let Some(active) = self.blocking(|c| c.active()).await? else {
            return Ok(());
        };
        let missing = self.blocking(|c| c.sessions_to_look_up()).await?;
        let mut found = BTreeMap::new();
        let mut failure = None;
        for (room_id, session_id) in missing {
            let request = get_backup_keys_for_session::v3::Request::new(
                active.version.clone(),
                room_id.clone(),
                session_id.clone(),
            );
            match self.inner.http.send(request).await {
                Ok(response) => {
                    self.looked_up(&room_id, &session_id);
                    found
                        .entry(room_id)
                        .or_insert_with(|| RoomKeyBackup::new(BTreeMap::new()))
                        .sessions
                        .insert(session_id, response.key_data);
                }
                Err(e) if e.errcode() == Some("M_NOT_FOUND") => {
                    self.looked_up(&room_id, &session_id);
                }
                // Asked again after the next sync; what was found is kept.
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if !found.is_empty() {
            let machine = self.machine()?;
            let source = KeySource::BackupLookup;
            let summary = self
                .blocking(move |c| {
                    c.restore_rooms(&machine, &active.key, found, source, &mut |_| {})
                })
                .await?;
            info!(
                sessions = summary.imported,
                "keys of undecryptable events restored from the backup"
            );
        }
        failure.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Kept undecryptable sessions without any key, not looked up yet.
    fn sessions_to_look_up(&self) -> Result<Vec<(OwnedRoomId, String)>, ClientError> {
        let store = self.store()?;
        let looked_up = self
            .inner
            .backup
            .looked_up
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if looked_up.len() >= MAX_LOOKUPS {
            return Ok(Vec::new());
        }
        Ok(store
            .undecryptable_sessions_without_key()?
            .into_iter()
            .filter(|id| !looked_up.contains(id))
            .take(LOOKUPS_PER_SYNC)
            .collect())
    }

    /// The backup answered about this session: not asked again in this process.
    fn looked_up(&self, room_id: &OwnedRoomId, session_id: &str) {
        self.inner
            .backup
            .looked_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((room_id.clone(), session_id.to_owned()));
    }

    /// An upload failed: a backup version that is no longer the server's is reported (and
    /// nothing more is uploaded to it); other errors are returned for a retry.
    async fn upload_failed(&self, ours: &str, e: HttpError) -> ClientError {
        let gone = matches!(
            e.errcode(),
            Some("M_WRONG_ROOM_KEYS_VERSION" | "M_NOT_FOUND")
        );
        if !gone {
            return e.into();
        }
        let server = match self.latest_backup().await {
            Ok(info) => Some(info.version),
            Err(ClientError::Backup(BackupError::NoBackup)) => None,
            Err(other) => return other,
        };
        if server.as_deref() == Some(ours) {
            // Still ours (a passing error): the next upload tries again.
            return e.into();
        }
        warn!(ours, ?server, "the server's key backup is no longer ours");
        let replaced = serde_json::to_string(&(ours, &server)).unwrap_or_default();
        let ours = ours.to_owned();
        let saved = self
            .blocking(move |c| {
                let store = c.store()?;
                // This device may have set up or restored another backup since.
                if store.value(KEY_VERSION)?.as_deref() != Some(ours.as_str()) {
                    return Ok(0);
                }
                let mut changes = ClientChanges::default();
                changes.values.insert(KEY_REPLACED.into(), replaced);
                Ok(store.save_changes(changes.into())?)
            })
            .await;
        if let Err(e) = saved {
            return e;
        }
        let _ = self.backup_state().await;
        e.into()
    }
}
