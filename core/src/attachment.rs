//! Encrypted attachments, as the spec defines them ("Sending encrypted attachments"): the
//! file is encrypted with AES-256-CTR under a fresh random key and a counter block of 64
//! random bits followed by a 64-bit counter starting at 0; the SHA-256 of the ciphertext
//! goes in the event with the key (a JWK) and the IV, as ruma's [`EncryptedFile`]. A
//! download is decrypted only if the ciphertext has that hash.

use aes::cipher::{KeyIvInit, StreamCipher};
use rand::RngCore;
use ruma::OwnedMxcUri;
use ruma::events::room::{
    EncryptedFile, EncryptedFileHash, EncryptedFileHashAlgorithm, EncryptedFileHashes,
    EncryptedFileInfo, V2EncryptedFileInfo,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// Why an attachment cannot be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// The downloaded ciphertext is not the one the event names (tampered or corrupted).
    #[error("the attachment does not match its hash")]
    HashMismatch,
    /// The event gives no SHA-256 of the ciphertext.
    #[error("the attachment has no SHA-256 hash")]
    MissingHash,
    /// The key or IV has the wrong length.
    #[error("the attachment's key or IV has the wrong length")]
    InvalidKey,
    /// An encryption version other than `v2`.
    #[error("unsupported attachment encryption version {0:?}")]
    UnsupportedVersion(String),
}

/// The secrets of one encrypted attachment, to put in its event once it is uploaded.
pub struct AttachmentKeys {
    key: Zeroizing<[u8; 32]>,
    iv: [u8; 16],
    sha256: [u8; 32],
}

impl std::fmt::Debug for AttachmentKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentKeys").finish_non_exhaustive()
    }
}

impl AttachmentKeys {
    /// The `file` of the event for the ciphertext uploaded at `url`.
    pub fn into_file(self, url: OwnedMxcUri) -> EncryptedFile {
        let info = V2EncryptedFileInfo::encode(*self.key, self.iv);
        EncryptedFile::new(
            url,
            info.into(),
            EncryptedFileHashes::with_sha256(self.sha256),
        )
    }
}

/// Encrypt `data` in place (no second copy of a large file); returns the keys that go in
/// the event.
pub fn encrypt(data: &mut [u8]) -> AttachmentKeys {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    let mut iv = [0u8; 16];
    // The high 64 bits are random, the low 64 bits are the counter, from 0.
    rand::rngs::OsRng.fill_bytes(&mut iv[..8]);
    Aes256Ctr::new(key.as_ref().into(), (&iv).into()).apply_keystream(data);
    let sha256 = Sha256::digest(&*data).into();
    AttachmentKeys { key, iv, sha256 }
}

/// Decrypt `data` in place if its SHA-256 is the one `file` names; unchanged otherwise.
pub fn decrypt(data: &mut [u8], file: &EncryptedFile) -> Result<(), AttachmentError> {
    let EncryptedFileInfo::V2(info) = &file.info else {
        return Err(AttachmentError::UnsupportedVersion(
            file.info.version().to_owned(),
        ));
    };
    let Some(EncryptedFileHash::Sha256(expected)) =
        file.hashes.get(&EncryptedFileHashAlgorithm::Sha256)
    else {
        return Err(AttachmentError::MissingHash);
    };
    if Sha256::digest(&*data).as_slice() != expected.as_bytes() {
        return Err(AttachmentError::HashMismatch);
    }
    let mut cipher = Aes256Ctr::new_from_slices(info.k.as_bytes(), info.iv.as_bytes())
        .map_err(|_| AttachmentError::InvalidKey)?;
    cipher.apply_keystream(data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn url() -> OwnedMxcUri {
        OwnedMxcUri::from("mxc://localhost/abc")
    }

    #[test]
    fn a_file_round_trips_and_its_event_has_the_spec_shape() {
        let plain = b"a picture of a newt".repeat(1000);
        let mut data = plain.clone();
        let keys = encrypt(&mut data);
        assert_ne!(data, plain);
        let file = keys.into_file(url());
        let wire = serde_json::to_value(&file).unwrap();
        assert_eq!(wire["v"], "v2");
        assert_eq!(wire["key"]["alg"], "A256CTR");
        assert_eq!(wire["key"]["kty"], "oct");
        assert_eq!(wire["key"]["ext"], true);
        let iv = wire["iv"].as_str().unwrap();
        assert_eq!(iv.len(), 22, "16 bytes, unpadded base64: {iv}");
        assert!(iv.ends_with("AAAAAAAAAAA"), "the counter starts at 0: {iv}");
        let hash = wire["hashes"]["sha256"].as_str().unwrap();
        assert_eq!(hash.len(), 43, "32 bytes, unpadded base64");
        // What a receiver parses from the event.
        let parsed: EncryptedFile = serde_json::from_value(wire).unwrap();
        decrypt(&mut data, &parsed).unwrap();
        assert_eq!(data, plain);
    }

    #[test]
    fn two_encryptions_of_one_file_differ() {
        let (mut a, mut b) = (vec![0u8; 64], vec![0u8; 64]);
        let (ka, kb) = (encrypt(&mut a), encrypt(&mut b));
        assert_ne!(a, b);
        assert_ne!(*ka.key, *kb.key);
        assert_ne!(ka.iv, kb.iv);
    }

    #[test]
    fn a_tampered_truncated_or_unhashed_ciphertext_is_refused_unchanged() {
        let mut data = b"secret attachment".to_vec();
        let file = encrypt(&mut data).into_file(url());
        let mut flipped = data.clone();
        flipped[3] ^= 1;
        let before = flipped.clone();
        assert_eq!(
            decrypt(&mut flipped, &file),
            Err(AttachmentError::HashMismatch)
        );
        assert_eq!(flipped, before, "nothing decrypted");
        let mut truncated = data[..data.len() - 1].to_vec();
        assert_eq!(
            decrypt(&mut truncated, &file),
            Err(AttachmentError::HashMismatch)
        );
        let unhashed = EncryptedFile::new(url(), file.info.clone(), EncryptedFileHashes::new());
        let err = decrypt(&mut data.clone(), &unhashed);
        assert_eq!(err, Err(AttachmentError::MissingHash));
    }

    /// The spec's example event (v2, JWK, unpadded base64) parses; a version other than v2
    /// is refused.
    #[test]
    fn the_spec_example_parses_and_other_versions_are_refused() {
        let spec = json!({
            "url": "mxc://example.org/FHyPlCeYUSFFxlgbQYZmoEoe",
            "v": "v2",
            "key": {
                "alg": "A256CTR",
                "ext": true,
                "k": "aWF6-32KGYaC3A_FEUCk1Bt0JA37zP0wrStgmdCaW-0",
                "key_ops": ["encrypt", "decrypt"],
                "kty": "oct"
            },
            "iv": "w+sE15fzSc0AAAAAAAAAAA",
            "hashes": {"sha256": "fdSLu/YkRx3Wyh3KQabP3rd6+SFiKg5lsJZQHtkSAYA"}
        });
        let file: EncryptedFile = serde_json::from_value(spec.clone()).unwrap();
        let mut data = vec![0u8; 4];
        assert_eq!(
            decrypt(&mut data, &file),
            Err(AttachmentError::HashMismatch)
        );
        let mut v3 = spec;
        v3["v"] = json!("v3");
        let file: EncryptedFile = serde_json::from_value(v3).unwrap();
        let err = decrypt(&mut data, &file);
        assert_eq!(err, Err(AttachmentError::UnsupportedVersion("v3".into())));
    }
}
