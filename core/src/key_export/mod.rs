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

mod read;
mod write;

use hmac::{Hmac, Mac};
use ruma::OwnedRoomId;
use serde::{Deserialize, Serialize};
use sha2::{Sha256, Sha512};
use zeroize::Zeroizing;

pub use read::{Entry, ReadProgress, read_export};
pub use write::ExportWriter;

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
/// The AES-256-CTR of the spec (128-bit big-endian counter).
type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
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
    /// The file changed between the check of its MAC and its import (nothing of what
    /// changed was used).
    #[error("the key export changed while it was read")]
    ChangedWhileReading,
    /// Reading or writing the file failed.
    #[error("key export I/O: {0}")]
    Io(String),
}

impl From<std::io::Error> for KeyExportError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
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

/// Encrypt `keys` into the export format with `passphrase` and `rounds`, in memory (large
/// exports are written as they are read from the store: [`ExportWriter`]).
pub fn encrypt(
    keys: &[ExportedRoomKey],
    passphrase: &str,
    rounds: u32,
) -> Result<String, KeyExportError> {
    let mut writer = ExportWriter::new(Vec::new(), passphrase, rounds)?;
    for key in keys {
        writer.push(key)?;
    }
    let text = writer.finish()?;
    String::from_utf8(text).map_err(|e| KeyExportError::Io(e.to_string()))
}

/// Decrypt an export held in memory with `passphrase`: the room keys it holds (large files
/// are read in two passes without holding them: [`read_export`]). An entry that is not a
/// room key makes the whole content invalid here.
pub fn decrypt(text: &str, passphrase: &str) -> Result<Vec<ExportedRoomKey>, KeyExportError> {
    let mut keys = Vec::new();
    read_export(
        std::io::Cursor::new(text.as_bytes()),
        passphrase,
        |entry| match entry {
            Entry::Key(key) => {
                keys.push(key);
                Ok(())
            }
            Entry::Invalid(why) => Err(KeyExportError::InvalidContent(why)),
        },
        |_| {},
    )?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    /// The decoded body of an export.
    fn unarmor(text: &str) -> Vec<u8> {
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD.decode(body).unwrap()
    }

    fn armor(raw: &[u8]) -> String {
        format!("{HEADER}\n{}\n{FOOTER}\n", STANDARD.encode(raw))
    }

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
        let raw = unarmor(&text);
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
        let mut raw = unarmor(&text);
        raw[PREFIX + 2] ^= 1;
        let tampered = armor(&raw);
        assert_eq!(
            decrypt(&tampered, "right"),
            Err(KeyExportError::WrongPassphraseOrTampered)
        );
        let raw = unarmor(&text);
        let cut = armor(&raw[..raw.len() - 10]);
        assert_eq!(
            decrypt(&cut, "right"),
            Err(KeyExportError::WrongPassphraseOrTampered)
        );
        let short = armor(&raw[..PREFIX]);
        assert_eq!(decrypt(&short, "right"), Err(KeyExportError::Truncated));
        let headless = text.replace(HEADER, "");
        assert!(matches!(
            decrypt(&headless, "right"),
            Err(KeyExportError::NotAnExport(_))
        ));
        let mut v2 = raw.clone();
        v2[0] = 2;
        let v2 = armor(&v2);
        assert_eq!(
            decrypt(&v2, "right"),
            Err(KeyExportError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn absurd_rounds_are_refused_before_any_work() {
        let text = encrypt(&[key(1)], "p", 1000).unwrap();
        let mut raw = unarmor(&text);
        raw[1 + SALT + IV..PREFIX].copy_from_slice(&u32::MAX.to_be_bytes());
        let greedy = armor(&raw);
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
        let text = include_str!("../../tests/data/key_export_openssl.txt");
        let keys = decrypt(text, "newt export test").unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].session_id, "vector-session");
        assert_eq!(keys[0].session_key, "vector-secret");
        assert_eq!(
            decrypt(text, "newt export tesT"),
            Err(KeyExportError::WrongPassphraseOrTampered)
        );
    }

    fn read_all(
        input: &[u8],
        passphrase: &str,
    ) -> Result<(Vec<Entry>, Vec<ReadProgress>), KeyExportError> {
        let (mut entries, mut progress) = (Vec::new(), Vec::new());
        read_export(
            std::io::Cursor::new(input),
            passphrase,
            |e| {
                entries.push(e);
                Ok::<_, KeyExportError>(())
            },
            |p| progress.push(p),
        )?;
        Ok((entries, progress))
    }

    #[test]
    fn a_large_export_is_read_chunk_by_chunk_with_progress() {
        let mut writer = ExportWriter::new(Vec::new(), "p", 1000).unwrap();
        for i in 0..2000 {
            let mut k = key(i);
            k.session_key = "k".repeat(200);
            writer.push(&k).unwrap();
        }
        assert_eq!(writer.keys(), 2000);
        let file = writer.finish().unwrap();
        assert!(file.len() > 8 * 64 * 1024, "several chunks: {}", file.len());
        let (entries, progress) = read_all(&file, "p").unwrap();
        assert_eq!(entries.len(), 2000);
        assert!(matches!(&entries[1999], Entry::Key(k) if k.session_id == "session1999"));
        let total = 2 * file.len() as u64;
        assert!(
            progress.len() > 16,
            "reported per chunk: {}",
            progress.len()
        );
        assert!(progress.iter().all(|p| p.total_bytes == total));
        assert!(
            progress
                .windows(2)
                .all(|w| w[0].read_bytes <= w[1].read_bytes)
        );
        assert_eq!(progress.last().unwrap().read_bytes, total);
    }

    #[test]
    fn an_entry_that_is_not_a_room_key_is_reported_alone() {
        let mut writer = ExportWriter::new(Vec::new(), "p", 1000).unwrap();
        writer.push(&key(1)).unwrap();
        writer.encrypted(br#",{"algorithm":5}"#).unwrap();
        writer.push(&key(2)).unwrap();
        let file = writer.finish().unwrap();
        let (entries, _) = read_all(&file, "p").unwrap();
        assert_eq!(entries.len(), 3);
        assert!(matches!(&entries[0], Entry::Key(k) if k.session_id == "session1"));
        assert!(matches!(&entries[1], Entry::Invalid(why) if why.starts_with("entry 1")));
        assert!(matches!(&entries[2], Entry::Key(k) if k.session_id == "session2"));
        // In memory, all or nothing.
        let text = String::from_utf8(file).unwrap();
        assert!(matches!(
            decrypt(&text, "p"),
            Err(KeyExportError::InvalidContent(_))
        ));
    }

    /// A reader whose content is replaced once it was read through (what a file changed by
    /// someone else between the two passes looks like).
    struct Swapping {
        first: std::io::Cursor<Vec<u8>>,
        then: Vec<u8>,
        rewinds: u32,
    }

    impl std::io::Read for Swapping {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.first.read(buf)
        }
    }

    impl std::io::BufRead for Swapping {
        fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
            self.first.fill_buf()
        }
        fn consume(&mut self, n: usize) {
            self.first.consume(n)
        }
    }

    impl std::io::Seek for Swapping {
        fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
            if to == std::io::SeekFrom::Start(0) {
                self.rewinds += 1;
                if self.rewinds == 2 {
                    let then = std::mem::take(&mut self.then);
                    self.first = std::io::Cursor::new(then);
                }
            }
            self.first.seek(to)
        }
    }

    #[test]
    fn a_file_changed_between_the_two_passes_is_refused_before_use() {
        let keys: Vec<_> = (0..3000).map(key).collect();
        let good = encrypt(&keys, "p", 1000).unwrap().into_bytes();
        let mut raw = unarmor(std::str::from_utf8(&good).unwrap());
        // The second chunk changed: the first one's entries were handed over, none after.
        raw[100_000] ^= 1;
        let mut seen = 0;
        let result = read_export(
            Swapping {
                first: std::io::Cursor::new(good),
                then: armor(&raw).into_bytes(),
                rewinds: 0,
            },
            "p",
            |_| {
                seen += 1;
                Ok::<_, KeyExportError>(())
            },
            |_| {},
        );
        assert_eq!(result, Err(KeyExportError::ChangedWhileReading));
        assert!(seen > 0 && seen < 3000, "{seen} entries before the change");
    }

    #[test]
    fn an_error_of_the_caller_stops_the_reading() {
        let text = encrypt(&[key(1), key(2)], "p", 1000).unwrap();
        let mut seen = 0;
        let result = read_export(
            std::io::Cursor::new(text.as_bytes()),
            "p",
            |_| {
                seen += 1;
                Err(KeyExportError::Io("full".into()))
            },
            |_| {},
        );
        assert_eq!(result, Err(KeyExportError::Io("full".into())));
        assert_eq!(seen, 1);
    }
}
