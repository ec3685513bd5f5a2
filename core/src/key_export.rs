//! The key export file format of the Matrix specification ("Key exports"), which Element
//! and every other client read and write:
//!
//! ```text
//! -----BEGIN MEGOLM SESSION DATA-----
//! base64( 0x01 | salt (16) | IV (16) | rounds (u32, big-endian) | AES-256-CTR ciphertext
//!         | HMAC-SHA-256 of everything before it (32) )
//! -----END MEGOLM SESSION DATA-----
//! ```
//!
//! The AES key and the HMAC key are the two halves of PBKDF2-HMAC-SHA-512 of the passphrase
//! with the salt and the rounds in the file; the plaintext is the JSON list of exported room
//! keys ([`ExportedRoomKey`]). The MAC is checked before anything is decrypted: a wrong
//! passphrase and a tampered file are the same error, and neither yields a byte of it.

use aes::cipher::{KeyIvInit, StreamCipher};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use ruma::OwnedRoomId;
use serde::{Deserialize, Serialize};
use sha2::{Sha256, Sha512};
use zeroize::Zeroizing;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

const HEADER: &str = "-----BEGIN MEGOLM SESSION DATA-----";
const FOOTER: &str = "-----END MEGOLM SESSION DATA-----";
const VERSION: u8 = 1;
const SALT: usize = 16;
const IV: usize = 16;
const MAC: usize = 32;
/// version, salt, IV, rounds.
const PREFIX: usize = 1 + SALT + IV + 4;
/// Characters per line of the base64 body.
const LINE: usize = 96;
/// Rounds Newt writes (the reader takes what the file says, within [`MAX_ROUNDS`]).
pub const DEFAULT_ROUNDS: u32 = 500_000;
/// Most rounds a file may ask for: more would let a crafted file hold the app for hours.
pub const MAX_ROUNDS: u32 = 10_000_000;

/// Why a key export file cannot be read (nothing is imported then).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyExportError {
    /// No `BEGIN MEGOLM SESSION DATA` / `END` lines, or a body that is not base64.
    #[error("not a key export file: {0}")]
    NotAnExport(String),
    /// Shorter than its header and MAC: cut off.
    #[error("the key export is truncated")]
    Truncated,
    /// A format version other than 1.
    #[error("unsupported key export version {0}")]
    UnsupportedVersion(u8),
    /// The rounds in the file are 0 or more than [`MAX_ROUNDS`].
    #[error("the key export asks for {0} rounds")]
    InvalidRounds(u32),
    /// The MAC does not match: the passphrase is wrong, or the file was changed.
    #[error("wrong passphrase, or the key export was changed")]
    WrongPassphraseOrTampered,
    /// Decrypted, but not a list of room keys.
    #[error("the key export's content is not a list of room keys: {0}")]
    InvalidContent(String),
}

/// One room key as the export format holds it (the spec's `SessionData` with its room).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedRoomKey {
    /// `m.megolm.v1.aes-sha2`.
    pub algorithm: String,
    /// The room.
    pub room_id: OwnedRoomId,
    /// Curve25519 key of the device that created the session.
    pub sender_key: String,
    /// The Megolm session id.
    pub session_id: String,
    /// The session exported from its first known index (secret).
    pub session_key: String,
    /// Keys the creating device claimed: `{"ed25519": ...}`.
    #[serde(default)]
    pub sender_claimed_keys: std::collections::BTreeMap<String, String>,
    /// Devices the key was forwarded through.
    #[serde(default)]
    pub forwarding_curve25519_key_chain: Vec<String>,
}

impl std::fmt::Debug for ExportedRoomKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportedRoomKey")
            .field("room_id", &self.room_id)
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

impl Drop for ExportedRoomKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.session_key);
    }
}

/// The two keys PBKDF2 derives: AES, then HMAC.
fn derive(passphrase: &str, salt: &[u8], rounds: u32) -> Zeroizing<[u8; 64]> {
    let mut keys = Zeroizing::new([0u8; 64]);
    pbkdf2::pbkdf2_hmac::<Sha512>(passphrase.as_bytes(), salt, rounds, keys.as_mut());
    keys
}

fn mac_of(key: &[u8], data: &[u8]) -> Result<Hmac<Sha256>, KeyExportError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .map_err(|_| KeyExportError::InvalidContent("invalid MAC key length".into()))?;
    mac.update(data);
    Ok(mac)
}

/// Encrypt `keys` into the export format with `passphrase` and `rounds`.
pub fn encrypt(
    keys: &[ExportedRoomKey],
    passphrase: &str,
    rounds: u32,
) -> Result<String, KeyExportError> {
    if rounds == 0 || rounds > MAX_ROUNDS {
        return Err(KeyExportError::InvalidRounds(rounds));
    }
    let plaintext = Zeroizing::new(
        serde_json::to_vec(keys).map_err(|e| KeyExportError::InvalidContent(e.to_string()))?,
    );
    let mut salt = [0u8; SALT];
    let mut iv = [0u8; IV];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut iv);
    // Bit 63 cleared, as the spec asks (some readers count with a 64-bit counter).
    iv[8] &= 0x7f;
    let derived = derive(passphrase, &salt, rounds);
    let mut out = Vec::with_capacity(PREFIX + plaintext.len() + MAC);
    out.push(VERSION);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&iv);
    out.extend_from_slice(&rounds.to_be_bytes());
    let start = out.len();
    out.extend_from_slice(&plaintext);
    let mut aes = Aes256Ctr::new(derived[..32].into(), (&iv).into());
    aes.apply_keystream(&mut out[start..]);
    let tag = mac_of(&derived[32..], &out)?.finalize().into_bytes();
    out.extend_from_slice(&tag);
    Ok(armor(&STANDARD.encode(out)))
}

fn armor(body: &str) -> String {
    let mut text = String::with_capacity(body.len() + body.len() / LINE + 80);
    text.push_str(HEADER);
    text.push('\n');
    for line in body.as_bytes().chunks(LINE) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(FOOTER);
    text.push('\n');
    text
}

/// Decrypt an export with `passphrase`: the room keys it holds.
pub fn decrypt(text: &str, passphrase: &str) -> Result<Vec<ExportedRoomKey>, KeyExportError> {
    let mut data = unarmor(text)?;
    if data.len() < PREFIX + MAC {
        return Err(KeyExportError::Truncated);
    }
    if data[0] != VERSION {
        return Err(KeyExportError::UnsupportedVersion(data[0]));
    }
    let mut rounds = [0u8; 4];
    rounds.copy_from_slice(&data[1 + SALT + IV..PREFIX]);
    let rounds = u32::from_be_bytes(rounds);
    if rounds == 0 || rounds > MAX_ROUNDS {
        return Err(KeyExportError::InvalidRounds(rounds));
    }
    let derived = derive(passphrase, &data[1..1 + SALT], rounds);
    let (signed, tag) = data.split_at(data.len() - MAC);
    mac_of(&derived[32..], signed)?
        .verify_slice(tag)
        .map_err(|_| KeyExportError::WrongPassphraseOrTampered)?;
    let mut iv = [0u8; IV];
    iv.copy_from_slice(&data[1 + SALT..1 + SALT + IV]);
    let end = data.len() - MAC;
    let mut aes = Aes256Ctr::new(derived[..32].into(), (&iv).into());
    aes.apply_keystream(&mut data[PREFIX..end]);
    let plaintext = Zeroizing::new(data[PREFIX..end].to_vec());
    zeroize::Zeroize::zeroize(&mut data);
    serde_json::from_slice(&plaintext).map_err(|e| KeyExportError::InvalidContent(e.to_string()))
}

/// The bytes between the armor lines (whitespace ignored).
fn unarmor(text: &str) -> Result<Vec<u8>, KeyExportError> {
    let not = |why: &str| KeyExportError::NotAnExport(why.to_owned());
    let start = text.find(HEADER).ok_or_else(|| not("no BEGIN line"))? + HEADER.len();
    let end = text[start..]
        .find(FOOTER)
        .ok_or_else(|| not("no END line"))?
        + start;
    let body: String = text[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    // Padded or not: writers differ.
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    engine
        .decode(body)
        .map_err(|e| not(&format!("base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> ExportedRoomKey {
        ExportedRoomKey {
            algorithm: "m.megolm.v1.aes-sha2".into(),
            room_id: OwnedRoomId::try_from("!room:example.org").unwrap(),
            sender_key: format!("curve{i}"),
            session_id: format!("session{i}"),
            session_key: format!("secret{i}"),
            sender_claimed_keys: [("ed25519".to_owned(), format!("ed{i}"))].into(),
            forwarding_curve25519_key_chain: Vec::new(),
        }
    }

    #[test]
    fn an_export_round_trips_in_the_spec_layout() {
        let keys: Vec<_> = (0..3).map(key).collect();
        let text = encrypt(&keys, "passphrase", 1000).unwrap();
        assert!(text.starts_with("-----BEGIN MEGOLM SESSION DATA-----\n"));
        assert!(text.ends_with("-----END MEGOLM SESSION DATA-----\n"));
        assert!(
            text.lines()
                .all(|l| l.len() <= LINE || l.starts_with("-----"))
        );
        let raw = unarmor(&text).unwrap();
        assert_eq!(raw[0], 1);
        assert_eq!(raw[1 + SALT + 8] & 0x80, 0, "bit 63 of the IV is clear");
        assert_eq!(&raw[1 + SALT + IV..PREFIX], &1000u32.to_be_bytes());
        assert_eq!(decrypt(&text, "passphrase").unwrap(), keys);
        assert!(!text.contains("secret"), "nothing in clear");
        // Without padding, on one line, with Windows line ends: the same keys.
        let body: String = STANDARD.encode(&raw).trim_end_matches('=').to_owned();
        let loose = format!("{HEADER}\r\n{body}\r\n{FOOTER}");
        assert_eq!(decrypt(&loose, "passphrase").unwrap(), keys);
    }

    #[test]
    fn a_wrong_passphrase_truncated_or_tampered_file_is_refused() {
        let text = encrypt(&[key(1)], "right", 1000).unwrap();
        assert_eq!(
            decrypt(&text, "wrong"),
            Err(KeyExportError::WrongPassphraseOrTampered)
        );
        let mut raw = unarmor(&text).unwrap();
        raw[PREFIX + 2] ^= 1;
        let tampered = armor(&STANDARD.encode(&raw));
        assert_eq!(
            decrypt(&tampered, "right"),
            Err(KeyExportError::WrongPassphraseOrTampered)
        );
        let raw = unarmor(&text).unwrap();
        let cut = armor(&STANDARD.encode(&raw[..raw.len() - 10]));
        assert_eq!(
            decrypt(&cut, "right"),
            Err(KeyExportError::WrongPassphraseOrTampered)
        );
        let short = armor(&STANDARD.encode(&raw[..PREFIX]));
        assert_eq!(decrypt(&short, "right"), Err(KeyExportError::Truncated));
        let headless = text.replace(HEADER, "");
        assert!(matches!(
            decrypt(&headless, "right"),
            Err(KeyExportError::NotAnExport(_))
        ));
        let mut v2 = raw.clone();
        v2[0] = 2;
        let v2 = armor(&STANDARD.encode(&v2));
        assert_eq!(
            decrypt(&v2, "right"),
            Err(KeyExportError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn absurd_rounds_are_refused_before_any_work() {
        let text = encrypt(&[key(1)], "p", 1000).unwrap();
        let mut raw = unarmor(&text).unwrap();
        raw[1 + SALT + IV..PREFIX].copy_from_slice(&u32::MAX.to_be_bytes());
        let greedy = armor(&STANDARD.encode(&raw));
        assert_eq!(
            decrypt(&greedy, "p"),
            Err(KeyExportError::InvalidRounds(u32::MAX))
        );
        assert_eq!(
            encrypt(&[key(1)], "p", 0),
            Err(KeyExportError::InvalidRounds(0))
        );
    }

    /// A file made by another implementation (OpenSSL's AES-256-CTR and HMAC, Python's
    /// PBKDF2-HMAC-SHA-512; see `tests/data/README.md`) decrypts to its content.
    #[test]
    fn a_file_made_by_openssl_decrypts() {
        let text = include_str!("../tests/data/key_export_openssl.txt");
        let keys = decrypt(text, "newt export test").unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].session_id, "vector-session");
        assert_eq!(keys[0].session_key, "vector-secret");
        assert_eq!(
            decrypt(text, "newt export tesT"),
            Err(KeyExportError::WrongPassphraseOrTampered)
        );
    }
}
