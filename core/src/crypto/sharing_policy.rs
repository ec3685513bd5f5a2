//! Sharing policies (seed 004, the sending side): which devices of a room's members get its
//! room key. The policy itself ([`SharingPolicy`]) is a stored setting, global and per room;
//! this module decides each device's case and the `m.room_key.withheld` code of those left
//! out.

use ruma::events::room_key::withheld::RoomKeyWithheldCode;

use super::identity::DeviceSignature;
use crate::store::{DeviceRecord, LocalTrust, SharingPolicy};

/// Why `device` gets an `m.room_key.withheld` instead of the key under `policy`:
/// `(code, reason)`, or `None` if it gets the key. `signature` is the device's cross-signing
/// state, `owner_verified` whether the user verified its owner's identity. A device with a
/// tampered cross-signing signature never gets a key.
pub(crate) fn left_out_because(
    policy: SharingPolicy,
    device: &DeviceRecord,
    signature: DeviceSignature,
    owner_verified: bool,
) -> Option<(RoomKeyWithheldCode, &'static str)> {
    let by_hand = device.local_trust == LocalTrust::Verified;
    let cross_signed = signature == DeviceSignature::CrossSigned;
    let verified = by_hand || (cross_signed && owner_verified);
    if signature == DeviceSignature::Tampered {
        return Some((RoomKeyWithheldCode::Unverified, TAMPERED));
    }
    if device.local_trust == LocalTrust::Blacklisted && policy != SharingPolicy::AllDevices {
        return Some((RoomKeyWithheldCode::Blacklisted, BLACKLISTED));
    }
    match policy {
        SharingPolicy::CrossSignedOnly if !(cross_signed || by_hand) => {
            Some((RoomKeyWithheldCode::Unverified, NOT_CROSS_SIGNED))
        }
        SharingPolicy::VerifiedOnly if !verified => {
            Some((RoomKeyWithheldCode::Unverified, UNVERIFIED))
        }
        _ => None,
    }
}

const TAMPERED: &str = "The device's cross-signing signature does not verify";
const BLACKLISTED: &str = "You have been blocked by this device";
const NOT_CROSS_SIGNED: &str = "This device only shares keys with cross-signed devices";
const UNVERIFIED: &str = "This device only shares keys with verified devices";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_ids::{did, uid};

    fn device(trust: LocalTrust) -> DeviceRecord {
        DeviceRecord {
            user_id: uid("@b:x"),
            device_id: did("D"),
            curve25519: "c".into(),
            ed25519: "e".into(),
            algorithms: Vec::new(),
            display_name: None,
            keys_json: "{}".into(),
            local_trust: trust,
            deleted: false,
        }
    }

    /// Each policy against each device state: who gets the key, and the code of those left
    /// out.
    #[test]
    fn each_policy_against_each_device_state() {
        use DeviceSignature::*;
        use RoomKeyWithheldCode as C;
        use SharingPolicy::*;
        let states = [
            ("unset, unsigned", LocalTrust::Unset, Unsigned, false),
            ("ignored, unsigned", LocalTrust::Ignored, Unsigned, false),
            (
                "blacklisted, cross-signed",
                LocalTrust::Blacklisted,
                CrossSigned,
                true,
            ),
            ("cross-signed", LocalTrust::Unset, CrossSigned, false),
            (
                "cross-signed, owner verified",
                LocalTrust::Unset,
                CrossSigned,
                true,
            ),
            (
                "verified by hand, unsigned",
                LocalTrust::Verified,
                Unsigned,
                false,
            ),
            (
                "tampered, verified by hand",
                LocalTrust::Verified,
                Tampered,
                true,
            ),
        ];
        let expected: [(SharingPolicy, [Option<C>; 7]); 5] = [
            (
                AllDevices,
                [None, None, None, None, None, None, Some(C::Unverified)],
            ),
            (
                AllButBlacklisted,
                [
                    None,
                    None,
                    Some(C::Blacklisted),
                    None,
                    None,
                    None,
                    Some(C::Unverified),
                ],
            ),
            (
                AskMe,
                [
                    None,
                    None,
                    Some(C::Blacklisted),
                    None,
                    None,
                    None,
                    Some(C::Unverified),
                ],
            ),
            (
                CrossSignedOnly,
                [
                    Some(C::Unverified),
                    Some(C::Unverified),
                    Some(C::Blacklisted),
                    None,
                    None,
                    None,
                    Some(C::Unverified),
                ],
            ),
            (
                VerifiedOnly,
                [
                    Some(C::Unverified),
                    Some(C::Unverified),
                    Some(C::Blacklisted),
                    Some(C::Unverified),
                    None,
                    None,
                    Some(C::Unverified),
                ],
            ),
        ];
        for (policy, codes) in expected {
            for ((what, trust, signature, owner_verified), code) in states.iter().zip(codes) {
                let got = left_out_because(policy, &device(*trust), *signature, *owner_verified)
                    .map(|(c, _)| c);
                assert_eq!(got, code, "{policy:?} / {what}");
            }
        }
    }

    #[test]
    fn stored_names_round_trip_and_the_old_switch_still_reads() {
        for policy in SharingPolicy::ALL {
            assert_eq!(SharingPolicy::parse(policy.as_str()), Some(policy));
        }
        assert_eq!(
            SharingPolicy::parse("true"),
            Some(SharingPolicy::VerifiedOnly)
        );
        assert_eq!(
            SharingPolicy::parse("false"),
            Some(SharingPolicy::AllButBlacklisted)
        );
        assert_eq!(SharingPolicy::parse("nonsense"), None);
    }
}
