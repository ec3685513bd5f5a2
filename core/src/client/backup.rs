//! Server-side key backup for the app: set up (a new version and its recovery key),
//! uploads in the background, restore with the recovery key (all keys, a room's, or the
//! session of an undecryptable event, automatically), and the backup's state.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use ruma::api::client::backup::{RoomKeyBackup, create_backup_version, get_latest_backup_info};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, RoomId};
use serde_json::{Value, json};
use tokio::sync::{Mutex as AsyncMutex, watch};
use tracing::info;
use zeroize::Zeroizing;

use super::backup_restore::Restorer;
use super::key_files::{KeyImportSummary, KeyTransferProgress};
use super::{Client, ClientError, Prompt, PromptAnswer, SecretText};
use crate::backup::{BACKUP_ALGORITHM, BackupError, BackupKey};
use crate::crypto::{KeySource, OlmMachine};
use crate::store::{ClientChanges, SecretBlob};

/// Store value: the backup version this device uploads to.
pub(super) const KEY_VERSION: &str = "backup.version";
/// Secret store value: the backup's private key (32 bytes).
const KEY_PRIVATE: &str = "backup.key";
/// Secret store value: the key of a backup being set up (32 bytes; empty when none),
/// kept before the server creates its version: if the answer is lost (or the app stops)
/// the version found later is recognised by its public key and used.
const KEY_PENDING: &str = "backup.pending_key";
/// Store value: set when the server's backup is no longer ours: JSON `[ours, server's]`
/// (`null` if none). It holds only while `ours` is still the stored version (a store value
/// cannot be removed: adopting another version is what ends it).
pub(super) const KEY_REPLACED: &str = "backup.replaced";
/// Sessions per upload.
pub(super) const UPLOAD_BATCH: u32 = 100;
/// Sessions of undecryptable events looked up in the backup per sync, and in all per
/// process.
pub(super) const LOOKUPS_PER_SYNC: usize = 20;
pub(super) const MAX_LOOKUPS: usize = 10_000;
/// Times [`Client::recover`] asks for the recovery key before giving up.
const RECOVERY_ATTEMPTS: u32 = 3;

/// The backup as this device sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupState {
    /// No backup on this device: none was set up here, and no recovery key was entered.
    Disabled,
    /// New sessions go to backup `version`; `pending` are still to upload.
    Enabled {
        /// The server's backup version.
        version: String,
        /// Sessions not uploaded yet.
        pending: u64,
    },
    /// The server's backup is no longer the one this device uploads to (deleted or
    /// replaced, by another device or by the server): nothing is uploaded until the user
    /// sets up a new backup or enters the recovery key of the new one.
    VersionChanged {
        /// The version this device uploaded to.
        ours: String,
        /// The server's current version, if any.
        server: Option<String>,
    },
}

/// The server's current backup, as found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupInfo {
    /// Its version.
    pub version: String,
    /// Its algorithm.
    pub algorithm: String,
    /// Sessions in it.
    pub count: u64,
    /// Its `auth_data` is signed by this device or an own device the user verified (one
    /// made elsewhere, by the homeserver say, is not).
    pub trusted: bool,
    /// This device uploads to it.
    pub ours: bool,
}

/// What the client keeps about the backup while it runs.
pub(super) struct BackupRuntime {
    pub(super) state: watch::Sender<BackupState>,
    /// One upload at a time.
    pub(super) uploading: AsyncMutex<()>,
    /// One set-up (backup or recovery) at a time; the background resume of an interrupted
    /// one leaves a set-up under way alone.
    pub(super) setting_up: AsyncMutex<()>,
    /// Sessions of undecryptable events looked up already (bounded).
    pub(super) looked_up: Mutex<HashSet<(OwnedRoomId, String)>>,
    /// Background work was asked for and has not started: syncs do not pile tasks up.
    pub(super) work_requested: std::sync::atomic::AtomicBool,
}

impl BackupRuntime {
    pub(super) fn new() -> Self {
        Self {
            state: watch::channel(BackupState::Disabled).0,
            uploading: AsyncMutex::new(()),
            setting_up: AsyncMutex::new(()),
            looked_up: Mutex::new(HashSet::new()),
            work_requested: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// The backup key and version this device uses.
pub(super) struct Active {
    pub(super) key: BackupKey,
    pub(super) version: String,
}

impl Client {
    /// Set up a new backup: a new key, a new version on the server (signed by this
    /// device), every session uploaded to it in the background. Returns the recovery key
    /// for the user to keep: it is what restores the keys on a new device.
    pub async fn enable_backup(&self) -> Result<Zeroizing<String>, ClientError> {
        Ok(self.create_backup().await?.to_recovery_key())
    }

    /// A new backup version for a new key, adopted by this device; its key.
    pub(super) async fn create_backup(&self) -> Result<BackupKey, ClientError> {
        let _setting_up = self.inner.backup.setting_up.lock().await;
        self.create_backup_locked().await
    }

    /// [`Client::create_backup`], the set-up lock held by the caller.
    pub(super) async fn create_backup_locked(&self) -> Result<BackupKey, ClientError> {
        let machine = self.machine()?;
        let key = BackupKey::new();
        let pending = key.to_bytes();
        self.blocking(move |c| c.set_pending_key(KEY_PENDING, &pending[..]))
            .await?;
        let auth_data = machine.signed_backup_auth_data(&key.public_key_base64())?;
        let algorithm = json!({ "algorithm": BACKUP_ALGORITHM, "auth_data": auth_data });
        let raw = Raw::from_json(
            serde_json::value::to_raw_value(&algorithm)
                .map_err(|e| ClientError::InvalidInput(e.to_string()))?,
        );
        let request = create_backup_version::v3::Request::new(raw);
        let version = self.inner.http.send(request).await?.version;
        info!(%version, "key backup set up");
        let bytes = key.to_bytes();
        let _uploads = self.inner.backup.uploading.lock().await;
        self.blocking(move |c| c.adopt(&machine, &key, &version))
            .await?;
        drop(_uploads);
        self.spawn_backup_work();
        Ok(BackupKey::from_bytes(&bytes))
    }

    /// Restore keys from the server's backup with the user's recovery key: all rooms, or
    /// `room` only. The key is checked against the backup's public key first; from then on
    /// this device also uploads its new sessions to that backup. Restored sessions are
    /// legacy sessions (the backup authenticates nothing), never replace a copy known from
    /// an earlier message, and the events kept undecryptable for them come again decrypted.
    /// The keys are imported as the server's answer arrives, 200 per transaction (a backup
    /// of any size, in bounded memory); what was imported before an error is kept.
    pub async fn restore_backup(
        &self,
        recovery_key: &str,
        room: Option<&RoomId>,
        progress: impl FnMut(KeyTransferProgress) + Send + 'static,
    ) -> Result<KeyImportSummary, ClientError> {
        let machine = self.machine()?;
        let key = self.backup_key_from_recovery_key(recovery_key).await?;
        let info = self.latest_backup().await?;
        check_key(&info.algorithm, &key)?;
        let version = info.version.clone();
        // No upload or lookup in between: their marks belong to the version restored.
        let _uploads = self.inner.backup.uploading.lock().await;
        let (m, k) = (machine.clone(), BackupKey::from_bytes(&key.to_bytes()));
        let v = version.clone();
        self.blocking(move |c| c.adopt(&m, &k, &v)).await?;
        // The server counts the whole backup's entries only: for a room, the progress's
        // total is that until the last report (done == total).
        let expected = info.count.into();
        let summary = self
            .stream_restore(machine, key, &version, room, expected, progress)
            .await;
        drop(_uploads);
        self.spawn_backup_work();
        summary
    }

    /// [`Client::set_up_recovery_key`], and show the recovery key to the user through the
    /// prompt handler ([`Prompt::NewRecoveryKey`]). Called again (the key was lost), it
    /// resets recovery: a new key and a new backup, to which this device uploads all its
    /// keys; the old key opens nothing new.
    pub async fn set_up_recovery(&self) -> Result<(), ClientError> {
        let recovery_key = self.set_up_recovery_key().await?;
        let prompt = Prompt::NewRecoveryKey {
            recovery_key: SecretText::new(recovery_key),
        };
        self.prompt(prompt).await;
        Ok(())
    }

    /// Restore every key of the server's backup with the recovery key the user types,
    /// asked through the prompt handler ([`Prompt::RecoveryKey`]; asked again with the
    /// reason after a typo or another backup's key, at most three times).
    pub async fn recover(&self) -> Result<KeyImportSummary, ClientError> {
        let mut previous_error = None;
        for attempt in 1..=RECOVERY_ATTEMPTS {
            let answer = self.prompt(Prompt::RecoveryKey { previous_error }).await;
            let PromptAnswer::RecoveryKey(key) = answer else {
                return Err(ClientError::PromptDismissed);
            };
            match self.restore_backup(&key, None, |_| {}).await {
                Err(ClientError::Backup(
                    e @ (BackupError::InvalidRecoveryKey(_) | BackupError::WrongRecoveryKey),
                )) if attempt < RECOVERY_ATTEMPTS => previous_error = Some(e.to_string()),
                other => return other,
            }
        }
        Err(ClientError::PromptDismissed)
    }

    /// The recovery key this device knows (the secret storage's, or the backup's own), to
    /// show the user again.
    pub async fn recovery_key(&self) -> Result<Option<SecretText>, ClientError> {
        if let Some(key) = self.blocking(|c| c.stored_recovery_key()).await? {
            return Ok(Some(SecretText::new(key)));
        }
        let active = self.blocking(|c| c.active()).await?;
        Ok(active.map(|a| SecretText::new(a.key.to_recovery_key())))
    }

    /// The server's current backup, if any, and whether it is ours and trusted.
    pub async fn backup_info(&self) -> Result<Option<BackupInfo>, ClientError> {
        let machine = self.machine()?;
        let info = match self.latest_backup().await {
            Ok(info) => info,
            Err(ClientError::Backup(BackupError::NoBackup)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let algorithm: Value = info
            .algorithm
            .deserialize_as_unchecked()
            .unwrap_or_default();
        let active = self.blocking(|c| c.active()).await?;
        let trusted = machine.backup_is_trusted(&algorithm["auth_data"])?;
        Ok(Some(BackupInfo {
            ours: active.is_some_and(|a| {
                a.version == info.version
                    && algorithm["auth_data"]["public_key"] == a.key.public_key_base64()
            }),
            algorithm: algorithm["algorithm"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            count: info.count.into(),
            version: info.version,
            trusted,
        }))
    }

    /// The backup's state now (read from the store).
    pub async fn backup_state(&self) -> Result<BackupState, ClientError> {
        let state = self.blocking(|c| c.load_backup_state()).await?;
        self.inner.backup.state.send_replace(state.clone());
        Ok(state)
    }

    /// The backup's state, as it changes.
    pub fn subscribe_backup(&self) -> watch::Receiver<BackupState> {
        self.inner.backup.state.subscribe()
    }

    pub(super) async fn latest_backup(
        &self,
    ) -> Result<get_latest_backup_info::v3::Response, ClientError> {
        match self
            .inner
            .http
            .send(get_latest_backup_info::v3::Request::new())
            .await
        {
            Ok(info) => Ok(info),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Err(BackupError::NoBackup.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Decrypt and import the backup's entries, in batches; entries that do not decrypt
    /// are counted as refused.
    pub(super) fn restore_rooms(
        &self,
        machine: &OlmMachine,
        key: &BackupKey,
        rooms: BTreeMap<OwnedRoomId, RoomKeyBackup>,
        source: KeySource,
        progress: &mut dyn FnMut(KeyTransferProgress),
    ) -> Result<KeyImportSummary, ClientError> {
        let total: u64 = rooms.values().map(|r| r.sessions.len() as u64).sum();
        let mut restorer = Restorer::new(self, machine, key, source, total, progress);
        for (room_id, backup) in &rooms {
            for (session_id, raw) in &backup.sessions {
                restorer.entry(room_id, session_id, raw)?;
            }
        }
        restorer.finish()
    }

    /// Use `key` and `version` from now on (a new version: every session is uploaded
    /// again).
    fn adopt(
        &self,
        machine: &OlmMachine,
        key: &BackupKey,
        version: &str,
    ) -> Result<(), ClientError> {
        let store = self.store()?;
        if store.value(KEY_VERSION)?.as_deref() != Some(version) {
            machine.reset_backup()?;
        }
        let mut changes = ClientChanges::default();
        changes
            .values
            .insert(KEY_VERSION.into(), version.to_owned());
        changes
            .secret_values
            .insert(KEY_PRIVATE.into(), SecretBlob::new(key.to_bytes().to_vec()));
        // Whatever set-up was under way is over: this is the backup now.
        changes
            .secret_values
            .insert(KEY_PENDING.into(), SecretBlob::new(Vec::new()));
        store.save_changes(changes.into())?;
        let state = self.load_backup_state()?;
        self.inner.backup.state.send_replace(state);
        Ok(())
    }

    /// A backup set up here whose version was created on the server without this device
    /// hearing of it (the answer lost, the app stopped): used now. A set-up that did not
    /// reach the server is forgotten.
    pub(super) async fn resume_backup_setup(&self) -> Result<(), ClientError> {
        let Some(pending) = self.blocking(|c| c.pending_key(KEY_PENDING)).await? else {
            return Ok(());
        };
        let server = match self.latest_backup().await {
            Ok(info) => Some(info),
            Err(ClientError::Backup(BackupError::NoBackup)) => None,
            Err(e) => return Err(e),
        };
        let machine = self.machine()?;
        let _uploads = self.inner.backup.uploading.lock().await;
        self.blocking(move |c| {
            // A set-up that ended meanwhile cleared or replaced it.
            if c.pending_key(KEY_PENDING)?.as_deref() != Some(&*pending) {
                return Ok(());
            }
            let key = BackupKey::from_bytes(&pending);
            match server {
                Some(info) if check_key(&info.algorithm, &key).is_ok() => {
                    info!(version = %info.version, "a backup set up before was found: used");
                    c.adopt(&machine, &key, &info.version)
                }
                _ => c.set_pending_key(KEY_PENDING, &[]),
            }
        })
        .await
    }

    /// The 32-byte key kept under `name` while a set-up is under way, if any.
    pub(super) fn pending_key(
        &self,
        name: &str,
    ) -> Result<Option<Zeroizing<[u8; 32]>>, ClientError> {
        let Some(secret) = self.store()?.secret_value(name)? else {
            return Ok(None);
        };
        Ok(<[u8; 32]>::try_from(secret.as_bytes())
            .ok()
            .map(Zeroizing::new))
    }

    /// Keep `bytes` under `name` (empty: none).
    pub(super) fn set_pending_key(&self, name: &str, bytes: &[u8]) -> Result<(), ClientError> {
        let mut changes = ClientChanges::default();
        changes
            .secret_values
            .insert(name.into(), SecretBlob::new(bytes.to_vec()));
        self.store()?.save_changes(changes.into())?;
        Ok(())
    }

    /// The key and version this device uploads to, unless none or no longer the server's.
    pub(super) fn active(&self) -> Result<Option<Active>, ClientError> {
        let store = self.store()?;
        if replaced_by(&*store)?.is_some() {
            return Ok(None);
        }
        let (Some(version), Some(secret)) =
            (store.value(KEY_VERSION)?, store.secret_value(KEY_PRIVATE)?)
        else {
            return Ok(None);
        };
        let bytes: [u8; 32] = secret.as_bytes().try_into().map_err(|_| {
            crate::store::StoreError::Decode("the stored backup key is not 32 bytes".into())
        })?;
        let bytes = Zeroizing::new(bytes);
        Ok(Some(Active {
            key: BackupKey::from_bytes(&bytes),
            version,
        }))
    }

    fn load_backup_state(&self) -> Result<BackupState, ClientError> {
        let store = self.store()?;
        let Some(version) = store.value(KEY_VERSION)? else {
            return Ok(BackupState::Disabled);
        };
        if let Some(server) = replaced_by(&*store)? {
            return Ok(BackupState::VersionChanged {
                ours: version,
                server,
            });
        }
        Ok(BackupState::Enabled {
            version,
            pending: store.inbound_group_sessions_to_back_up_count()?,
        })
    }
}

/// The backup's algorithm is ours and its public key is `key`'s.
fn check_key(
    algorithm: &Raw<ruma::api::client::backup::BackupAlgorithm>,
    key: &BackupKey,
) -> Result<(), ClientError> {
    let algorithm: Value = algorithm
        .deserialize_as_unchecked()
        .map_err(|e| ClientError::InvalidResponse(format!("backup algorithm: {e}")))?;
    let name = algorithm["algorithm"].as_str().unwrap_or_default();
    if name != BACKUP_ALGORITHM {
        return Err(BackupError::UnsupportedAlgorithm(name.to_owned()).into());
    }
    if algorithm["auth_data"]["public_key"].as_str() != Some(&key.public_key_base64()) {
        return Err(BackupError::WrongRecoveryKey.into());
    }
    Ok(())
}

/// `Some(server's version)` if the stored version is marked as no longer the server's.
fn replaced_by(store: &dyn crate::store::Store) -> Result<Option<Option<String>>, ClientError> {
    let (Some(marker), Some(version)) = (store.value(KEY_REPLACED)?, store.value(KEY_VERSION)?)
    else {
        return Ok(None);
    };
    let Ok((ours, server)) = serde_json::from_str::<(String, Option<String>)>(&marker) else {
        // Not a marker this version wrote: ignored.
        return Ok(None);
    };
    Ok((ours == version).then_some(server))
}
