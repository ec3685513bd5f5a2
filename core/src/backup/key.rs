//! The backup key: a Curve25519 key pair. Its private half is what the user keeps, as a
//! recovery key: base58 of `0x8B 0x01`, the 32 key bytes and a parity byte (the XOR of all
//! the others), shown in groups of four characters.

use vodozemac::Curve25519PublicKey;
use vodozemac::pk_encryption::{Message, PkDecryption};
use zeroize::Zeroizing;

const PREFIX: [u8; 2] = [0x8b, 0x01];
const KEY_BYTES: usize = 32;
/// Characters of a recovery key without spaces, at most (58^49 > 256^35).
const MAX_CHARS: usize = 64;

/// Why a recovery key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryKeyError {
    /// Not base58, or too long.
    #[error("not a recovery key: {0}")]
    NotBase58(String),
    /// Decoded, but not 35 bytes starting with `0x8B 0x01`.
    #[error("not a recovery key (wrong length or prefix)")]
    WrongFormat,
    /// A character was mistyped: the parity byte does not match.
    #[error("the recovery key has a typo (its check byte does not match)")]
    Typo,
}

/// The private backup key.
pub struct BackupKey {
    inner: PkDecryption,
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupKey")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl Default for BackupKey {
    fn default() -> Self {
        Self::new()
    }
}

impl BackupKey {
    /// A new random key.
    pub fn new() -> Self {
        Self {
            inner: PkDecryption::new(),
        }
    }

    /// The key from its 32 private bytes.
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> Self {
        Self {
            inner: PkDecryption::from_key(vodozemac::Curve25519SecretKey::from_slice(bytes)),
        }
    }

    /// Its 32 private bytes.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_BYTES]> {
        let boxed = self.inner.secret_key().to_bytes();
        Zeroizing::new(*boxed)
    }

    /// The public key (what the backup's `auth_data` names).
    pub fn public_key(&self) -> Curve25519PublicKey {
        self.inner.public_key()
    }

    /// The public key, unpadded base64.
    pub fn public_key_base64(&self) -> String {
        self.public_key().to_base64()
    }

    /// Read a recovery key as the user typed it (spaces anywhere).
    pub fn from_recovery_key(text: &str) -> Result<Self, RecoveryKeyError> {
        let bytes = decode_recovery_key(text)?;
        Ok(Self::from_bytes(&bytes))
    }

    /// The recovery key to show the user: groups of four characters.
    pub fn to_recovery_key(&self) -> Zeroizing<String> {
        encode_recovery_key(&self.to_bytes())
    }

    pub(super) fn decrypt(&self, message: &Message) -> Result<Vec<u8>, String> {
        self.inner.decrypt(message).map_err(|e| e.to_string())
    }
}

/// The 32 key bytes of a recovery key as the user typed it (spaces anywhere).
pub(super) fn decode_recovery_key(
    text: &str,
) -> Result<Zeroizing<[u8; KEY_BYTES]>, RecoveryKeyError> {
    let compact: Zeroizing<String> =
        Zeroizing::new(text.chars().filter(|c| !c.is_whitespace()).collect());
    if compact.len() > MAX_CHARS {
        return Err(RecoveryKeyError::NotBase58("too long".into()));
    }
    let bytes = Zeroizing::new(
        bs58::decode(compact.as_bytes())
            .into_vec()
            .map_err(|e| RecoveryKeyError::NotBase58(e.to_string()))?,
    );
    if bytes.len() != PREFIX.len() + KEY_BYTES + 1 || bytes[..2] != PREFIX {
        return Err(RecoveryKeyError::WrongFormat);
    }
    if bytes.iter().fold(0u8, |a, b| a ^ b) != 0 {
        return Err(RecoveryKeyError::Typo);
    }
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    key.copy_from_slice(&bytes[2..2 + KEY_BYTES]);
    Ok(key)
}

/// The recovery key of 32 key bytes, in groups of four characters.
pub(super) fn encode_recovery_key(key: &[u8; KEY_BYTES]) -> Zeroizing<String> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(PREFIX.len() + KEY_BYTES + 1));
    bytes.extend_from_slice(&PREFIX);
    bytes.extend_from_slice(key);
    let parity = bytes.iter().fold(0u8, |a, b| a ^ b);
    bytes.push(parity);
    let encoded = Zeroizing::new(bs58::encode(bytes.as_slice()).into_string());
    let mut grouped = Zeroizing::new(String::with_capacity(encoded.len() * 5 / 4));
    for (i, c) in encoded.chars().enumerate() {
        if i > 0 && i % 4 == 0 {
            grouped.push(' ');
        }
        grouped.push(c);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovery_key_round_trips_and_typos_are_caught() {
        let key = BackupKey::new();
        let text = key.to_recovery_key();
        assert!(text.split(' ').all(|g| g.len() <= 4), "{}", text.as_str());
        let back = BackupKey::from_recovery_key(&text).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        // Typed without spaces, or with others: the same key.
        let compact: String = text.split(' ').collect();
        let spaced = format!("  {}\n", text.replace(' ', "  "));
        for variant in [compact.clone(), spaced] {
            let key2 = BackupKey::from_recovery_key(&variant).unwrap();
            assert_eq!(key2.public_key(), key.public_key());
        }
        // One character changed: caught by the parity byte (or not base58 at all).
        let mut typo: Vec<char> = compact.chars().collect();
        typo[10] = if typo[10] == 'a' { 'b' } else { 'a' };
        let typo: String = typo.into_iter().collect();
        assert!(matches!(
            BackupKey::from_recovery_key(&typo),
            Err(RecoveryKeyError::Typo | RecoveryKeyError::WrongFormat)
        ));
        assert!(matches!(
            BackupKey::from_recovery_key("0OIl"),
            Err(RecoveryKeyError::NotBase58(_))
        ));
        assert_eq!(
            BackupKey::from_recovery_key("abc").err(),
            Some(RecoveryKeyError::WrongFormat)
        );
        assert!(BackupKey::from_recovery_key(&"a".repeat(10_000)).is_err());
        assert!(!format!("{key:?}").contains(compact.as_str()));
    }

    /// The spec's layout, checked on known bytes: all-zero key bytes give a recovery key
    /// that decodes back to them, with prefix and parity as the spec writes them.
    #[test]
    fn the_recovery_key_layout_is_the_specs() {
        let key = BackupKey::from_bytes(&[0u8; 32]);
        let text = key.to_recovery_key();
        let compact: String = text.split(' ').collect();
        let raw = bs58::decode(&compact).into_vec().unwrap();
        assert_eq!(raw.len(), 35);
        assert_eq!(&raw[..2], &[0x8b, 0x01]);
        assert_eq!(&raw[2..34], &[0u8; 32]);
        assert_eq!(raw[34], 0x8b ^ 0x01);
        assert!(compact.starts_with("Es"), "{compact}");
    }
}
