//! Secret storage, `m.secret_storage.v1.aes-hmac-sha2`: secrets (the backup key) kept in
//! the user's account data on the server, encrypted with a key only the user has (shown as
//! a recovery key). No I/O: the client reads and writes the account data.
//!
//! A secret named `name` is encrypted with AES-256-CTR and authenticated with HMAC-SHA-256,
//! both keys derived by HKDF-SHA-256 from the storage key with 32 zero bytes as salt and
//! `name` as info; the IV is random with bit 63 cleared. The key's description carries the
//! encryption of 32 zero bytes under the name `""`, which tells whether a key is the right
//! one before any secret is read.

use aes::cipher::{KeyIvInit, StreamCipher};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::key::{RecoveryKeyError, decode_recovery_key, encode_recovery_key};

/// The secret storage algorithm Newt reads and writes.
pub const SECRET_STORAGE_ALGORITHM: &str = "m.secret_storage.v1.aes-hmac-sha2";
/// The secret name (and account data type) of the key backup's private key.
pub const BACKUP_SECRET: &str = "m.megolm_backup.v1";

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// Why a secret cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretStorageError {
    /// The recovery key as typed is not one.
    #[error(transparent)]
    InvalidRecoveryKey(#[from] RecoveryKeyError),
    /// Not the key of this secret storage (its check does not match).
    #[error("this recovery key is not the key of the secret storage")]
    WrongKey,
    /// An algorithm Newt does not read.
    #[error("unsupported secret storage algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// The stored data is not in the expected form.
    #[error("malformed secret storage data: {0}")]
    Malformed(String),
    /// The secret's MAC does not match: changed, or encrypted with another key.
    #[error("the secret does not authenticate with this key")]
    BadMac,
}

/// An encrypted secret, or the check of a key: what the account data holds (base64).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedSecret {
    /// 16 bytes.
    pub iv: String,
    /// The ciphertext (absent in a key's description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciphertext: Option<String>,
    /// 32 bytes.
    pub mac: String,
}

/// `m.secret_storage.key.<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDescription {
    /// [`SECRET_STORAGE_ALGORITHM`].
    pub algorithm: String,
    /// The check: the encryption of 32 zero bytes under the name `""`.
    #[serde(flatten)]
    pub check: EncryptedSecret,
}

/// The key of the user's secret storage.
pub struct SecretStorageKey {
    id: String,
    bytes: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SecretStorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStorageKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SecretStorageKey {
    /// A new random key with a random id.
    pub fn new() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        let mut id = [0u8; 18];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
        Self { id, bytes }
    }

    /// The key of `id` from the recovery key the user typed.
    pub fn from_recovery_key(id: &str, text: &str) -> Result<Self, SecretStorageError> {
        Ok(Self {
            id: id.to_owned(),
            bytes: decode_recovery_key(text)?,
        })
    }

    /// The key of `id` from its bytes.
    pub fn from_bytes(id: &str, bytes: &[u8; 32]) -> Self {
        Self {
            id: id.to_owned(),
            bytes: Zeroizing::new(*bytes),
        }
    }

    /// Its bytes.
    pub(super) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Its id (the `<id>` of `m.secret_storage.key.<id>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The recovery key to show the user.
    pub fn to_recovery_key(&self) -> Zeroizing<String> {
        encode_recovery_key(&self.bytes)
    }

    /// The key's description, with its check.
    pub fn description(&self) -> KeyDescription {
        let check = self.encrypt_bytes("", &[0u8; 32]);
        KeyDescription {
            algorithm: SECRET_STORAGE_ALGORITHM.to_owned(),
            check: EncryptedSecret {
                ciphertext: None,
                ..check
            },
        }
    }

    /// Whether this is the key `description` describes.
    pub fn check(&self, description: &KeyDescription) -> Result<(), SecretStorageError> {
        if description.algorithm != SECRET_STORAGE_ALGORITHM {
            return Err(SecretStorageError::UnsupportedAlgorithm(
                description.algorithm.clone(),
            ));
        }
        let iv = decode_array::<16>(&description.check.iv, "iv")?;
        let expected = decode_array::<32>(&description.check.mac, "mac")?;
        let (aes_key, mac_key) = self.derive("");
        let mut zeros = [0u8; 32];
        Aes256Ctr::new(aes_key[..].into(), (&iv).into()).apply_keystream(&mut zeros);
        mac_of(&mac_key[..], &zeros)?
            .verify_slice(&expected)
            .map_err(|_| SecretStorageError::WrongKey)
    }

    /// Encrypt the secret `name`.
    pub fn encrypt(&self, name: &str, secret: &str) -> EncryptedSecret {
        self.encrypt_bytes(name, secret.as_bytes())
    }

    /// Decrypt the secret `name`.
    pub fn decrypt(
        &self,
        name: &str,
        encrypted: &EncryptedSecret,
    ) -> Result<Zeroizing<String>, SecretStorageError> {
        let iv = decode_array::<16>(&encrypted.iv, "iv")?;
        let expected = decode_array::<32>(&encrypted.mac, "mac")?;
        let ciphertext = encrypted
            .ciphertext
            .as_deref()
            .ok_or_else(|| SecretStorageError::Malformed("no ciphertext".into()))?;
        let mut data = Zeroizing::new(decode(ciphertext, "ciphertext")?);
        let (aes_key, mac_key) = self.derive(name);
        mac_of(&mac_key[..], &data)?
            .verify_slice(&expected)
            .map_err(|_| SecretStorageError::BadMac)?;
        Aes256Ctr::new(aes_key[..].into(), (&iv).into()).apply_keystream(&mut data);
        let text = String::from_utf8(data.to_vec())
            .map_err(|_| SecretStorageError::Malformed("not UTF-8".into()))?;
        Ok(Zeroizing::new(text))
    }

    fn encrypt_bytes(&self, name: &str, plaintext: &[u8]) -> EncryptedSecret {
        let mut iv = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        iv[8] &= 0x7f;
        let (aes_key, mac_key) = self.derive(name);
        let mut data = plaintext.to_vec();
        Aes256Ctr::new(aes_key[..].into(), (&iv).into()).apply_keystream(&mut data);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&mac_key[..])
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(&data);
        // Unpadded, as everywhere in Matrix (matrix-sdk-crypto writes it so; Element Web
        // pads: both are read).
        EncryptedSecret {
            iv: STANDARD_NO_PAD.encode(iv),
            ciphertext: Some(STANDARD_NO_PAD.encode(&data)),
            mac: STANDARD_NO_PAD.encode(mac.finalize().into_bytes()),
        }
    }

    /// The AES key and the MAC key for the secret `name`.
    fn derive(&self, name: &str) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
        let hkdf = hkdf::Hkdf::<Sha256>::new(Some(&[0u8; 32]), &self.bytes[..]);
        let mut okm = Zeroizing::new([0u8; 64]);
        // 64 bytes is far below HKDF-SHA-256's limit (255 * 32).
        let _ = hkdf.expand(name.as_bytes(), okm.as_mut());
        let (mut aes_key, mut mac_key) = (Zeroizing::new([0u8; 32]), Zeroizing::new([0u8; 32]));
        aes_key.copy_from_slice(&okm[..32]);
        mac_key.copy_from_slice(&okm[32..]);
        (aes_key, mac_key)
    }
}

impl Default for SecretStorageKey {
    fn default() -> Self {
        Self::new()
    }
}

fn mac_of(key: &[u8], data: &[u8]) -> Result<Hmac<Sha256>, SecretStorageError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .map_err(|_| SecretStorageError::Malformed("MAC key".into()))?;
    mac.update(data);
    Ok(mac)
}

/// Base64, padded or not (writers differ).
fn decode(text: &str, what: &str) -> Result<Vec<u8>, SecretStorageError> {
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
    .decode(text)
    .map_err(|e| SecretStorageError::Malformed(format!("{what}: {e}")))
}

fn decode_array<const N: usize>(text: &str, what: &str) -> Result<[u8; N], SecretStorageError> {
    decode(text, what)?
        .try_into()
        .map_err(|_| SecretStorageError::Malformed(format!("{what}: not {N} bytes")))
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    #[test]
    fn a_secret_round_trips_and_only_its_key_and_name_open_it() {
        let key = SecretStorageKey::new();
        let sealed = key.encrypt(BACKUP_SECRET, "the backup key");
        assert!(
            !serde_json::to_string(&sealed)
                .unwrap()
                .contains("backup key")
        );
        assert_eq!(
            key.decrypt(BACKUP_SECRET, &sealed).unwrap().as_str(),
            "the backup key"
        );
        let iv = decode_array::<16>(&sealed.iv, "iv").unwrap();
        assert_eq!(iv[8] & 0x80, 0, "bit 63 of the IV is clear");
        assert_eq!(
            key.decrypt("m.cross_signing.master", &sealed),
            Err(SecretStorageError::BadMac),
            "another name derives other keys"
        );
        let other = SecretStorageKey::new();
        assert_eq!(
            other.decrypt(BACKUP_SECRET, &sealed),
            Err(SecretStorageError::BadMac)
        );
        let mut changed = sealed.clone();
        let mut bytes = decode(changed.ciphertext.as_deref().unwrap(), "c").unwrap();
        bytes[0] ^= 1;
        changed.ciphertext = Some(STANDARD.encode(bytes));
        assert_eq!(
            key.decrypt(BACKUP_SECRET, &changed),
            Err(SecretStorageError::BadMac)
        );
        let mut short = sealed;
        short.iv = "AAAA".into();
        assert!(matches!(
            key.decrypt(BACKUP_SECRET, &short),
            Err(SecretStorageError::Malformed(_))
        ));
    }

    #[test]
    fn written_unpadded_and_read_padded_or_not() {
        let key = SecretStorageKey::new();
        let sealed = key.encrypt(BACKUP_SECRET, "a secret of 20 bytes");
        let fields = [&sealed.iv, sealed.ciphertext.as_ref().unwrap(), &sealed.mac];
        assert!(fields.iter().all(|f| !f.contains('=')), "{sealed:?}");
        let description = key.description();
        assert!(!description.check.iv.contains('=') && !description.check.mac.contains('='));
        // As Element Web writes it: padded.
        let pad = |f: &str| STANDARD.encode(decode(f, "test").unwrap());
        let padded = EncryptedSecret {
            iv: pad(&sealed.iv),
            ciphertext: sealed.ciphertext.as_deref().map(pad),
            mac: pad(&sealed.mac),
        };
        assert!(padded.iv.ends_with("=="), "{padded:?}");
        assert_eq!(
            key.decrypt(BACKUP_SECRET, &padded).unwrap().as_str(),
            "a secret of 20 bytes"
        );
    }

    #[test]
    fn the_key_check_tells_the_right_recovery_key() {
        let key = SecretStorageKey::new();
        let description = key.description();
        assert_eq!(description.check.ciphertext, None);
        let json = serde_json::to_value(&description).unwrap();
        assert_eq!(json["algorithm"], SECRET_STORAGE_ALGORITHM);
        assert!(json["iv"].is_string() && json["mac"].is_string());
        let typed = key.to_recovery_key();
        let again = SecretStorageKey::from_recovery_key(key.id(), &typed).unwrap();
        assert_eq!(again.check(&description), Ok(()));
        let wrong = SecretStorageKey::new();
        assert_eq!(wrong.check(&description), Err(SecretStorageError::WrongKey));
        let mut other_algorithm = description;
        other_algorithm.algorithm = "m.secret_storage.v2".into();
        assert!(matches!(
            again.check(&other_algorithm),
            Err(SecretStorageError::UnsupportedAlgorithm(_))
        ));
    }
}
