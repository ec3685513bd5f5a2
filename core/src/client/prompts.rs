//! The app's hooks as the client uses them: setting them, asking the prompt handler
//! (passwords, decisions about devices), and the trust policy of a room.

use std::sync::Arc;

use tracing::warn;

use super::hooks::{
    BackgroundScheduler, Hooks, Prompt, PromptAnswer, PromptHandler, TrustPolicy,
    TrustPolicyProvider,
};
use super::{Client, ClientError};
use crate::crypto::OlmMachine;
use crate::http::HttpError;
use crate::store::LocalTrust;

impl Client {
    pub(crate) fn hooks(&self) -> Hooks {
        self.inner
            .hooks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The app's trust policy for a room (the default without a provider).
    pub(crate) fn policy_of(&self, room_id: &ruma::RoomId) -> TrustPolicy {
        self.hooks()
            .trust_policy
            .map(|p| p.policy_for_room(room_id))
            .unwrap_or_default()
    }

    /// Set or remove the handler of user prompts.
    pub fn set_prompt_handler(&self, handler: Option<Arc<dyn PromptHandler>>) {
        self.inner
            .hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .prompts = handler;
    }

    /// Ask the prompt handler about devices seen for the first time before sharing room keys
    /// with them (verify, blacklist or ignore, per device).
    pub fn set_ask_about_new_devices(&self, ask: bool) {
        self.inner
            .hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .ask_about_new_devices = ask;
    }

    /// Set or remove the provider of per-room trust policies.
    pub fn set_trust_policy_provider(&self, provider: Option<Arc<dyn TrustPolicyProvider>>) {
        self.inner
            .hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .trust_policy = provider;
    }

    /// Set or remove the scheduler of background wake-ups.
    pub fn set_background_scheduler(&self, scheduler: Option<Arc<dyn BackgroundScheduler>>) {
        self.inner
            .hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .scheduler = scheduler;
    }

    /// Ask the prompt handler, on a blocking worker thread (it may wait for the user).
    pub(crate) async fn prompt(&self, prompt: Prompt) -> PromptAnswer {
        let Some(handler) = self.hooks().prompts else {
            return PromptAnswer::Dismissed;
        };
        tokio::task::spawn_blocking(move || handler.on_prompt(prompt))
            .await
            .unwrap_or(PromptAnswer::Dismissed)
    }

    /// Ask the app, in the background, about own undecided devices that requested room keys
    /// (one prompt per device). A device the user verifies gets the held requests answered;
    /// the answers go out with the next sync. Without a prompt handler nothing is asked and
    /// the requests wait until the device is verified some other way. Store I/O: runs on a
    /// blocking thread (the prompts are tasks of the runtime).
    pub(crate) fn ask_about_key_share_requests(
        &self,
        machine: &Arc<OlmMachine>,
    ) -> Result<(), ClientError> {
        let Some(handler) = self.hooks().prompts else {
            return Ok(());
        };
        for device in machine.take_key_share_prompts()? {
            let (machine, handler) = (Arc::clone(machine), Arc::clone(&handler));
            let client = self.handle();
            self.spawn_abortable(async move {
                let prompt = Prompt::KeyShareRequest {
                    device: device.clone(),
                };
                let answer = tokio::task::spawn_blocking(move || handler.on_prompt(prompt)).await;
                let Ok(PromptAnswer::DeviceDecisions(decisions)) = answer else {
                    return;
                };
                let record = client.blocking(move |_| {
                    for (user, id, trust) in decisions {
                        let about_this = user == device.user_id && id == device.device_id;
                        if about_this
                            && trust != LocalTrust::Unset
                            && let Err(e) = machine.set_local_trust(&user, &id, trust)
                        {
                            warn!(error = %e, "recording the decision about a key request failed");
                        }
                    }
                    Ok(())
                });
                if let Err(e) = record.await {
                    warn!(error = %e, "recording the decision about a key request failed");
                }
            });
        }
        Ok(())
    }

    /// Delete one of the own devices. The server asks for the password, which comes from the
    /// prompt handler ([`Prompt::Password`]).
    pub async fn delete_device(&self, device_id: &ruma::DeviceId) -> Result<(), ClientError> {
        use ruma::api::client::device::delete_device;
        let machine = self.machine()?;
        let device = device_id.to_owned();
        let first = self
            .inner
            .http
            .send(delete_device::v3::Request::new(device.clone()))
            .await;
        let session = match first {
            Ok(_) => return Ok(()),
            Err(HttpError::AuthRequired { session, flows })
                if flows.iter().any(|f| f == "m.login.password") =>
            {
                session
            }
            Err(e) => return Err(e.into()),
        };
        let reason = format!("delete device {device_id}");
        let auth = self.password_auth(&machine, session, &reason).await?;
        let mut request = delete_device::v3::Request::new(device);
        request.auth = Some(auth);
        self.inner.http.send(request).await?;
        Ok(())
    }
}
