//! The SAS arithmetic of `m.sas.v1`, on vodozemac's SAS: the commitment to the accepting
//! side's key, the info strings that bind the derived bytes and MACs to both parties and the
//! transaction, and the MAC of each key a side vouches for.

use std::collections::BTreeMap;

use ruma::events::key::verification::cancel::CancelCode;
use ruma::serde::Base64;
use ruma::{DeviceId, UserId};
use sha2::{Digest, Sha256};
use vodozemac::Curve25519PublicKey;
use vodozemac::sas::{EstablishedSas, Mac};

use super::emoji::EMOJI;
use super::{SasEmoji, ShortAuthString};

/// One side of a verification: user, device and its ephemeral SAS key (base64).
pub(crate) struct Party<'a> {
    pub user: &'a UserId,
    pub device: &'a DeviceId,
    pub key: String,
}

/// The accepting side's commitment: SHA-256 of its ephemeral key (base64) followed by the
/// canonical JSON of the `m.key.verification.start` content (sent as unpadded base64).
pub(crate) fn commitment(accepter_key: &Curve25519PublicKey, start_canonical: &str) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(accepter_key.to_base64().as_bytes());
    hash.update(start_canonical.as_bytes());
    hash.finalize().to_vec()
}

/// What the users compare, derived from the shared secret with `curve25519-hkdf-sha256`'s
/// info string (both parties and the transaction).
pub(crate) fn short_auth_string(
    sas: &EstablishedSas,
    starter: &Party<'_>,
    accepter: &Party<'_>,
    transaction_id: &str,
) -> ShortAuthString {
    let info = format!(
        "MATRIX_KEY_VERIFICATION_SAS|{}|{}|{}|{}|{}|{}|{transaction_id}",
        starter.user, starter.device, starter.key, accepter.user, accepter.device, accepter.key,
    );
    let bytes = sas.bytes(&info);
    let emoji = bytes
        .emoji_indices()
        .iter()
        .filter_map(|i| EMOJI.get(usize::from(*i)))
        .map(|(symbol, name)| SasEmoji {
            symbol: (*symbol).to_owned(),
            description: (*name).to_owned(),
        })
        .collect();
    let (a, b, c) = bytes.decimals();
    ShortAuthString {
        emoji,
        decimals: [a, b, c],
    }
}

/// The fixed part of the `hkdf-hmac-sha256.v2` info of the MACs `sender` sends `receiver`.
pub(crate) fn mac_info_base(
    sender: (&UserId, &DeviceId),
    receiver: (&UserId, &DeviceId),
    transaction_id: &str,
) -> String {
    format!(
        "MATRIX_KEY_VERIFICATION_MAC{}{}{}{}{transaction_id}",
        sender.0, sender.1, receiver.0, receiver.1
    )
}

/// `mac` and `keys` of an `m.key.verification.mac`: one MAC per `(key id, public key)`,
/// and one of the sorted, comma-joined key ids.
pub(crate) fn macs_of(
    sas: &EstablishedSas,
    info_base: &str,
    keys: &[(String, String)],
) -> (BTreeMap<String, Base64>, Base64) {
    let mut macs = BTreeMap::new();
    for (key_id, key) in keys {
        let mac = sas.calculate_mac(key, &format!("{info_base}{key_id}"));
        macs.insert(key_id.clone(), Base64::new(mac.as_bytes().to_vec()));
    }
    let ids: Vec<&str> = macs.keys().map(String::as_str).collect();
    let keys_mac = sas.calculate_mac(&ids.join(","), &format!("{info_base}KEY_IDS"));
    (macs, Base64::new(keys_mac.as_bytes().to_vec()))
}

/// Check the other side's MACs. `known` gives the public key we hold for a key id, or
/// `None` for a key we cannot judge (ignored, as the specification asks). Returns the key
/// ids whose MAC verified; any MAC that does not verify, or a key list that does not match,
/// is [`CancelCode::KeyMismatch`].
pub(crate) fn check_macs(
    sas: &EstablishedSas,
    info_base: &str,
    macs: &BTreeMap<String, Base64>,
    keys_mac: &Base64,
    known: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, CancelCode> {
    let ids: Vec<&str> = macs.keys().map(String::as_str).collect();
    let keys_tag = Mac::from_slice(keys_mac.as_bytes());
    sas.verify_mac(&ids.join(","), &format!("{info_base}KEY_IDS"), &keys_tag)
        .map_err(|_| CancelCode::KeyMismatch)?;
    let mut verified = Vec::new();
    for (key_id, mac) in macs {
        let Some(key) = known(key_id) else {
            continue;
        };
        let tag = Mac::from_slice(mac.as_bytes());
        sas.verify_mac(&key, &format!("{info_base}{key_id}"), &tag)
            .map_err(|_| CancelCode::KeyMismatch)?;
        verified.push(key_id.clone());
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use ruma::{device_id, user_id};
    use vodozemac::sas::Sas;

    use super::*;

    fn pair() -> (EstablishedSas, EstablishedSas) {
        let (a, b) = (Sas::new(), Sas::new());
        let (ak, bk) = (a.public_key(), b.public_key());
        (
            a.diffie_hellman(bk).expect("valid key"),
            b.diffie_hellman(ak).expect("valid key"),
        )
    }

    #[test]
    fn both_sides_derive_the_same_string_and_it_depends_on_the_transaction() {
        let (a, b) = pair();
        let alice = Party {
            user: user_id!("@alice:x"),
            device: device_id!("A"),
            key: a.our_public_key().to_base64(),
        };
        let bob = Party {
            user: user_id!("@bob:x"),
            device: device_id!("B"),
            key: b.our_public_key().to_base64(),
        };
        let on_a = short_auth_string(&a, &alice, &bob, "t1");
        let on_b = short_auth_string(&b, &alice, &bob, "t1");
        assert_eq!(on_a, on_b);
        assert_eq!(on_a.emoji.len(), 7);
        assert!(on_a.decimals.iter().all(|d| (1000..=9191).contains(d)));
        assert_ne!(on_a, short_auth_string(&a, &alice, &bob, "t2"));
    }

    #[test]
    fn a_mac_for_another_key_or_party_is_a_key_mismatch() {
        let (a, b) = pair();
        let keys = vec![
            ("ed25519:A".to_owned(), "devicekey".to_owned()),
            ("ed25519:master".to_owned(), "masterkey".to_owned()),
        ];
        let info = mac_info_base(
            (user_id!("@a:x"), device_id!("A")),
            (user_id!("@b:x"), device_id!("B")),
            "t",
        );
        let (macs, keys_mac) = macs_of(&a, &info, &keys);
        let known = |id: &str| keys.iter().find(|(k, _)| k == id).map(|(_, v)| v.clone());
        let verified = check_macs(&b, &info, &macs, &keys_mac, known).expect("verifies");
        assert_eq!(verified, vec!["ed25519:A", "ed25519:master"]);
        // We hold a different device key than the one the sender vouched for.
        let other = |id: &str| (id == "ed25519:A").then(|| "otherkey".to_owned());
        let refused = check_macs(&b, &info, &macs, &keys_mac, other);
        assert_eq!(refused, Err(CancelCode::KeyMismatch));
        // The MACs were made for another receiver.
        let info_other = mac_info_base(
            (user_id!("@a:x"), device_id!("A")),
            (user_id!("@b:x"), device_id!("C")),
            "t",
        );
        let refused = check_macs(&b, &info_other, &macs, &keys_mac, known);
        assert_eq!(refused, Err(CancelCode::KeyMismatch));
        // A key id was dropped from the list: the KEY_IDS MAC no longer matches.
        let mut fewer = macs.clone();
        fewer.remove("ed25519:master");
        let refused = check_macs(&b, &info, &fewer, &keys_mac, known);
        assert_eq!(refused, Err(CancelCode::KeyMismatch));
    }

    #[test]
    fn the_commitment_binds_the_key_and_the_start_content() {
        let key = Sas::new().public_key();
        let c = commitment(&key, r#"{"a":1}"#);
        assert_eq!(c, commitment(&key, r#"{"a":1}"#));
        assert_ne!(c, commitment(&key, r#"{"a":2}"#));
        assert_ne!(c, commitment(&Sas::new().public_key(), r#"{"a":1}"#));
    }
}
