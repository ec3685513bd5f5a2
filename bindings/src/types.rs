//! Records and enums the app sees, converted from core types.

use std::sync::Arc;

use newt_core::client::{TimelineEvent, TrustPolicy as CoreTrustPolicy};
use newt_core::crypto::Device;
use newt_core::store::LocalTrust;
use newt_core::store::{SenderTrust as CoreSenderTrust, SharingPolicy as CoreSharingPolicy};

use crate::error::DecryptionFailure;
use crate::secret::SecretText;
use crate::sending::{LocalEcho, SendState};

/// How the store's secrets are encrypted at rest.
#[derive(uniffi::Enum)]
pub enum StoreKey {
    /// 32 random bytes (keep them in the platform keystore).
    Bytes {
        /// The key.
        key: Vec<u8>,
    },
    /// A passphrase, stretched with PBKDF2.
    Passphrase {
        /// The passphrase.
        passphrase: String,
    },
}

/// Where and how a client keeps its data.
#[derive(uniffi::Record)]
pub struct ClientConfig {
    /// Homeserver base URL.
    pub homeserver: String,
    /// Directory of the store (created if missing).
    pub store_dir: String,
    /// Key for secrets at rest.
    pub store_key: StoreKey,
}

/// The logged-in identity.
#[derive(uniffi::Record, Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Own user id.
    pub user_id: String,
    /// Own device id.
    pub device_id: String,
}

impl From<newt_core::client::Session> for Session {
    fn from(s: newt_core::client::Session) -> Self {
        Self {
            user_id: s.user_id.to_string(),
            device_id: s.device_id.to_string(),
        }
    }
}

/// The user's decision about a device.
#[derive(uniffi::Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceTrust {
    /// Not decided.
    Unset,
    /// Verified.
    Verified,
    /// Never share keys with it.
    Blacklisted,
    /// Share keys, don't ask again.
    Ignored,
}

impl From<LocalTrust> for DeviceTrust {
    fn from(t: LocalTrust) -> Self {
        match t {
            LocalTrust::Unset => DeviceTrust::Unset,
            LocalTrust::Verified => DeviceTrust::Verified,
            LocalTrust::Blacklisted => DeviceTrust::Blacklisted,
            LocalTrust::Ignored => DeviceTrust::Ignored,
        }
    }
}

impl From<DeviceTrust> for LocalTrust {
    fn from(t: DeviceTrust) -> Self {
        match t {
            DeviceTrust::Unset => LocalTrust::Unset,
            DeviceTrust::Verified => LocalTrust::Verified,
            DeviceTrust::Blacklisted => LocalTrust::Blacklisted,
            DeviceTrust::Ignored => LocalTrust::Ignored,
        }
    }
}

/// A device of some user.
#[derive(uniffi::Record, Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Owner.
    pub user_id: String,
    /// Device id.
    pub device_id: String,
    /// Name the owner gave it.
    pub display_name: Option<String>,
    /// Ed25519 fingerprint key.
    pub ed25519: String,
    /// Curve25519 identity key.
    pub curve25519: String,
    /// The user's decision about it.
    pub trust: DeviceTrust,
    /// Removed by its owner.
    pub deleted: bool,
    /// Its owner's self-signing key signed it.
    pub cross_signed: bool,
    /// Verified: by hand, or cross-signed by an identity the user verified.
    pub verified: bool,
}

impl From<Device> for DeviceInfo {
    fn from(d: Device) -> Self {
        Self {
            user_id: d.user_id.to_string(),
            device_id: d.device_id.to_string(),
            display_name: d.display_name,
            ed25519: d.ed25519,
            curve25519: d.curve25519,
            trust: d.local_trust.into(),
            deleted: d.deleted,
            cross_signed: d.cross_signed,
            verified: d.verified,
        }
    }
}

/// Which senders' messages a room shows.
#[derive(uniffi::Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustPolicy {
    /// Everything.
    ShowAll,
    /// Cross-signed senders and legacy sessions.
    CrossSignedOrLegacy,
    /// Cross-signed senders only.
    CrossSignedOnly,
    /// Manually verified senders only.
    VerifiedOnly,
}

impl From<TrustPolicy> for CoreTrustPolicy {
    fn from(p: TrustPolicy) -> Self {
        match p {
            TrustPolicy::ShowAll => CoreTrustPolicy::ShowAll,
            TrustPolicy::CrossSignedOrLegacy => CoreTrustPolicy::CrossSignedOrLegacy,
            TrustPolicy::CrossSignedOnly => CoreTrustPolicy::CrossSignedOnly,
            TrustPolicy::VerifiedOnly => CoreTrustPolicy::VerifiedOnly,
        }
    }
}

impl From<CoreTrustPolicy> for TrustPolicy {
    fn from(p: CoreTrustPolicy) -> Self {
        match p {
            CoreTrustPolicy::ShowAll => TrustPolicy::ShowAll,
            CoreTrustPolicy::CrossSignedOrLegacy => TrustPolicy::CrossSignedOrLegacy,
            CoreTrustPolicy::CrossSignedOnly => TrustPolicy::CrossSignedOnly,
            CoreTrustPolicy::VerifiedOnly => TrustPolicy::VerifiedOnly,
        }
    }
}

/// How far the sender of a message is trusted, from worst to best.
#[derive(uniffi::Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SenderTrust {
    /// A cross-signing signature of the device does not verify: never shown.
    Tampered,
    /// The sending device is not known (yet).
    UnknownDevice,
    /// The device is known but not cross-signed by its owner.
    DeviceOnly,
    /// Cross-signed by an identity that replaced one the user had verified.
    VerificationViolation,
    /// Cross-signed by its owner's identity, not verified.
    CrossSigned,
    /// Verified (the identity, or the device by hand).
    Verified,
}

impl From<CoreSenderTrust> for SenderTrust {
    fn from(t: CoreSenderTrust) -> Self {
        match t {
            CoreSenderTrust::Tampered => SenderTrust::Tampered,
            CoreSenderTrust::UnknownDevice => SenderTrust::UnknownDevice,
            CoreSenderTrust::DeviceOnly => SenderTrust::DeviceOnly,
            CoreSenderTrust::VerificationViolation => SenderTrust::VerificationViolation,
            CoreSenderTrust::CrossSigned => SenderTrust::CrossSigned,
            CoreSenderTrust::Verified => SenderTrust::Verified,
        }
    }
}

/// Which devices of a room's members get its room key.
#[derive(uniffi::Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SharingPolicy {
    /// Every device, blacklisted ones included (never a tampered one).
    AllDevices,
    /// Every device but blacklisted ones (the default).
    AllButBlacklisted,
    /// Devices their owner cross-signed (or verified by hand), not blacklisted.
    CrossSignedOnly,
    /// Verified devices (by hand, or cross-signed by an identity the user verified).
    VerifiedOnly,
    /// All but blacklisted, and sending asks `PromptHandler` (`Prompt.NewDevices`) about
    /// devices nobody decided about; without an answer it fails with `UnknownDevices`.
    AskMe,
}

impl From<SharingPolicy> for CoreSharingPolicy {
    fn from(p: SharingPolicy) -> Self {
        match p {
            SharingPolicy::AllDevices => CoreSharingPolicy::AllDevices,
            SharingPolicy::AllButBlacklisted => CoreSharingPolicy::AllButBlacklisted,
            SharingPolicy::CrossSignedOnly => CoreSharingPolicy::CrossSignedOnly,
            SharingPolicy::VerifiedOnly => CoreSharingPolicy::VerifiedOnly,
            SharingPolicy::AskMe => CoreSharingPolicy::AskMe,
        }
    }
}

impl From<CoreSharingPolicy> for SharingPolicy {
    fn from(p: CoreSharingPolicy) -> Self {
        match p {
            CoreSharingPolicy::AllDevices => SharingPolicy::AllDevices,
            CoreSharingPolicy::AllButBlacklisted => SharingPolicy::AllButBlacklisted,
            CoreSharingPolicy::CrossSignedOnly => SharingPolicy::CrossSignedOnly,
            CoreSharingPolicy::VerifiedOnly => SharingPolicy::VerifiedOnly,
            CoreSharingPolicy::AskMe => SharingPolicy::AskMe,
        }
    }
}

/// A user's cross-signing identity.
#[derive(uniffi::Record, Clone, Debug, PartialEq, Eq)]
pub struct UserIdentityInfo {
    /// The user.
    pub user_id: String,
    /// The master key (base64), to compare out of band.
    pub master_key: String,
    /// Verified by the user.
    pub verified: bool,
    /// Changed since first seen and never verified: show it, then `pinIdentity`.
    pub pin_violation: bool,
    /// Changed after the user verified the earlier one: verify again (or `pinIdentity`).
    pub verification_violation: bool,
}

impl From<newt_core::crypto::UserIdentity> for UserIdentityInfo {
    fn from(i: newt_core::crypto::UserIdentity) -> Self {
        Self {
            user_id: i.user_id.to_string(),
            master_key: i.master_key,
            verified: i.verified,
            pin_violation: i.pin_violation,
            verification_violation: i.verification_violation,
        }
    }
}

/// A received message.
#[derive(uniffi::Record, Clone, Debug, PartialEq)]
pub struct TimelineItem {
    /// Event id.
    pub event_id: String,
    /// Room.
    pub room_id: String,
    /// Sender.
    pub sender: String,
    /// Sending device, when decrypted.
    pub sender_device: Option<String>,
    /// Event type after decryption.
    pub event_type: String,
    /// Message text, if any.
    pub body: Option<String>,
    /// Whether it was decrypted.
    pub decrypted: bool,
    /// Why it could not be decrypted, in words (for logs).
    pub error: Option<String>,
    /// Why it could not be decrypted, typed: what to show or do (`null` when decrypted).
    pub failure: Option<DecryptionFailure>,
    /// Server timestamp (ms).
    pub origin_server_ts: u64,
    /// The room's trust policy at reception (or at the last re-evaluation).
    pub trust_policy: TrustPolicy,
    /// How far the sender of a decrypted message is trusted (`null` if not decrypted).
    pub sender_trust: Option<SenderTrust>,
    /// The session came from a key export, backup or forwarding.
    pub legacy: bool,
    /// Decrypted, but the room's policy does not show this sender (`body` is `null`;
    /// `senderTrust` says why). Delivered again as `Updated` when it is shown.
    pub hidden_by_policy: bool,
    /// Undecryptable for now, but its key may still arrive; Newt then sends `Updated`.
    pub waiting_for_key: bool,
    /// The content as JSON: decrypted when shown (what `downloadAttachment` takes), the
    /// encrypted content otherwise.
    pub content_json: String,
    /// Our own message's transaction id: it replaces the local echo with this id.
    pub transaction_id: Option<String>,
}

impl From<TimelineEvent> for TimelineItem {
    fn from(e: TimelineEvent) -> Self {
        Self {
            event_id: e.event_id.to_string(),
            room_id: e.room_id.to_string(),
            sender: e.sender.to_string(),
            sender_device: e.sender_device.map(|d| d.to_string()),
            event_type: e.event_type,
            body: e.body,
            decrypted: e.decrypted,
            failure: match (&e.failure, &e.error) {
                (Some(failure), _) => Some(DecryptionFailure::from(failure)),
                (None, Some(_)) => Some(DecryptionFailure::Other),
                (None, None) => None,
            },
            error: e.error,
            origin_server_ts: e.origin_server_ts,
            trust_policy: e.trust_policy.into(),
            sender_trust: e.sender_trust.map(SenderTrust::from),
            legacy: e.legacy,
            hidden_by_policy: e.hidden_by_policy,
            waiting_for_key: e.waiting_for_key,
            content_json: e.content.to_string(),
            transaction_id: e.transaction_id,
        }
    }
}

/// What a timeline subscription delivers: the current items first, then each new one.
#[derive(uniffi::Enum, Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TimelineUpdate {
    /// The items received recently (possibly none); always the first update.
    Initial {
        /// Oldest first.
        items: Vec<TimelineItem>,
        /// The local echoes of the room's queued messages, oldest first (shown after the
        /// items).
        echoes: Vec<LocalEcho>,
    },
    /// A new item.
    Appended {
        /// The item.
        item: TimelineItem,
    },
    /// An item delivered before changed, e.g. it became decrypted when its room key arrived
    /// late. Replace the item with the same `event_id`.
    Updated {
        /// The new version of the item.
        item: TimelineItem,
    },
    /// A message was queued, or its queued content edited: show (or replace, same
    /// `transactionId`) its local echo.
    LocalEcho {
        /// The echo.
        echo: LocalEcho,
    },
    /// A queued message's state changed (sending, uploading, sent, waiting, stuck,
    /// cancelled: remove its echo).
    SendStateChanged {
        /// Its echo's id.
        transaction_id: String,
        /// The new state.
        state: SendState,
    },
    /// The remote event of our own message arrived: replace the local echo with this
    /// `transactionId` by the item (append it if no such echo is shown).
    EchoReplaced {
        /// The echo's id.
        transaction_id: String,
        /// The event.
        item: TimelineItem,
    },
}

/// When an encrypted room's key rotates: after `period_ms` milliseconds or `messages`
/// messages, whichever comes first (both must be positive).
#[derive(uniffi::Record, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomKeyRotation {
    /// Maximum age of a room key, in milliseconds (default one week).
    pub period_ms: u64,
    /// Maximum number of messages per room key (default 100).
    pub messages: u64,
}

impl From<RoomKeyRotation> for newt_core::crypto::RotationSettings {
    fn from(r: RoomKeyRotation) -> Self {
        Self {
            period_ms: r.period_ms,
            messages: r.messages,
        }
    }
}

/// One device of one user.
#[derive(uniffi::Record, Clone, Debug, PartialEq, Eq)]
pub struct UserDevice {
    /// Owner.
    pub user_id: String,
    /// Device id.
    pub device_id: String,
}

/// A background wake-up the app should schedule.
#[derive(uniffi::Record, Clone, Debug, PartialEq, Eq)]
pub struct WakeupRequest {
    /// Earliest time to run, in ms from now.
    pub delay_ms: u64,
    /// Why (diagnostics only).
    pub reason: String,
    /// Whether network is needed.
    pub requires_network: bool,
}

/// What `runDueWork` did.
#[derive(uniffi::Record, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DueWorkReport {
    /// Items completed.
    pub completed: u32,
    /// Items still waiting.
    pub remaining: u32,
}

/// A decision the SDK needs from the user. Answer kinds you don't know with
/// `PromptAnswer::Dismissed`; new kinds will be added.
#[derive(uniffi::Enum, Clone, PartialEq)]
#[non_exhaustive]
pub enum Prompt {
    /// The account password, for user-interactive authentication.
    Password {
        /// Whose password.
        user_id: String,
        /// What for.
        reason: String,
    },
    /// Devices seen for the first time: verify, blacklist or ignore each.
    NewDevices {
        /// The devices.
        devices: Vec<DeviceInfo>,
    },
    /// One of the user's own devices, not verified yet, asks for room keys it misses.
    /// Answer `DeviceDecisions` with `Verified` for it to share them; anything else shares
    /// nothing. Asked once per device; the keys go out with the next sync.
    KeyShareRequest {
        /// The requesting own device.
        device: DeviceInfo,
    },
    /// A user's cross-signing identity changed. Answer `Confirmed` to acknowledge it (as
    /// `NewtClient.pinIdentity` does); any other answer leaves it flagged on
    /// `UserIdentityInfo`.
    IdentityChanged {
        /// Whose identity.
        user_id: String,
        /// `true` if we had verified the earlier identity: verify the new one again.
        verification_violation: bool,
    },
    /// Another device asks to verify with this one. `Confirmed` accepts; anything else
    /// declines.
    VerificationRequest {
        /// The verification (`NewtClient.verification`).
        flow_id: String,
        /// Who asks (the own user for another of our devices).
        user_id: String,
        /// Their device.
        device_id: String,
    },
    /// Show the emoji (or numbers) and ask whether the other device shows the same:
    /// `Confirmed` if they match, `Mismatch` if not; anything else cancels.
    CompareSas {
        /// The verification.
        flow_id: String,
        /// The user being verified.
        user_id: String,
        /// The device being verified.
        device_id: String,
        /// What to show.
        sas: crate::verification::ShortAuthString,
    },
    /// A verification completed (for information; answer `Dismissed`).
    VerificationDone {
        /// The verification.
        flow_id: String,
        /// The user verified.
        user_id: String,
        /// The device verified.
        device_id: String,
        /// The user's identity was verified too.
        identity_verified: bool,
    },
    /// A verification stopped (for information; answer `Dismissed`).
    VerificationCancelled {
        /// The verification.
        flow_id: String,
        /// The other user.
        user_id: String,
        /// `m.user`, `m.mismatched_sas`, `m.key_mismatch`, `m.timeout`, ...
        code: String,
        /// The reason given.
        reason: String,
        /// This device cancelled (a check failed here, or a timeout).
        by_us: bool,
    },
    /// Ask the user for the recovery key of their key backup (`recover`). Answer
    /// `PromptAnswer.RecoveryKey`; any other answer gives up.
    RecoveryKey {
        /// Why the previous answer was refused (a typo, another backup's key), if this is
        /// not the first time asked.
        previous_error: Option<String>,
    },
    /// A new key backup was set up (`setUpRecovery`): show the user this recovery key to
    /// keep somewhere safe. The answer is ignored; `recoveryKey()` shows it again.
    NewRecoveryKey {
        /// The recovery key (groups of four characters): `expose()` it to show it.
        recovery_key: Arc<SecretText>,
    },
}

/// Without the fields: a prompt may hold a recovery key.
impl std::fmt::Debug for Prompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Prompt::Password { .. } => "Password",
            Prompt::NewDevices { .. } => "NewDevices",
            Prompt::KeyShareRequest { .. } => "KeyShareRequest",
            Prompt::IdentityChanged { .. } => "IdentityChanged",
            Prompt::VerificationRequest { .. } => "VerificationRequest",
            Prompt::CompareSas { .. } => "CompareSas",
            Prompt::VerificationDone { .. } => "VerificationDone",
            Prompt::VerificationCancelled { .. } => "VerificationCancelled",
            Prompt::RecoveryKey { .. } => "RecoveryKey",
            Prompt::NewRecoveryKey { .. } => "NewRecoveryKey",
        };
        write!(f, "Prompt::{name}")
    }
}

/// One device decision.
#[derive(uniffi::Record, Clone, Debug, PartialEq, Eq)]
pub struct DeviceDecision {
    /// Owner.
    pub user_id: String,
    /// Device.
    pub device_id: String,
    /// Decision.
    pub trust: DeviceTrust,
}

/// The answer to a [`Prompt`].
#[derive(uniffi::Enum, Clone, PartialEq)]
pub enum PromptAnswer {
    /// The password.
    Password {
        /// The password.
        password: Arc<SecretText>,
    },
    /// Decisions for [`Prompt::NewDevices`] and [`Prompt::KeyShareRequest`].
    DeviceDecisions {
        /// One per device.
        decisions: Vec<DeviceDecision>,
    },
    /// Accepted what the prompt showed (e.g. a changed identity, matching emoji).
    Confirmed,
    /// The emoji of a `CompareSas` prompt differ between the devices.
    Mismatch,
    /// The recovery key the user typed, for a `RecoveryKey` prompt.
    RecoveryKey {
        /// As typed (spaces are ignored).
        recovery_key: Arc<SecretText>,
    },
    /// Declined or not supported.
    Dismissed,
}

/// Secrets (a password, a recovery key) redacted.
impl std::fmt::Debug for PromptAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PromptAnswer::Password { .. } => f.write_str("Password(<redacted>)"),
            PromptAnswer::RecoveryKey { .. } => f.write_str("RecoveryKey(<redacted>)"),
            PromptAnswer::DeviceDecisions { decisions } => {
                f.debug_tuple("DeviceDecisions").field(decisions).finish()
            }
            PromptAnswer::Confirmed => f.write_str("Confirmed"),
            PromptAnswer::Mismatch => f.write_str("Mismatch"),
            PromptAnswer::Dismissed => f.write_str("Dismissed"),
        }
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    /// A password or recovery key given to the SDK never shows in `Debug` (it used to for
    /// the password: `PromptAnswer` derived `Debug`).
    #[test]
    fn secrets_in_prompts_and_answers_are_not_in_debug() {
        let answers = [
            PromptAnswer::Password {
                password: SecretText::new("hunter2-secret".into()),
            },
            PromptAnswer::RecoveryKey {
                recovery_key: SecretText::new("EsTc secret".into()),
            },
        ];
        let prompt = Prompt::NewRecoveryKey {
            recovery_key: SecretText::new("EsTc secret".into()),
        };
        let text = format!("{answers:?} {prompt:?}");
        assert!(!text.contains("secret"), "{text}");
    }
}

/// Log levels.
#[derive(uniffi::Enum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum LogLevel {
    /// Errors.
    Error,
    /// Warnings.
    Warn,
    /// Info.
    Info,
    /// Debug.
    Debug,
    /// Trace.
    Trace,
}

/// One log event.
#[derive(uniffi::Record, Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Level.
    pub level: LogLevel,
    /// Module path, e.g. `newt_core::client::sync`.
    pub target: String,
    /// The message with its fields.
    pub message: String,
}
