//! Encryption at rest for the secrets in the SQLite store.
//!
//! Format of one encrypted value (version 1):
//!
//! ```text
//! version (1 byte, = 1) || iv (16 bytes) || AES-256-CTR ciphertext || HMAC-SHA256 (32 bytes)
//! ```
//!
//! The MAC is computed over `version || iv || ciphertext || aad`, encrypt-then-MAC, and is
//! checked in constant time before anything is decrypted. `aad` ("associated data") names the
//! row the value belongs to (table and key columns, each length-prefixed) so a ciphertext
//! moved to another row, or a row whose security-relevant public columns were edited, fails
//! authentication instead of being accepted.
//!
//! Keys: the 32 bytes of key material (given directly, or stretched from a passphrase with
//! PBKDF2-HMAC-SHA256 and a random per-store salt) are never used directly; independent
//! encryption and MAC keys are derived from them with HMAC-SHA256 and fixed labels.

use std::fmt;

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::StoreError;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// Format version of encrypted values.
const VERSION: u8 = 1;
/// Length of the random IV.
const IV_LEN: usize = 16;
/// Length of the HMAC-SHA256 tag.
const MAC_LEN: usize = 32;
/// Length of the random salt used to stretch passphrases.
pub(crate) const SALT_LEN: usize = 16;

/// PBKDF2 rounds used when a new store is created from a passphrase. The count is saved in
/// the store, so a store keeps working if this default changes.
#[cfg(not(test))]
pub(crate) const DEFAULT_PBKDF2_ROUNDS: u32 = 200_000;
/// PBKDF2 rounds used when a new store is created from a passphrase (lowered for tests).
#[cfg(test)]
pub(crate) const DEFAULT_PBKDF2_ROUNDS: u32 = 1_000;

/// Bounds accepted for a round count read back from a store (a tampered count must neither
/// disable stretching nor hang the app).
const MIN_PBKDF2_ROUNDS: u32 = 1_000;
const MAX_PBKDF2_ROUNDS: u32 = 10_000_000;

/// Label for the derived encryption key.
const ENC_LABEL: &[u8] = b"newt store enc";
/// Label for the derived MAC key.
const MAC_LABEL: &[u8] = b"newt store mac";
/// Label for the derived key of standalone tags (public columns bound to their row).
const TAG_LABEL: &[u8] = b"newt store tag";

/// The key that protects the secrets of a [`SqliteStore`](super::SqliteStore).
///
/// The app provides it, typically from the platform keychain (32 random bytes) or from a
/// user passphrase. The key material is wiped from memory when the value is dropped, and
/// `Debug` never shows it.
#[derive(Clone)]
#[non_exhaustive]
pub enum StoreKey {
    /// 32 bytes of uniformly random key material, used as is.
    Bytes(Zeroizing<[u8; 32]>),
    /// A passphrase, stretched with PBKDF2-HMAC-SHA256 and a random salt kept in the store.
    Passphrase(Zeroizing<String>),
}

impl StoreKey {
    /// A key from 32 random bytes (e.g. generated once and kept in the platform keychain).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        StoreKey::Bytes(Zeroizing::new(bytes))
    }

    /// A key from a passphrase. Stretching happens when a store is opened (it needs the
    /// store's salt), so opening costs one PBKDF2 run.
    pub fn from_passphrase(passphrase: &str) -> Self {
        StoreKey::Passphrase(Zeroizing::new(passphrase.to_owned()))
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreKey::Bytes(_) => f.write_str("StoreKey::Bytes(<redacted>)"),
            StoreKey::Passphrase(_) => f.write_str("StoreKey::Passphrase(<redacted>)"),
        }
    }
}

/// Parameters of the passphrase stretching, kept (in clear) in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KdfParams {
    /// Random salt, [`SALT_LEN`] bytes.
    pub(crate) salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub(crate) rounds: u32,
}

impl KdfParams {
    /// Fresh parameters for a new store: random salt, default rounds.
    pub(crate) fn generate() -> Self {
        let mut salt = vec![0u8; SALT_LEN];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        Self {
            salt,
            rounds: DEFAULT_PBKDF2_ROUNDS,
        }
    }
}

/// Encrypts and authenticates byte blobs with keys derived from a [`StoreKey`].
pub(crate) struct StoreCipher {
    enc_key: Zeroizing<[u8; 32]>,
    /// HMACs keyed once with `mac_key` and `tag_key` (cloned for each value: keying costs as
    /// much as a short MAC).
    mac_base: HmacSha256,
    tag_base: HmacSha256,
}

impl fmt::Debug for StoreCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreCipher(<redacted>)")
    }
}

impl StoreCipher {
    /// Derive the cipher keys. `kdf` is only used for passphrase keys.
    pub(crate) fn new(key: &StoreKey, kdf: &KdfParams) -> Result<Self, StoreError> {
        let master: Zeroizing<[u8; 32]> = match key {
            StoreKey::Bytes(bytes) => bytes.clone(),
            StoreKey::Passphrase(passphrase) => {
                if kdf.salt.len() != SALT_LEN {
                    return Err(StoreError::Corrupted("key salt has a wrong length".into()));
                }
                if !(MIN_PBKDF2_ROUNDS..=MAX_PBKDF2_ROUNDS).contains(&kdf.rounds) {
                    return Err(StoreError::Corrupted(
                        "key stretching round count out of range".into(),
                    ));
                }
                let mut out = Zeroizing::new([0u8; 32]);
                pbkdf2::pbkdf2_hmac::<Sha256>(
                    passphrase.as_bytes(),
                    &kdf.salt,
                    kdf.rounds,
                    &mut *out,
                );
                out
            }
        };
        let mac_key = derive(&master, MAC_LABEL)?;
        let tag_key = derive(&master, TAG_LABEL)?;
        let keyed = |key: &[u8; 32]| {
            <HmacSha256 as Mac>::new_from_slice(key)
                .map_err(|_| StoreError::Corrupted("invalid MAC key length".into()))
        };
        Ok(Self {
            enc_key: derive(&master, ENC_LABEL)?,
            mac_base: keyed(&mac_key)?,
            tag_base: keyed(&tag_key)?,
        })
    }

    /// Encrypt `plaintext`, binding it to `aad` (which is not stored, the reader must supply
    /// the same parts again).
    pub(crate) fn encrypt(&self, aad: &[&[u8]], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut iv = [0u8; IV_LEN];
        rand::thread_rng().fill_bytes(&mut iv);

        let mut out = Vec::with_capacity(1 + IV_LEN + plaintext.len() + MAC_LEN);
        out.push(VERSION);
        out.extend_from_slice(&iv);
        let ct_start = out.len();
        out.extend_from_slice(plaintext);
        let mut ctr = Aes256Ctr::new((&*self.enc_key).into(), (&iv).into());
        ctr.apply_keystream(&mut out[ct_start..]);

        let mac = self.mac(&out, aad)?.finalize().into_bytes();
        out.extend_from_slice(&mac);
        Ok(out)
    }

    /// Authenticate and decrypt a value produced by [`StoreCipher::encrypt`] with the same
    /// `aad`. Any mismatch is [`StoreError::Corrupted`]; nothing is decrypted before the MAC
    /// was verified.
    pub(crate) fn decrypt(
        &self,
        aad: &[&[u8]],
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        if blob.len() < 1 + IV_LEN + MAC_LEN {
            return Err(StoreError::Corrupted("encrypted value too short".into()));
        }
        if blob[0] != VERSION {
            return Err(StoreError::Corrupted(
                "unknown encrypted value format version".into(),
            ));
        }
        let (authenticated, tag) = blob.split_at(blob.len() - MAC_LEN);
        self.mac(authenticated, aad)?
            .verify_slice(tag)
            .map_err(|_| StoreError::Corrupted("encrypted value failed authentication".into()))?;

        let iv: [u8; IV_LEN] = authenticated[1..1 + IV_LEN]
            .try_into()
            .map_err(|_| StoreError::Corrupted("encrypted value too short".into()))?;
        let mut plaintext = Zeroizing::new(authenticated[1 + IV_LEN..].to_vec());
        let mut ctr = Aes256Ctr::new((&*self.enc_key).into(), (&iv).into());
        ctr.apply_keystream(&mut plaintext);
        Ok(plaintext)
    }

    /// A tag over public values that must not be edited (e.g. a device's trust decision):
    /// HMAC-SHA256 with its own derived key over the length-prefixed `parts`.
    pub(crate) fn tag(&self, parts: &[&[u8]]) -> Result<Vec<u8>, StoreError> {
        Ok(keyed_mac(&self.tag_base, b"", parts)
            .finalize()
            .into_bytes()
            .to_vec())
    }

    /// Check a [`StoreCipher::tag`] in constant time; a mismatch is
    /// [`StoreError::Corrupted`].
    pub(crate) fn verify_tag(&self, parts: &[&[u8]], tag: &[u8]) -> Result<(), StoreError> {
        keyed_mac(&self.tag_base, b"", parts)
            .verify_slice(tag)
            .map_err(|_| StoreError::Corrupted("a tagged row failed authentication".into()))
    }

    /// HMAC over `data` followed by the length-prefixed `aad` parts.
    fn mac(&self, data: &[u8], aad: &[&[u8]]) -> Result<HmacSha256, StoreError> {
        Ok(keyed_mac(&self.mac_base, data, aad))
    }
}

/// HMAC-SHA256 with `key` over `data` followed by the length-prefixed `aad` parts and their
/// count.
fn keyed_mac(base: &HmacSha256, data: &[u8], aad: &[&[u8]]) -> HmacSha256 {
    let mut mac = base.clone();
    mac.update(data);
    for part in aad {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.update(&(aad.len() as u64).to_be_bytes());
    mac
}

/// `HMAC-SHA256(master, label)`.
fn derive(master: &[u8; 32], label: &[u8]) -> Result<Zeroizing<[u8; 32]>, StoreError> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(master)
        .map_err(|_| StoreError::Corrupted("invalid key length".into()))?;
    mac.update(label);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kdf() -> KdfParams {
        KdfParams {
            salt: vec![7; SALT_LEN],
            rounds: DEFAULT_PBKDF2_ROUNDS,
        }
    }

    fn cipher(byte: u8) -> StoreCipher {
        StoreCipher::new(&StoreKey::from_bytes([byte; 32]), &kdf()).unwrap()
    }

    #[test]
    fn roundtrip_and_format() {
        let c = cipher(1);
        let pt = b"a pickle, pretend it is secret";
        let blob = c.encrypt(&[b"t", b"k"], pt).unwrap();
        assert_eq!(blob.len(), 1 + IV_LEN + pt.len() + MAC_LEN);
        assert_eq!(blob[0], VERSION);
        assert_ne!(&blob[1 + IV_LEN..1 + IV_LEN + pt.len()], &pt[..]);
        assert_eq!(&c.decrypt(&[b"t", b"k"], &blob).unwrap()[..], &pt[..]);
        // Empty plaintext works too.
        let blob = c.encrypt(&[], b"").unwrap();
        assert!(c.decrypt(&[], &blob).unwrap().is_empty());
    }

    #[test]
    fn fresh_iv_every_time() {
        let c = cipher(1);
        let a = c.encrypt(&[], b"same").unwrap();
        let b = c.encrypt(&[], b"same").unwrap();
        assert_ne!(a, b);
        assert_ne!(a[1..1 + IV_LEN], b[1..1 + IV_LEN]);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let c = cipher(1);
        let blob = c.encrypt(&[b"x"], b"hello world").unwrap();
        for i in 0..blob.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = blob.clone();
                bad[i] ^= bit;
                assert!(
                    matches!(c.decrypt(&[b"x"], &bad), Err(StoreError::Corrupted(_))),
                    "flip at byte {i} not detected"
                );
            }
        }
        // Truncation and extension.
        assert!(matches!(
            c.decrypt(&[b"x"], &blob[..blob.len() - 1]),
            Err(StoreError::Corrupted(_))
        ));
        let mut longer = blob.clone();
        longer.push(0);
        assert!(c.decrypt(&[b"x"], &longer).is_err());
        assert!(c.decrypt(&[b"x"], &[]).is_err());
    }

    #[test]
    fn aad_is_bound() {
        let c = cipher(1);
        let blob = c.encrypt(&[b"ab", b"c"], b"v").unwrap();
        assert!(c.decrypt(&[b"ab", b"c"], &blob).is_ok());
        assert!(c.decrypt(&[b"a", b"bc"], &blob).is_err());
        assert!(c.decrypt(&[b"abc"], &blob).is_err());
        assert!(c.decrypt(&[b"ab", b"c", b""], &blob).is_err());
        assert!(c.decrypt(&[], &blob).is_err());
    }

    #[test]
    fn wrong_key_fails() {
        let blob = cipher(1).encrypt(&[], b"v").unwrap();
        assert!(matches!(
            cipher(2).decrypt(&[], &blob),
            Err(StoreError::Corrupted(_))
        ));
    }

    #[test]
    fn derived_keys_are_independent_of_master() {
        let c = cipher(1);
        let master = [1u8; 32];
        let keys = [ENC_LABEL, MAC_LABEL, TAG_LABEL].map(|l| *derive(&master, l).unwrap());
        assert_eq!(keys[0], *c.enc_key);
        assert!(keys.iter().all(|k| k != &master));
        assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2]);
        // The tag and the MAC of the same parts differ (independent keys).
        let mac = c
            .mac(b"", &[b"x"])
            .unwrap()
            .finalize()
            .into_bytes()
            .to_vec();
        assert_ne!(c.tag(&[b"x"]).unwrap(), mac);
    }

    #[test]
    fn passphrase_depends_on_salt_and_passphrase() {
        let key = StoreKey::from_passphrase("correct horse");
        let a = StoreCipher::new(&key, &kdf()).unwrap();
        let again = StoreCipher::new(&key, &kdf()).unwrap();
        assert_eq!(*a.enc_key, *again.enc_key);
        let other_salt = KdfParams {
            salt: vec![8; SALT_LEN],
            rounds: DEFAULT_PBKDF2_ROUNDS,
        };
        let b = StoreCipher::new(&key, &other_salt).unwrap();
        assert_ne!(*a.enc_key, *b.enc_key);
        let other = StoreCipher::new(&StoreKey::from_passphrase("correct horsf"), &kdf()).unwrap();
        assert_ne!(*a.enc_key, *other.enc_key);
        let blob = a.encrypt(&[], b"v").unwrap();
        assert_eq!(&again.decrypt(&[], &blob).unwrap()[..], b"v");
        assert!(b.decrypt(&[], &blob).is_err());
    }

    #[test]
    fn bad_kdf_params_rejected() {
        let key = StoreKey::from_passphrase("p");
        let short_salt = KdfParams {
            salt: vec![1; 3],
            rounds: DEFAULT_PBKDF2_ROUNDS,
        };
        assert!(StoreCipher::new(&key, &short_salt).is_err());
        for rounds in [0, 1, MAX_PBKDF2_ROUNDS + 1] {
            let p = KdfParams {
                salt: vec![1; SALT_LEN],
                rounds,
            };
            assert!(StoreCipher::new(&key, &p).is_err(), "rounds {rounds}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let k = StoreKey::from_passphrase("hunter2-secret");
        let s = format!("{k:?}");
        assert!(!s.contains("hunter2"), "{s}");
        let k = StoreKey::from_bytes([0xab; 32]);
        let s = format!("{k:?} {:?}", cipher(0xab));
        assert!(!s.contains("171") && !s.contains("ab, ab"), "{s}");
        assert!(s.contains("redacted"));
    }

    #[test]
    fn generated_salt_is_random() {
        let a = KdfParams::generate();
        let b = KdfParams::generate();
        assert_eq!(a.salt.len(), SALT_LEN);
        assert_ne!(a.salt, b.salt);
        assert_eq!(a.rounds, DEFAULT_PBKDF2_ROUNDS);
    }
}
