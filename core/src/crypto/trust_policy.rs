//! Decryption trust policies (seed 003): which senders' messages a room shows, judged from
//! the sender data of the message's session.

use serde::Serialize;

use crate::store::SenderTrust;

/// Which senders' messages a room shows ("invisible crypto").
///
/// Deliberately exhaustive: a new policy must be mapped by the bindings, never defaulted to
/// a looser one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
pub enum TrustPolicy {
    /// Show messages from every session, except evidence of tampering.
    #[default]
    ShowAll,
    /// Only cross-signed senders, plus legacy sessions (key export, backup, forwarding,
    /// or stored before sender data existed).
    CrossSignedOrLegacy,
    /// Only cross-signed senders, of sessions that came from them (not legacy ones: a key
    /// export, the backup or a forward does not prove who made the session, and anyone who
    /// knows the backup's public key, the homeserver included, can add to the backup).
    CrossSignedOnly,
    /// Only senders the user verified (their identity, or the device by hand), of sessions
    /// that came from them (not legacy ones).
    VerifiedOnly,
}

impl TrustPolicy {
    /// Whether a message whose session's sender is trusted as `trust` (`legacy` if the
    /// session did not come from its creator over Olm) is shown. A tampered sender is never
    /// shown; a sender whose verified identity changed is shown only by
    /// [`TrustPolicy::ShowAll`].
    pub fn allows(self, trust: SenderTrust, legacy: bool) -> bool {
        use SenderTrust::*;
        let cross_signed = matches!(trust, CrossSigned | Verified);
        match (self, trust) {
            (_, Tampered) => false,
            (TrustPolicy::ShowAll, _) => true,
            (_, VerificationViolation) => false,
            (TrustPolicy::CrossSignedOrLegacy, _) => cross_signed || legacy,
            (TrustPolicy::CrossSignedOnly, _) => cross_signed && !legacy,
            (TrustPolicy::VerifiedOnly, _) => trust == Verified && !legacy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SenderTrust::*;

    /// The whole table: each policy against each sender state, legacy or not.
    #[test]
    fn each_policy_against_each_sender_state() {
        let shown = |policy: TrustPolicy, legacy: bool| -> Vec<SenderTrust> {
            SenderTrust::ALL
                .into_iter()
                .filter(|t| policy.allows(*t, legacy))
                .collect()
        };
        let all_but_tampered = vec![
            UnknownDevice,
            DeviceOnly,
            VerificationViolation,
            CrossSigned,
            Verified,
        ];
        assert_eq!(shown(TrustPolicy::ShowAll, false), all_but_tampered);
        assert_eq!(shown(TrustPolicy::ShowAll, true), all_but_tampered);
        assert_eq!(
            shown(TrustPolicy::CrossSignedOrLegacy, false),
            [CrossSigned, Verified]
        );
        assert_eq!(
            shown(TrustPolicy::CrossSignedOrLegacy, true),
            [UnknownDevice, DeviceOnly, CrossSigned, Verified]
        );
        assert_eq!(
            shown(TrustPolicy::CrossSignedOnly, false),
            [CrossSigned, Verified]
        );
        assert_eq!(shown(TrustPolicy::VerifiedOnly, false), [Verified]);
        // A legacy session's claimed sender is not proven: the strict policies hide it,
        // whatever its claimed device's trust (the homeserver can add to the backup).
        assert_eq!(shown(TrustPolicy::CrossSignedOnly, true), []);
        assert_eq!(shown(TrustPolicy::VerifiedOnly, true), []);
    }
}
