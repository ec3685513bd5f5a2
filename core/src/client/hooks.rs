//! What the app plugs into the client: prompts for user decisions, the sender-trust policy
//! per room, and background wake-ups for work to retry later.
//!
//! Every hook is called from a Newt worker thread, never from the thread that called into the
//! client, and must not call back into the client synchronously (that would wait on itself).

use std::time::Duration;

use zeroize::Zeroizing;

use crate::crypto::Device;
use crate::store::LocalTrust;

/// A decision the SDK needs from the user. New kinds are added as new variants; apps should
/// answer unknown ones with [`PromptAnswer::Dismissed`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Prompt {
    /// The server asks for the account password (user-interactive authentication).
    Password {
        /// Whose password.
        user_id: ruma::OwnedUserId,
        /// What it is for, e.g. "delete device ABC".
        reason: String,
    },
    /// Devices were seen for the first time and the app asked to decide about new devices
    /// before room keys are shared with them (see `Client::set_ask_about_new_devices`).
    NewDevices {
        /// The devices, all with [`LocalTrust::Unset`].
        devices: Vec<Device>,
    },
    /// One of the user's own devices, which nobody verified yet, asks for room keys it is
    /// missing (key sharing between own devices). Answering [`PromptAnswer::DeviceDecisions`] with
    /// [`LocalTrust::Verified`] for it shares the keys; other answers share nothing. Asked
    /// once per device; the keys go out with the next sync.
    KeyShareRequest {
        /// The requesting device (own user, [`LocalTrust::Unset`]).
        device: Device,
    },
    /// A user's cross-signing identity changed. Answering [`PromptAnswer::Confirmed`]
    /// acknowledges the new identity (`Client::pin_identity`); any other answer leaves the
    /// violation standing (the app can show it and decide later).
    IdentityChanged {
        /// Whose identity.
        user_id: ruma::OwnedUserId,
        /// `true` if we had verified the earlier identity (a verification violation: the
        /// new one should be verified again); `false` if it was only pinned on first use.
        verification_violation: bool,
    },
    /// Another device asks to verify with this one (interactive verification, SAS).
    /// Answering [`PromptAnswer::Confirmed`] accepts; any other answer declines (`m.user`).
    VerificationRequest {
        /// The flow (`Client::verification`).
        flow_id: ruma::OwnedTransactionId,
        /// Who asks (the own user for another of our devices).
        user_id: ruma::OwnedUserId,
        /// Their device.
        device_id: ruma::OwnedDeviceId,
    },
    /// Show these emoji (or numbers) and ask whether the other device shows the same.
    /// [`PromptAnswer::Confirmed`]: they match; [`PromptAnswer::Mismatch`]: they differ
    /// (`m.mismatched_sas`); any other answer cancels (`m.user`).
    CompareSas {
        /// The flow.
        flow_id: ruma::OwnedTransactionId,
        /// The user being verified.
        user_id: ruma::OwnedUserId,
        /// The device being verified.
        device_id: ruma::OwnedDeviceId,
        /// Seven emoji and three numbers; apps show one of the two.
        sas: crate::crypto::ShortAuthString,
    },
    /// A verification completed: the device is verified, and the user's identity when
    /// `identity_verified`. For information; the answer is ignored.
    VerificationDone {
        /// The flow.
        flow_id: ruma::OwnedTransactionId,
        /// The user verified.
        user_id: ruma::OwnedUserId,
        /// The device verified.
        device_id: ruma::OwnedDeviceId,
        /// The user's cross-signing identity was verified too.
        identity_verified: bool,
    },
    /// A verification stopped: the other side cancelled it (`by_us` false), or a check here
    /// failed (`by_us` true: a key or commitment mismatch, a timeout). For information.
    VerificationCancelled {
        /// The flow.
        flow_id: ruma::OwnedTransactionId,
        /// The other user.
        user_id: ruma::OwnedUserId,
        /// Why (`m.user`, `m.mismatched_sas`, `m.key_mismatch`, `m.timeout`, ...).
        code: crate::crypto::CancelCode,
        /// The reason given.
        reason: String,
        /// The cancel came from this device.
        by_us: bool,
    },
    /// Ask the user for the recovery key of their key backup (`Client::recover`). Answer
    /// [`PromptAnswer::RecoveryKey`]; any other answer gives up.
    RecoveryKey {
        /// Why the previous answer was refused (a typo, another backup's key), if this is
        /// not the first time asked.
        previous_error: Option<String>,
    },
    /// A new key backup was set up (`Client::set_up_recovery`): show the user this recovery
    /// key to keep somewhere safe. The answer is ignored; `Client::recovery_key` shows it
    /// again.
    NewRecoveryKey {
        /// The recovery key (groups of four characters).
        recovery_key: SecretText,
    },
}

/// A secret shown to the user (a recovery key): wiped when dropped, never in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    /// Wrap `text`.
    pub fn new(text: Zeroizing<String>) -> Self {
        Self(text)
    }

    /// The text, to show it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The app's answer to a [`Prompt`].
#[non_exhaustive]
pub enum PromptAnswer {
    /// The password (wiped after use).
    Password(Zeroizing<String>),
    /// One decision per device: `(user id, device id, trust)`.
    DeviceDecisions(Vec<(ruma::OwnedUserId, ruma::OwnedDeviceId, LocalTrust)>),
    /// The user accepted what the prompt showed (e.g. a changed identity, matching emoji).
    Confirmed,
    /// The emoji or numbers of a [`Prompt::CompareSas`] differ between the devices.
    Mismatch,
    /// The recovery key the user typed, for [`Prompt::RecoveryKey`] (wiped after use).
    RecoveryKey(Zeroizing<String>),
    /// The user declined or the prompt is not supported.
    Dismissed,
}

impl std::fmt::Debug for PromptAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PromptAnswer::Password(_) => f.write_str("Password(<redacted>)"),
            PromptAnswer::DeviceDecisions(d) => f.debug_tuple("DeviceDecisions").field(d).finish(),
            PromptAnswer::Confirmed => f.write_str("Confirmed"),
            PromptAnswer::Mismatch => f.write_str("Mismatch"),
            PromptAnswer::RecoveryKey(_) => f.write_str("RecoveryKey(<redacted>)"),
            PromptAnswer::Dismissed => f.write_str("Dismissed"),
        }
    }
}

/// Asks the user. May block until the user answered (it runs on a blocking worker thread).
pub trait PromptHandler: Send + Sync {
    /// Answer one prompt.
    fn on_prompt(&self, prompt: Prompt) -> PromptAnswer;
}

pub use crate::crypto::TrustPolicy;

/// Chooses the trust policy of a room; asked when the room's messages are decrypted.
pub trait TrustPolicyProvider: Send + Sync {
    /// The policy for `room_id`.
    fn policy_for_room(&self, room_id: &ruma::RoomId) -> TrustPolicy;
}

/// A request to wake the app later (Android WorkManager, iOS BGTaskScheduler), then call
/// `Client::run_due_work`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakeupRequest {
    /// Earliest time to run, from now.
    pub delay: Duration,
    /// Why, for diagnostics (no user data).
    pub reason: String,
    /// Whether the work needs network.
    pub requires_network: bool,
}

/// Schedules wake-ups. The SDK never relies on its own timers surviving app suspension.
pub trait BackgroundScheduler: Send + Sync {
    /// Schedule one wake-up; repeated requests may be coalesced by the app.
    fn schedule_wakeup(&self, request: WakeupRequest);
}

/// The hooks a client currently has.
#[derive(Default, Clone)]
pub(crate) struct Hooks {
    pub prompts: Option<std::sync::Arc<dyn PromptHandler>>,
    pub trust_policy: Option<std::sync::Arc<dyn TrustPolicyProvider>>,
    pub scheduler: Option<std::sync::Arc<dyn BackgroundScheduler>>,
    pub ask_about_new_devices: bool,
}

/// What `Client::run_due_work` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DueWorkReport {
    /// Items completed now.
    pub completed: u32,
    /// Items still waiting (a new wake-up was requested for them).
    pub remaining: u32,
}
