//! `NewtClient`: the app's handle on one account, and its timeline subscriptions.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use newt_core::client::{Client, SyncHandle};
use tokio::runtime::Runtime;
use tokio::task::{AbortHandle, JoinHandle};
use tracing::warn;

use crate::callbacks::{
    BackgroundScheduler, PolicyAdapter, PromptAdapter, PromptHandler, SchedulerAdapter,
    TrustPolicyProvider,
};
use crate::error::NewtError;
use crate::ids;
use crate::types::{
    ClientConfig, DeviceInfo, DeviceTrust, DueWorkReport, RoomKeyRotation, Session, StoreKey,
    UserDevice,
};

/// One runtime for all clients: its two worker threads live as long as the library.
pub(crate) fn runtime() -> Result<&'static Runtime, NewtError> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .max_blocking_threads(8)
                .thread_name("newt-worker")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| NewtError::Internal {
            message: format!("runtime: {e}"),
        })
}

/// Aborts the task when the awaiting future is dropped (the app cancelled the call).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run `work` on the SDK runtime; cancelling the caller cancels the work; a panic becomes
/// `NewtError::Internal`.
pub(crate) async fn run<T, F>(work: F) -> Result<T, NewtError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, NewtError>> + Send + 'static,
{
    let mut handle = AbortOnDrop(runtime()?.spawn(work));
    match (&mut handle.0).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(NewtError::Internal {
            message: "the SDK panicked".into(),
        }),
        Err(_) => Err(NewtError::Cancelled),
    }
}

/// A Matrix account with end-to-end encryption. Every method is safe to call from any
/// thread; suspending (async) ones never block the caller's thread.
#[derive(uniffi::Object)]
pub struct NewtClient {
    inner: RwLock<Option<Arc<Client>>>,
    sync: Mutex<Option<SyncHandle>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl NewtClient {
    pub(crate) fn client(&self) -> Result<Arc<Client>, NewtError> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(NewtError::Closed)
    }
}

/// The app's store key as the core takes it.
pub(crate) fn core_store_key(key: StoreKey) -> Result<newt_core::store::StoreKey, NewtError> {
    Ok(match key {
        StoreKey::Bytes { key } => {
            let bytes: [u8; 32] = key.try_into().map_err(|_| NewtError::InvalidInput {
                message: "a store key must be 32 bytes".into(),
            })?;
            newt_core::store::StoreKey::from_bytes(bytes)
        }
        StoreKey::Passphrase { passphrase } => {
            newt_core::store::StoreKey::from_passphrase(&passphrase)
        }
    })
}

#[uniffi::export]
impl NewtClient {
    /// Open the store at `config.store_dir` (no network). Fails with `WrongStoreKey` if the
    /// key does not open an existing store.
    #[uniffi::constructor]
    pub async fn create(config: ClientConfig) -> Result<Arc<Self>, NewtError> {
        let client = run(async move {
            let key = core_store_key(config.store_key)?;
            // Opening derives keys and may migrate: keep it off the caller's thread.
            tokio::task::spawn_blocking(move || {
                Client::new(newt_core::client::ClientConfig {
                    homeserver: config.homeserver,
                    store_dir: config.store_dir.into(),
                    store_key: key,
                })
            })
            .await
            .map_err(|_| NewtError::Internal {
                message: "store open panicked".into(),
            })?
            .map_err(NewtError::from)
        })
        .await?;
        Ok(Arc::new(Self {
            inner: RwLock::new(Some(Arc::new(client))),
            sync: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        }))
    }

    /// Log in with a password. Without `device_id` the device of an earlier login is reused.
    pub async fn login_password(
        &self,
        user: String,
        password: String,
        device_id: Option<String>,
    ) -> Result<Session, NewtError> {
        let client = self.client()?;
        run(async move {
            let password = zeroize::Zeroizing::new(password);
            Ok(client
                .login_password(&user, &password, device_id.as_deref())
                .await?
                .into())
        })
        .await
    }

    /// Restore the session of an earlier login from the store; `None` if there is none.
    pub async fn restore_session(&self) -> Result<Option<Session>, NewtError> {
        let client = self.client()?;
        run(async move {
            let restored = tokio::task::spawn_blocking({
                let client = client.clone();
                move || client.restore_session()
            })
            .await
            .map_err(|_| NewtError::Internal {
                message: "restore panicked".into(),
            })??;
            Ok(if restored {
                client.session().map(Session::from)
            } else {
                None
            })
        })
        .await
    }

    /// The logged-in session.
    pub fn session(&self) -> Option<Session> {
        self.client().ok()?.session().map(Session::from)
    }

    /// The own device's Ed25519 fingerprint, for display.
    pub fn own_fingerprint(&self) -> Result<String, NewtError> {
        Ok(self.client()?.fingerprint()?)
    }

    /// One `/sync`, waiting up to `timeout_ms` for news.
    pub async fn sync_once(&self, timeout_ms: u64) -> Result<(), NewtError> {
        let client = self.client()?;
        run(async move { Ok(client.sync_once(Duration::from_millis(timeout_ms)).await?) }).await
    }

    /// Start syncing in the background (idempotent).
    pub fn start_sync(&self) -> Result<(), NewtError> {
        let client = self.client()?;
        let mut sync = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        if sync.is_none() {
            let _guard = runtime()?.enter();
            *sync = Some(client.start_sync());
        }
        Ok(())
    }

    /// Stop background syncing and wait until it stopped (idempotent).
    pub async fn stop_sync(&self) -> Result<(), NewtError> {
        let handle = self.sync.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut handle) = handle {
            run(async move {
                handle.stop().await;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Create an encrypted room, inviting `invite`; returns the room id.
    pub async fn create_encrypted_room(
        &self,
        name: Option<String>,
        invite: Vec<String>,
    ) -> Result<String, NewtError> {
        let client = self.client()?;
        let invite = ids::user_ids(&invite)?;
        run(async move {
            Ok(client
                .create_encrypted_room(name.as_deref(), &invite)
                .await?
                .to_string())
        })
        .await
    }

    /// Create an encrypted room whose key rotates as `rotation` says; returns the room id.
    pub async fn create_encrypted_room_with_rotation(
        &self,
        name: Option<String>,
        invite: Vec<String>,
        rotation: RoomKeyRotation,
    ) -> Result<String, NewtError> {
        let client = self.client()?;
        let invite = ids::user_ids(&invite)?;
        run(async move {
            Ok(client
                .create_encrypted_room_with_rotation(name.as_deref(), &invite, rotation.into())
                .await?
                .to_string())
        })
        .await
    }

    /// Devices of the room that got `m.no_olm` instead of the current room key (no one-time
    /// or fallback key was left) and have not received it since. They are retried on the
    /// next send and by `run_due_work`, for which a wake-up is requested.
    pub fn devices_without_olm(&self, room_id: String) -> Result<Vec<UserDevice>, NewtError> {
        Ok(self
            .client()?
            .devices_without_olm(&ids::room_id(&room_id)?)?
            .into_iter()
            .map(|(user_id, device_id)| UserDevice {
                user_id: user_id.to_string(),
                device_id: device_id.to_string(),
            })
            .collect())
    }

    /// Join a room by id or alias; returns the room id.
    pub async fn join_room(&self, room_id_or_alias: String) -> Result<String, NewtError> {
        let client = self.client()?;
        let room = ids::room_or_alias(&room_id_or_alias)?;
        run(async move { Ok(client.join(&room).await?.to_string()) }).await
    }

    /// Invite a user.
    pub async fn invite_user(&self, room_id: String, user_id: String) -> Result<(), NewtError> {
        let client = self.client()?;
        let (room_id, user_id) = (ids::room_id(&room_id)?, ids::user_id(&user_id)?);
        run(async move { Ok(client.invite(&room_id, &user_id).await?) }).await
    }

    /// Send a text message (encrypted in an encrypted room); returns the event id.
    pub async fn send_text(&self, room_id: String, body: String) -> Result<String, NewtError> {
        let client = self.client()?;
        let room_id = ids::room_id(&room_id)?;
        run(async move { Ok(client.send_text(&room_id, &body).await?.to_string()) }).await
    }

    /// A user's devices (downloaded if not known or stale).
    pub async fn devices(&self, user_id: String) -> Result<Vec<DeviceInfo>, NewtError> {
        let client = self.client()?;
        let user_id = ids::user_id(&user_id)?;
        run(async move {
            Ok(client
                .devices(&user_id)
                .await?
                .into_iter()
                .map(DeviceInfo::from)
                .collect())
        })
        .await
    }

    /// Verify, blacklist or ignore a device.
    pub async fn set_device_trust(
        &self,
        user_id: String,
        device_id: String,
        trust: DeviceTrust,
    ) -> Result<(), NewtError> {
        let client = self.client()?;
        let (user_id, device_id) = (ids::user_id(&user_id)?, ids::device_id(&device_id)?);
        run(async move {
            let machine_has = client
                .devices(&user_id)
                .await?
                .iter()
                .any(|d| d.device_id == device_id);
            if !machine_has {
                return Err(NewtError::InvalidInput {
                    message: "unknown device".into(),
                });
            }
            if trust == DeviceTrust::Verified {
                // Also cross-signs an own device when this device holds the keys.
                client.verify_device(&user_id, &device_id).await?;
                return Ok(());
            }
            // A store write: on a blocking thread, not on the runtime's workers.
            tokio::task::spawn_blocking(move || {
                client.set_device_trust(&user_id, &device_id, trust.into())
            })
            .await
            .map_err(|_| NewtError::Internal {
                message: "set_device_trust panicked".into(),
            })??;
            Ok(())
        })
        .await
    }

    /// Delete one of the own devices; asks the `PromptHandler` for the password.
    pub async fn delete_device(&self, device_id: String) -> Result<(), NewtError> {
        let client = self.client()?;
        let device_id = ids::device_id(&device_id)?;
        run(async move { Ok(client.delete_device(&device_id).await?) }).await
    }

    /// Share room keys only with devices the user verified (remembered in the store); the
    /// others get `m.room_key.withheld` with code `m.unverified`, and the key once verified.
    pub fn set_share_with_verified_only(&self, on: bool) -> Result<(), NewtError> {
        Ok(self.client()?.set_share_with_verified_only(on)?)
    }

    /// Set or remove the handler of user prompts.
    pub fn set_prompt_handler(
        &self,
        handler: Option<Arc<dyn PromptHandler>>,
    ) -> Result<(), NewtError> {
        let adapter = handler
            .map(|h| Arc::new(PromptAdapter(h)) as Arc<dyn newt_core::client::PromptHandler>);
        self.client()?.set_prompt_handler(adapter);
        Ok(())
    }

    /// Ask the prompt handler before sharing room keys with devices seen for the first time.
    pub fn set_ask_about_new_devices(&self, ask: bool) -> Result<(), NewtError> {
        self.client()?.set_ask_about_new_devices(ask);
        Ok(())
    }

    /// Set or remove the per-room trust policy provider.
    pub fn set_trust_policy_provider(
        &self,
        provider: Option<Arc<dyn TrustPolicyProvider>>,
    ) -> Result<(), NewtError> {
        let adapter = provider
            .map(|p| Arc::new(PolicyAdapter(p)) as Arc<dyn newt_core::client::TrustPolicyProvider>);
        self.client()?.set_trust_policy_provider(adapter);
        Ok(())
    }

    /// Set or remove the background scheduler.
    pub fn set_background_scheduler(
        &self,
        scheduler: Option<Arc<dyn BackgroundScheduler>>,
    ) -> Result<(), NewtError> {
        let adapter = scheduler.map(|s| {
            Arc::new(SchedulerAdapter(s)) as Arc<dyn newt_core::client::BackgroundScheduler>
        });
        self.client()?.set_background_scheduler(adapter);
        Ok(())
    }

    /// Run the work a wake-up was scheduled for; reports what is left.
    pub async fn run_due_work(&self) -> Result<DueWorkReport, NewtError> {
        let client = self.client()?;
        run(async move {
            let report = client.run_due_work().await?;
            Ok(DueWorkReport {
                completed: report.completed,
                remaining: report.remaining,
            })
        })
        .await
    }

    /// Stop syncing and every subscription, wait until the client's background work has
    /// ended, then release the store (its files can be opened again). Idempotent: a second
    /// call returns once the first has finished; later calls fail with `Closed`. Cancelling
    /// the caller does not stop the closing.
    pub async fn close(&self) {
        self.stop_subscriptions();
        let sync = self.sync.lock().unwrap_or_else(|e| e.into_inner()).take();
        let client = self.inner.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(client) = client {
            match runtime() {
                // On the SDK runtime (the caller's may be any), not aborted with the caller.
                Ok(runtime) => {
                    if runtime
                        .spawn(async move { client.close().await })
                        .await
                        .is_err()
                    {
                        warn!("closing the client failed");
                    }
                }
                Err(e) => warn!(error = %e, "closing without the runtime"),
            }
        }
        // The loop has ended (closing stopped it); dropping its handle is all that is left.
        drop(sync);
        self.inner.write().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl NewtClient {
    /// Remember a subscription's task, to stop it when the client closes.
    pub(crate) fn track(&self, abort: AbortHandle) -> AbortHandle {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(abort.clone());
        abort
    }

    fn stop_subscriptions(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Drop for NewtClient {
    /// Without `close`: everything is stopped now and the store is released in the
    /// background, once the work in flight has ended.
    fn drop(&mut self) {
        self.stop_subscriptions();
        // Dropping the handle aborts the loop.
        drop(self.sync.lock().unwrap_or_else(|e| e.into_inner()).take());
        let client = self.inner.write().unwrap_or_else(|e| e.into_inner()).take();
        if let (Some(client), Ok(runtime)) = (client, runtime()) {
            runtime.spawn(async move { client.close().await });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_panic_becomes_an_internal_error() {
        let result: Result<(), NewtError> = block_on(run(async { panic!("boom") }));
        assert!(matches!(result, Err(NewtError::Internal { .. })));
    }

    #[test]
    fn dropping_the_call_cancels_the_work() {
        static FINISHED: AtomicBool = AtomicBool::new(false);
        block_on(async {
            let call = run(async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                FINISHED.store(true, Ordering::SeqCst);
                Ok(())
            });
            // The app cancels after 50 ms.
            assert!(
                tokio::time::timeout(Duration::from_millis(50), call)
                    .await
                    .is_err()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
        assert!(
            !FINISHED.load(Ordering::SeqCst),
            "the Rust work kept running after cancellation"
        );
    }

    fn config(dir: &std::path::Path, passphrase: &str) -> ClientConfig {
        ClientConfig {
            homeserver: "http://127.0.0.1:9".into(),
            store_dir: dir.to_string_lossy().into_owned(),
            store_key: StoreKey::Passphrase {
                passphrase: passphrase.into(),
            },
        }
    }

    #[test]
    fn close_is_idempotent_and_later_calls_fail_with_closed() {
        let dir = tempfile::tempdir().unwrap();
        let client = block_on(NewtClient::create(config(dir.path(), "k"))).unwrap();
        assert_eq!(client.session(), None);
        assert!(matches!(
            client.own_fingerprint(),
            Err(NewtError::NotLoggedIn)
        ));
        block_on(client.close());
        block_on(client.close());
        assert!(matches!(client.own_fingerprint(), Err(NewtError::Closed)));
        assert!(matches!(
            block_on(client.sync_once(0)),
            Err(NewtError::Closed)
        ));
        assert!(matches!(client.start_sync(), Err(NewtError::Closed)));
    }

    #[test]
    fn a_wrong_store_key_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let client = block_on(NewtClient::create(config(dir.path(), "right"))).unwrap();
        block_on(client.close());
        let err = block_on(NewtClient::create(config(dir.path(), "wrong")))
            .err()
            .unwrap();
        assert!(matches!(err, NewtError::WrongStoreKey), "{err:?}");
        let short = ClientConfig {
            store_key: StoreKey::Bytes { key: vec![1; 16] },
            ..config(dir.path(), "")
        };
        assert!(matches!(
            block_on(NewtClient::create(short)).err().unwrap(),
            NewtError::InvalidInput { .. }
        ));
    }

    #[test]
    fn an_unreachable_server_is_a_network_error() {
        let dir = tempfile::tempdir().unwrap();
        let client = block_on(NewtClient::create(config(dir.path(), "k"))).unwrap();
        let err = block_on(client.login_password("a".into(), "b".into(), None)).unwrap_err();
        assert!(matches!(err, NewtError::Network { .. }), "{err:?}");
    }
}
