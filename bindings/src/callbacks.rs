//! Interfaces the app implements, and their adapters to the core's hooks.
//!
//! Contract for every callback: it is called on a Newt worker thread (never the thread that
//! called into the SDK, never the main thread), it must not call back into `NewtClient`
//! synchronously, and it should return quickly — except `PromptHandler::on_prompt`, which
//! runs on a blocking worker and may wait for the user.

use std::sync::Arc;

use newt_core::client as core;
use newt_core::ruma::{OwnedDeviceId, OwnedUserId, RoomId};
use newt_core::store::LocalTrust;
use tracing::warn;

use crate::error::NewtError;
use crate::ids;
use crate::secret::SecretText;
use crate::types::{
    DeviceDecision, DeviceInfo, LogRecord, Prompt, PromptAnswer, TimelineUpdate, TrustPolicy,
    WakeupRequest,
};

/// Receives timeline updates of one room.
#[uniffi::export(with_foreign)]
pub trait TimelineListener: Send + Sync {
    /// One update: `Initial` first, then `Appended` per new item.
    fn on_update(&self, update: TimelineUpdate) -> Result<(), NewtError>;
}

/// Receives the SDK's log events (for Logcat / OSLog). Never contains secrets.
#[uniffi::export(with_foreign)]
pub trait Logger: Send + Sync {
    /// One event.
    fn log(&self, record: LogRecord) -> Result<(), NewtError>;
}

/// Answers questions only the user can answer.
#[uniffi::export(with_foreign)]
pub trait PromptHandler: Send + Sync {
    /// Answer `prompt`; may block until the user decided.
    fn on_prompt(&self, prompt: Prompt) -> Result<PromptAnswer, NewtError>;
}

/// Chooses which senders' messages a room shows.
#[uniffi::export(with_foreign)]
pub trait TrustPolicyProvider: Send + Sync {
    /// The policy for a room.
    fn policy_for_room(&self, room_id: String) -> Result<TrustPolicy, NewtError>;
}

/// Schedules background wake-ups (WorkManager / BGTaskScheduler); the app then calls
/// `NewtClient.runDueWork()`.
#[uniffi::export(with_foreign)]
pub trait BackgroundScheduler: Send + Sync {
    /// Schedule one wake-up.
    fn schedule_wakeup(&self, request: WakeupRequest) -> Result<(), NewtError>;
}

pub(crate) struct PromptAdapter(pub Arc<dyn PromptHandler>);

impl core::PromptHandler for PromptAdapter {
    fn on_prompt(&self, prompt: core::Prompt) -> core::PromptAnswer {
        let prompt = match prompt {
            core::Prompt::Password { user_id, reason } => Prompt::Password {
                user_id: user_id.to_string(),
                reason,
            },
            core::Prompt::NewDevices { devices } => Prompt::NewDevices {
                devices: devices.into_iter().map(DeviceInfo::from).collect(),
            },
            core::Prompt::KeyShareRequest { device } => Prompt::KeyShareRequest {
                device: DeviceInfo::from(device),
            },
            core::Prompt::IdentityChanged {
                user_id,
                verification_violation,
            } => Prompt::IdentityChanged {
                user_id: user_id.to_string(),
                verification_violation,
            },
            core::Prompt::RecoveryKey { previous_error } => Prompt::RecoveryKey { previous_error },
            core::Prompt::NewRecoveryKey { recovery_key } => Prompt::NewRecoveryKey {
                recovery_key: SecretText::new(recovery_key.expose().to_owned()),
            },
            other => match verification_prompt(other) {
                Some(prompt) => prompt,
                // A kind this layer does not map yet: the documented answer to unknown kinds.
                None => return core::PromptAnswer::Dismissed,
            },
        };
        match self.0.on_prompt(prompt) {
            Ok(PromptAnswer::Password { password }) => {
                core::PromptAnswer::Password(password.to_zeroizing())
            }
            Ok(PromptAnswer::DeviceDecisions { decisions }) => {
                core::PromptAnswer::DeviceDecisions(device_decisions(decisions))
            }
            Ok(PromptAnswer::Confirmed) => core::PromptAnswer::Confirmed,
            Ok(PromptAnswer::Mismatch) => core::PromptAnswer::Mismatch,
            Ok(PromptAnswer::RecoveryKey { recovery_key }) => {
                core::PromptAnswer::RecoveryKey(recovery_key.to_zeroizing())
            }
            Ok(PromptAnswer::Dismissed) => core::PromptAnswer::Dismissed,
            Err(e) => {
                warn!(error = %e, "prompt handler failed; treating as dismissed");
                core::PromptAnswer::Dismissed
            }
        }
    }
}

/// The prompts of interactive verification, as the app sees them.
fn verification_prompt(prompt: core::Prompt) -> Option<Prompt> {
    Some(match prompt {
        core::Prompt::VerificationRequest {
            flow_id,
            user_id,
            device_id,
        } => Prompt::VerificationRequest {
            flow_id: flow_id.to_string(),
            user_id: user_id.to_string(),
            device_id: device_id.to_string(),
        },
        core::Prompt::CompareSas {
            flow_id,
            user_id,
            device_id,
            sas,
        } => Prompt::CompareSas {
            flow_id: flow_id.to_string(),
            user_id: user_id.to_string(),
            device_id: device_id.to_string(),
            sas: sas.into(),
        },
        core::Prompt::VerificationDone {
            flow_id,
            user_id,
            device_id,
            identity_verified,
        } => Prompt::VerificationDone {
            flow_id: flow_id.to_string(),
            user_id: user_id.to_string(),
            device_id: device_id.to_string(),
            identity_verified,
        },
        core::Prompt::VerificationCancelled {
            flow_id,
            user_id,
            code,
            reason,
            by_us,
        } => Prompt::VerificationCancelled {
            flow_id: flow_id.to_string(),
            user_id: user_id.to_string(),
            code: code.to_string(),
            reason,
            by_us,
        },
        _ => return None,
    })
}

/// The app's decisions, as the core takes them. A decision naming an invalid user or device
/// id is about no device we showed: it is left out (logged), and the device stays undecided.
fn device_decisions(
    decisions: Vec<DeviceDecision>,
) -> Vec<(OwnedUserId, OwnedDeviceId, LocalTrust)> {
    decisions
        .into_iter()
        .filter_map(
            |d| match (ids::user_id(&d.user_id), ids::device_id(&d.device_id)) {
                (Ok(user), Ok(device)) => Some((user, device, d.trust.into())),
                (Err(e), _) | (_, Err(e)) => {
                    warn!(error = %e, "a device decision names no valid device; ignored");
                    None
                }
            },
        )
        .collect()
}

pub(crate) struct PolicyAdapter(pub Arc<dyn TrustPolicyProvider>);

impl core::TrustPolicyProvider for PolicyAdapter {
    fn policy_for_room(&self, room_id: &RoomId) -> core::TrustPolicy {
        match self.0.policy_for_room(room_id.to_string()) {
            Ok(policy) => policy.into(),
            Err(e) => {
                warn!(error = %e, "trust policy provider failed; using show-all");
                core::TrustPolicy::ShowAll
            }
        }
    }
}

pub(crate) struct SchedulerAdapter(pub Arc<dyn BackgroundScheduler>);

impl core::BackgroundScheduler for SchedulerAdapter {
    fn schedule_wakeup(&self, request: core::WakeupRequest) {
        let request = WakeupRequest {
            delay_ms: request.delay.as_millis() as u64,
            reason: request.reason,
            requires_network: request.requires_network,
        };
        if let Err(e) = self.0.schedule_wakeup(request) {
            warn!(error = %e, "background scheduler failed");
        }
    }
}
