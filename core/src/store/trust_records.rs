//! The records of sender trust: what we knew about the sender of an inbound Megolm session
//! when it arrived ([`SenderData`]), and each user's cross-signing identity as we pinned
//! and verified it ([`UserIdentityRecord`]).

use ruma::{OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};

/// How far the sender of a session was trusted. Apart from [`SenderTrust::Tampered`]
/// (final evidence), the order is from least to most known: stored data is only ever
/// replaced by a later level, see [`SenderData::improves_on`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SenderTrust {
    /// The sending device carries a cross-signing signature of its owner that does not
    /// verify: evidence of tampering. Its sessions are never shown.
    Tampered,
    /// The sending device is not (yet) known: its keys were not in any `/keys/query` answer.
    UnknownDevice,
    /// The device is known, but its owner did not cross-sign it (or has no identity).
    DeviceOnly,
    /// The device is cross-signed, but by an identity that replaced one we had verified,
    /// and the new one is not verified.
    VerificationViolation,
    /// The device is cross-signed by its owner's identity (pinned on first use), which we
    /// did not verify.
    CrossSigned,
    /// The device is cross-signed by an identity we verified.
    Verified,
}

impl SenderTrust {
    /// Every level, worst first.
    pub const ALL: [SenderTrust; 6] = [
        Self::Tampered,
        Self::UnknownDevice,
        Self::DeviceOnly,
        Self::VerificationViolation,
        Self::CrossSigned,
        Self::Verified,
    ];

    /// Stable string for storage (an indexed column of the SQLite store).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tampered => "tampered",
            Self::VerificationViolation => "verification_violation",
            Self::UnknownDevice => "unknown_device",
            Self::DeviceOnly => "device_only",
            Self::CrossSigned => "cross_signed",
            Self::Verified => "verified",
        }
    }

    /// Whether better data may still come for a session at this level: the device may
    /// become known, its owner may cross-sign it, or the user may verify the identity.
    pub fn may_improve(self) -> bool {
        !matches!(self, Self::Tampered | Self::Verified)
    }
}

/// When the sender data of a session will be looked for again (the background retry of a
/// device the server did not list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderDataRetry {
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix millis of the next attempt.
    pub next_ms: u64,
}

/// What we knew about the sender of an inbound Megolm session, recorded when it arrived
/// and improved when better data came (seed 003).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderData {
    /// Trust level.
    pub trust: SenderTrust,
    /// The sender's master cross-signing key (base64) that signed the device, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key: Option<String>,
    /// The session did not come from its creator over Olm (key export, backup, forwarding),
    /// or was stored before sender data existed.
    #[serde(default)]
    pub legacy: bool,
    /// Set while the sending device is unknown and the server could not list it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<SenderDataRetry>,
}

impl SenderData {
    /// Nothing known yet about the sending device.
    pub fn unknown(legacy: bool) -> Self {
        Self {
            trust: SenderTrust::UnknownDevice,
            master_key: None,
            legacy,
            retry: None,
        }
    }

    /// What sessions stored before sender data existed read as: legacy, sender unknown
    /// (completed by the background retry).
    pub fn before_sender_data() -> Self {
        Self::unknown(true)
    }

    /// Whether `self` should replace `old`: evidence of tampering, a later level, or the
    /// same level with a change in what is awaited (retry schedule). Never a downgrade: a
    /// session that was cross-signed when it arrived stays so when the identity later
    /// changes, and tampering is final.
    pub fn improves_on(&self, old: &SenderData) -> bool {
        match (old.trust, self.trust) {
            (SenderTrust::Tampered, _) => false,
            (_, SenderTrust::Tampered) => true,
            (old_trust, trust) => {
                trust > old_trust || (trust == old_trust && self.retry != old.retry)
            }
        }
    }
}

impl SenderData {
    /// The data of two copies of one session (same sender keys, connected ratchets, hence
    /// signed by the same session key): the better level, and not legacy if either copy
    /// came from its creator over Olm.
    pub fn merged(a: &SenderData, b: &SenderData) -> SenderData {
        let mut best = if b.improves_on(a) {
            b.clone()
        } else {
            a.clone()
        };
        best.legacy = a.legacy && b.legacy;
        best
    }
}

/// Which devices get a room's key.
///
/// Deliberately exhaustive: a new policy must be mapped by the bindings, never defaulted to
/// a looser one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SharingPolicy {
    /// Every device, blacklisted ones included (only devices with a tampered cross-signing
    /// signature are left out).
    AllDevices,
    /// Every device but those the user blacklisted.
    #[default]
    AllButBlacklisted,
    /// Devices their owner cross-signed (or the user verified by hand), not blacklisted.
    CrossSignedOnly,
    /// Devices the user verified: by hand, or cross-signed by an identity the user
    /// verified.
    VerifiedOnly,
    /// Like [`SharingPolicy::AllButBlacklisted`], but sending stops on devices nobody
    /// decided about yet and asks the app (`Prompt::NewDevices`), then goes on.
    AskMe,
}

impl SharingPolicy {
    /// Every policy.
    pub const ALL: [SharingPolicy; 5] = [
        Self::AllDevices,
        Self::AllButBlacklisted,
        Self::CrossSignedOnly,
        Self::VerifiedOnly,
        Self::AskMe,
    ];

    /// Stable name for storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllDevices => "all_devices",
            Self::AllButBlacklisted => "all_but_blacklisted",
            Self::CrossSignedOnly => "cross_signed_only",
            Self::VerifiedOnly => "verified_only",
            Self::AskMe => "ask_me",
        }
    }

    /// Parse [`SharingPolicy::as_str`]; also the values of the earlier verified-only switch
    /// (`true`, `false`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "true" => Some(Self::VerifiedOnly),
            "false" => Some(Self::AllButBlacklisted),
            _ => Self::ALL.into_iter().find(|p| p.as_str() == s),
        }
    }
}

/// A sender data change for one stored session (only the sender data columns are written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderDataUpdate {
    /// Room of the session.
    pub room_id: OwnedRoomId,
    /// Megolm session id.
    pub session_id: String,
    /// The new sender data.
    pub sender_data: SenderData,
}

/// What the re-evaluation of a stored session needs: who claims to have sent it and what
/// we recorded, without its (encrypted) ratchet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSender {
    /// Room of the session.
    pub room_id: OwnedRoomId,
    /// Megolm session id.
    pub session_id: String,
    /// Curve25519 key of the sending device.
    pub sender_key: String,
    /// Ed25519 key the sending device claimed.
    pub signing_key: String,
    /// The sending user, as authenticated by Olm.
    pub sender_user: OwnedUserId,
    /// Current sender data.
    pub sender_data: SenderData,
}

/// One user's cross-signing identity, as the server last gave it and as we pinned and
/// verified it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIdentityRecord {
    /// The user.
    pub user_id: OwnedUserId,
    /// Current master key (base64).
    pub master_key: String,
    /// Current self-signing key (base64), signed by the master key.
    pub self_signing_key: String,
    /// Current user-signing key (base64); only the own identity has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_signing_key: Option<String>,
    /// The signed keys as received: `{"master": …, "self_signing": …, "user_signing": …}`.
    pub keys_json: String,
    /// The master key pinned on first use (or acknowledged by the app after a change).
    pub pinned_master_key: String,
    /// The master key we verified (SAS, or a signature of our user-signing key), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_master_key: Option<String>,
}

impl UserIdentityRecord {
    /// The current identity is the one we verified.
    pub fn is_verified(&self) -> bool {
        self.verified_master_key.as_deref() == Some(self.master_key.as_str())
    }

    /// We verified an earlier identity of this user, not the current one.
    pub fn has_verification_violation(&self) -> bool {
        self.verified_master_key
            .as_deref()
            .is_some_and(|k| k != self.master_key)
    }

    /// The identity changed since it was pinned, and was never verified (the app may
    /// acknowledge the change).
    pub fn has_pin_violation(&self) -> bool {
        self.pinned_master_key != self.master_key && self.verified_master_key.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(trust: SenderTrust) -> SenderData {
        SenderData {
            trust,
            ..SenderData::unknown(false)
        }
    }

    #[test]
    fn sender_data_is_only_replaced_by_better_data() {
        use SenderTrust::*;
        let order = [
            UnknownDevice,
            DeviceOnly,
            VerificationViolation,
            CrossSigned,
            Verified,
        ];
        for (i, old) in order.iter().enumerate() {
            for (j, new) in order.iter().enumerate() {
                assert_eq!(
                    data(*new).improves_on(&data(*old)),
                    j > i,
                    "{old:?} -> {new:?}"
                );
            }
        }
        // Tampered replaces anything and is final, whatever comes later.
        for other in order {
            assert!(!data(other).improves_on(&data(Tampered)));
            assert!(data(Tampered).improves_on(&data(other)));
        }
        let mut waiting = data(UnknownDevice);
        waiting.retry = Some(SenderDataRetry {
            attempts: 1,
            next_ms: 5,
        });
        assert!(waiting.improves_on(&data(UnknownDevice)));
    }

    #[test]
    fn identity_violations() {
        let mut id = UserIdentityRecord {
            user_id: "@a:x".try_into().unwrap(),
            master_key: "M1".into(),
            self_signing_key: "S1".into(),
            user_signing_key: None,
            keys_json: "{}".into(),
            pinned_master_key: "M1".into(),
            verified_master_key: None,
        };
        assert!(!id.has_pin_violation() && !id.is_verified());
        id.master_key = "M2".into();
        assert!(id.has_pin_violation() && !id.has_verification_violation());
        id.verified_master_key = Some("M1".into());
        assert!(!id.has_pin_violation() && id.has_verification_violation());
        id.verified_master_key = Some("M2".into());
        assert!(id.is_verified() && !id.has_verification_violation());
    }
}
